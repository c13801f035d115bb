//! [`AuthError`]: every way a request can fail authorization, as data.
//!
//! [`AuthError::kind`] is the bounded `outcome` label of the metrics; [`super::challenge`] turns
//! an error into the HTTP answer. Nothing here holds a token or text taken from the request.

use std::time::Duration;

use super::bearer::BearerFault;

/// Why a request was not authorized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No bearer credentials at all (RFC 6750 §3.1: a challenge without `error`).
    #[error("no bearer token")]
    MissingToken,
    /// The request is malformed (RFC 6750 §3.1 `invalid_request`, 400).
    #[error("invalid request: {0:?}")]
    InvalidRequest(BearerFault),
    /// The token cannot be accepted (RFC 6750 §3.1 `invalid_token`, 401).
    #[error("invalid token: {0:?}")]
    InvalidToken(TokenFault),
    /// The token is valid but lacks the route's scopes (RFC 6750 §3.1 `insufficient_scope`, 403).
    #[error("insufficient scope")]
    InsufficientScope,
    /// The token cannot be checked because the identity provider is unreachable: 503, never 401.
    #[error("identity provider unavailable")]
    IdpUnavailable { retry_after: Duration },
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    /// No issuer or introspection endpoint is configured that could vouch for the token.
    NoValidator,
}

impl AuthError {
    /// The `outcome` metric label: a fixed set of values.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidRequest(_) => "invalid_request",
            AuthError::InvalidToken(TokenFault::NoValidator) => "no_validator",
            AuthError::InsufficientScope => "insufficient_scope",
            AuthError::IdpUnavailable { .. } => "idp_unavailable",
        }
    }
}
