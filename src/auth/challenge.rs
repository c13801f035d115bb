//! The ONLY place that builds `WWW-Authenticate` values and error bodies (RFC 6750 §3).
//!
//! A [`Challenge`] is a neutral description of the answer; each adapter copies it out.
//! Attribute values are fixed sentences or configuration (realm, scopes) validated at load:
//! nothing from the request is ever echoed, so no value needs escaping.

use super::bearer::BearerFault;
use super::dpop::DpopFault;
use super::error::{AuthError, TokenFault};

/// The HTTP answer to a request that failed authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub status: u16,
    /// The `WWW-Authenticate` values, one field line each: the `Bearer` challenge, the `DPoP`
    /// one (RFC 9449 §7.1), or both, the one carrying the error first. Empty for 503, which
    /// is not a challenge.
    pub www_authenticate: Vec<String>,
    /// Seconds for `Retry-After` (503 only).
    pub retry_after: Option<u64>,
    /// `DPoP-Nonce` (RFC 9449 §9): a fresh nonce, sent with `use_dpop_nonce`.
    pub dpop_nonce: Option<String>,
    /// JSON: `{"error": ..., "error_description": ...}`.
    pub body: String,
    /// The decision's `outcome` label ([`AuthError::kind`]), for the access line.
    pub outcome: &'static str,
}

/// The schemes a route's challenges name, and the one the refused request used.
#[derive(Debug, Clone, Copy)]
pub struct Schemes<'a> {
    /// The route takes `Bearer` tokens.
    pub bearer: bool,
    /// The route takes DPoP-bound tokens: the `algs` attribute (RFC 9449 §7.1).
    pub dpop: Option<&'a str>,
    /// The request used the `DPoP` scheme: its error goes on the `DPoP` challenge.
    pub used_dpop: bool,
}

impl Schemes<'_> {
    /// A route that takes bearer tokens only.
    pub const BEARER: Schemes<'static> = Schemes {
        bearer: true,
        dpop: None,
        used_dpop: false,
    };
}

impl Challenge {
    /// Build the answer for `error` on a bearer-only route in `realm` that requires `scopes`.
    pub fn new(error: &AuthError, realm: &str, scopes: &[String]) -> Challenge {
        Challenge::with_schemes(error, realm, scopes, Schemes::BEARER, None)
    }

    /// Build the answer for `error` on a route taking `schemes`; `nonce` is a fresh DPoP
    /// nonce, sent with `use_dpop_nonce`.
    pub fn with_schemes(
        error: &AuthError,
        realm: &str,
        scopes: &[String],
        schemes: Schemes<'_>,
        nonce: Option<String>,
    ) -> Challenge {
        let (status, code, description) = describe(error);
        let bearer = format!("Bearer realm=\"{realm}\"");
        let dpop = schemes
            .dpop
            .map(|algs| format!("DPoP realm=\"{realm}\", algs=\"{algs}\""));
        let mut www_authenticate = Vec::new();
        if status != 503 {
            // The scheme the error belongs to: the request's own, or the only one there is.
            let on_dpop = dpop.is_some() && (schemes.used_dpop || !schemes.bearer);
            let (mut first, second) = match on_dpop {
                true => (dpop.unwrap_or_default(), schemes.bearer.then_some(bearer)),
                false => (bearer, dpop),
            };
            if let Some(code) = code {
                first.push_str(&attributes(error, code, description, scopes));
            }
            www_authenticate.push(first);
            www_authenticate.extend(second);
        }
        let retry_after = match error {
            AuthError::IdpUnavailable { retry_after }
            | AuthError::ReplayStoreUnavailable { retry_after } => {
                Some(retry_after.as_secs().max(1))
            }
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
            dpop_nonce: nonce
                .filter(|_| matches!(error, AuthError::InvalidProof(DpopFault::NonceRequired))),
            body,
            outcome: error.kind(),
        }
    }
}

/// `, error="…", error_description="…"` and what the error adds: `scope` (RFC 6750 §3.1),
/// `acr_values` and `max_age` (RFC 9470 §3). Every value is fixed text or configuration.
fn attributes(error: &AuthError, code: &str, description: &str, scopes: &[String]) -> String {
    let mut value = format!(", error=\"{code}\", error_description=\"{description}\"");
    if matches!(error, AuthError::InsufficientScope) && !scopes.is_empty() {
        value.push_str(&format!(", scope=\"{}\"", scopes.join(" ")));
    }
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
    value
}

impl Challenge {
    /// Add `resource_metadata="<url>"` (RFC 9728 §5.1) to a challenge, so a client can find
    /// the authorization servers to get a token from. `url` comes from the configuration.
    pub fn with_resource_metadata(mut self, url: &str) -> Challenge {
        for value in &mut self.www_authenticate {
            value.push_str(&format!(", resource_metadata=\"{url}\""));
        }
        self
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
            "The Authorization header is not a well-formed Bearer or DPoP credential.",
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
        AuthError::ReplayStoreUnavailable { .. } => (
            503,
            Some("temporarily_unavailable"),
            "The DPoP proof cannot be recorded against replay now; retry later with a new proof.",
        ),
        AuthError::DpopRequired => (
            401,
            None,
            "This resource requires a DPoP-bound access token and a DPoP proof.",
        ),
        AuthError::InvalidProof(DpopFault::NonceRequired) => (
            401,
            Some("use_dpop_nonce"),
            "The DPoP proof must carry the nonce of the DPoP-Nonce header in its nonce claim.",
        ),
        AuthError::InvalidProof(fault) => {
            (401, Some("invalid_dpop_proof"), proof_description(*fault))
        }
    }
}

/// Fixed sentences per proof fault, never echoing the proof.
fn proof_description(fault: DpopFault) -> &'static str {
    match fault {
        DpopFault::Missing => "The DPoP scheme needs a DPoP proof header.",
        DpopFault::Multiple => "The request carries more than one DPoP header.",
        DpopFault::Malformed => "The DPoP proof is not a well-formed proof JWT.",
        DpopFault::WrongType => "The DPoP proof must have typ dpop+jwt.",
        DpopFault::AlgorithmNotAllowed => {
            "The DPoP proof is signed with an algorithm this resource does not accept."
        }
        DpopFault::BadKey => "The DPoP proof carries no usable public key.",
        DpopFault::PrivateKey => "The DPoP proof carries a private key.",
        DpopFault::BadSignature => "The DPoP proof signature does not verify.",
        DpopFault::WrongMethod => "The DPoP proof is for another HTTP method.",
        DpopFault::WrongUri => "The DPoP proof is for another URI.",
        DpopFault::Stale => "The DPoP proof is too old or from the future.",
        DpopFault::WrongTokenHash => "The DPoP proof does not name this access token (ath).",
        DpopFault::KeyMismatch => {
            "The DPoP proof is not signed by the key the access token is bound to."
        }
        DpopFault::Replayed => "The DPoP proof was used before.",
        DpopFault::NonceRequired => "The DPoP proof must carry a current nonce.",
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
        TokenFault::CertificateMismatch => {
            "The access token is bound to a client certificate that this connection did not present."
        }
        TokenFault::NotCertificateBound => {
            "This resource accepts only access tokens bound to the client certificate (RFC 8705)."
        }
        TokenFault::DpopBoundAsBearer => {
            "The access token is DPoP-bound: send it with the DPoP scheme and a DPoP proof."
        }
        TokenFault::NotDpopBound => "The DPoP scheme needs a DPoP-bound access token.",
        TokenFault::UnboundFromDpopIssuer => {
            "Tokens of this issuer are accepted only DPoP-bound: get one with a DPoP proof."
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
            (c.status, c.www_authenticate.clone()),
            (401, vec!["Bearer realm=\"api\"".to_string()])
        );

        let c = Challenge::new(
            &AuthError::InvalidRequest(BearerFault::Malformed),
            "api",
            &scopes,
        );
        assert_eq!(c.status, 400);
        assert!(
            c.www_authenticate[0].starts_with("Bearer realm=\"api\", error=\"invalid_request\"")
        );

        let c = Challenge::new(
            &AuthError::InvalidToken(TokenFault::NoValidator),
            "api",
            &[],
        );
        assert_eq!(c.status, 401);
        assert!(c.www_authenticate[0].contains("error=\"invalid_token\""));

        let c = Challenge::new(&AuthError::InsufficientScope, "api", &scopes);
        assert_eq!(c.status, 403);
        assert!(c.www_authenticate[0].ends_with(", scope=\"orders:read orders:write\""));

        let c = Challenge::new(
            &AuthError::IdpUnavailable {
                retry_after: Duration::from_secs(5),
            },
            "api",
            &[],
        );
        assert_eq!(
            (c.status, c.www_authenticate, c.retry_after),
            (503, vec![], Some(5))
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
