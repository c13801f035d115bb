//! The ONLY place that builds `WWW-Authenticate` values and error bodies (RFC 6750 §3).
//!
//! A [`Challenge`] is a neutral description of the answer; each adapter copies it out.
//! Attribute values are fixed sentences or configuration (realm, scopes) validated at load:
//! nothing from the request is ever echoed, so no value needs escaping.

use super::bearer::BearerFault;
use super::error::{AuthError, TokenFault};

/// The HTTP answer to a request that failed authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub status: u16,
    /// The `WWW-Authenticate` value; `None` for 503, which is not a challenge.
    pub www_authenticate: Option<String>,
    /// Seconds for `Retry-After` (503 only).
    pub retry_after: Option<u64>,
    /// JSON: `{"error": ..., "error_description": ...}`.
    pub body: String,
    /// The decision's `outcome` label ([`AuthError::kind`]), for the access line.
    pub outcome: &'static str,
}

impl Challenge {
    /// Build the answer for `error` on a route in `realm` that requires `scopes`.
    pub fn new(error: &AuthError, realm: &str, scopes: &[String]) -> Challenge {
        let (status, code, description) = describe(error);
        let www_authenticate = match (status, code) {
            (503, _) => None,
            // RFC 6750 §3.1: no error attribute when the request carried no credentials.
            (_, None) => Some(format!("Bearer realm=\"{realm}\"")),
            (_, Some(code)) => {
                let mut value =
                    format!("Bearer realm=\"{realm}\", error=\"{code}\", error_description=\"{description}\"");
                if matches!(error, AuthError::InsufficientScope) && !scopes.is_empty() {
                    value.push_str(&format!(", scope=\"{}\"", scopes.join(" ")));
                }
                // RFC 9470 §3; both values come from the configuration.
                if let AuthError::InsufficientUserAuthentication {
                    acr_values,
                    max_age,
                } = error
                {
                    if !acr_values.is_empty() {
                        value.push_str(&format!(", acr_values=\"{acr_values}\""));
                    }
                    if let Some(max_age) = max_age {
                        value.push_str(&format!(", max_age=\"{max_age}\""));
                    }
                }
                Some(value)
            }
        };
        let retry_after = match error {
            AuthError::IdpUnavailable { retry_after } => Some(retry_after.as_secs().max(1)),
            _ => None,
        };
        let body = serde_json::json!({
            "error": code.unwrap_or("unauthorized"),
            "error_description": description,
        })
        .to_string();
        Challenge {
            status,
            www_authenticate,
            retry_after,
            body,
            outcome: error.kind(),
        }
    }
}

impl Challenge {
    /// Add `resource_metadata="<url>"` (RFC 9728 §5.1) to a challenge, so a client can find
    /// the authorization servers to get a token from. `url` comes from the configuration.
    pub fn with_resource_metadata(mut self, url: &str) -> Challenge {
        if let Some(value) = &mut self.www_authenticate {
            value.push_str(&format!(", resource_metadata=\"{url}\""));
        }
        self
    }

    /// The complete HTTP answer: status, `WWW-Authenticate` (or `Retry-After` for 503), a JSON
    /// body, `Cache-Control: no-store`.
    pub fn into_response<B: From<String>>(self) -> http::Response<B> {
        let mut builder = http::Response::builder()
            .status(self.status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CACHE_CONTROL, "no-store");
        if let Some(v) = self.www_authenticate {
            builder = builder.header(http::header::WWW_AUTHENTICATE, v);
        }
        if let Some(secs) = self.retry_after {
            builder = builder.header(http::header::RETRY_AFTER, secs);
        }
        builder
            .body(B::from(self.body))
            .expect("status and header values are valid by construction")
    }
}

/// Status, RFC 6750 error code and a fixed, ASCII, quote-free description.
fn describe(error: &AuthError) -> (u16, Option<&'static str>, &'static str) {
    match error {
        AuthError::MissingToken => (401, None, "This resource requires a bearer token."),
        AuthError::InvalidRequest(BearerFault::MultipleAuthorization) => (
            400,
            Some("invalid_request"),
            "The request carries more than one Authorization header.",
        ),
        AuthError::InvalidRequest(BearerFault::TokenInHeaderAndQuery) => (
            400,
            Some("invalid_request"),
            "The request carries a token in more than one place.",
        ),
        AuthError::InvalidRequest(BearerFault::Malformed) => (
            400,
            Some("invalid_request"),
            "The Authorization header is not a well-formed bearer token.",
        ),
        AuthError::InvalidToken(fault) => (401, Some("invalid_token"), token_description(*fault)),
        AuthError::InsufficientScope => (
            403,
            Some("insufficient_scope"),
            "The token does not carry the scopes this resource requires.",
        ),
        AuthError::ClaimsNotSatisfied => (
            403,
            Some("insufficient_scope"),
            "The token does not satisfy the claim rules of this resource.",
        ),
        AuthError::InsufficientUserAuthentication { .. } => (
            401,
            Some("insufficient_user_authentication"),
            "A different or more recent user authentication is required.",
        ),
        AuthError::IdpUnavailable { .. } => (
            503,
            Some("temporarily_unavailable"),
            "The identity provider cannot be reached; retry later.",
        ),
    }
}

/// Fixed sentences per fault: specific enough for a developer, never echoing the token.
fn token_description(fault: TokenFault) -> &'static str {
    match fault {
        TokenFault::Expired => "The access token expired.",
        TokenFault::NotYetValid => "The access token is not valid yet.",
        TokenFault::WrongAudience => "The access token is not meant for this resource.",
        TokenFault::WrongType => "The token is not an access token.",
        TokenFault::UnknownIssuer => "The access token comes from an untrusted issuer.",
        TokenFault::Inactive => "The access token is not active.",
        TokenFault::TypeNotAccepted => "This resource does not accept this kind of access token.",
        TokenFault::SenderConstrained => {
            "The access token is bound to a key or certificate, and this resource accepts only bearer tokens."
        }
        TokenFault::UnsafeClaim => {
            "The access token carries a claim that cannot be passed on (control characters, length, padding or scope syntax)."
        }
        _ => "The access token is invalid.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn challenges_follow_rfc6750() {
        let scopes = vec!["orders:read".to_string(), "orders:write".to_string()];
        let c = Challenge::new(&AuthError::MissingToken, "api", &scopes);
        assert_eq!(
            (c.status, c.www_authenticate.as_deref()),
            (401, Some("Bearer realm=\"api\""))
        );

        let c = Challenge::new(
            &AuthError::InvalidRequest(BearerFault::Malformed),
            "api",
            &scopes,
        );
        assert_eq!(c.status, 400);
        assert!(c
            .www_authenticate
            .unwrap()
            .starts_with("Bearer realm=\"api\", error=\"invalid_request\""));

        let c = Challenge::new(
            &AuthError::InvalidToken(TokenFault::NoValidator),
            "api",
            &[],
        );
        assert_eq!(c.status, 401);
        assert!(c
            .www_authenticate
            .unwrap()
            .contains("error=\"invalid_token\""));

        let c = Challenge::new(&AuthError::InsufficientScope, "api", &scopes);
        assert_eq!(c.status, 403);
        assert!(c
            .www_authenticate
            .unwrap()
            .ends_with(", scope=\"orders:read orders:write\""));

        let c = Challenge::new(
            &AuthError::IdpUnavailable {
                retry_after: Duration::from_secs(5),
            },
            "api",
            &[],
        );
        assert_eq!(
            (c.status, c.www_authenticate, c.retry_after),
            (503, None, Some(5))
        );
    }

    #[test]
    fn bodies_are_json_with_fixed_ascii_descriptions() {
        let all = [
            AuthError::MissingToken,
            AuthError::InvalidRequest(BearerFault::Malformed),
            AuthError::InvalidRequest(BearerFault::MultipleAuthorization),
            AuthError::InvalidToken(TokenFault::NoValidator),
            AuthError::InsufficientScope,
            AuthError::IdpUnavailable {
                retry_after: Duration::ZERO,
            },
        ];
        for e in all {
            let c = Challenge::new(&e, "api", &[]);
            let v: serde_json::Value = serde_json::from_str(&c.body).unwrap();
            let d = v["error_description"].as_str().unwrap();
            assert!(d.is_ascii() && !d.contains(['"', '\\']), "{d}");
            assert!(v["error"].is_string());
        }
    }
}
