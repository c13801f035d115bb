//! The transport-neutral part of every request's way in: the request target in canonical form,
//! then the route, then the route's auth mode and policy. [`Gate::check`] makes the whole
//! decision once; the proxy listener calls it, and the decision endpoint calls its two halves
//! ([`Gate::route`], [`Gate::authorize`]) with its own header rule between them. The proxy
//! forwards the canonical form, so its upstream receives exactly the bytes the route was chosen
//! on; behind the decision endpoint the asking proxy forwards the original bytes, which the
//! canonical form only refuses or renames without changing what a decoding application reads.

pub mod headers;
pub mod limit;
pub mod metadata;
pub mod target;

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::auth::bearer::query_has_param;
use crate::auth::{Authenticator, Challenge, Grant, RequestInfo, RequestUri};
use crate::config::AuthMode;
use crate::routing::{Route, RouteMatch, Router};
pub use target::{canonical, valid_host, Target, TargetFault};

/// A request's route and its target in canonical form.
#[derive(Debug)]
pub struct Routed<'r, 't> {
    pub route: &'r Arc<Route>,
    pub target: Target<'t>,
}

/// Why a request is answered before any token is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal<'r> {
    /// The target cannot be put in canonical form: 400.
    Target(TargetFault),
    /// `;` parameters on a route without `allow_path_parameters`, or parameters that would
    /// route the request elsewhere once an upstream strips them: 400.
    PathParameters,
    /// A `_method` query parameter (Symfony, Laravel and Express `method-override` run that
    /// method instead) on a route without `allow_method_override`: 400.
    MethodOverride,
    /// The path with its ASCII letters folded to lower case would choose another route, as an
    /// application that routes without regard to case (Express's default, ASP.NET Core, IIS)
    /// would: 400.
    CaseFolding,
    /// No route claims the path: 404.
    NotFound,
    /// The path's routes do not allow the method: 405, with this `Allow` value.
    MethodNotAllowed { allow: &'r str },
}

impl Refusal<'_> {
    /// The status, the `error` member of the JSON body, and its `error_description`: fixed
    /// text, never the request's bytes.
    fn parts(&self) -> (u16, &'static str, &'static str) {
        match self {
            Refusal::Target(fault) => (400, "invalid_request", fault.description()),
            Refusal::PathParameters => (
                400,
                "invalid_request",
                "This route does not accept ; parameters in the path.",
            ),
            Refusal::MethodOverride => (
                400,
                "invalid_request",
                "This route does not accept a _method query parameter.",
            ),
            Refusal::CaseFolding => (
                400,
                "invalid_request",
                "This path in other letter case belongs to another route.",
            ),
            Refusal::NotFound => (404, "not_found", "No route matches this path."),
            Refusal::MethodNotAllowed { .. } => (
                405,
                "method_not_allowed",
                "This path does not accept this method.",
            ),
        }
    }

    pub fn status(&self) -> u16 {
        self.parts().0
    }

    /// The `error` member of the JSON body.
    pub fn error(&self) -> &'static str {
        self.parts().1
    }

    /// The `error_description` member.
    pub fn description(&self) -> &'static str {
        self.parts().2
    }
}

/// The decision every adapter shares: one router, one auth core, and the identity header
/// names no client may send.
pub struct Gate {
    pub router: Router,
    pub auth: Arc<Authenticator>,
    pub identity: headers::IdentityNames,
    /// The RFC 9728 documents, when `[resource_metadata]` is configured.
    pub metadata: Option<metadata::ResourceMetadata>,
    /// `portcullis_rate_limited_total{route}`, resolved once per route ([`Route::index`]): a
    /// flood of limited requests takes no label lookup (and its lock) per request.
    /// `None` for a route without a limit.
    pub rate_limited: Vec<Option<prometheus::IntCounter>>,
}

/// A request the gate lets through: its route, its canonical target, and who it acts for
/// (`None` on a route with `auth = "none"`, and for a CORS preflight the route forwards).
#[derive(Debug)]
pub struct Pass<'r, 't> {
    pub route: &'r Arc<Route>,
    pub target: Target<'t>,
    pub grant: Option<Grant>,
}

/// Why the gate refuses a request: before any token is looked at, or by the token's check.
#[derive(Debug)]
pub enum Denied<'r> {
    Refused(Refusal<'r>),
    /// The RFC 6750 answer (400 / 401 / 403) or 503 when the identity provider is unreachable,
    /// on this route.
    Challenged {
        route: &'r Arc<Route>,
        challenge: Challenge,
    },
    /// Over the route's rate limit: 429.
    Limited {
        route: &'r Arc<Route>,
        limited: limit::Limited,
    },
}

impl Gate {
    /// The RFC 9728 document served at `path`, if any.
    pub fn resource_document(&self, path: &str) -> Option<&bytes::Bytes> {
        self.metadata.as_ref()?.document(path)
    }

    /// Canonical target and route ([`route`]).
    pub fn route<'g, 't>(
        &'g self,
        method: &Method,
        raw_target: &'t [u8],
    ) -> Result<Routed<'g, 't>, Refusal<'g>> {
        route(&self.router, method, raw_target)
    }

    /// The routed request's token against its route's policy: who it acts for, `None` on a
    /// route that checks no token (or a CORS preflight it forwards, where `preflights` says the
    /// request's framing headers are the client's own), or why not: the challenge, or the rate
    /// limit (counted by `client`, or by the token's subject or client). Records the decision
    /// metrics.
    ///
    /// The decision endpoint passes `preflights = false`: the proxy that asks it drops
    /// `Upgrade` and the body from its check request (nginx's documented `auth_request` setup,
    /// Traefik's forwardAuth), so a preflight-shaped WebSocket handshake or request with a body
    /// would look like a real preflight there, and pass unchecked (red team).
    ///
    /// `forwarded`: the request's scheme and host, which a DPoP proof names, come from
    /// `X-Forwarded-Proto` and `X-Forwarded-Host` (a trusted proxy in front, or the proxy
    /// asking the decision endpoint).
    ///
    /// `calls`: where the identity-provider calls the request waits on are recorded for its
    /// trace span (a sampled request with `[tracing]`).
    ///
    /// `via.tls`: the request came over the TLS listener, so that (without `forwarded`) a DPoP
    /// proof's `htu` names `https`; `via.client_cert`: the certificate a certificate-bound
    /// token must have been presented with (RFC 8705 §3).
    #[allow(clippy::too_many_arguments)]
    pub async fn authorize<'g>(
        &'g self,
        routed: &Routed<'g, '_>,
        method: &Method,
        headers: &HeaderMap,
        client: IpAddr,
        preflights: bool,
        via: Via<'_>,
        calls: Option<&crate::spans::CallLog>,
    ) -> Result<Option<Grant>, Denied<'g>> {
        let route = routed.route;
        let limited = |limited| {
            if let Some(Some(counter)) = self.rate_limited.get(route.index) {
                counter.inc();
            }
            Denied::Limited { route, limited }
        };
        // Counted by address before the token is looked at: a flood of bad tokens is limited.
        if let Some(l) = route
            .limiter
            .as_ref()
            .filter(|l| l.key() == limit::LimitKey::ClientAddress)
        {
            l.admit(None, client).map_err(limited)?;
        }
        let preflight = preflights && route.cors_preflight && is_preflight(method, headers);
        if route.auth == AuthMode::None || preflight {
            return Ok(None);
        }
        let grant = self
            .authorize_token(routed, method, headers, via, calls)
            .await
            .map_err(|challenge| Denied::Challenged { route, challenge })?;
        if let Some(l) = route
            .limiter
            .as_ref()
            .filter(|l| l.key() != limit::LimitKey::ClientAddress)
        {
            l.admit(Some(&grant.principal), client).map_err(limited)?;
        }
        Ok(Some(grant))
    }

    /// The token against the route's policy.
    async fn authorize_token(
        &self,
        routed: &Routed<'_, '_>,
        method: &Method,
        headers: &HeaderMap,
        via: Via<'_>,
        calls: Option<&crate::spans::CallLog>,
    ) -> Result<Grant, Challenge> {
        let forwarded = via.forwarded;
        let route = routed.route;
        let info = RequestInfo {
            headers,
            query: routed.target.query(),
            route: &route.name,
            policy: &route.policy,
            method: method.as_str(),
            uri: RequestUri {
                path: routed.target.path(),
                authority: routed.target.authority(),
                // The listener's own scheme whatever a client's absolute-form target says; an
                // asking proxy's original URL names the scheme it served.
                scheme: match (forwarded, via.tls) {
                    (true, tls) => routed.target.scheme().unwrap_or(match tls {
                        true => "https",
                        false => "http",
                    }),
                    (false, true) => "https",
                    (false, false) => "http",
                },
                forwarded,
                normalise: target::normalise_proof_path,
            },
            calls,
            client_cert: via.client_cert,
            token_key: via.token_key,
        };
        match self.auth.authorize(&info).await {
            Ok(grant) => Ok(grant),
            Err(error) => {
                tracing::debug!(route = %route.name, outcome = error.kind(), "request refused");
                let challenge = self.auth.challenge(&error, &route.policy, headers);
                Err(match &route.resource_metadata {
                    Some(url) => challenge.with_resource_metadata(url),
                    None => challenge,
                })
            }
        }
    }

    /// The whole decision: canonical target, route, auth mode, token, policy and rate limit
    /// (`client`: the address requests are counted by, [`limit::client_address`];
    /// `via`: how the request arrived, see [`Gate::authorize`]).
    pub async fn check<'g, 't>(
        &'g self,
        method: &Method,
        raw_target: &'t [u8],
        headers: &HeaderMap,
        client: IpAddr,
        via: Via<'_>,
        calls: Option<&crate::spans::CallLog>,
    ) -> Result<Pass<'g, 't>, Denied<'g>> {
        let routed = self.route(method, raw_target).map_err(Denied::Refused)?;
        let grant = self
            .authorize(&routed, method, headers, client, true, via, calls)
            .await?;
        Ok(Pass {
            route: routed.route,
            target: routed.target,
            grant,
        })
    }
}

/// How a request arrived: what its listener knows beyond its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Via<'a> {
    /// The request's scheme and host come from `X-Forwarded-Proto` / `-Host`: a trusted proxy
    /// in front (`trust_forwarded_headers`), or the proxy asking the decision endpoint.
    pub forwarded: bool,
    /// Over the TLS listener.
    pub tls: bool,
    /// The verified client certificate's SHA-256 thumbprint, base64url (RFC 8705 §3.1).
    pub client_cert: Option<&'a str>,
    /// The connection's last token and its cache key; `None` where requests share no
    /// connection the gate knows of.
    pub token_key: Option<&'a crate::auth::cache::KeyMemo>,
}

/// A CORS preflight as browsers send it (Fetch Standard §4.8): `OPTIONS` with one non-empty
/// `Origin` and one `Access-Control-Request-Method` naming a method, and nothing a browser never
/// puts on a preflight: no credentials (`Authorization`, `Cookie`), no body (`Content-Length`
/// other than 0, `Transfer-Encoding`), no `Upgrade` (a WebSocket handshake would become an
/// unchecked tunnel). A route whose upstream answers CORS itself (`cors_preflight =
/// "forward"`) lets exactly this request pass without a token; anything else needs one.
fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    use http::header::{
        ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION, CONTENT_LENGTH, COOKIE, ORIGIN,
        TRANSFER_ENCODING, UPGRADE,
    };
    let one = |name| {
        let mut values = headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => Some(v.as_bytes()),
            _ => None,
        }
    };
    let origin = one(ORIGIN).is_some_and(|v| !v.is_empty());
    let requested =
        one(ACCESS_CONTROL_REQUEST_METHOD).is_some_and(|v| Method::from_bytes(v).is_ok());
    let no_body = headers.get_all(CONTENT_LENGTH).iter().all(|v| v == "0")
        && !headers.contains_key(TRANSFER_ENCODING);
    *method == Method::OPTIONS
        && origin
        && requested
        && no_body
        && ![AUTHORIZATION, COOKIE, UPGRADE]
            .iter()
            .any(|h| headers.contains_key(h))
}

/// Canonicalise `raw_target` (the request-target exactly as received) and match a route on it.
///
/// - `OPTIONS *` goes to the `/` route when that route sets `allow_options_asterisk`; `*` is
///   refused otherwise (RFC 9112 §3.2.4).
/// - A path with `;` parameters needs a route with `allow_path_parameters`, and the path with
///   the parameters stripped (as Tomcat, Jetty and Spring route it) must choose the same route.
/// - The route must not change when the path's ASCII letters are folded to lower case (and its
///   parameters stripped), so an application that routes without regard to case runs a
///   handler of the route whose policy was checked.
/// - A `_method` query parameter, in any spelling a framework reads as that name
///   ([`query_has_param`]), needs a route with `allow_method_override`: the route's policy is
///   checked for the request's own method.
pub fn route<'r, 't>(
    router: &'r Router,
    method: &Method,
    raw_target: &'t [u8],
) -> Result<Routed<'r, 't>, Refusal<'r>> {
    let target = canonical(raw_target).map_err(Refusal::Target)?;
    if target.is_asterisk() {
        return match router.find(method, "/") {
            RouteMatch::Found(route) if *method == Method::OPTIONS && route.options_asterisk => {
                Ok(Routed { route, target })
            }
            _ => Err(Refusal::Target(TargetFault::Form)),
        };
    }
    let route = found(router.find(method, target.path()))?;
    if !route.method_override
        && target
            .query()
            .is_some_and(|q| query_has_param(q, "_method"))
    {
        return Err(Refusal::MethodOverride);
    }
    let stripped = if target.has_parameters() {
        if !route.path_parameters {
            return Err(Refusal::PathParameters);
        }
        let stripped = target::without_parameters(target.path());
        if stripped.contains("//") {
            return Err(Refusal::Target(TargetFault::EmptySegment));
        }
        match router.find(method, &stripped) {
            RouteMatch::Found(other) if Arc::ptr_eq(other, route) => {}
            _ => return Err(Refusal::PathParameters),
        }
        Some(stripped)
    } else {
        None
    };
    let path = stripped.as_deref().unwrap_or(target.path());
    // Only a capital letter in the path, or in a prefix, can make folding change the route.
    if (router.has_capital_prefixes() || has_capital_letter(path))
        && router.folded_prefix(&path.to_ascii_lowercase()) != Some(route.path_prefix.as_str())
    {
        return Err(Refusal::CaseFolding);
    }
    Ok(Routed { route, target })
}

/// Whether a normalised path has an upper-case ASCII letter outside its escapes' hex digits
/// (normalising upper-cases those: `%C3%A9` has none).
fn has_capital_letter(path: &str) -> bool {
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => i += 3,
            c if c.is_ascii_uppercase() => return true,
            _ => i += 1,
        }
    }
    false
}

fn found(m: RouteMatch<'_>) -> Result<&Arc<Route>, Refusal<'_>> {
    match m {
        RouteMatch::Found(route) => Ok(route),
        RouteMatch::NotFound => Err(Refusal::NotFound),
        RouteMatch::MethodNotAllowed { allow } => Err(Refusal::MethodNotAllowed { allow }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;

    fn route_config(name: &str, prefix: &str, params: bool, asterisk: bool) -> RouteConfig {
        RouteConfig {
            allow_path_parameters: params,
            allow_options_asterisk: asterisk,
            ..crate::testing::route(name, prefix)
        }
    }

    fn name(router: &Router, method: &str, raw: &str) -> String {
        match route(router, &method.parse().unwrap(), raw.as_bytes()) {
            Ok(r) => format!("{} {}", r.route.name, r.target.origin_form()),
            Err(refusal) => format!("{} {}", refusal.status(), refusal.error()),
        }
    }

    #[test]
    fn routes_are_chosen_on_the_normalised_path() {
        let router = Router::new(&[
            route_config("root", "/", false, false),
            route_config("api", "/api", false, false),
            route_config("admin", "/api/admin", false, false),
        ]);
        for (raw, want) in [
            ("/api/%61dmin/users", "admin /api/admin/users"),
            ("/%61pi/x?y=%61", "api /api/x?y=%61"),
            ("http://h/api/admin", "admin /api/admin"),
            ("/api/admin;/users", "400 invalid_request"),
            ("/api;x/admin", "400 invalid_request"),
            ("/%2fapi", "400 invalid_request"),
            ("/api?_method=DELETE", "400 invalid_request"),
            ("/api?a=1&_METHOD=PUT", "400 invalid_request"),
            ("/api?x_method=1", "api /api?x_method=1"),
            ("/API/admin", "400 invalid_request"),
            ("/Api/Admin/x", "400 invalid_request"),
            ("/api/ADMIN", "400 invalid_request"),
            ("/%41PI/admin", "400 invalid_request"),
            ("/api/Other", "api /api/Other"),
            ("/Elsewhere/X", "root /Elsewhere/X"),
            ("/api/caf%C3%A9", "api /api/caf%C3%A9"),
            ("/api/%c3%a9%41dmin", "api /api/%C3%A9Admin"),
            ("*", "400 invalid_request"),
        ] {
            assert_eq!(name(&router, "GET", raw), want, "{raw}");
        }
        assert_eq!(name(&router, "OPTIONS", "*"), "400 invalid_request");
    }

    #[test]
    fn a_lower_case_path_may_not_pass_a_prefix_with_capitals() {
        let router = Router::new(&[
            route_config("root", "/", false, false),
            route_config("admin", "/Admin", false, false),
        ]);
        for (raw, want) in [
            ("/Admin/x", "admin /Admin/x"),
            ("/admin/x", "400 invalid_request"),
            ("/ADMIN", "400 invalid_request"),
            ("/other", "root /other"),
        ] {
            assert_eq!(name(&router, "GET", raw), want, "{raw}");
        }
    }

    #[test]
    fn parameters_need_the_opt_in_and_must_not_change_the_route() {
        let router = Router::new(&[
            route_config("root", "/", true, true),
            route_config("api", "/api", true, false),
            route_config("admin", "/api/admin", false, false),
        ]);
        for (raw, want) in [
            ("/api/x;v=1/y", "api /api/x;v=1/y"),
            ("/a;jsessionid=1", "root /a;jsessionid=1"),
            ("/api/admin;/users", "400 invalid_request"),
            ("/api/admin%3B/users", "400 invalid_request"),
            ("/api/admin;x", "400 invalid_request"),
            ("/api/x/;y/z", "400 invalid_request"),
            ("/api/admin/x;y", "400 invalid_request"),
            ("/public/..;/api/admin", "400 invalid_request"),
        ] {
            assert_eq!(name(&router, "GET", raw), want, "{raw}");
        }
        assert_eq!(name(&router, "OPTIONS", "*"), "root *");
        assert_eq!(name(&router, "GET", "*"), "400 invalid_request");
    }
}
