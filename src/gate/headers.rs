//! Request headers through which an application would let the client choose its identity,
//! path, method or address, as the gateway judges them on every door: the proxy listener
//! removes them before forwarding ([`unwanted`]), the decision endpoint, which cannot remove
//! what the asking proxy forwards, refuses a check request that carries them
//! ([`refused_at_decision`]).
//!
//! Frameworks read more than the request line: the client address from `Forwarded`,
//! `X-Real-IP` and friends, the path from `X-Original-URL`, the method from
//! `X-HTTP-Method-Override`; CGI-style servers (WSGI, PHP) read `X_Forwarded_For` as
//! `X-Forwarded-For`. Names are compared lower-case, as the http crate keeps them.

use std::borrow::Cow;

/// Why a header matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `X-Auth-*`: the gateway's identity namespace; only the gateway speaks for a token.
    Identity,
    /// Applications take the request path from these, or skip their own checks on them.
    Routing,
    /// Applications take the request method from these.
    Method,
    /// Client address, scheme, host or prefix, as frameworks and CDNs spell them.
    ClientAddress,
}

/// [`Class::Routing`]: IIS, Symfony and Zend route on `X-Original-URL` / `X-Rewrite-URL`;
/// nginx and Envoy put a rewritten request's original path in `X-Original-URI` /
/// `X-Envoy-Original-Path`; Flask's and Werkzeug's prefix middleware read `X-Script-Name`;
/// Next.js skips its middleware on `X-Middleware-Subrequest` (CVE-2025-29927) and trusts its
/// own internal routing headers.
const ROUTING: [&str; 14] = [
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-path",
    "x-unencoded-url",
    "x-envoy-original-path",
    "x-script-name",
    "x-middleware-subrequest",
    "x-middleware-invoke",
    "x-invoke-path",
    "x-invoke-query",
    "x-invoke-output",
    "x-matched-path",
    "x-now-route-matches",
];

/// [`Class::Method`].
const METHOD: [&str; 4] = [
    "x-http-method-override",
    "x-method-override",
    "x-http-method",
    "x-original-method",
];

/// [`Class::ClientAddress`]; names starting with `x-forwarded-` are matched by prefix.
const CLIENT_ADDRESS: [&str; 14] = [
    "forwarded",
    "x-forwarded",
    "forwarded-for",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-forwarded-for",
    "x-original-host",
    "x-host",
    "front-end-https",
];

/// The three `X-Forwarded-*` headers the proxy listener sets itself.
pub const GATEWAY_SETS: [&str; 3] = ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"];

/// The class of a header name, `_` read as `-`.
pub fn class(name: &str) -> Option<Class> {
    // Every listed name starts with one of these: most headers are passed at once.
    if !matches!(name.as_bytes().first(), Some(b'x' | b'f' | b't' | b'c')) {
        return None;
    }
    let dashed: Cow<str> = if name.contains('_') {
        Cow::Owned(name.replace('_', "-"))
    } else {
        Cow::Borrowed(name)
    };
    let n = dashed.as_ref();
    if n.starts_with("x-auth-") {
        Some(Class::Identity)
    } else if ROUTING.contains(&n) {
        Some(Class::Routing)
    } else if METHOD.contains(&n) {
        Some(Class::Method)
    } else if n.starts_with("x-forwarded-") || CLIENT_ADDRESS.contains(&n) {
        Some(Class::ClientAddress)
    } else {
        None
    }
}

/// What the client may not choose on a request to forward.
#[derive(Debug, Clone, Copy)]
pub struct Strip {
    /// `trust_forwarded_headers`: a proxy in front sets the client-address headers.
    pub trusted: bool,
    /// The route's `allow_method_override`.
    pub method_override: bool,
}

/// Whether the proxy listener removes this header before forwarding:
/// - every name with `_`, as nginx does by default (`underscores_in_headers off`): CGI-style
///   servers read `X_Auth_Subject` as `X-Auth-Subject` and `Content_Length` beside
///   `Content-Length`;
/// - [`Class::Identity`] and [`Class::Routing`], always;
/// - [`Class::Method`] unless the route sets `allow_method_override`;
/// - [`Class::ClientAddress`] other than [`GATEWAY_SETS`] unless `trust_forwarded_headers`.
pub fn unwanted(name: &str, strip: Strip) -> bool {
    if name.contains('_') {
        return true;
    }
    match class(name) {
        Some(Class::Identity | Class::Routing) => true,
        Some(Class::Method) => !strip.method_override,
        Some(Class::ClientAddress) => !strip.trusted && !GATEWAY_SETS.contains(&name),
        None => false,
    }
}

/// Whether the decision endpoint refuses a check request carrying this header. The asking
/// proxy forwards the client's headers to the application as they are, so one that would
/// choose the identity, path or method the application acts on makes the answer wrong. Not
/// refused: `convention`, the configured convention's own original-request headers (the asking
/// proxy sets them), client-address headers (their trust is the asking proxy's setting), and
/// method overrides on a route that allows them.
pub fn refused_at_decision(name: &str, method_override: bool, convention: &[&str]) -> bool {
    match class(name) {
        Some(Class::Identity) => true,
        Some(Class::Routing | Class::Method) if convention.contains(&name) => false,
        Some(Class::Routing) => true,
        Some(Class::Method) => !method_override,
        Some(Class::ClientAddress) | None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 28] = [
        "forwarded",
        "x-real-ip",
        "true-client-ip",
        "x-client-ip",
        "cf-connecting-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x_forwarded_for",
        "x-forwarded_host",
        "content_length",
        "x-original-url",
        "x-rewrite-url",
        "x-script-name",
        "x-http-method-override",
        "x-method-override",
        "x-original-method",
        "x_http_method_override",
        "x-original-uri",
        "x-envoy-original-path",
        "x-middleware-subrequest",
        "x-auth-subject",
        // The identity namespace with an empty suffix (red team).
        "x-auth-",
        "x-authorization-hint",
        "accept",
        "x-other",
    ];

    fn kept(strip: Strip) -> Vec<&'static str> {
        NAMES.into_iter().filter(|n| !unwanted(n, strip)).collect()
    }

    #[test]
    fn untrusted_keeps_only_what_the_gateway_sets_and_harmless_names() {
        let strip = Strip {
            trusted: false,
            method_override: false,
        };
        assert_eq!(
            kept(strip),
            [
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-authorization-hint",
                "accept",
                "x-other"
            ]
        );
    }

    #[test]
    fn trusted_keeps_the_proxy_in_fronts_headers_and_never_routing_or_identity() {
        let strip = Strip {
            trusted: true,
            method_override: true,
        };
        assert_eq!(
            kept(strip),
            [
                "forwarded",
                "x-real-ip",
                "true-client-ip",
                "x-client-ip",
                "cf-connecting-ip",
                "x-forwarded-port",
                "x-forwarded-prefix",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-http-method-override",
                "x-method-override",
                "x-original-method",
                "x-authorization-hint",
                "accept",
                "x-other"
            ]
        );
        let no_override = Strip {
            trusted: true,
            method_override: false,
        };
        assert!(!kept(no_override).iter().any(|n| n.contains("method")));
    }

    #[test]
    fn the_decision_endpoint_refuses_identity_routing_and_method_headers() {
        let nginx = ["x-original-method", "x-original-uri"];
        let refused: Vec<_> = NAMES
            .into_iter()
            .filter(|n| refused_at_decision(n, false, &nginx))
            .collect();
        assert_eq!(
            refused,
            [
                "x-original-url",
                "x-rewrite-url",
                "x-script-name",
                "x-http-method-override",
                "x-method-override",
                "x_http_method_override",
                "x-envoy-original-path",
                "x-middleware-subrequest",
                "x-auth-subject",
                "x-auth-",
            ]
        );
        // The configured convention's own headers, in their standard spelling only.
        assert!(refused_at_decision("x_original_uri", false, &nginx));
        assert!(refused_at_decision("x-original-uri", false, &[]));
        assert!(refused_at_decision("x-original-method", false, &[]));
        assert!(!refused_at_decision("x-forwarded-uri", false, &[]));
        assert!(!refused_at_decision("x-http-method-override", true, &[]));
        assert!(refused_at_decision("x_auth_subject", true, &nginx));
    }
}
