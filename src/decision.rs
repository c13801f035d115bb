//! The forward-auth decision endpoint (`[decision]`): other proxies (nginx `auth_request`,
//! Traefik `forwardAuth`, Envoy `ext_authz` over HTTP) ask whether a request may pass, and get
//! the same decision the gateway would make, from the same routes, caches and metrics.
//!
//! - The original method and URI come from the configured [`Convention`]'s headers (or the
//!   request itself for Envoy). Only this listener reads them.
//! - The URI's path must be canonical (as on the proxy listener) and is matched against the same
//!   `[[routes]]`; a path no route claims, or a method its route does not allow, is 403.
//! - Allowed: 200 with the identity headers (`X-Auth-*`). Refused: the RFC 6750 challenge (400 /
//!   401 / 403, with `WWW-Authenticate`) or 503 with `Retry-After`.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, Uri};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::auth::{Authenticator, RequestInfo};
use crate::config::{AuthMode, Convention};
use crate::routing::{is_canonical_path, RouteMatch, Router};

/// Serves `[decision] listen`.
pub struct DecisionApp {
    pub auth: Arc<Authenticator>,
    pub router: Router,
    pub convention: Convention,
}

/// The original request's method and URI, per convention.
fn original(req: &http::request::Parts, convention: Convention) -> Result<(Method, Uri), String> {
    let (method_header, uri_header) = match convention {
        Convention::Envoy => return Ok((req.method.clone(), req.uri.clone())),
        Convention::Nginx => ("x-original-method", "x-original-uri"),
        Convention::Traefik => ("x-forwarded-method", "x-forwarded-uri"),
    };
    let header = |name: &str| {
        let mut values = req.headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => Ok(v.as_bytes()),
            _ => Err(format!(
                "The check request needs exactly one {name} header."
            )),
        }
    };
    let method = Method::from_bytes(header(method_header)?)
        .map_err(|_| format!("The {method_header} header is not an HTTP method."))?;
    let uri = Uri::try_from(header(uri_header)?)
        .ok()
        .filter(|u| u.scheme().is_none() && u.path().starts_with('/'))
        .ok_or_else(|| format!("The {uri_header} header is not an origin-form request target."))?;
    Ok((method, uri))
}

fn json(status: u16, error: &str, description: &str) -> Response<Vec<u8>> {
    let body = serde_json::json!({ "error": error, "error_description": description });
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body.to_string().into_bytes())
        .expect("valid by construction")
}

#[async_trait]
impl ServeHttp for DecisionApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header().as_ref();
        let (method, uri) = match original(req, self.convention) {
            Ok(found) => found,
            Err(why) => return json(400, "bad_request", &why),
        };
        if !is_canonical_path(uri.path()) {
            return json(
                400,
                "bad_request",
                "The request path is not in canonical form.",
            );
        }
        let route = match self.router.find(&method, uri.path()) {
            RouteMatch::Found(route) => route,
            RouteMatch::NotFound | RouteMatch::MethodNotAllowed { .. } => {
                return json(403, "no_route", "No route allows this method and path.")
            }
        };
        if route.auth == AuthMode::None {
            return json(200, "none", "This route checks no token.");
        }
        let info = RequestInfo {
            headers: &req.headers,
            query: uri.query(),
            route: &route.name,
            policy: &route.policy,
        };
        match self.auth.authorize(&info).await {
            Ok(principal) => {
                let mut resp = Response::builder()
                    .status(200)
                    .header(http::header::CACHE_CONTROL, "no-store");
                for (name, value) in principal.identity_headers() {
                    resp = resp.header(name, value);
                }
                resp.body(Vec::new()).expect("valid by construction")
            }
            Err(error) => self.auth.challenge(&error, &route.policy).into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_original_request_comes_from_the_configured_headers_only() {
        let nginx = parts(
            "GET",
            "/auth",
            &[
                ("x-original-method", "POST"),
                ("x-original-uri", "/orders/7?x=1"),
                ("x-forwarded-uri", "/admin"),
            ],
        );
        let (m, u) = original(&nginx, Convention::Nginx).unwrap();
        assert_eq!(
            (m.as_str(), u.to_string().as_str()),
            ("POST", "/orders/7?x=1")
        );
        assert!(
            original(&nginx, Convention::Traefik).is_err(),
            "no X-Forwarded-Method"
        );
        let (m, u) = original(&nginx, Convention::Envoy).unwrap();
        assert_eq!((m.as_str(), u.path()), ("GET", "/auth"));

        let traefik = parts(
            "GET",
            "/auth",
            &[
                ("x-forwarded-method", "DELETE"),
                ("x-forwarded-uri", "/orders"),
            ],
        );
        let (m, u) = original(&traefik, Convention::Traefik).unwrap();
        assert_eq!((m.as_str(), u.path()), ("DELETE", "/orders"));

        for bad in [
            parts("GET", "/auth", &[("x-original-method", "GET")]),
            parts(
                "GET",
                "/auth",
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "http://evil/x"),
                ],
            ),
            parts(
                "GET",
                "/auth",
                &[("x-original-method", "GET"), ("x-original-uri", "*")],
            ),
            parts(
                "GET",
                "/auth",
                &[("x-original-method", "G E T"), ("x-original-uri", "/x")],
            ),
            parts(
                "GET",
                "/auth",
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/a"),
                    ("x-original-uri", "/b"),
                ],
            ),
        ] {
            assert!(
                original(&bad, Convention::Nginx).is_err(),
                "{:?}",
                bad.headers
            );
        }
    }
}
