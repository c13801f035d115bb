//! The auth core: one decision function, [`Authenticator::authorize`], that knows no web
//! framework. The proxy adapter (and later the middleware one) only translate requests in and
//! [`Challenge`]s out.
//!
//! A request passes when it carries exactly one well-formed bearer token (RFC 6750 §2.1) that
//! the route accepts and whose scopes satisfy the route. Which check a token gets:
//!
//! - a JWT whose `iss` is a configured issuer is validated locally: signed by one of that
//!   issuer's keys with an allowed algorithm, claims holding (RFC 7519, RFC 9068);
//! - any other token goes to RFC 7662 introspection when `[introspection]` is configured, and is
//!   `invalid_token` otherwise. A route's `token_types` may allow only one of the two.
//!
//! When the identity provider cannot be reached (keys or introspection), the answer is 503,
//! never 401 and never a pass.

pub mod bearer;
pub mod cache;
pub mod challenge;
pub mod claims;
pub mod dpop;
pub mod error;
pub mod fetch;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod rules;
pub mod scope;
pub mod settings;

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

pub use cache::TokenCache;
pub use challenge::Challenge;
pub use dpop::{DpopMode, RequestUri};
pub use error::{AuthError, TokenFault};
pub use introspection::Introspector;
pub use jwks::IssuerKeys;
pub use scope::{RoutePolicy, TokenTypes};

use crate::metrics::Metrics;
use crate::spans::{CallKind, CallLog};
use bearer::Scheme;
use dpop::{Dpop, DpopFault};
use jwks::Refetch;
use jwt::ClaimRules;
use keys::Lookup;
use settings::AuthConfig;

/// How long a client is told to wait when the identity provider cannot be reached.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the auth core needs to know about a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub headers: &'a HeaderMap,
    /// The request target's query, if any.
    pub query: Option<&'a str>,
    /// The matched route's name: the `route` label of the decision metrics.
    pub route: &'a str,
    /// The matched route's policy: token kinds and scopes.
    pub policy: &'a RoutePolicy,
    /// The request's method: a DPoP proof's `htm`.
    pub method: &'a str,
    /// The request's URI as routed: a DPoP proof's `htu`.
    pub uri: RequestUri<'a>,
    /// Where the identity-provider calls the request waits on are recorded, when its trace is
    /// sampled for export (`[tracing]`); `None` records nothing.
    pub calls: Option<&'a crate::spans::CallLog>,
    /// The SHA-256 thumbprint (base64url, RFC 8705 §3.1) of the client certificate the request's
    /// TLS connection presented, verified by the listener; `None` without one.
    pub client_cert: Option<&'a str>,
    /// The connection's last token and its cache key ([`cache::KeyMemo`]); `None` hashes
    /// every token.
    pub token_key: Option<&'a cache::KeyMemo>,
}

/// Who a request acts for: the permit an authorized request carries to the upstream.
///
/// Built with [`Principal::new`], which renders the identity headers once; a cached token's
/// principal is shared (`Arc`) by every request that presents the token.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    /// `sub`, when the token has one.
    pub subject: Option<String>,
    /// `client_id` (RFC 9068 §2.2), when the token has one.
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// The configured issuer that vouched for the token.
    pub issuer: String,
    /// `exp`; an introspection answer may lack it.
    pub expires_at: Option<SystemTime>,
    /// How the token was validated.
    pub source: TokenSource,
    /// What route policies read beyond the fields above.
    pub verified: Verified,
    /// [`Principal::identity_headers`], rendered by [`Principal::new`] from the fields above.
    identity: Vec<(HeaderName, HeaderValue)>,
}

/// The verified facts about a token that route policies read: per-route audiences, step-up
/// (RFC 9470) and, when some route reads claims, the whole claim set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verified {
    /// `aud`, as a list.
    pub audiences: Vec<String>,
    /// The principal's `issuer` is a configured one: a JWT's issuer, or the `[introspection]
    /// issuer` the answer was checked against. An introspected token without that setting
    /// names its issuer itself (or the endpoint's origin stands in), which a route's
    /// `issuers` must not trust.
    pub issuer_configured: bool,
    /// `acr`: how the user authenticated (OpenID Connect Core §2).
    pub acr: Option<String>,
    /// `auth_time`, seconds since the epoch.
    pub auth_time: Option<i64>,
    /// Every verified claim (the JWT payload, or the introspection answer), kept only when
    /// some route has claim rules or claim headers ([`settings::AuthConfig::keep_claims`]).
    pub claims: Option<Arc<claims::ClaimSet>>,
    /// The claim set as base64url JSON, for a route's `claims_header`.
    pub encoded: Option<Arc<str>>,
    /// `cnf.jkt`: the token is DPoP-bound to the key with this RFC 7638 thumbprint, and valid
    /// only with a proof by that key (RFC 9449 §6).
    pub jkt: Option<String>,
    /// `cnf.x5t#S256`: the token is bound to the client certificate with this SHA-256
    /// thumbprint (base64url), and valid only on a connection that presented it (RFC 8705 §3).
    pub x5t: Option<String>,
    /// The token's issuer (`require_dpop`) accepts its tokens only DPoP-bound.
    pub dpop_required: bool,
}

/// A request the auth core lets through: who it acts for, and the headers that tell the
/// upstream (the principal's `X-Auth-*` headers, when the route sends them, then the route's
/// claim headers).
#[derive(Debug, Clone)]
pub struct Grant {
    pub principal: Arc<Principal>,
    /// The request's `DPoP` header is the proof that was checked (RFC 9449): an adapter that
    /// forwards credentials forwards it only then.
    pub dpop_checked: bool,
    auth_headers: bool,
    claim_headers: Vec<(HeaderName, HeaderValue)>,
}

impl Grant {
    /// Every identity header for the upstream, in order.
    pub fn headers(&self) -> impl Iterator<Item = &(HeaderName, HeaderValue)> {
        let fixed: &[(HeaderName, HeaderValue)] = match self.auth_headers {
            true => self.principal.identity_headers(),
            false => &[],
        };
        fixed.iter().chain(self.claim_headers.iter())
    }
}

/// The identity headers, in order, each with the spelling an adapter may send it with.
static IDENTITY_HEADERS: [(HeaderName, &str); 4] = [
    (HeaderName::from_static("x-auth-subject"), "X-Auth-Subject"),
    (
        HeaderName::from_static("x-auth-client-id"),
        "X-Auth-Client-Id",
    ),
    (HeaderName::from_static("x-auth-scopes"), "X-Auth-Scopes"),
    (HeaderName::from_static("x-auth-issuer"), "X-Auth-Issuer"),
];

/// The largest identity header value, in bytes. A token whose claims would make a larger one
/// (a 50 KB `scope` list from an introspection answer) is refused, not truncated.
pub const MAX_IDENTITY_HEADER_BYTES: usize = 4096;

impl Principal {
    /// Build a principal and render its identity headers. The token is refused
    /// ([`TokenFault::UnsafeClaim`]) when a value bound for a header could be read otherwise by
    /// the upstream, since dropping or mending the header would let it act on a different
    /// identity:
    /// - a control character (CR, LF, NUL, tab, DEL, C1 controls such as NEL), a Unicode line
    ///   or paragraph separator, or more than [`MAX_IDENTITY_HEADER_BYTES`];
    /// - whitespace at either end, Unicode's included, or a zero-width space or BOM there
    ///   (header parsers strip spaces, Go's `TrimSpace` and .NET's `Trim` the rest:
    ///   `" admin "` or `"admin\u{a0}"` would become `admin`);
    /// - a scope that is not a scope-token (RFC 6749 §3.3: printable ASCII without space, `"`
    ///   or `\`), so `X-Auth-Scopes` splits on spaces into exactly the scopes that were checked.
    ///
    /// Other UTF-8 is sent as its bytes.
    pub fn new(
        subject: Option<String>,
        client_id: Option<String>,
        scopes: Vec<String>,
        issuer: String,
        expires_at: Option<SystemTime>,
        source: TokenSource,
    ) -> Result<Principal, TokenFault> {
        if !scopes.iter().all(|s| scope::is_scope_token(s)) {
            return Err(TokenFault::UnsafeClaim);
        }
        let scope_list = scopes.join(" ");
        let values = [
            subject.as_deref(),
            client_id.as_deref(),
            Some(scope_list.as_str()),
            Some(issuer.as_str()),
        ];
        let mut identity = Vec::with_capacity(IDENTITY_HEADERS.len());
        for ((name, _), value) in IDENTITY_HEADERS.iter().zip(values) {
            let Some(value) = value else { continue };
            claims::check_text(value)?;
            let value =
                HeaderValue::from_bytes(value.as_bytes()).map_err(|_| TokenFault::UnsafeClaim)?;
            identity.push((name.clone(), value));
        }
        Ok(Principal {
            subject,
            client_id,
            scopes,
            issuer,
            expires_at,
            source,
            verified: Verified::default(),
            identity,
        })
    }

    /// The same principal with what route policies read.
    pub fn with_verified(mut self, verified: Verified) -> Principal {
        self.verified = verified;
        self
    }

    /// `X-Auth-Subject`, `-Client-Id`, `-Scopes` (space-separated), `-Issuer`: what the
    /// upstream (or a proxy asking the decision endpoint) learns about the caller. A token
    /// without `sub` or `client_id` has no header for it.
    pub fn identity_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.identity
    }
}

/// Clock skew allowed on `auth_time` for step-up (RFC 9470): an authentication this far in the
/// future still counts as now.
const STEP_UP_LEEWAY_SECS: i64 = 30;

/// A valid token against the rest of its route's policy, in the order the answers mean:
/// issuer and audience (401 `invalid_token`: the token is not for this resource), scopes (403),
/// claim rules (403), step-up (401 `insufficient_user_authentication`: a new sign-in helps).
fn permit(policy: &RoutePolicy, principal: &Principal, now: i64) -> Result<(), AuthError> {
    let v = &principal.verified;
    let issuer_ok = policy.issuers.is_empty()
        || v.issuer_configured && policy.issuers.contains(&principal.issuer);
    if !issuer_ok {
        return Err(AuthError::InvalidToken(TokenFault::UnknownIssuer));
    }
    if !policy.audiences.is_empty() && !v.audiences.iter().any(|a| policy.audiences.contains(a)) {
        return Err(AuthError::InvalidToken(TokenFault::WrongAudience));
    }
    if !policy.allows(&principal.scopes) {
        return Err(AuthError::InsufficientScope);
    }
    if let Some(rules) = &policy.claim_rules {
        if !rules.allow(v.claims.as_deref()) {
            return Err(AuthError::ClaimsNotSatisfied);
        }
    }
    if let Some(step_up) = &policy.step_up {
        if !step_up.satisfied(v.acr.as_deref(), v.auth_time, now, STEP_UP_LEEWAY_SECS) {
            return Err(AuthError::InsufficientUserAuthentication {
                acr_values: step_up.acr_list(),
                max_age: step_up.max_age.map(|d| d.as_secs()),
            });
        }
    }
    Ok(())
}

/// A valid token against the proof that came with it (RFC 9449 §7.1, §6): a DPoP-bound token
/// needs a proof by its key, and a proof needs a bound token. The verified-token cache holds the
/// binding with the claims, so a cached bound token is held to it on every request.
fn binding(
    mode: DpopMode,
    principal: &Principal,
    required: bool,
    proof: Option<&dpop::Checked>,
) -> Result<(), AuthError> {
    match (principal.verified.jkt.as_deref(), proof) {
        (None, None) if required => Err(AuthError::InvalidToken(TokenFault::UnboundFromDpopIssuer)),
        (None, None) => Ok(()),
        (Some(_), None) if mode == DpopMode::Off => {
            Err(AuthError::InvalidToken(TokenFault::SenderConstrained))
        }
        (Some(_), None) => Err(AuthError::InvalidToken(TokenFault::DpopBoundAsBearer)),
        (None, Some(_)) => Err(AuthError::InvalidToken(TokenFault::NotDpopBound)),
        (Some(jkt), Some(proof)) if jkt == proof.jkt => Ok(()),
        (Some(_), Some(_)) => Err(AuthError::InvalidProof(DpopFault::KeyMismatch)),
    }
}

/// A valid token against the connection's client certificate (RFC 8705 §3): a
/// certificate-bound token passes only on a connection that presented that certificate, and a
/// route with `require_certificate_bound` takes only such tokens. Cached tokens are held to it
/// on every request, as the binding is kept with the claims.
fn certificate(
    policy: &RoutePolicy,
    principal: &Principal,
    presented: Option<&str>,
) -> Result<(), AuthError> {
    match (principal.verified.x5t.as_deref(), presented) {
        (Some(bound), Some(cert)) if bound == cert => Ok(()),
        (Some(_), _) => Err(AuthError::InvalidToken(TokenFault::CertificateMismatch)),
        (None, _) if policy.require_certificate_bound => {
            Err(AuthError::InvalidToken(TokenFault::NotCertificateBound))
        }
        (None, _) => Ok(()),
    }
}

/// How a token was validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// A JWT, checked locally against its issuer's keys.
    Jwt,
    /// An opaque token (or a JWT from no configured issuer), checked by RFC 7662 introspection.
    Introspection,
}

struct Issuer {
    keys: Arc<IssuerKeys>,
    rules: ClaimRules,
    require_dpop: bool,
}

/// Decides whether a request may pass.
pub struct Authenticator {
    realm: String,
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    /// Shared with the next config's authenticator when `[tokens]` and `keep_claims` stay.
    cache: Arc<TokenCache>,
    /// The settings the cache was built for.
    cache_settings: (settings::TokensConfig, bool),
    introspection: Option<Arc<Introspector>>,
    /// Proof checks, replay state and nonces, when some route takes DPoP.
    dpop: Option<Arc<Dpop>>,
    max_token_size: usize,
    /// Configured issuers with `require_dpop`: their tokens must be DPoP-bound also when they
    /// come by introspection (an answer whose `iss` names them).
    dpop_issuers: Vec<String>,
    /// [`AuthConfig::keep_claims`].
    keep_claims: bool,
    metrics: Metrics,
    /// `portcullis_token_cache_requests_total{result="hit"}` and `"miss"`, resolved once.
    cache_hits: prometheus::IntCounter,
    cache_misses: prometheus::IntCounter,
}

impl Authenticator {
    /// Build from a validated config. Keys are not fetched until [`Authenticator::refresh_tasks`]
    /// run (or a token with an unknown `kid` arrives).
    pub fn new(config: &AuthConfig, metrics: Metrics) -> Authenticator {
        Authenticator::renewed(config, metrics, None)
    }

    /// Build for a reloaded config, keeping what `previous` (the running config's
    /// authenticator) holds for settings that did not change:
    /// - an issuer's keys (no refetch) when its settings are equal, except an HMAC issuer, whose
    ///   secret is read again (a local step, no network); when only its claim rules changed,
    ///   new keys that start with the last good set ([`IssuerKeys::seeded`]), as for an issuer
    ///   with a `ca_file` (its client is built again, reading the file);
    /// - the verified-token cache when `[tokens]` and whether claims are kept are equal; its
    ///   entries of issuers not kept are distrusted from [`Authenticator::retire_replaced`] on;
    /// - the introspection client, its cache and its discovered endpoint, when `[introspection]`
    ///   and the client secret are equal and it has no `ca_file`;
    /// - the DPoP replay state when the replay settings are equal, so a reload never lets a
    ///   used proof in again (RFC 9449 §11.1).
    pub fn renewed(
        config: &AuthConfig,
        metrics: Metrics,
        previous: Option<&Authenticator>,
    ) -> Authenticator {
        let http = fetch::http_client();
        // A client of its own for each `ca_file`, read now (a reload reads it again).
        let client_for = |ca_file: Option<&std::path::Path>| match ca_file {
            None => http.clone(),
            Some(path) => fetch::http_client_trusting(Some(path)),
        };
        // Kept whole only when nothing it reads from a file can have changed.
        let kept = |c: &settings::IssuerConfig| {
            let old = previous?.issuers.iter().find(|i| i.keys.config() == c)?;
            let hmac = matches!(c.keys, settings::KeySource::HmacSecret(_));
            (!hmac && c.ca_file.is_none()).then(|| old.keys.clone())
        };
        let issuers: Vec<Issuer> = config
            .issuers
            .iter()
            .map(|c| Issuer {
                require_dpop: c.require_dpop,
                rules: ClaimRules {
                    audiences: c.audiences.clone(),
                    leeway: c.leeway,
                    require_typ: c.require_typ,
                    scope_claim: c.scope_claim,
                    max_token_lifetime: c.max_token_lifetime,
                },
                keys: kept(c).unwrap_or_else(|| {
                    let old = previous
                        .and_then(|p| p.issuers.iter().find(|i| i.keys.issuer() == c.issuer));
                    Arc::new(match old {
                        Some(old) => IssuerKeys::seeded(
                            c.clone(),
                            client_for(c.ca_file.as_deref()),
                            metrics.clone(),
                            &old.keys,
                        ),
                        None => IssuerKeys::new(
                            c.clone(),
                            client_for(c.ca_file.as_deref()),
                            metrics.clone(),
                        ),
                    })
                }),
            })
            .collect();
        let cache_settings = (config.tokens.clone(), config.keep_claims);
        let cache = previous
            .filter(|p| p.cache_settings == cache_settings)
            .map_or_else(
                || {
                    Arc::new(TokenCache::new(
                        config.tokens.cache_capacity,
                        config.tokens.cache_max_ttl,
                    ))
                },
                |p| p.cache.clone(),
            );
        let introspection = config.introspection.clone().map(|c| {
            let old = previous
                .and_then(|p| p.introspection.as_ref())
                .filter(|i| i.same_settings(&c, config.keep_claims) && c.ca_file.is_none());
            match old {
                Some(i) => i.clone(),
                None => {
                    let client = client_for(c.ca_file.as_deref());
                    Arc::new(
                        Introspector::new(c, client, metrics.clone())
                            .keeping_claims(config.keep_claims),
                    )
                }
            }
        });
        let dpop = config.dpop.clone().map(|d| {
            let old = previous.and_then(|p| p.dpop.as_deref());
            match old.filter(|o| o.settings == d) {
                Some(_) => previous.and_then(|p| p.dpop.clone()).expect("found above"),
                None => Arc::new(Dpop::renewed(d, metrics.dpop_replay_full.clone(), old)),
            }
        });
        let by_iss = issuers
            .iter()
            .enumerate()
            .map(|(i, is)| (is.keys.issuer().to_owned(), i))
            .collect();
        Authenticator {
            realm: config.realm.clone(),
            issuers,
            by_iss,
            cache,
            cache_settings,
            introspection,
            dpop,
            max_token_size: config.tokens.max_size,
            dpop_issuers: config
                .issuers
                .iter()
                .filter(|i| i.require_dpop)
                .map(|i| i.issuer.clone())
                .collect(),
            keep_claims: config.keep_claims,
            cache_hits: metrics.token_cache.with_label_values(&["hit"]),
            cache_misses: metrics.token_cache.with_label_values(&["miss"]),
            metrics,
        }
    }

    /// The realm of every challenge (RFC 6750 §3).
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// The background work to spawn on a runtime: one future per issuer that loads and
    /// refreshes its keys, and one that discovers the introspection endpoint when it is not
    /// configured. Each ends when the authenticator is dropped or a reload retires its part.
    /// Parts kept from a previous authenticator ([`Authenticator::renewed`]) already have
    /// theirs and get none.
    pub fn refresh_tasks(&self) -> Vec<BoxFuture<'static, ()>> {
        let keys = self
            .issuers
            .iter()
            .filter(|i| i.keys.claim_refresh())
            .map(|i| IssuerKeys::refresh_loop(Arc::downgrade(&i.keys)).boxed());
        let endpoint = self
            .introspection
            .iter()
            .filter(|i| i.claim_discovery())
            .map(|i| Introspector::discover_loop(Arc::downgrade(i)).boxed());
        keys.chain(endpoint).collect()
    }

    /// Once `next` serves in this authenticator's place: retire the issuer keys and the
    /// introspection client it did not keep, so their background work ends and no cached token
    /// they vouched for is trusted again. Returns the issuers retired, for the log.
    pub fn retire_replaced(&self, next: &Authenticator) -> Vec<String> {
        let mut retired = Vec::new();
        for old in &self.issuers {
            if !next.issuers.iter().any(|n| Arc::ptr_eq(&n.keys, &old.keys)) {
                old.keys.retire();
                retired.push(old.keys.issuer().to_owned());
            }
        }
        if let Some(old) = &self.introspection {
            if !next
                .introspection
                .as_ref()
                .is_some_and(|n| Arc::ptr_eq(n, old))
            {
                old.retire();
            }
        }
        retired
    }

    /// Issuers whose keys `next` took over from this authenticator without a refetch.
    pub fn kept_issuers(&self, next: &Authenticator) -> usize {
        next.issuers
            .iter()
            .filter(|n| self.issuers.iter().any(|o| Arc::ptr_eq(&n.keys, &o.keys)))
            .count()
    }

    /// The introspection client, when `[introspection]` is configured.
    pub fn introspection(&self) -> Option<&Introspector> {
        self.introspection.as_deref()
    }

    /// Issuers whose keys have not loaded yet (readiness).
    pub fn issuers_without_keys(&self) -> Vec<&str> {
        self.issuers
            .iter()
            .filter(|i| !i.keys.loaded())
            .map(|i| i.keys.issuer())
            .collect()
    }

    /// Set the gauges that change without requests (key-set ages, cache sizes); called before
    /// each scrape.
    pub async fn update_gauges(&self) {
        if let Some(i) = &self.introspection {
            i.update_gauges().await;
        }
        if let Some(d) = &self.dpop {
            let entries = i64::try_from(d.replay_entries()).unwrap_or(i64::MAX);
            self.metrics.dpop_replay_entries.set(entries);
        }
        let now = Instant::now();
        for i in &self.issuers {
            if let Some(age) = i.keys.age(now) {
                self.metrics
                    .jwks_age
                    .with_label_values(&[i.keys.issuer()])
                    .set(age.as_secs_f64());
            }
        }
    }

    /// Authorize one request: a [`Grant`], or why not. Records the decision metrics.
    pub async fn authorize(&self, request: &RequestInfo<'_>) -> Result<Grant, AuthError> {
        let started = Instant::now();
        let result = self.decide(request, SystemTime::now()).await;
        self.metrics
            .auth_duration
            .observe(started.elapsed().as_secs_f64());
        let outcome = result.as_ref().map_or_else(AuthError::kind, |_| "allowed");
        self.metrics
            .auth_decisions
            .with_label_values(&[request.route, outcome])
            .inc();
        result
    }

    /// The answer to a refused request with these `headers` on a route with this policy: the
    /// `Bearer` challenge, the `DPoP` one (RFC 9449 §7.1), or both, as the route's `dpop` says.
    pub fn challenge(
        &self,
        error: &AuthError,
        policy: &RoutePolicy,
        headers: &HeaderMap,
    ) -> Challenge {
        let dpop = self
            .dpop
            .as_deref()
            .filter(|_| policy.dpop != DpopMode::Off);
        let schemes = challenge::Schemes {
            bearer: dpop.is_none() || policy.dpop == DpopMode::Optional,
            dpop: dpop.map(Dpop::algs),
            used_dpop: dpop.is_some() && bearer::is_dpop_scheme(headers),
        };
        // A nonce is an HMAC: made only for the answer that carries one.
        let nonce = dpop
            .filter(|_| matches!(error, AuthError::InvalidProof(DpopFault::NonceRequired)))
            .and_then(|d| d.nonce(jwt::unix_seconds(SystemTime::now())));
        Challenge::with_schemes(error, &self.realm, &policy.named(), schemes, nonce)
    }

    /// The `DPoP` proof algorithms, when some route takes DPoP (RFC 9728
    /// `dpop_signing_alg_values_supported`).
    pub fn dpop_algorithms(&self) -> Option<&[settings::Algorithm]> {
        self.dpop.as_ref().map(|d| d.settings.algorithms.as_slice())
    }

    /// Proofs remembered against replay in memory now.
    pub fn dpop_replay_entries(&self) -> u64 {
        self.dpop.as_deref().map_or(0, Dpop::replay_entries)
    }

    async fn decide(&self, request: &RequestInfo<'_>, now: SystemTime) -> Result<Grant, AuthError> {
        let policy = request.policy;
        let dpop = self
            .dpop
            .as_deref()
            .filter(|_| policy.dpop != DpopMode::Off);
        let (scheme, token) =
            match bearer::credential(request.headers, request.query, dpop.is_some()) {
                Ok(Some(found)) => found,
                Ok(None) => return Err(AuthError::MissingToken),
                Err(fault) => return Err(AuthError::InvalidRequest(fault)),
            };
        if scheme == Scheme::Bearer && policy.dpop == DpopMode::Required {
            return Err(AuthError::DpopRequired);
        }
        if token.len() > self.max_token_size {
            return Err(AuthError::InvalidToken(TokenFault::Oversize));
        }
        let seconds = jwt::unix_seconds(now);
        // The proof first: local work, before any call to the identity provider.
        let proof = match (scheme, dpop) {
            (Scheme::Dpop, Some(d)) => Some(
                d.check(
                    request.headers,
                    request.method,
                    &request.uri,
                    token,
                    seconds,
                )
                .map_err(AuthError::InvalidProof)?,
            ),
            _ => None,
        };
        let principal = self
            .validate(token, policy.token_types, now, request)
            .await?;
        let required = principal.verified.dpop_required
            || !self.dpop_issuers.is_empty() && self.dpop_issuers.contains(&principal.issuer);
        binding(policy.dpop, &principal, required, proof.as_ref())?;
        certificate(policy, &principal, request.client_cert)?;
        permit(policy, &principal, seconds)?;
        let v = &principal.verified;
        let claim_headers = match policy.claim_headers.is_empty() {
            true => Vec::new(),
            false => policy
                .claim_headers
                .render(v.claims.as_deref(), v.encoded.as_ref())
                .map_err(AuthError::InvalidToken)?,
        };
        // Last, so that only a request that would pass costs a replay-store call.
        if let (Some(proof), Some(d)) = (&proof, dpop) {
            match d.first_use(proof, seconds).await {
                Ok(true) => {}
                Ok(false) => return Err(AuthError::InvalidProof(DpopFault::Replayed)),
                Err(dpop::StoreUnavailable) => {
                    return Err(AuthError::ReplayStoreUnavailable {
                        retry_after: RETRY_AFTER,
                    })
                }
            }
        }
        Ok(Grant {
            principal,
            dpop_checked: proof.is_some(),
            auth_headers: policy.auth_headers,
            claim_headers,
        })
    }

    /// The token's principal: a JWT from a configured issuer locally (cache, then signature and
    /// claims), any other token by introspection; `accept` says which the route takes.
    async fn validate(
        &self,
        token: &str,
        accept: TokenTypes,
        now: SystemTime,
        request: &RequestInfo<'_>,
    ) -> Result<Arc<Principal>, AuthError> {
        if token.len() > self.max_token_size {
            return Err(AuthError::InvalidToken(TokenFault::Oversize));
        }
        let calls = request.calls;
        // Hashed once, and only when the verified-token cache will use it; not at all when
        // it is the connection's last token.
        let key = self.cache.enabled().then(|| match request.token_key {
            Some(memo) => memo.key(token),
            None => TokenCache::key(token),
        });
        let introspection = self.introspection.as_deref().filter(|_| accept.opaque);
        // The cache before the shape check: only tokens that verified as JWTs are in it, so a
        // hit needs no other look at the token. A token without a dot cannot be one of them.
        let jwt_key = key.as_ref().filter(|_| accept.jwt && token.contains('.'));
        if let Some(hit) = jwt_key.and_then(|key| self.cached(key, now)) {
            self.cache_hits.inc();
            return Ok(hit);
        }
        if jwt::looks_like_jwt(token) {
            if jwt_key.is_some() {
                self.cache_misses.inc();
            }
            match self.local_issuer(token) {
                Ok(_) if !accept.jwt => {
                    return Err(AuthError::InvalidToken(TokenFault::TypeNotAccepted))
                }
                // Boxed, like the introspection call: the slow path's future (a key-set refetch
                // is an HTTP call) is kilobytes, and unboxed it would make every request's
                // future that large, cache hits included.
                Ok((parsed, index)) => {
                    return Box::pin(self.validate_jwt(parsed, index, key, now, calls)).await
                }
                Err(fault) if introspection.is_none() => {
                    return Err(AuthError::InvalidToken(fault))
                }
                Err(_) => {}
            }
        }
        match (introspection, &self.introspection) {
            (Some(i), _) => i.validate(token, key, now, calls).await,
            (None, Some(_)) => Err(AuthError::InvalidToken(TokenFault::TypeNotAccepted)),
            (None, None) => Err(AuthError::InvalidToken(TokenFault::NoValidator)),
        }
    }

    /// The parsed token and the index of its configured issuer, or why it has none.
    fn local_issuer<'t>(&self, token: &'t str) -> Result<(jwt::Unverified<'t>, usize), TokenFault> {
        let parsed = jwt::parse(token, self.max_token_size)?;
        let iss = parsed
            .claims
            .iss
            .as_deref()
            .ok_or(TokenFault::UnknownIssuer)?;
        let index = *self.by_iss.get(iss).ok_or(TokenFault::UnknownIssuer)?;
        Ok((parsed, index))
    }

    /// Signature, then claims; a valid token goes into the verified-token cache.
    async fn validate_jwt(
        &self,
        parsed: jwt::Unverified<'_>,
        index: usize,
        key: Option<[u8; 32]>,
        now: SystemTime,
        calls: Option<&CallLog>,
    ) -> Result<Arc<Principal>, AuthError> {
        let issuer = &self.issuers[index];
        if !issuer.keys.algorithms().contains(&parsed.alg) {
            return Err(AuthError::InvalidToken(TokenFault::AlgorithmNotAllowed));
        }
        let fingerprint = self.verify_signature(issuer, &parsed, calls).await?;
        jwt::check_claims(&parsed.header, &parsed.claims, &issuer.rules, now)
            .map_err(AuthError::InvalidToken)?;
        let exp = parsed.claims.exp.map_or(0, |e| e.0);
        let principal = Arc::new(
            Principal::new(
                parsed.claims.sub.clone(),
                parsed.claims.client_id.clone(),
                jwt::scopes(&parsed.claims, issuer.rules.scope_claim),
                issuer.keys.issuer().to_owned(),
                Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).unwrap_or(0))),
                TokenSource::Jwt,
            )
            .map_err(AuthError::InvalidToken)?
            .with_verified(
                self.verified_jwt(&parsed, issuer.require_dpop)
                    .map_err(AuthError::InvalidToken)?,
            ),
        );
        if let Some(key) = key {
            self.cache.insert(
                key,
                principal.clone(),
                issuer.keys.clone(),
                fingerprint,
                exp,
                jwt::unix_seconds(now),
            );
        }
        Ok(principal)
    }

    /// What route policies read of a verified JWT. When the claim set is kept, one that cannot
    /// be read whole (a repeated member name at any depth, a lone surrogate escape) refuses the
    /// token: its rules and headers would read something else than an upstream may.
    fn verified_jwt(
        &self,
        parsed: &jwt::Unverified<'_>,
        dpop_required: bool,
    ) -> Result<Verified, TokenFault> {
        let c = &parsed.claims;
        let whole = match self.keep_claims {
            true => Some(jwt::claim_set(parsed.signing_input).ok_or(TokenFault::Malformed)?),
            false => None,
        };
        let confirmation = dpop::confirmation(c.cnf.as_ref())?;
        Ok(Verified {
            issuer_configured: true,
            audiences: match &c.aud {
                Some(jwt::OneOrMany::One(a)) => vec![a.clone()],
                Some(jwt::OneOrMany::Many(list)) => list.clone(),
                None => Vec::new(),
            },
            acr: c.acr.as_ref().and_then(|v| v.as_str()).map(str::to_owned),
            auth_time: c.auth_time.as_ref().and_then(jwt::seconds),
            encoded: whole.as_ref().map(|(_, payload)| Arc::from(*payload)),
            claims: whole.map(|(set, _)| Arc::new(set)),
            jkt: confirmation.jkt,
            x5t: confirmation.x5t,
            dpop_required,
        })
    }

    /// A cache hit whose issuer a reload has not retired, whose key is still in the issuer's set
    /// and whose `exp` has not passed.
    fn cached(&self, key: &[u8; 32], now: SystemTime) -> Option<Arc<Principal>> {
        let hit = self.cache.get(key)?;
        let keys = match hit.issuer.retired() {
            true => None,
            false => hit.issuer.current(Instant::now()),
        };
        if jwt::unix_seconds(now) < hit.exp && keys.is_some_and(|s| s.keys.contains(hit.key)) {
            return Some(hit.principal.clone());
        }
        self.cache.remove(key);
        None
    }

    /// Verify with the issuer's keys, refetching once when the `kid` is unknown.
    /// Returns the fingerprint of the key that verified.
    async fn verify_signature(
        &self,
        issuer: &Issuer,
        token: &jwt::Unverified<'_>,
        calls: Option<&CallLog>,
    ) -> Result<u64, AuthError> {
        let unavailable = AuthError::IdpUnavailable {
            retry_after: RETRY_AFTER,
        };
        let kid = token.header.kid.as_deref();
        let mut snapshot = issuer.keys.current(Instant::now());
        let mut refetched = false;
        loop {
            let Some(current) = snapshot.as_ref() else {
                // No usable keys: ever loaded, or too stale. Try once; never let the token in.
                if refetched {
                    return Err(unavailable);
                }
                refetched = true;
                snapshot = match refetch(&issuer.keys, calls).await {
                    Refetch::Done(s) => Some(s),
                    // Another request's fetch may have just stored keys.
                    Refetch::RateLimited => issuer.keys.current(Instant::now()),
                    Refetch::Failed => return Err(unavailable),
                };
                continue;
            };
            match current.keys.lookup(kid, token.alg) {
                Lookup::Candidates(candidates) => {
                    return candidates
                        .into_iter()
                        .find(|k| keys::verify(token, k))
                        .map(|k| k.fingerprint)
                        .ok_or(AuthError::InvalidToken(TokenFault::BadSignature));
                }
                Lookup::UnknownKid if !refetched => {
                    refetched = true;
                    snapshot = match refetch(&issuer.keys, calls).await {
                        Refetch::Done(s) => Some(s),
                        // A refetch ran moments ago, perhaps after this request read its
                        // snapshot: look again in the newest keys before refusing.
                        Refetch::RateLimited => issuer.keys.current(Instant::now()),
                        Refetch::Failed => return Err(unavailable),
                    };
                }
                Lookup::UnknownKid => return Err(AuthError::InvalidToken(TokenFault::UnknownKey)),
                Lookup::Ambiguous => return Err(AuthError::InvalidToken(TokenFault::AmbiguousKey)),
                Lookup::AlgorithmMismatch => {
                    return Err(AuthError::InvalidToken(TokenFault::AlgorithmNotAllowed))
                }
            }
        }
    }
}

/// A key-set refetch the request waits on, recorded for its trace when sampled.
async fn refetch(keys: &Arc<IssuerKeys>, calls: Option<&CallLog>) -> Refetch {
    let pending = calls.map(|c| c.start(CallKind::KeyFetch));
    let result = keys.refetch().await;
    if let (Some(calls), Some(pending)) = (calls, pending) {
        let label = match &result {
            Refetch::Done(_) => "ok",
            Refetch::RateLimited => "rate_limited",
            Refetch::Failed => "failed",
        };
        calls.finish(pending, keys.issuer(), label);
    }
    result
}
