//! Opaque tokens: RFC 7662 token introspection with a cache that protects the authorization
//! server.
//!
//! - The request (RFC 7662 §2.1): `POST` form `token=...&token_type_hint=access_token`, with
//!   client authentication by HTTP Basic over the form-url-encoded id and secret
//!   (RFC 6749 §2.3.1) or by `client_id` / `client_secret` in the body.
//! - The answer (RFC 7662 §2.2): see [`answer`]. A 400 means the endpoint cannot introspect this
//!   token (some answer so for JWTs): an inactive token, not an outage.
//! - Failure is never the client's fault and never a pass: unreachable, timeout, any other
//!   status, a 401 to our own credentials, an unreadable or oversized answer, or no free call
//!   slot within [`SLOT_WAIT`] all give 503 (RFC 7662 §4: fail closed).
//! - The cache (moka) is keyed by the BLAKE2b-256 hash of the token. An active answer lives
//!   until `min(exp, cache_ttl)`, an inactive one for `negative_cache_ttl`; errors are never
//!   cached. Concurrent misses for one token share one call. Claims are cached, decisions are
//!   not.
//! - At most `max_in_flight` calls are outstanding; the endpoint sees a bounded load whatever
//!   arrives, and memory stays bounded by `cache_capacity`.

pub mod answer;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use http::HeaderValue;
use moka::future::Cache;
use tokio::sync::Semaphore;
use url::Url;

use self::answer::{Answer, BadAnswer, Claims, Expectations};
use super::claims::ClaimSet;
use super::error::Untrusted;
use super::fetch::{self, FetchError};
use super::{AuthError, Principal, TokenFault, TokenSource, Verified, RETRY_AFTER};
use crate::auth::settings::{ClientAuth, IntrospectionConfig};
use crate::metrics::Metrics;
use crate::spans::{CallKind, CallLog};

/// The largest answer read; a longer one is a bad answer (503).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How long a miss waits for a free call slot (within `timeout`) before it is refused with 503.
pub const SLOT_WAIT: Duration = Duration::from_millis(250);

/// Why a call gave no answer about the token. Logged and counted; the client sees 503.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no introspection endpoint: {0}")]
    Discovery(#[source] FetchError),
    #[error("all {0} introspection slots stayed busy")]
    Overloaded(usize),
    #[error("the introspection call timed out")]
    Timeout,
    #[error("{0}")]
    Fetch(#[source] FetchError),
    #[error("the endpoint refused the gateway's client credentials ({status})")]
    Unauthorized { status: u16 },
    #[error("the endpoint answered {status}")]
    Status { status: u16 },
    #[error("unreadable answer: {0}")]
    BadAnswer(#[source] BadAnswer),
    #[error("the client secret (client_secret_{0}) could not be read")]
    NoSecret(&'static str),
}

impl CallError {
    /// The `result` label of `portcullis_introspection_requests_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Discovery(_) => "no_endpoint",
            CallError::Overloaded(_) => "overloaded",
            CallError::Timeout => "timeout",
            CallError::Fetch(FetchError::TooLarge { .. }) => "bad_answer",
            CallError::Fetch(_) => "unreachable",
            CallError::Unauthorized { .. } => "unauthorized",
            CallError::Status { .. } => "bad_status",
            CallError::BadAnswer(_) => "bad_answer",
            CallError::NoSecret(_) => "no_secret",
        }
    }
}

/// A cached answer and how long it may be kept.
#[derive(Debug)]
struct Entry {
    answer: Answer,
    /// The principal of an active answer, built once for every request that presents it, or
    /// why the token is refused (inactive, or claims that cannot be identity headers).
    principal: Result<Arc<Principal>, TokenFault>,
    ttl: Duration,
}

struct ByEntry;

impl moka::Expiry<[u8; 32], Arc<Entry>> for ByEntry {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        value: &Arc<Entry>,
        _: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The client secret: never printed.
struct Secret(String);

/// Validates opaque tokens at the authorization server.
pub struct Introspector {
    config: IntrospectionConfig,
    expect: Expectations,
    http: reqwest::Client,
    secret: Option<Secret>,
    endpoint: ArcSwapOption<Url>,
    discovery: tokio::sync::Mutex<Option<Instant>>,
    cache: Option<Cache<[u8; 32], Arc<Entry>>>,
    slots: Semaphore,
    metrics: Metrics,
    /// Keep each active answer's whole claim set with its principal.
    keep_claims: bool,
    /// A reload replaced this client: its discovery loop ends.
    retired: std::sync::atomic::AtomicBool,
    /// Its discovery loop has been handed out.
    discovering: std::sync::atomic::AtomicBool,
}

/// Counts a call in `portcullis_introspection_in_flight` while it lives.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> InFlight<'a> {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// After a failed discovery, callers get 503 at once for this long instead of retrying.
const DISCOVERY_BACKOFF: Duration = Duration::from_secs(5);

impl Introspector {
    /// The client secret is read now (a file again on every reload); when it is missing, every call
    /// fails with 503 (the gateway refuses to start in that case, see `app`).
    pub fn new(
        config: IntrospectionConfig,
        http: reqwest::Client,
        metrics: Metrics,
    ) -> Introspector {
        let secret = config.client_secret.read().ok().map(Secret);
        let cache = (config.cache_capacity > 0).then(|| {
            Cache::builder()
                .max_capacity(config.cache_capacity)
                .expire_after(ByEntry)
                .build()
        });
        Introspector {
            expect: Expectations {
                audiences: config.audiences.clone(),
                issuer: config.issuer.clone(),
                leeway: i64::try_from(config.leeway.as_secs()).unwrap_or(i64::MAX),
            },
            http,
            secret,
            endpoint: ArcSwapOption::new(config.endpoint.clone().map(Arc::new)),
            discovery: tokio::sync::Mutex::new(None),
            cache,
            slots: Semaphore::new(config.max_in_flight),
            metrics,
            config,
            keep_claims: false,
            retired: Default::default(),
            discovering: Default::default(),
        }
    }

    /// Whether a reloaded config can keep this client (and its cache and discovered endpoint):
    /// the same settings, the same claim keeping, and the same client secret now.
    pub fn same_settings(&self, config: &IntrospectionConfig, keep_claims: bool) -> bool {
        let secret = config.client_secret.read().ok();
        self.config == *config
            && self.keep_claims == keep_claims
            && self.secret.as_ref().map(|s| s.0.as_str()) == secret.as_deref()
    }

    /// A reload replaced this client.
    pub fn retire(&self) {
        self.retired
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// True once only: whether the caller is the one to run [`Introspector::discover_loop`].
    pub fn claim_discovery(&self) -> bool {
        !self
            .discovering
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// Keep every active answer's whole claim set with its principal, for claim rules and
    /// claim headers (`AuthConfig::keep_claims`).
    pub fn keeping_claims(mut self, keep: bool) -> Introspector {
        self.keep_claims = keep;
        self
    }

    /// Whether the client secret was found in the environment.
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// Whether the endpoint is known (configured, or discovered already).
    pub fn endpoint_known(&self) -> bool {
        self.endpoint.load().is_some()
    }

    /// The principal of an opaque token, from the cache or the endpoint. `key` is the token's
    /// cache key ([`TokenCache::key`](crate::auth::TokenCache::key)) when the caller has it
    /// already; `now` decides `exp` / `nbf` on every use, cached or not.
    pub async fn validate(
        &self,
        token: &str,
        key: Option<[u8; 32]>,
        now: SystemTime,
        calls: Option<&CallLog>,
    ) -> Result<Arc<Principal>, AuthError> {
        let answer = self.answer(token, key, calls).await.map_err(|e| {
            tracing::warn!(error = %Untrusted(&e), "introspection failed; answering 503");
            AuthError::IdpUnavailable {
                retry_after: RETRY_AFTER,
            }
        })?;
        let Answer::Active(claims) = &answer.answer else {
            return Err(AuthError::InvalidToken(TokenFault::Inactive));
        };
        claims
            .check(&self.expect, super::jwt::unix_seconds(now))
            .map_err(AuthError::InvalidToken)?;
        answer.principal.clone().map_err(AuthError::InvalidToken)
    }

    /// Who an active answer speaks for; `whole`: the answer's every member, when kept (`None`
    /// inside: the answer cannot be read whole, which refuses the token).
    fn principal_of(
        &self,
        claims: &Claims,
        whole: Option<Option<ClaimSet>>,
    ) -> Result<Principal, TokenFault> {
        let whole = match whole {
            Some(None) => return Err(TokenFault::Malformed),
            Some(Some(set)) => Some(set),
            None => None,
        };
        let verified = Verified {
            issuer_configured: self.config.issuer.is_some(),
            audiences: claims.aud.clone(),
            acr: claims.acr.clone(),
            auth_time: claims.auth_time,
            encoded: whole.as_ref().map(crate::auth::claims::encode),
            claims: whole.map(Arc::new),
            jkt: claims.jkt.clone(),
            x5t: claims.x5t.clone(),
            dpop_required: self.config.require_dpop,
        };
        Principal::new(
            claims.sub.clone(),
            claims.client_id.clone(),
            claims.scopes.clone(),
            claims
                .iss
                .clone()
                .or_else(|| self.config.issuer.clone())
                .unwrap_or_else(|| self.origin()),
            claims
                .exp
                .and_then(|e| u64::try_from(e).ok())
                .map(|e| UNIX_EPOCH + Duration::from_secs(e)),
            TokenSource::Introspection,
        )
        .map(|p| p.with_verified(verified))
    }

    /// Refresh the entry-count gauge (moka counts lazily: apply pending work first).
    pub async fn update_gauges(&self) {
        if let Some(cache) = &self.cache {
            cache.run_pending_tasks().await;
            self.metrics
                .introspection_cache_entries
                .set(i64::try_from(cache.entry_count()).unwrap_or(i64::MAX));
        }
    }

    /// Discover the endpoint until it is known (a background task at start). Ends at once when
    /// the endpoint is configured.
    pub async fn discover_loop(this: std::sync::Weak<Introspector>) {
        let mut wait = Duration::from_secs(1);
        loop {
            let Some(me) = this.upgrade() else { return };
            if me.retired.load(std::sync::atomic::Ordering::Acquire) || me.endpoint().await.is_ok()
            {
                return;
            }
            drop(me);
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    async fn answer(
        &self,
        token: &str,
        key: Option<[u8; 32]>,
        calls: Option<&CallLog>,
    ) -> Result<Arc<Entry>, Arc<CallError>> {
        let requests = &self.metrics.introspection_cache;
        let pending = calls.map(|c| c.start(CallKind::Introspection));
        let traceparent = calls.zip(pending.as_ref()).map(|(c, p)| c.traceparent(p));
        let record = |result: Result<Arc<Entry>, Arc<CallError>>| {
            if let (Some(calls), Some(pending)) = (calls, pending) {
                let label = match &result {
                    Ok(entry) if matches!(entry.answer, Answer::Active(_)) => "active",
                    Ok(_) => "inactive",
                    Err(_) => "failed",
                };
                let issuer = self.config.issuer.clone().unwrap_or_else(|| self.origin());
                calls.finish(pending, &issuer, label);
            }
            result
        };
        let Some(cache) = &self.cache else {
            requests.with_label_values(&["miss"]).inc();
            let result = Box::pin(self.call(token, traceparent)).await;
            return record(result.map(Arc::new).map_err(Arc::new));
        };
        let key = key.unwrap_or_else(|| super::TokenCache::key(token));
        if let Some(hit) = cache.get(&key).await {
            let label = match hit.answer {
                Answer::Active(_) => "hit",
                Answer::Inactive => "negative_hit",
            };
            requests.with_label_values(&[label]).inc();
            // A hit is no call: nothing is recorded.
            return Ok(hit);
        }
        requests.with_label_values(&["miss"]).inc();
        // Concurrent misses for one key wait for the first one's call; errors are not cached.
        // Boxed: the call's future is kilobytes, and a cache hit should not carry its size.
        let call = async { self.call(token, traceparent).await.map(Arc::new) };
        record(Box::pin(cache.try_get_with(key, call)).await)
    }

    /// One call, bounded by `timeout` in total (waiting for a slot included), counted.
    /// `traceparent`: the call's span, when the request's trace is sampled.
    async fn call(
        &self,
        token: &str,
        traceparent: Option<HeaderValue>,
    ) -> Result<Entry, CallError> {
        let slot = self.call_in_slot(token, traceparent);
        let result = tokio::time::timeout(self.config.timeout, slot)
            .await
            .unwrap_or(Err(CallError::Timeout));
        let label = match &result {
            Ok(Entry {
                answer: Answer::Active(_),
                ..
            }) => "active",
            Ok(_) => "inactive",
            Err(e) => e.kind(),
        };
        self.metrics
            .introspection_requests
            .with_label_values(&[label])
            .inc();
        if let Err(e @ (CallError::Unauthorized { .. } | CallError::NoSecret(_))) = &result {
            tracing::error!(
                client_id = %self.config.client_id,
                error = %Untrusted(e),
                "introspection: the authorization server does not accept the gateway's client credentials; every opaque token is refused with 503 until this is fixed"
            );
        }
        result
    }

    async fn call_in_slot(
        &self,
        token: &str,
        traceparent: Option<HeaderValue>,
    ) -> Result<Entry, CallError> {
        let secret = self
            .secret
            .as_ref()
            .ok_or(CallError::NoSecret(self.config.client_secret.suffix()))?;
        let endpoint = self.endpoint().await.map_err(CallError::Discovery)?;
        let _permit = tokio::time::timeout(SLOT_WAIT, self.slots.acquire())
            .await
            .map_err(|_| CallError::Overloaded(self.config.max_in_flight))?
            .expect("the semaphore is never closed");
        let _in_flight = InFlight::new(&self.metrics.introspection_in_flight);
        let started = Instant::now();
        let result = self.post(&endpoint, token, secret, traceparent).await;
        self.metrics
            .introspection_duration
            .observe(started.elapsed().as_secs_f64());
        let (answer, whole) = result?;
        let ttl = match &answer {
            Answer::Active(claims) => {
                let left = claims.exp.map_or(self.config.cache_ttl, |exp| {
                    let now = super::jwt::unix_seconds(SystemTime::now());
                    Duration::from_secs(u64::try_from(exp.saturating_sub(now)).unwrap_or(0))
                });
                left.min(self.config.cache_ttl)
            }
            Answer::Inactive => self.config.negative_cache_ttl,
        };
        let principal = match &answer {
            Answer::Active(claims) => self.principal_of(claims, whole).map(Arc::new),
            Answer::Inactive => Err(TokenFault::Inactive),
        };
        Ok(Entry {
            answer,
            principal,
            ttl,
        })
    }

    /// The RFC 7662 §2.1 request and its answer.
    async fn post(
        &self,
        endpoint: &Url,
        token: &str,
        secret: &Secret,
        traceparent: Option<HeaderValue>,
    ) -> Result<(Answer, Option<Option<ClaimSet>>), CallError> {
        let mut request = self.request(endpoint, token, secret);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        let response = request.send().await.map_err(|e| match e.is_timeout() {
            true => CallError::Timeout,
            false => CallError::Fetch(fetch::http_error(endpoint, e)),
        })?;
        match response.status().as_u16() {
            200 => {}
            400 => return Ok((Answer::Inactive, None)),
            status @ (401 | 403) => return Err(CallError::Unauthorized { status }),
            status => return Err(CallError::Status { status }),
        }
        let body = fetch::read_capped(endpoint, response, MAX_ANSWER_BYTES)
            .await
            .map_err(CallError::Fetch)?;
        let answer = answer::parse(&body).map_err(CallError::BadAnswer)?;
        // An active answer is a JSON object already; its members are the claim set, read whole
        // or not at all (a repeated member name refuses the token, below).
        let whole = (self.keep_claims && matches!(answer, Answer::Active(_)))
            .then(|| crate::auth::claims::parse_claim_set(&body));
        Ok((answer, whole))
    }

    /// `POST` form `token=...&token_type_hint=access_token`, form-url-encoded, with the client
    /// authentication of `auth_method`.
    fn request(&self, endpoint: &Url, token: &str, secret: &Secret) -> reqwest::RequestBuilder {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("token", token)
            .append_pair("token_type_hint", "access_token");
        let mut request = self
            .http
            .post(endpoint.clone())
            .timeout(self.config.timeout)
            .header(reqwest::header::ACCEPT, "application/json")
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        match self.config.auth_method {
            ClientAuth::Basic => {
                request = request.header(
                    reqwest::header::AUTHORIZATION,
                    basic_credentials(&self.config.client_id, &secret.0),
                );
            }
            ClientAuth::Post => {
                form.append_pair("client_id", &self.config.client_id)
                    .append_pair("client_secret", &secret.0);
            }
        }
        request.body(form.finish())
    }

    /// The configured endpoint, or the one from `issuer`'s discovery metadata (RFC 8414 §2
    /// `introspection_endpoint`). One discovery at a time; after a failure, none for
    /// [`DISCOVERY_BACKOFF`].
    async fn endpoint(&self) -> Result<Arc<Url>, FetchError> {
        if let Some(url) = self.endpoint.load_full() {
            return Ok(url);
        }
        let issuer = self.config.issuer.as_deref().unwrap_or_default();
        let unavailable = || FetchError::Discovery {
            url: issuer.to_owned(),
            reason: "discovery failed moments ago",
        };
        let mut last_failure = self.discovery.lock().await;
        if let Some(url) = self.endpoint.load_full() {
            return Ok(url);
        }
        if last_failure.is_some_and(|t| t.elapsed() < DISCOVERY_BACKOFF) {
            return Err(unavailable());
        }
        let found = fetch::discover(&self.http, issuer, self.config.allow_insecure_http)
            .await
            .and_then(|m| {
                m.introspection_endpoint.ok_or(FetchError::Discovery {
                    url: issuer.to_owned(),
                    reason: "the metadata names no `introspection_endpoint`",
                })
            });
        match found {
            Ok(url) => {
                let url = Arc::new(url);
                self.endpoint.store(Some(url.clone()));
                Ok(url)
            }
            Err(e) => {
                *last_failure = Some(Instant::now());
                tracing::warn!(issuer, error = %Untrusted(&e), "introspection endpoint discovery failed");
                Err(e)
            }
        }
    }

    /// Where answers without `iss` come from, for `X-Auth-Issuer`.
    fn origin(&self) -> String {
        self.endpoint
            .load()
            .as_ref()
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default()
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1), marked sensitive so
/// that no HTTP-level logging prints it.
fn basic_credentials(client_id: &str, secret: &str) -> reqwest::header::HeaderValue {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let raw = format!("{}:{}", encode(client_id), encode(secret));
    let value = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    );
    let mut header =
        reqwest::header::HeaderValue::from_str(&value).expect("base64 is a valid header value");
    header.set_sensitive(true);
    header
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        let h = basic_credentials("my client", "p@ss:w+rd%");
        let b64 = h.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert_eq!(
            String::from_utf8(raw).unwrap(),
            "my+client:p%40ss%3Aw%2Brd%25"
        );
        assert!(h.is_sensitive());
    }
}
