//! What a route may require of a token besides scopes: declarative rules on verified claims,
//! and step-up authentication (RFC 9470). Both are checked on every request, cached token or
//! not: the caches hold claims, never decisions.

use std::time::Duration;

use serde_json::Value;

use super::claims::{ClaimPath, ClaimSet};

/// One test on one claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    /// `equals`: the claim is this string, number or boolean (same JSON type).
    Equals(Value),
    /// `one_of`: the claim is one of these.
    OneOf(Vec<Value>),
    /// `contains`: the claim is an array holding this (a single value counts as an array of one).
    Contains(Value),
    /// `all_of`: the claim is an array holding every one of these.
    AllOf(Vec<Value>),
    /// `present`: the claim is there (`true`) or absent (`false`); `null` counts as absent.
    Present(bool),
}

/// `claim` and its matcher.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub claim: ClaimPath,
    pub matcher: Matcher,
}

impl Rule {
    fn holds(&self, claims: Option<&ClaimSet>) -> bool {
        let value = claims.and_then(|c| self.claim.find(c));
        match (&self.matcher, value) {
            (Matcher::Present(want), v) => v.is_some() == *want,
            (_, None) => false,
            (Matcher::Equals(want), Some(v)) => v == want,
            (Matcher::OneOf(wanted), Some(v)) => wanted.contains(v),
            (Matcher::Contains(want), Some(v)) => elements(v).contains(&want),
            (Matcher::AllOf(wanted), Some(v)) => {
                let have = elements(v);
                wanted.iter().all(|w| have.contains(&w))
            }
        }
    }
}

/// An array's elements, or a single value as one element.
fn elements(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    }
}

/// How a route's rules combine (`claims_match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Combine {
    /// `"all"`, the default: every rule holds.
    #[default]
    All,
    /// `"any"`: at least one rule holds.
    Any,
}

/// A route's claim rules (`[[routes.claims]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRules {
    pub combine: Combine,
    pub rules: Vec<Rule>,
}

impl ClaimRules {
    /// Whether the verified claims satisfy the rules. No claims at all satisfy only rules
    /// that want a claim absent.
    pub fn allow(&self, claims: Option<&ClaimSet>) -> bool {
        match self.combine {
            Combine::All => self.rules.iter().all(|r| r.holds(claims)),
            Combine::Any => self.rules.iter().any(|r| r.holds(claims)),
        }
    }
}

/// Step-up authentication (RFC 9470 §3): how the user must have authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepUp {
    /// `acr_values`: the token's `acr` must be one of these (none: any).
    pub acr_values: Vec<String>,
    /// `max_age`: the token's `auth_time` must be at most this long ago.
    pub max_age: Option<Duration>,
}

impl StepUp {
    /// Whether a token with this `acr` and `auth_time` (seconds since the epoch) is good
    /// enough at `now`. A token without `auth_time` fails a `max_age`; one with an `auth_time`
    /// in the future (beyond `leeway`) fails too.
    pub fn satisfied(
        &self,
        acr: Option<&str>,
        auth_time: Option<i64>,
        now: i64,
        leeway: i64,
    ) -> bool {
        let acr_ok = self.acr_values.is_empty()
            || acr.is_some_and(|a| self.acr_values.iter().any(|w| w == a));
        let age_ok = match self.max_age {
            None => true,
            Some(max) => auth_time.is_some_and(|t| {
                let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
                t <= now.saturating_add(leeway) && now.saturating_sub(t) <= max
            }),
        };
        acr_ok && age_ok
    }

    /// `acr_values` as the challenge names them: space-separated (RFC 9470 §3).
    pub fn acr_list(&self) -> String {
        self.acr_values.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(claim: &str, matcher: Matcher) -> Rule {
        Rule {
            claim: ClaimPath::parse(claim).unwrap(),
            matcher,
        }
    }

    #[test]
    fn matchers() {
        let claims = json!({
            "groups": ["eng", "admins"], "role": "admin", "org": {"id": "acme"},
            "email_verified": true, "level": 3, "nothing": null,
        });
        let claims = claims.as_object();
        let cases = [
            (rule("role", Matcher::Equals(json!("admin"))), true),
            (rule("role", Matcher::Equals(json!("Admin"))), false),
            (rule("email_verified", Matcher::Equals(json!(true))), true),
            (
                rule("email_verified", Matcher::Equals(json!("true"))),
                false,
            ),
            (rule("level", Matcher::Equals(json!(3))), true),
            (
                rule("org.id", Matcher::OneOf(vec![json!("x"), json!("acme")])),
                true,
            ),
            (rule("org.id", Matcher::OneOf(vec![json!("x")])), false),
            (rule("groups", Matcher::Contains(json!("admins"))), true),
            (rule("groups", Matcher::Contains(json!("admin"))), false),
            (rule("role", Matcher::Contains(json!("admin"))), true),
            (
                rule(
                    "groups",
                    Matcher::AllOf(vec![json!("eng"), json!("admins")]),
                ),
                true,
            ),
            (
                rule("groups", Matcher::AllOf(vec![json!("eng"), json!("ops")])),
                false,
            ),
            (rule("org.id", Matcher::Present(true)), true),
            (rule("nothing", Matcher::Present(true)), false),
            (rule("nothing", Matcher::Present(false)), true),
            (rule("missing", Matcher::Equals(json!("x"))), false),
            (rule("missing", Matcher::Present(false)), true),
        ];
        for (r, want) in cases {
            assert_eq!(r.holds(claims), want, "{r:?}");
        }
        assert!(!rule("role", Matcher::Present(true)).holds(None));
        let pair = |combine| ClaimRules {
            combine,
            rules: vec![
                rule("role", Matcher::Equals(json!("admin"))),
                rule("role", Matcher::Equals(json!("root"))),
            ],
        };
        assert!(!pair(Combine::All).allow(claims));
        assert!(pair(Combine::Any).allow(claims));
    }

    #[test]
    fn step_up_needs_the_acr_and_a_recent_enough_authentication() {
        let s = StepUp {
            acr_values: vec!["mfa".into(), "hwk".into()],
            max_age: Some(Duration::from_secs(300)),
        };
        let now = 10_000;
        assert!(s.satisfied(Some("mfa"), Some(now - 300), now, 30));
        assert!(!s.satisfied(Some("mfa"), Some(now - 301), now, 30));
        assert!(!s.satisfied(Some("pwd"), Some(now), now, 30));
        assert!(!s.satisfied(None, Some(now), now, 30));
        assert!(!s.satisfied(Some("mfa"), None, now, 30));
        assert!(!s.satisfied(Some("mfa"), Some(now + 31), now, 30));
        let acr_only = StepUp {
            acr_values: vec!["mfa".into()],
            max_age: None,
        };
        assert!(acr_only.satisfied(Some("mfa"), None, now, 0));
        assert_eq!(s.acr_list(), "mfa hwk");
    }
}
