//! The auth core: one decision function, [`Authenticator::authorize`], that knows no web
//! framework. The proxy adapter (and later the middleware one) only translate requests in and
//! [`Challenge`]s out.
//!
//! A request passes when it carries exactly one well-formed bearer token (RFC 6750 §2.1) that is
//! a JWT from a configured issuer, signed by one of that issuer's keys with an allowed algorithm,
//! whose claims hold (RFC 7519, RFC 9068), and whose scopes satisfy the route. When the issuer's
//! keys cannot be had, the answer is 503, never 401 and never a pass.

pub mod bearer;
pub mod cache;
pub mod challenge;
pub mod error;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod scope;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

pub use cache::TokenCache;
pub use challenge::Challenge;
pub use error::{AuthError, TokenFault};
pub use jwks::IssuerKeys;
pub use scope::ScopePolicy;

use crate::config::Config;
use crate::metrics::Metrics;
use jwks::Refetch;
use jwt::ClaimRules;
use keys::Lookup;

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
    /// The matched route's scope policy.
    pub policy: &'a ScopePolicy,
}

/// Who a request acts for: the permit an authorized request carries to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub`, when the token has one.
    pub subject: Option<String>,
    /// `client_id` (RFC 9068 §2.2), when the token has one.
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// The configured issuer that vouched for the token.
    pub issuer: String,
    pub expires_at: SystemTime,
}

struct Issuer {
    keys: Arc<IssuerKeys>,
    rules: ClaimRules,
}

/// Decides whether a request may pass.
pub struct Authenticator {
    realm: String,
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    cache: TokenCache,
    max_token_size: usize,
    metrics: Metrics,
}

impl Authenticator {
    /// Build from a validated config. Keys are not fetched until [`Authenticator::refresh_tasks`]
    /// run (or a token with an unknown `kid` arrives).
    pub fn new(config: &Config, metrics: Metrics) -> Authenticator {
        let http = jwks::http_client();
        let issuers: Vec<Issuer> = config
            .issuers
            .iter()
            .map(|c| Issuer {
                rules: ClaimRules {
                    audiences: c.audiences.clone(),
                    leeway: c.leeway,
                    require_typ: c.require_typ,
                    scope_claim: c.scope_claim,
                    max_token_lifetime: c.max_token_lifetime,
                },
                keys: Arc::new(IssuerKeys::new(c.clone(), http.clone(), metrics.clone())),
            })
            .collect();
        let by_iss = issuers
            .iter()
            .enumerate()
            .map(|(i, is)| (is.keys.issuer().to_owned(), i))
            .collect();
        Authenticator {
            realm: config.server.realm.clone(),
            issuers,
            by_iss,
            cache: TokenCache::new(config.tokens.cache_capacity, config.tokens.cache_max_ttl),
            max_token_size: config.tokens.max_size,
            metrics,
        }
    }

    /// The realm of every challenge (RFC 6750 §3).
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// One future per issuer that loads and refreshes its keys; spawn them on a runtime. Each
    /// ends when the authenticator is dropped.
    pub fn refresh_tasks(&self) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        self.issuers
            .iter()
            .map(|i| IssuerKeys::refresh_loop(Arc::downgrade(&i.keys)))
            .collect()
    }

    /// Issuers whose keys have not loaded yet (readiness).
    pub fn issuers_without_keys(&self) -> Vec<&str> {
        self.issuers
            .iter()
            .filter(|i| !i.keys.loaded())
            .map(|i| i.keys.issuer())
            .collect()
    }

    /// Set the gauges that change with time alone (key-set ages); called before each scrape.
    pub fn update_gauges(&self) {
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

    /// Authorize one request: a [`Principal`], or why not. Records the decision metrics.
    pub async fn authorize(&self, request: &RequestInfo<'_>) -> Result<Principal, AuthError> {
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

    /// The answer to a refused request on a route with this policy.
    pub fn challenge(&self, error: &AuthError, policy: &ScopePolicy) -> Challenge {
        Challenge::new(error, &self.realm, &policy.named())
    }

    async fn decide(
        &self,
        request: &RequestInfo<'_>,
        now: SystemTime,
    ) -> Result<Principal, AuthError> {
        let token = match bearer::extract_with_query(request.headers, request.query) {
            Ok(Some(token)) => token,
            Ok(None) => return Err(AuthError::MissingToken),
            Err(fault) => return Err(AuthError::InvalidRequest(fault)),
        };
        let principal = self.validate(token, now).await?;
        if !request.policy.allows(&principal.scopes) {
            return Err(AuthError::InsufficientScope);
        }
        Ok(principal)
    }

    /// The token's principal, from the cache or by full validation.
    async fn validate(&self, token: &str, now: SystemTime) -> Result<Principal, AuthError> {
        if token.len() > self.max_token_size {
            return Err(AuthError::InvalidToken(TokenFault::Oversize));
        }
        let key = self.cache.enabled().then(|| TokenCache::key(token));
        if let Some(key) = &key {
            if let Some(hit) = self.cached(key, now) {
                self.metrics.token_cache.with_label_values(&["hit"]).inc();
                return Ok(hit);
            }
            self.metrics.token_cache.with_label_values(&["miss"]).inc();
        }
        if !jwt::looks_like_jwt(token) {
            return Err(AuthError::InvalidToken(TokenFault::NoValidator));
        }
        let parsed = jwt::parse(token, self.max_token_size).map_err(AuthError::InvalidToken)?;
        let iss = parsed
            .claims
            .iss
            .as_deref()
            .ok_or(AuthError::InvalidToken(TokenFault::UnknownIssuer))?;
        let index = *self
            .by_iss
            .get(iss)
            .ok_or(AuthError::InvalidToken(TokenFault::UnknownIssuer))?;
        let issuer = &self.issuers[index];
        if !issuer.keys.algorithms().contains(&parsed.alg) {
            return Err(AuthError::InvalidToken(TokenFault::AlgorithmNotAllowed));
        }
        let fingerprint = self.verify_signature(issuer, &parsed).await?;
        jwt::check_claims(&parsed.header, &parsed.claims, &issuer.rules, now)
            .map_err(AuthError::InvalidToken)?;
        let exp = parsed.claims.exp.map_or(0, |e| e.0);
        let principal = Principal {
            subject: parsed.claims.sub.clone(),
            client_id: parsed.claims.client_id.clone(),
            scopes: jwt::scopes(&parsed.claims, issuer.rules.scope_claim),
            issuer: issuer.keys.issuer().to_owned(),
            expires_at: UNIX_EPOCH + Duration::from_secs(u64::try_from(exp).unwrap_or(0)),
        };
        if let Some(key) = key {
            self.cache.insert(
                key,
                principal.clone(),
                index,
                fingerprint,
                exp,
                jwt::unix_seconds(now),
            );
        }
        Ok(principal)
    }

    /// A cache hit whose key is still in its issuer's set and whose `exp` has not passed.
    fn cached(&self, key: &[u8; 32], now: SystemTime) -> Option<Principal> {
        let hit = self.cache.get(key)?;
        let keys = self.issuers[hit.issuer].keys.current(Instant::now());
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
                snapshot = match issuer.keys.refetch().await {
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
                    snapshot = match issuer.keys.refetch().await {
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
