//! Route policies: which kinds of token a route accepts, from which issuers and for which
//! audiences, the scopes it requires (RFC 6750 §3.1 `insufficient_scope`), its claim rules and
//! step-up needs, and the claims it passes on. Checked on every request, cached token or not:
//! a cache holds claims, never decisions.

use std::sync::Arc;

use super::claims::ClaimHeaders;
use super::rules::{ClaimRules, StepUp};
pub use super::settings::TokenTypes;

/// What a route requires of a token.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    /// Every one of these (`scopes`).
    pub all: Vec<String>,
    /// At least one of these, when not empty (`scopes_any`).
    pub any: Vec<String>,
    /// JWTs from configured issuers, opaque tokens by introspection, or both (`token_types`).
    pub token_types: TokenTypes,
    /// `issuers`: when not empty, the token's issuer must be one of these.
    pub issuers: Vec<String>,
    /// `audiences`: when not empty, the token's `aud` must name one of these (beside the
    /// issuer's own audience check).
    pub audiences: Vec<String>,
    /// `[[routes.claims]]`: rules on verified claims, checked after the scopes.
    pub claim_rules: Option<Arc<ClaimRules>>,
    /// `acr_values` / `max_age`: step-up authentication (RFC 9470).
    pub step_up: Option<Arc<StepUp>>,
    /// `X-Auth-Subject`, `-Client-Id`, `-Scopes`, `-Issuer` (`[identity] auth_headers`).
    pub auth_headers: bool,
    /// Claims passed on as headers (`claim_headers`, `claims_header`).
    pub claim_headers: Arc<ClaimHeaders>,
    /// `dpop`: whether the route takes DPoP-bound tokens (RFC 9449).
    pub dpop: super::dpop::DpopMode,
    /// `require_certificate_bound`, default `false`: only tokens bound to the connection's
    /// client certificate (`cnf.x5t#S256`, RFC 8705 §3) pass.
    pub require_certificate_bound: bool,
}

impl Default for RoutePolicy {
    fn default() -> RoutePolicy {
        RoutePolicy::new(Vec::new(), Vec::new())
    }
}

impl RoutePolicy {
    /// A policy accepting both kinds of token, with the `X-Auth-*` headers and nothing else.
    pub fn new(all: Vec<String>, any: Vec<String>) -> RoutePolicy {
        RoutePolicy {
            require_certificate_bound: false,
            all,
            any,
            token_types: TokenTypes::default(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            claim_rules: None,
            step_up: None,
            auth_headers: true,
            claim_headers: Arc::default(),
            dpop: super::dpop::DpopMode::Off,
        }
    }

    /// Whether the policy reads claims beyond the principal's fixed fields.
    pub fn reads_claims(&self) -> bool {
        self.claim_rules.is_some() || !self.claim_headers.is_empty()
    }

    /// Restrict the kinds of token accepted.
    pub fn with_token_types(mut self, token_types: TokenTypes) -> RoutePolicy {
        self.token_types = token_types;
        self
    }

    pub fn allows(&self, granted: &[String]) -> bool {
        self.all.iter().all(|s| granted.contains(s))
            && (self.any.is_empty() || self.any.iter().any(|s| granted.contains(s)))
    }

    /// The scopes a challenge names: those required, then the alternatives.
    pub fn named(&self) -> Vec<String> {
        self.all.iter().chain(self.any.iter()).cloned().collect()
    }
}

/// `scope-token = 1*( %x21 / %x23-5B / %x5D-7E )` (RFC 6749 §3.3): printable ASCII without
/// space, `"` or `\`.
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn all_and_any() {
        let p = RoutePolicy::new(v(&["read"]), v(&["eu", "us"]));
        assert!(p.allows(&v(&["read", "us"])));
        assert!(!p.allows(&v(&["read"])));
        assert!(!p.allows(&v(&["us", "eu"])));
        assert!(RoutePolicy::default().allows(&[]));
        assert!(RoutePolicy::new(v(&["a", "b"]), vec![]).allows(&v(&["b", "c", "a"])));
        assert!(!RoutePolicy::new(v(&["a", "b"]), vec![]).allows(&v(&["a"])));
        assert_eq!(p.named(), v(&["read", "eu", "us"]));
    }
}
