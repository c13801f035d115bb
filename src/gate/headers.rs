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
const CLIENT_ADDRESS: [&str; 24] = [
    "x-envoy-external-address",
    "x-envoy-internal",
    "fly-client-ip",
    "x-azure-clientip",
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
    // The request's scheme as WSGI servers (`X-Url-Scheme`), Tornado (`X-Scheme`), IIS ARR,
    // CloudFront, Cloudflare and App Engine tell it.
    "x-url-scheme",
    "x-scheme",
    "x-arr-ssl",
    "cloudfront-forwarded-proto",
    "cf-visitor",
    "x-appengine-https",
];

/// The identity headers of the gateways and auth proxies our users come from, removed from
/// every client request by default (`[identity] strip_headers`): an application that trusted
/// them behind oauth2-proxy, Kong, Apache, an AWS ALB, Google IAP, Cloudflare Access or Azure
/// App Service must never read them from a client. A trailing `*` matches by prefix.
pub const DEFAULT_STRIP: [&str; 69] = [
    // oauth2-proxy
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
    "x-auth-request-*",
    "gap-auth",
    // SonarQube's SSO defaults (and the like): X-Forwarded-* names that are identities
    "x-forwarded-login",
    "x-forwarded-name",
    "x-forwarded-uid",
    // Apache (mod_auth_*, REMOTE_USER), Authelia, generic
    "remote-user",
    "remote-email",
    "remote-groups",
    "remote-name",
    "x-remote-user",
    "x-remote-group",
    "x-remote-groups",
    "x-user",
    "x-user-id",
    "x-user-email",
    "x-user-name",
    "x-username",
    "x-preferred-username",
    "x-email",
    "x-roles",
    // Kong, and the generic X-Authenticated-* names
    "x-authenticated-*",
    "x-consumer-*",
    "x-credential-identifier",
    "x-userinfo",
    // tokens passed on by proxies
    "x-id-token",
    "x-access-token",
    "x-jwt-assertion",
    "x-jwt-payload",
    "x-serverless-authorization",
    // AWS ALB, Google IAP, ESP and App Engine, Cloudflare Access, Azure App Service
    "x-amzn-oidc-*",
    "x-amzn-mtls-clientcert*",
    "x-goog-authenticated-user-*",
    "x-goog-iap-jwt-assertion",
    "x-endpoint-api-userinfo",
    "x-appengine-user-*",
    "x-appengine-cron",
    "cf-access-*",
    "x-ms-client-principal*",
    "x-ms-token-*",
    "x-arr-clientcert",
    // Grafana, Gitea and Forgejo auth proxy; the Kubernetes API server's authenticating proxy
    // and impersonation; IBM WebSEAL; OpenSearch and Elasticsearch proxy auth; Hasura
    "x-webauth-*",
    "x-remote-extra-*",
    "impersonate-*",
    "iv-user",
    "iv-groups",
    "iv-creds",
    "x-proxy-user",
    "x-proxy-roles",
    "es-security-runas-user",
    "x-hasura-*",
    // Pomerium, authentik, Vouch, Tailscale, Teleport
    "x-pomerium-*",
    "x-authentik-*",
    "x-vouch-*",
    "tailscale-*",
    "teleport-jwt-assertion",
    // Client certificates as TLS-terminating proxies pass them on (nginx, HAProxy, Envoy,
    // Traefik, RFC 9440): the client's own copy would pose as a verified certificate
    "x-ssl-*",
    "ssl-client-*",
    "x-client-cert*",
    "x-client-dn",
    "x-client-verify",
    "client-cert",
    "client-cert-chain",
    "x-forwarded-client-cert",
    "x-forwarded-tls-client-cert*",
];

/// Identity header names the client may not send ([`DEFAULT_STRIP`] or the configured list,
/// and every name the gateway maps claims to). Compared lower-case with `_` read as `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityNames {
    /// Exact names, by their length: a header is compared with the few of its own length.
    exact: Vec<Vec<String>>,
    prefixes: Vec<String>,
    /// The first byte of every name and prefix: most headers are passed after one lookup.
    first: [bool; 256],
}

impl Default for IdentityNames {
    /// No names.
    fn default() -> IdentityNames {
        IdentityNames {
            exact: Vec::new(),
            prefixes: Vec::new(),
            first: [false; 256],
        }
    }
}

impl IdentityNames {
    /// From names, lower-cased; a trailing `*` makes a prefix.
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> IdentityNames {
        let mut out = IdentityNames::default();
        for name in names {
            let name = name.as_ref().to_ascii_lowercase().replace('_', "-");
            let Some(&b) = name.as_bytes().first() else {
                continue;
            };
            out.first[usize::from(b)] = true;
            match name.strip_suffix('*') {
                Some(prefix) => out.prefixes.push(prefix.to_owned()),
                None => {
                    if out.exact.len() <= name.len() {
                        out.exact.resize_with(name.len() + 1, Vec::new);
                    }
                    out.exact[name.len()].push(name);
                }
            }
        }
        out
    }

    /// Whether `name` (lower-case, as the http crate keeps names) is one of them.
    pub fn contains(&self, name: &str) -> bool {
        let Some(&b) = name.as_bytes().first() else {
            return false;
        };
        // The table holds the names' first bytes with `_` already read as `-`.
        if !self.first[usize::from(dashed(b))] {
            return false;
        }
        let exact = self.exact.get(name.len()).map_or(&[][..], Vec::as_slice);
        // Most prefixes begin `x-`: their third byte tells them apart before any comparison.
        let third = |n: &str| n.as_bytes().get(2).copied().map(dashed);
        let name_third = third(name);
        exact.iter().any(|n| same_dashed(name, n))
            || self.prefixes.iter().any(|p| {
                let p_third = third(p);
                (p_third.is_none() || p_third == name_third)
                    && name.len() >= p.len()
                    && same_dashed(&name[..p.len()], p)
            })
    }
}

/// A name's byte as the lists hold it: `_` read as `-`.
fn dashed(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b
    }
}

/// `name` equals `listed`, an `_` in `name` read as `-`.
fn same_dashed(name: &str, listed: &str) -> bool {
    name.len() == listed.len()
        && name
            .bytes()
            .zip(listed.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

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
pub struct Strip<'a> {
    /// `trust_forwarded_headers`: a proxy in front sets the client-address headers.
    pub trusted: bool,
    /// The route's `allow_method_override`.
    pub method_override: bool,
    /// Other gateways' identity headers, and every name the gateway maps claims to.
    pub identity: &'a IdentityNames,
}

/// Whether the proxy listener removes this header before forwarding:
/// - every name with `_`, as nginx does by default (`underscores_in_headers off`): CGI-style
///   servers read `X_Auth_Subject` as `X-Auth-Subject` and `Content_Length` beside
///   `Content-Length`;
/// - [`Class::Identity`] and [`Class::Routing`], and [`Strip::identity`], always;
/// - [`Class::Method`] unless the route sets `allow_method_override`;
/// - [`Class::ClientAddress`] other than [`GATEWAY_SETS`] unless `trust_forwarded_headers`.
pub fn unwanted(name: &str, strip: Strip) -> bool {
    if name.contains('_') || strip.identity.contains(name) {
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
/// method overrides on a route that allows them. `identity`: as in [`Strip::identity`].
pub fn refused_at_decision(
    name: &str,
    method_override: bool,
    convention: &[&str],
    identity: &IdentityNames,
) -> bool {
    // The asking proxy's own headers, which it sets on every check request.
    if convention.contains(&name) {
        return false;
    }
    if identity.contains(name) {
        return true;
    }
    match class(name) {
        Some(Class::Identity) => true,
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
            identity: &IdentityNames::default(),
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
            identity: &IdentityNames::default(),
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
            identity: &IdentityNames::default(),
        };
        assert!(!kept(no_override).iter().any(|n| n.contains("method")));
    }

    #[test]
    fn the_decision_endpoint_refuses_identity_routing_and_method_headers() {
        let nginx = ["x-original-method", "x-original-uri"];
        let refused: Vec<_> = NAMES
            .into_iter()
            .filter(|n| refused_at_decision(n, false, &nginx, &IdentityNames::default()))
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
        assert!(refused_at_decision(
            "x_original_uri",
            false,
            &nginx,
            &IdentityNames::default()
        ));
        assert!(refused_at_decision(
            "x-original-uri",
            false,
            &[],
            &IdentityNames::default()
        ));
        assert!(refused_at_decision(
            "x-original-method",
            false,
            &[],
            &IdentityNames::default()
        ));
        assert!(!refused_at_decision(
            "x-forwarded-uri",
            false,
            &[],
            &IdentityNames::default()
        ));
        assert!(!refused_at_decision(
            "x-http-method-override",
            true,
            &[],
            &IdentityNames::default()
        ));
        assert!(refused_at_decision(
            "x_auth_subject",
            true,
            &nginx,
            &IdentityNames::default()
        ));
    }

    #[test]
    fn other_gateways_identity_headers_are_never_the_clients_to_send() {
        let names = IdentityNames::new(DEFAULT_STRIP.iter().chain(&["X-Tenant"]));
        for trusted in [false, true] {
            let strip = Strip {
                trusted,
                method_override: true,
                identity: &names,
            };
            for name in [
                "x-forwarded-user",
                "x-forwarded-email",
                "x-forwarded-groups",
                "x-remote-user",
                "x-user",
                "x-user-id",
                "x-authenticated-userid",
                "remote-user",
                "x-auth-request-user",
                "x-auth-request-email",
                "x-userinfo",
                "x-id-token",
                "x-access-token",
                "x-consumer-username",
                "x-amzn-oidc-identity",
                "x-goog-authenticated-user-email",
                "cf-access-jwt-assertion",
                "x-ms-client-principal-name",
                "x-tenant",
            ] {
                assert!(unwanted(name, strip), "{name} passes (trusted {trusted})");
                assert!(
                    refused_at_decision(name, false, &[], &names),
                    "{name} at the decision endpoint"
                );
            }
            for name in [
                "x-webauth-user",
                "x-remote-extra-scopes",
                "impersonate-user",
                "x-pomerium-jwt-assertion",
                "x-authentik-username",
                "x-vouch-user",
                "x-ms-token-aad-id-token",
                "tailscale-user-login",
                "teleport-jwt-assertion",
                "x-ssl-client-dn",
                "ssl-client-cert",
                "x-client-cert",
                "x-forwarded-client-cert",
                "x-forwarded-tls-client-cert",
                "x-forwarded-login",
                "iv-user",
                "client-cert",
                "x-arr-clientcert",
                "x-amzn-mtls-clientcert-leaf",
                "x-ssl-cert",
                "x-ssl-verified",
                "x-proxy-user",
                "es-security-runas-user",
                "x-appengine-user-email",
                "gap-auth",
                "x-hasura-role",
                "x-authenticated-user",
                "x-remote-groups",
                "x-username",
                "x-preferred-username",
                "x-user-email",
                "x-roles",
            ] {
                assert!(unwanted(name, strip), "{name} passes (trusted {trusted})");
                assert!(refused_at_decision(name, false, &[], &names), "{name}");
            }
            for name in [
                "x-user-agent-hint",
                "x-users",
                "remote-addr",
                "x-tenant-id",
                "accept",
            ] {
                assert!(!unwanted(name, strip), "{name} is removed");
            }
        }
        assert!(names.contains("x_forwarded_user") && names.contains("x-tenant"));
        assert!(!IdentityNames::default().contains("x-user"));
    }

    /// Names are looked up by length and prefixes by their third byte: neither may lose a
    /// match, whatever the lengths, the `_` spellings or a prefix shorter than three bytes.
    #[test]
    fn identity_name_lookups_find_every_spelling() {
        let names = IdentityNames::new(["X-Id", "x-a", "x-*", "ab*", "X-Role-*", "q"]);
        for (name, listed) in [
            ("x-id", true),
            ("x_id", true),
            ("x-a", true),
            ("x_a", true),
            ("x-anything", true),
            ("x_anything", true),
            ("x-", true),
            ("ab", true),
            ("abc", true),
            ("x-role-admin", true),
            ("x_role_admin", true),
            ("q", true),
            ("x", false),
            ("a", false),
            ("qq", false),
            ("y-id", false),
        ] {
            assert_eq!(names.contains(name), listed, "{name}");
        }
        // A configured name may begin with `_` or `-`: either spelling is found (red team).
        let names = IdentityNames::new(["_foo", "-bar*"]);
        for name in ["_foo", "-foo", "_bar", "-bar-x", "_bar_x"] {
            assert!(names.contains(name), "{name}");
        }
        let names = IdentityNames::new(["X-Role-*", "x-tenant"]);
        for (name, listed) in [
            ("x-role-", true),
            ("x_role_x", true),
            ("x-rol", false),
            ("x-tenants", false),
            ("x-tenan", false),
            ("x_tenant", true),
            ("x-other", false),
        ] {
            assert_eq!(names.contains(name), listed, "{name}");
        }
    }
}
