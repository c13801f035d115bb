//! [`AuthError`]: every way a request can fail authorization, as data.
//!
//! [`AuthError::kind`] is the bounded `outcome` label of the metrics; [`super::challenge`] turns
//! an error into the HTTP answer. Nothing here holds a token or text taken from the request.

use std::time::Duration;

use super::bearer::BearerFault;
use super::dpop::DpopFault;

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
    /// The token's claims fail the route's claim rules: 403 `insufficient_scope` without a
    /// `scope` attribute (no scope the client could ask for would help).
    #[error("claim rules not satisfied")]
    ClaimsNotSatisfied,
    /// The user must authenticate again, more strongly or more recently (RFC 9470 §3): 401
    /// `insufficient_user_authentication` with these `acr_values` (space-separated, may be
    /// empty) and `max_age` (seconds).
    #[error("insufficient user authentication")]
    InsufficientUserAuthentication {
        acr_values: String,
        max_age: Option<u64>,
    },
    /// The token cannot be checked because the identity provider is unreachable: 503, never 401.
    #[error("identity provider unavailable")]
    IdpUnavailable { retry_after: Duration },
    /// The DPoP proof fails a check (RFC 9449 §4.3): 401 `invalid_dpop_proof`, or
    /// `use_dpop_nonce` with a fresh nonce (§9).
    #[error("invalid DPoP proof: {0:?}")]
    InvalidProof(DpopFault),
    /// A `Bearer` token on a route that takes only DPoP-bound tokens: an authentication method
    /// the route does not support, so a bare `DPoP` challenge (RFC 6750 §3.1, RFC 9449 §7.1).
    #[error("the route requires DPoP")]
    DpopRequired,
    /// The shared DPoP replay store cannot be reached: 503, never a pass.
    #[error("DPoP replay store unavailable")]
    ReplayStoreUnavailable { retry_after: Duration },
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    /// Not a JWT any configured issuer could vouch for, and no introspection is configured.
    NoValidator,
    /// Longer than `tokens.max_size`.
    Oversize,
    /// Not three base64url parts with JSON-object header and claims, or a claim of the wrong type.
    Malformed,
    /// A `crit` header: we understand no extensions (RFC 7515 §4.1.11).
    CriticalHeader,
    /// `alg` is `none`, unknown, or not allowed for the issuer.
    AlgorithmNotAllowed,
    /// `iss` names no configured issuer.
    UnknownIssuer,
    /// No key in the issuer's set has the token's `kid` (after a refetch).
    UnknownKey,
    /// The `kid` names two different keys in the issuer's set.
    AmbiguousKey,
    /// The signature does not verify.
    BadSignature,
    /// `exp` (with leeway) is past.
    Expired,
    /// `nbf` or `iat` (with leeway) is in the future.
    NotYetValid,
    /// `exp` is missing, or `iat` is missing where `max_token_lifetime` needs it.
    MissingClaim,
    /// `aud` is missing or names none of the issuer's audiences.
    WrongAudience,
    /// `typ` is not `at+jwt` while the issuer requires it.
    WrongType,
    /// `exp - iat` exceeds the issuer's `max_token_lifetime`.
    LifetimeTooLong,
    /// The authorization server says the token is not active (RFC 7662 §2.2): expired, revoked,
    /// or never issued.
    Inactive,
    /// The route does not accept this kind of token (`token_types`).
    TypeNotAccepted,
    /// A claim bound for an identity header could be read otherwise by the upstream: a
    /// control character, too long, whitespace at an end, or a scope that is no scope-token
    /// ([`super::Principal::new`]).
    UnsafeClaim,
    /// A `cnf` claim (RFC 7800) binds the token to a key (DPoP, RFC 9449) or a client
    /// certificate (RFC 8705): it is valid only with a proof of possession, which this gateway
    /// does not check on this route (or at all, for certificates), so it is not accepted as a
    /// bearer token (RFC 9449 §7.1).
    SenderConstrained,
    /// A certificate-bound token (`cnf.x5t#S256`, RFC 8705 §3) on a connection that presented
    /// no client certificate, or another one.
    CertificateMismatch,
    /// A token bound to no client certificate on a route with `require_certificate_bound`.
    NotCertificateBound,
    /// A DPoP-bound token (`cnf.jkt`) sent with the `Bearer` scheme on a route that takes
    /// DPoP: it needs the `DPoP` scheme and a proof (RFC 9449 §7.1).
    DpopBoundAsBearer,
    /// The `DPoP` scheme with a token that is not DPoP-bound (no `cnf.jkt`, RFC 9449 §7.1).
    NotDpopBound,
    /// An unbound token from an issuer whose tokens must be DPoP-bound (`require_dpop`).
    UnboundFromDpopIssuer,
}

impl TokenFault {
    /// The bounded metric label.
    pub fn kind(self) -> &'static str {
        match self {
            TokenFault::NoValidator => "no_validator",
            TokenFault::Oversize | TokenFault::Malformed | TokenFault::CriticalHeader => {
                "malformed"
            }
            TokenFault::AlgorithmNotAllowed => "algorithm_not_allowed",
            TokenFault::UnknownIssuer => "wrong_issuer",
            TokenFault::UnknownKey | TokenFault::AmbiguousKey => "unknown_key",
            TokenFault::BadSignature => "bad_signature",
            TokenFault::Expired => "expired",
            TokenFault::NotYetValid => "not_yet_valid",
            TokenFault::MissingClaim => "missing_claim",
            TokenFault::WrongAudience => "wrong_audience",
            TokenFault::WrongType => "wrong_type",
            TokenFault::LifetimeTooLong => "lifetime_too_long",
            TokenFault::Inactive => "inactive",
            TokenFault::TypeNotAccepted => "token_type_not_accepted",
            TokenFault::UnsafeClaim => "unsafe_claim",
            TokenFault::SenderConstrained => "sender_constrained",
            TokenFault::CertificateMismatch => "certificate_mismatch",
            TokenFault::NotCertificateBound => "certificate_unbound_token",
            TokenFault::DpopBoundAsBearer => "dpop_bound_token_as_bearer",
            TokenFault::NotDpopBound => "dpop_token_not_bound",
            TokenFault::UnboundFromDpopIssuer => "dpop_unbound_token",
        }
    }
}

impl AuthError {
    /// Every value of [`AuthError::kind`], and `allowed`: the `outcome` label's whole set, so
    /// that its series exist (at 0) before the first such decision.
    pub const OUTCOMES: [&'static str; 45] = [
        "allowed",
        "missing_token",
        "invalid_request",
        "no_validator",
        "malformed",
        "algorithm_not_allowed",
        "wrong_issuer",
        "unknown_key",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "missing_claim",
        "wrong_audience",
        "wrong_type",
        "lifetime_too_long",
        "inactive",
        "token_type_not_accepted",
        "unsafe_claim",
        "sender_constrained",
        "certificate_mismatch",
        "certificate_unbound_token",
        "insufficient_scope",
        "claims_not_satisfied",
        "insufficient_user_authentication",
        "idp_unavailable",
        "dpop_bound_token_as_bearer",
        "dpop_token_not_bound",
        "dpop_unbound_token",
        "dpop_required",
        "dpop_replay_store_unavailable",
        "dpop_proof_missing",
        "dpop_proof_multiple",
        "dpop_proof_malformed",
        "dpop_proof_wrong_type",
        "dpop_proof_algorithm_not_allowed",
        "dpop_proof_bad_key",
        "dpop_proof_private_key",
        "dpop_proof_bad_signature",
        "dpop_proof_wrong_method",
        "dpop_proof_wrong_uri",
        "dpop_proof_stale",
        "dpop_proof_wrong_ath",
        "dpop_proof_key_mismatch",
        "dpop_proof_replayed",
        "dpop_nonce_required",
    ];

    /// The `outcome` metric label: a fixed set of values.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::InvalidRequest(_) => "invalid_request",
            AuthError::InvalidToken(fault) => fault.kind(),
            AuthError::InsufficientScope => "insufficient_scope",
            AuthError::ClaimsNotSatisfied => "claims_not_satisfied",
            AuthError::InsufficientUserAuthentication { .. } => "insufficient_user_authentication",
            AuthError::IdpUnavailable { .. } => "idp_unavailable",
            AuthError::InvalidProof(fault) => fault.kind(),
            AuthError::DpopRequired => "dpop_required",
            AuthError::ReplayStoreUnavailable { .. } => "dpop_replay_store_unavailable",
        }
    }
}

/// The most characters of outside text a log field carries: past it, `…`.
pub const UNTRUSTED_MAX_CHARS: usize = 512;

/// An error whose text comes partly from outside (the names in a peer's certificate, an
/// identity provider's answer), shown for a log field: control characters, `"` and `\`
/// escaped, so that it can neither begin a forged line nor break the text format's
/// `key="value"`, and cut at [`UNTRUSTED_MAX_CHARS`] (a certificate with a thousand names
/// would make every failure a 68 KB line).
pub struct Untrusted<T>(pub T);

impl<T: std::fmt::Display> std::fmt::Display for Untrusted<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        let text = self.0.to_string();
        for (n, c) in text.chars().enumerate() {
            if n == UNTRUSTED_MAX_CHARS {
                return f.write_char('…');
            }
            if c.is_control() || c == '"' || c == '\\' {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_is_listed() {
        use TokenFault::*;
        let faults = [
            NoValidator,
            Oversize,
            Malformed,
            CriticalHeader,
            AlgorithmNotAllowed,
            UnknownIssuer,
            UnknownKey,
            AmbiguousKey,
            BadSignature,
            Expired,
            NotYetValid,
            MissingClaim,
            WrongAudience,
            WrongType,
            LifetimeTooLong,
            Inactive,
            TypeNotAccepted,
            UnsafeClaim,
            SenderConstrained,
            CertificateMismatch,
            NotCertificateBound,
            DpopBoundAsBearer,
            NotDpopBound,
            UnboundFromDpopIssuer,
        ];
        let errors = faults
            .into_iter()
            .map(AuthError::InvalidToken)
            .chain([
                AuthError::MissingToken,
                AuthError::InvalidRequest(BearerFault::Malformed),
                AuthError::InsufficientScope,
                AuthError::ClaimsNotSatisfied,
                AuthError::InsufficientUserAuthentication {
                    acr_values: String::new(),
                    max_age: None,
                },
                AuthError::IdpUnavailable {
                    retry_after: Duration::ZERO,
                },
                AuthError::DpopRequired,
                AuthError::ReplayStoreUnavailable {
                    retry_after: Duration::ZERO,
                },
            ])
            .chain(DpopFault::ALL.into_iter().map(AuthError::InvalidProof));
        let mut seen: Vec<&str> = errors.map(|e| e.kind()).collect();
        seen.push("allowed");
        for kind in &seen {
            assert!(AuthError::OUTCOMES.contains(kind), "{kind} is not listed");
        }
        for listed in AuthError::OUTCOMES {
            assert!(
                seen.contains(&listed),
                "{listed} is listed but never produced"
            );
        }
    }

    #[test]
    fn outside_text_cannot_forge_a_line_or_run_on() {
        let names = "a.example\n2026-12-03T00:00:00Z ERROR forged\r\u{1b}[31m \"q\" \\ ";
        let shown = Untrusted(names).to_string();
        assert_eq!(
            shown,
            "a.example\\n2026-12-03T00:00:00Z ERROR forged\\r\\u{1b}[31m \\\"q\\\" \\\\ "
        );
        assert!(!shown.chars().any(char::is_control));
        let long = "é".repeat(10_000);
        let shown = Untrusted(&long).to_string();
        assert_eq!(shown.chars().count(), UNTRUSTED_MAX_CHARS + 1);
        assert!(shown.ends_with('…'));
        assert_eq!(
            Untrusted("fine: UnknownIssuer").to_string(),
            "fine: UnknownIssuer"
        );
    }
}
