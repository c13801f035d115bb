//! The forward-auth decision endpoint (`[decision]`): other proxies (nginx `auth_request`,
//! Traefik `forwardAuth`, Envoy `ext_authz` over HTTP) ask whether a request may pass, and get
//! the same decision the gateway would make, from the same routes, caches and metrics.
//!
//! - The original method and URI come from the configured [`Convention`]'s headers (or the
//!   request itself for Envoy). Only this listener reads them.
//! - The URI is put in canonical form and routed exactly as on the proxy listener
//!   ([`crate::gate::route`]): a target the proxy would refuse is 400 here too; a path no route
//!   claims, or a method its route does not allow, is 403.
//! - A check request carrying a header that would choose the identity, path or method the
//!   application acts on ([`crate::gate::headers::refused_at_decision`]: `X-Auth-*`,
//!   `X-Original-URL`, method overrides on a route that does not allow them, ...) is 403: the
//!   asking proxy forwards those headers to the application as they are.
//! - Allowed: 200 with the identity headers (`X-Auth-*`). Refused: the RFC 6750 challenge (400 /
//!   401 / 403, with `WWW-Authenticate`) or 503 with `Retry-After`.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};

use crate::config::Convention;
use crate::dataplane::proxy::raw_target;
use crate::dataplane::simple::{Handler, Peer};
use crate::gate::{self, Gate, Refusal};
use crate::response::Synthetic;

/// Serves `[decision] listen`.
pub struct DecisionApp {
    /// The proxy listener's gate: the same router and auth core, replaced by a reload.
    pub gate: Arc<crate::live::Live<Gate>>,
    pub convention: Convention,
    /// `[server] max_uri_bytes`: a longer original URI is 414, as on the proxy listener.
    pub max_uri_bytes: usize,
}

/// The original request's method and raw request target, per convention.
fn original<'a>(
    method: &Method,
    target: &'a [u8],
    headers: &'a HeaderMap,
    convention: Convention,
) -> Result<(Method, &'a [u8]), String> {
    let (method_header, uri_header) = match convention {
        Convention::Envoy => return Ok((method.clone(), target)),
        Convention::Nginx => ("x-original-method", "x-original-uri"),
        // The whole URL: its absolute form is reduced to origin-form, its authority kept
        // (what a DPoP proof's `htu` names).
        Convention::IngressNginx => ("x-original-method", "x-original-url"),
        Convention::Traefik => ("x-forwarded-method", "x-forwarded-uri"),
    };
    let header = |name: &str| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => Ok(v.as_bytes()),
            _ => Err(format!(
                "The check request needs exactly one {name} header."
            )),
        }
    };
    let method = Method::from_bytes(header(method_header)?)
        .map_err(|_| format!("The {method_header} header is not an HTTP method."))?;
    let uri = header(uri_header)?;
    let well_formed = match convention {
        // `$scheme://$http_host$request_uri`, and `$request_uri` starts with `/`: a URL whose
        // authority is not followed by `/` had a `?` or `#` in the client's `Host` header
        // (nginx accepts `Host: api.example.com?`), which would move the real path into the
        // query (red team: every path got the `/` route's decision).
        Convention::IngressNginx => path_after_authority(uri),
        // `$request_uri` and Traefik's request URI are origin-form (or `*`).
        _ => uri.first() == Some(&b'/') || uri == b"*",
    };
    if !well_formed {
        return Err(format!(
            "The {uri_header} header is not the original request's {}.",
            match convention {
                Convention::IngressNginx => "http(s) URL with a path",
                _ => "path",
            }
        ));
    }
    Ok((method, uri))
}

/// `http(s)://authority/...`: an absolute URL whose authority ends at a `/`.
fn path_after_authority(url: &[u8]) -> bool {
    let lower = url.to_ascii_lowercase();
    let rest = match (
        lower.strip_prefix(b"http://"),
        lower.strip_prefix(b"https://"),
    ) {
        (Some(rest), _) | (None, Some(rest)) => rest,
        (None, None) => return false,
    };
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    end > 0 && rest.get(end) == Some(&b'/')
}

/// Headers through which frameworks take the request's path, path base or method besides the
/// ones the gateway's header classes name: Traefik's original-request headers (but a Traefik
/// asking sets them itself), Spring's and ASP.NET's path-base headers, and others (red team).
/// The proxy listener removes them as client-address headers unless a proxy in front is
/// trusted; at the decision endpoint they would reach the application as the client sent them.
const DECISION_REFUSED: [&str; 7] = [
    "x-forwarded-uri",
    "x-forwarded-url",
    "x-forwarded-method",
    "x-forwarded-prefix",
    "x-forwarded-path",
    "x-original-request-uri",
    "x-request-uri",
];

/// Whether a check request header is one of [`DECISION_REFUSED`] under `convention`.
fn refused_by_convention(name: &str, convention: Convention) -> bool {
    let name: std::borrow::Cow<str> = match name.contains('_') {
        true => name.replace('_', "-").into(),
        false => name.into(),
    };
    let own: &[&str] = match convention {
        // Traefik's forwardAuth sends its own X-Forwarded-* with every check, and its
        // stripPrefix middleware sets X-Forwarded-Prefix.
        Convention::Traefik => &[
            "x-forwarded-uri",
            "x-forwarded-method",
            "x-forwarded-prefix",
        ],
        _ => &[],
    };
    DECISION_REFUSED.contains(&name.as_ref()) && !own.contains(&name.as_ref())
}

/// The headers through which a convention's proxy passes the original request (and Envoy's
/// record of a path it rewrote): not the client's choice.
fn convention_headers(convention: Convention) -> &'static [&'static str] {
    match convention {
        Convention::Nginx => &["x-original-method", "x-original-uri"],
        // What the controller sets on every check request, overriding the client's: the
        // original request, and where to send the client back after a sign-in.
        Convention::IngressNginx => &[
            "x-original-method",
            "x-original-url",
            "x-auth-request-redirect",
            "x-sent-from",
        ],
        Convention::Traefik => &["x-forwarded-method", "x-forwarded-uri"],
        Convention::Envoy => &["x-envoy-original-path"],
    }
}

/// The address a check request's client is counted by for rate limits: the last
/// `X-Forwarded-For` entry, which the asking proxy appends for the client it asks about;
/// without one, the asking proxy's own address.
fn decision_client(headers: &http::HeaderMap, peer: Option<&Peer>) -> std::net::IpAddr {
    let peer = peer.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |p| p.0.ip());
    crate::gate::limit::client_address(headers, peer, true)
}

fn json(status: u16, error: &str, description: &str) -> Response<Bytes> {
    Synthetic::error(status, error, description).render()
}

impl Handler for DecisionApp {
    async fn handle(&self, req: Request<Bytes>) -> Response<Bytes> {
        let target = raw_target(req.uri());
        let (method, raw_target) = match original(
            req.method(),
            target.as_bytes(),
            req.headers(),
            self.convention,
        ) {
            Ok(found) => found,
            Err(why) => return json(400, "invalid_request", &why),
        };
        if raw_target.len() > self.max_uri_bytes {
            return json(
                414,
                "uri_too_long",
                "The original request target is longer than this gateway accepts.",
            );
        }
        // The gate now; this request keeps it to its end, whatever a reload does meanwhile.
        let gate = self.gate.load();
        // The same canonical target and route as the proxy listener (crate::gate).
        let routed = match gate.route(&method, raw_target) {
            Ok(routed) => routed,
            Err(Refusal::NotFound | Refusal::MethodNotAllowed { .. }) => {
                return json(403, "no_route", "No route allows this method and path.")
            }
            Err(refusal) => return json(400, refusal.error(), refusal.description()),
        };
        let route = routed.route;
        // The asking proxy forwards the client's headers as they are: refuse what the proxy
        // listener would have removed as the client's choice of identity, path or method.
        let own = convention_headers(self.convention);
        let chooses = |name: &http::HeaderName| {
            gate::headers::refused_at_decision(
                name.as_str(),
                route.method_override,
                own,
                &gate.identity,
            ) || refused_by_convention(name.as_str(), self.convention)
        };
        if req.headers().keys().any(chooses) {
            return json(
                403,
                "forbidden_header",
                "The request carries a header that would choose its identity, path or method.",
            );
        }
        let client = decision_client(req.headers(), req.extensions().get::<Peer>());
        match gate
            .authorize(
                &routed,
                &method,
                req.headers(),
                client,
                false,
                crate::gate::Via {
                    forwarded: true,
                    ..Default::default()
                },
                None,
            )
            .await
        {
            Ok(None) => json(200, "none", "This route checks no token."),
            Ok(Some(grant)) => {
                let mut resp = Response::new(Bytes::new());
                let headers = resp.headers_mut();
                headers.insert(
                    http::header::CACHE_CONTROL,
                    http::HeaderValue::from_static("no-store"),
                );
                for (name, value) in grant.headers() {
                    headers.append(name.clone(), value.clone());
                }
                resp
            }
            Err(denied) => Synthetic::denied(denied).render(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req(Method, String, HeaderMap);

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Req {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        Req(
            Method::from_bytes(method.as_bytes()).unwrap(),
            uri.into(),
            map,
        )
    }

    fn original(r: &Req, convention: Convention) -> Result<(Method, &[u8]), String> {
        super::original(&r.0, r.1.as_bytes(), &r.2, convention)
    }

    #[test]
    fn the_original_request_comes_from_the_configured_headers_only() {
        let nginx = req(
            "GET",
            "/auth",
            &[
                ("x-original-method", "POST"),
                ("x-original-uri", "/orders/7?x=1"),
                ("x-forwarded-uri", "/admin"),
            ],
        );
        let (m, u) = original(&nginx, Convention::Nginx).unwrap();
        assert_eq!((m.as_str(), u), ("POST", &b"/orders/7?x=1"[..]));
        assert!(
            original(&nginx, Convention::Traefik).is_err(),
            "no X-Forwarded-Method"
        );
        let (m, u) = original(&nginx, Convention::Envoy).unwrap();
        assert_eq!((m.as_str(), u), ("GET", &b"/auth"[..]));

        let traefik = req(
            "GET",
            "/auth",
            &[
                ("x-forwarded-method", "DELETE"),
                ("x-forwarded-uri", "/orders"),
            ],
        );
        let (m, u) = original(&traefik, Convention::Traefik).unwrap();
        assert_eq!((m.as_str(), u), ("DELETE", &b"/orders"[..]));

        for bad in [
            req("GET", "/auth", &[("x-original-method", "GET")]),
            req(
                "GET",
                "/auth",
                &[("x-original-method", "G E T"), ("x-original-uri", "/x")],
            ),
            req(
                "GET",
                "/auth",
                &[
                    ("x-original-method", "GET"),
                    ("x-original-uri", "/a"),
                    ("x-original-uri", "/b"),
                ],
            ),
        ] {
            assert!(original(&bad, Convention::Nginx).is_err(), "{:?}", bad.2);
        }
    }
}
