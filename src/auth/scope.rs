//! Route policies: which kinds of token a route accepts and the scopes it requires, checked on
//! every request, cached token or not (RFC 6750 §3.1 `insufficient_scope`). A cache holds
//! claims, never decisions.

pub use super::settings::TokenTypes;

/// What a route requires of a token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Every one of these (`scopes`).
    pub all: Vec<String>,
    /// At least one of these, when not empty (`scopes_any`).
    pub any: Vec<String>,
    /// JWTs from configured issuers, opaque tokens by introspection, or both (`token_types`).
    pub token_types: TokenTypes,
}

impl RoutePolicy {
    /// A policy accepting both kinds of token.
    pub fn new(all: Vec<String>, any: Vec<String>) -> RoutePolicy {
        RoutePolicy {
            all,
            any,
            token_types: TokenTypes::default(),
        }
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
