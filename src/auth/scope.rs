//! Route scope policies, checked on every request, cached token or not (RFC 6750 §3.1
//! `insufficient_scope`). A cache holds claims, never decisions.

/// What a route requires of a token's scopes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopePolicy {
    /// Every one of these (`scopes`).
    pub all: Vec<String>,
    /// At least one of these, when not empty (`scopes_any`).
    pub any: Vec<String>,
}

impl ScopePolicy {
    pub fn new(all: Vec<String>, any: Vec<String>) -> ScopePolicy {
        ScopePolicy { all, any }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn all_and_any() {
        let p = ScopePolicy::new(v(&["read"]), v(&["eu", "us"]));
        assert!(p.allows(&v(&["read", "us"])));
        assert!(!p.allows(&v(&["read"])));
        assert!(!p.allows(&v(&["us", "eu"])));
        assert!(ScopePolicy::default().allows(&[]));
        assert!(ScopePolicy::new(v(&["a", "b"]), vec![]).allows(&v(&["b", "c", "a"])));
        assert!(!ScopePolicy::new(v(&["a", "b"]), vec![]).allows(&v(&["a"])));
        assert_eq!(p.named(), v(&["read", "eu", "us"]));
    }
}
