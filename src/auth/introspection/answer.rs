//! The introspection answer (RFC 7662 §2.2): parsed strictly, then checked against the
//! configured expectations on every use. The cache holds the parsed answer, never a decision.

use serde::Deserialize;

use crate::auth::jwt::{NumericDate, OneOrMany};
use crate::auth::TokenFault;

/// What the authorization server said about a token.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Active(Box<Claims>),
    /// `"active": false`, or a 400 for a token the endpoint cannot introspect.
    Inactive,
}

/// The members of an active answer the gateway uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    pub scopes: Vec<String>,
    pub client_id: Option<String>,
    pub sub: Option<String>,
    pub token_type: Option<String>,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub aud: Vec<String>,
    pub iss: Option<String>,
    /// `acr`, when a string (OpenID Connect Core §2; RFC 9470 step-up reads it).
    pub acr: Option<String>,
    /// `auth_time`, when a number.
    pub auth_time: Option<i64>,
    /// `cnf.jkt` (RFC 9449 §6.2): the key the token is bound to.
    pub jkt: Option<String>,
    /// `cnf.x5t#S256` (RFC 8705 §3.2): the client certificate the token is bound to.
    pub x5t: Option<String>,
    /// A `cnf` member this gateway cannot check (RFC 8705 §3.2 certificates, other methods).
    pub unsupported_binding: bool,
}

/// Why an answer could not be read: the endpoint misbehaves, so the request gets 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadAnswer {
    #[error("the answer is not a JSON object")]
    NotJson,
    #[error("`active` is missing or not a JSON boolean")]
    Active,
    #[error("a member of the active answer has the wrong type")]
    Member,
}

/// What every active answer must satisfy (configured in `[introspection]`).
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// When not empty, `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// When set, an `iss` in the answer must equal it.
    pub issuer: Option<String>,
    /// Clock skew allowed on `nbf`, in seconds.
    pub leeway: i64,
}

/// Parse an answer body. `active` must be the JSON boolean `true` to be active (RFC 7662 §2.2);
/// `false` is inactive whatever else the answer holds; anything else is a bad answer.
pub fn parse(body: &[u8]) -> Result<Answer, BadAnswer> {
    #[derive(Deserialize)]
    struct Head {
        active: Option<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct Full {
        scope: Option<String>,
        client_id: Option<String>,
        sub: Option<String>,
        token_type: Option<String>,
        exp: Option<NumericDate>,
        nbf: Option<NumericDate>,
        aud: Option<OneOrMany>,
        iss: Option<String>,
        // Read leniently: only step-up uses them, and a stray type must not refuse tokens
        // on every other route.
        acr: Option<serde_json::Value>,
        auth_time: Option<serde_json::Value>,
        cnf: Option<serde_json::Value>,
    }
    // serde would read a struct from a JSON array too; only an object is an answer. JSON is
    // UTF-8 (RFC 8259 §8.1); serde_json checks that only in the strings it keeps, so the whole
    // body is checked here (found by fuzzing: invalid bytes in an ignored member).
    let body = std::str::from_utf8(body).map_err(|_| BadAnswer::NotJson)?;
    if body.trim_ascii_start().as_bytes().first() != Some(&b'{') {
        return Err(BadAnswer::NotJson);
    }
    let head: Head = serde_json::from_str(body).map_err(|_| BadAnswer::NotJson)?;
    match head.active {
        Some(serde_json::Value::Bool(true)) => {}
        Some(serde_json::Value::Bool(false)) => return Ok(Answer::Inactive),
        _ => return Err(BadAnswer::Active),
    }
    let full: Full = serde_json::from_str(body).map_err(|_| BadAnswer::Member)?;
    let aud = match full.aud {
        None => Vec::new(),
        Some(OneOrMany::One(a)) => vec![a],
        Some(OneOrMany::Many(list)) => list,
    };
    let confirmation = crate::auth::dpop::confirmation(full.cnf.as_ref());
    Ok(Answer::Active(Box::new(Claims {
        scopes: full
            .scope
            .as_deref()
            .unwrap_or("")
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        client_id: full.client_id,
        sub: full.sub,
        token_type: full.token_type,
        exp: full.exp.map(|d| d.0),
        nbf: full.nbf.map(|d| d.0),
        aud,
        iss: full.iss,
        acr: full.acr.and_then(|v| v.as_str().map(str::to_owned)),
        auth_time: full.auth_time.as_ref().and_then(super::super::jwt::seconds),
        jkt: confirmation.as_ref().ok().and_then(|c| c.jkt.clone()),
        x5t: confirmation.as_ref().ok().and_then(|c| c.x5t.clone()),
        unsupported_binding: confirmation.is_err(),
    })))
}

/// `token_type` values that name an access token presented as a bearer token. Anything else
/// (`refresh_token`, `id_token`, `DPoP`-bound tokens, ...) is refused.
fn is_bearer_access_token(token_type: &str) -> bool {
    [
        "bearer",
        "access_token",
        "urn:ietf:params:oauth:token-type:access_token",
    ]
    .iter()
    .any(|t| token_type.eq_ignore_ascii_case(t))
}

impl Claims {
    /// Check an active answer at `now` (seconds since the epoch). Run on every request, so a
    /// cached answer stops working the moment its `exp` passes.
    pub fn check(&self, expect: &Expectations, now: i64) -> Result<(), TokenFault> {
        if self.unsupported_binding {
            return Err(TokenFault::SenderConstrained);
        }
        // `DPoP` (RFC 9449 §6.2) only for a token that is bound to a key.
        let dpop = |t: &str| self.jkt.is_some() && t.eq_ignore_ascii_case("dpop");
        if self
            .token_type
            .as_deref()
            .is_some_and(|t| !is_bearer_access_token(t) && !dpop(t))
        {
            return Err(TokenFault::WrongType);
        }
        if self.exp.is_some_and(|exp| exp <= now) {
            return Err(TokenFault::Expired);
        }
        if self
            .nbf
            .is_some_and(|nbf| nbf > now.saturating_add(expect.leeway))
        {
            return Err(TokenFault::NotYetValid);
        }
        if let (Some(want), Some(got)) = (&expect.issuer, &self.iss) {
            if want != got {
                return Err(TokenFault::UnknownIssuer);
            }
        }
        if !expect.audiences.is_empty() && !self.aud.iter().any(|a| expect.audiences.contains(a)) {
            return Err(TokenFault::WrongAudience);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_must_be_the_boolean_true() {
        assert_eq!(parse(br#"{"active":false}"#), Ok(Answer::Inactive));
        assert_eq!(
            parse(br#"{"active":false,"exp":"garbage"}"#),
            Ok(Answer::Inactive)
        );
        for bad in [
            &br#"{"active":"true"}"#[..],
            br#"{"active":1}"#,
            br#"{"active":null}"#,
            br#"{}"#,
            br#"{"scope":"a"}"#,
        ] {
            assert_eq!(parse(bad), Err(BadAnswer::Active), "{bad:?}");
        }
        // Not UTF-8 in a member nobody reads: still not JSON (RFC 8259 §8.1; found by fuzzing).
        let invalid_utf8 = b"{\"active\":true,\"x\":\"\xff\xfe\"}";
        for bad in [
            &b"<html>oops</html>"[..],
            b"[true]",
            b"",
            b"true",
            invalid_utf8,
        ] {
            assert_eq!(parse(bad), Err(BadAnswer::NotJson), "{bad:?}");
        }
        assert_eq!(
            parse(br#"{"active":true,"active":false}"#),
            Err(BadAnswer::NotJson),
            "duplicate members are refused"
        );
        assert_eq!(
            parse(br#"{"active":true,"exp":"1700000000"}"#),
            Err(BadAnswer::Member)
        );
        assert_eq!(
            parse(br#"{"active":true,"scope":["a"]}"#),
            Err(BadAnswer::Member)
        );
    }

    #[test]
    fn active_answer_members() {
        let a = parse(
            br#"{"active":true,"scope":"orders:read  orders:write","client_id":"c","sub":"u",
                "token_type":"Bearer","exp":2000,"nbf":1000.9,"aud":["x","y"],"iss":"https://as","jti":"j","extra":{}}"#,
        )
        .unwrap();
        let Answer::Active(c) = a else {
            panic!("active")
        };
        assert_eq!(c.scopes, vec!["orders:read", "orders:write"]);
        assert_eq!(c.client_id.as_deref(), Some("c"));
        assert_eq!(c.sub.as_deref(), Some("u"));
        assert_eq!((c.exp, c.nbf), (Some(2000), Some(1000)));
        assert_eq!(c.aud, vec!["x", "y"]);
        let Answer::Active(single) = parse(br#"{"active":true,"aud":"x"}"#).unwrap() else {
            panic!("active")
        };
        assert_eq!(single.aud, vec!["x"]);
        assert!(single.scopes.is_empty());
    }

    #[test]
    fn a_certificate_binding_is_read_and_an_unknown_one_marked() {
        let claims = |body: &[u8]| match parse(body).unwrap() {
            Answer::Active(c) => c,
            Answer::Inactive => panic!("active"),
        };
        let bound = claims(
            br#"{"active":true,"cnf":{"x5t#S256":"bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}}"#,
        );
        assert_eq!(
            bound.x5t.as_deref(),
            Some("bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2")
        );
        assert!(bound.jkt.is_none() && !bound.unsupported_binding);
        let odd = claims(br#"{"active":true,"cnf":{"x5t#S256":"t","jkt":"k"}}"#);
        assert!(odd.unsupported_binding && odd.x5t.is_none() && odd.jkt.is_none());
    }

    #[test]
    fn checks() {
        let base = Claims {
            exp: Some(1000),
            nbf: Some(900),
            aud: vec!["api".into()],
            iss: Some("https://as".into()),
            ..Claims::default()
        };
        let expect = Expectations {
            audiences: vec!["api".into()],
            issuer: Some("https://as".into()),
            leeway: 30,
        };
        assert_eq!(base.check(&expect, 999), Ok(()));
        assert_eq!(base.check(&expect, 1000), Err(TokenFault::Expired));
        assert_eq!(base.check(&expect, 870), Ok(()), "nbf within leeway");
        assert_eq!(base.check(&expect, 869), Err(TokenFault::NotYetValid));
        let other_aud = Claims {
            aud: vec!["other".into()],
            ..base.clone()
        };
        assert_eq!(
            other_aud.check(&expect, 950),
            Err(TokenFault::WrongAudience)
        );
        let no_aud = Claims {
            aud: vec![],
            ..base.clone()
        };
        assert_eq!(no_aud.check(&expect, 950), Err(TokenFault::WrongAudience));
        assert_eq!(
            no_aud.check(&Expectations::default(), 950),
            Ok(()),
            "aud is only required when audiences are configured"
        );
        let other_iss = Claims {
            iss: Some("https://evil".into()),
            ..base.clone()
        };
        assert_eq!(
            other_iss.check(&expect, 950),
            Err(TokenFault::UnknownIssuer)
        );
        let no_iss = Claims {
            iss: None,
            ..base.clone()
        };
        assert_eq!(
            no_iss.check(&expect, 950),
            Ok(()),
            "iss checked when present"
        );
        for (tt, ok) in [
            ("Bearer", true),
            ("access_token", true),
            ("urn:ietf:params:oauth:token-type:access_token", true),
            ("refresh_token", false),
            ("urn:ietf:params:oauth:token-type:refresh_token", false),
            ("id_token", false),
            ("DPoP", false),
        ] {
            let c = Claims {
                token_type: Some(tt.into()),
                ..base.clone()
            };
            assert_eq!(c.check(&expect, 950).is_ok(), ok, "{tt}");
        }
    }
}
