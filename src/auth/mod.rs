//! The auth core: one decision function, [`Authenticator::authorize`], that knows no web
//! framework. The pingora and tower adapters only translate requests in and [`Challenge`]s out.

pub mod bearer;
pub mod challenge;
pub mod error;
pub mod jwt;
pub mod keys;

use std::time::SystemTime;

use http::HeaderMap;

pub use challenge::Challenge;
pub use error::{AuthError, TokenFault};

/// What the auth core needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub headers: &'a HeaderMap,
    /// The scopes the matched route requires, all of them.
    pub required_scopes: &'a [String],
}

/// Who a request acts for: the permit an authorized request carries to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    pub issuer: String,
    pub expires_at: SystemTime,
}

/// Decides whether a request may pass.
///
/// Token validation (JWT against JWKS, RFC 7662 introspection) is not built yet: until it is,
/// a well-formed bearer token is refused as `invalid_token`, so no route that requires
/// authentication ever passes a request through.
#[derive(Debug, Clone)]
pub struct Authenticator {
    realm: String,
}

impl Authenticator {
    pub fn new(realm: impl Into<String>) -> Authenticator {
        Authenticator {
            realm: realm.into(),
        }
    }

    /// The realm of every challenge (RFC 6750 §3).
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Authorize one request: a [`Principal`], or why not.
    pub fn authorize(&self, request: &RequestInfo<'_>) -> Result<Principal, AuthError> {
        match bearer::extract(request.headers) {
            Ok(None) => Err(AuthError::MissingToken),
            Err(fault) => Err(AuthError::InvalidRequest(fault)),
            Ok(Some(_token)) => Err(AuthError::InvalidToken(TokenFault::NoValidator)),
        }
    }

    /// The answer to a refused request on a route requiring `scopes`.
    pub fn challenge(&self, error: &AuthError, scopes: &[String]) -> Challenge {
        Challenge::new(error, &self.realm, scopes)
    }
}
