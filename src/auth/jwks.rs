//! Per-issuer key sets over time: initial load, periodic refresh, refetch on an unknown `kid`.
//!
//! - Readers take no lock: the current [`Snapshot`] sits in an `ArcSwap`.
//! - A refresh that fails keeps the last good keys until they are `jwks_max_stale` old; after
//!   that, and before any keys ever loaded, [`IssuerKeys::current`] answers `None` (503).
//! - An unknown `kid` triggers one refetch, single-flight: concurrent callers await the same
//!   spawned fetch (a shared future), never a lock held across I/O. At most one refetch per
//!   `jwks_min_refetch`; a `kid` that left the set stops validating at once.
//! - Discovery (RFC 8414 §3, OpenID Connect Discovery §4): the metadata's `issuer` must equal the
//!   configured one exactly; `jwks_uri` must be https unless loopback or explicitly allowed.
//! - A redirect is followed only within the same origin; bodies are capped before parsing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use url::Url;

use super::error::Untrusted;
use super::fetch::{self, FetchError};
use super::keys::{KeySet, MAX_JWKS_BYTES};
use super::settings::{Algorithm, IssuerConfig, KeySource};
use crate::metrics::Metrics;

/// A key set and when it was fetched.
#[derive(Debug)]
pub struct Snapshot {
    pub keys: KeySet,
    pub fetched_at: Instant,
}

/// The outcome of asking for a refetch.
#[derive(Debug)]
pub enum Refetch {
    /// A fetch ran (now or just before): here is the newest snapshot.
    Done(Arc<Snapshot>),
    /// The last refetch was less than `jwks_min_refetch` ago; keys are as they were.
    RateLimited,
    /// The fetch failed.
    Failed,
}

type SharedFetch = Shared<BoxFuture<'static, bool>>;

/// One issuer's keys.
pub struct IssuerKeys {
    config: IssuerConfig,
    http: reqwest::Client,
    metrics: Metrics,
    current: ArcSwapOption<Snapshot>,
    jwks_uri: ArcSwapOption<Url>,
    inflight: Mutex<Option<SharedFetch>>,
    last_refetch: Mutex<Option<Instant>>,
    /// A reload removed or changed the issuer: its refresh loop ends and the verified-token
    /// cache trusts no entry it vouched for. Requests in flight on the old config still finish
    /// with it; new ones never see it.
    retired: AtomicBool,
    /// Its refresh loop has been handed out ([`IssuerKeys::claim_refresh`]).
    refreshing: AtomicBool,
}

impl IssuerKeys {
    pub fn new(config: IssuerConfig, http: reqwest::Client, metrics: Metrics) -> IssuerKeys {
        let jwks_uri = match &config.keys {
            KeySource::JwksUri(url) => Some(Arc::new(url.clone())),
            _ => None,
        };
        IssuerKeys {
            config,
            http,
            metrics,
            current: ArcSwapOption::empty(),
            jwks_uri: ArcSwapOption::new(jwks_uri),
            inflight: Mutex::new(None),
            last_refetch: Mutex::new(None),
            retired: AtomicBool::new(false),
            refreshing: AtomicBool::new(false),
        }
    }

    /// New keys for `config` that start with `previous`'s last good set (and discovered
    /// `jwks_uri`) when they come from the same place under the same rules: a reload that
    /// changes an issuer's claim rules (`leeway`, `audiences`) refetches, but a token is not
    /// refused meanwhile, nor is the issuer left without keys while its provider is down.
    pub fn seeded(
        config: IssuerConfig,
        http: reqwest::Client,
        metrics: Metrics,
        previous: &IssuerKeys,
    ) -> IssuerKeys {
        let old = &previous.config;
        let same_source = old.issuer == config.issuer
            && old.keys == config.keys
            && old.algorithms == config.algorithms
            && old.allow_insecure_http == config.allow_insecure_http
            && !matches!(config.keys, KeySource::HmacSecret(_));
        let keys = IssuerKeys::new(config, http, metrics);
        if same_source {
            keys.current.store(previous.current.load_full());
            keys.jwks_uri.store(previous.jwks_uri.load_full());
        }
        keys
    }

    /// The settings the keys were built from: a reload keeps the keys (no refetch) when the
    /// issuer's new settings are equal.
    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// A reload dropped (or changed) the issuer: end the refresh, and distrust its cache entries.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    pub fn retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// True once only: whether the caller is the one to run [`IssuerKeys::refresh_loop`]
    /// (keys kept across a reload already have theirs).
    pub fn claim_refresh(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    pub fn algorithms(&self) -> &[Algorithm] {
        &self.config.algorithms
    }

    /// Usable keys, unless none ever loaded or the last good ones are older than `jwks_max_stale`.
    pub fn current(&self, now: Instant) -> Option<Arc<Snapshot>> {
        self.current
            .load_full()
            .filter(|s| now.saturating_duration_since(s.fetched_at) <= self.config.jwks_max_stale)
    }

    /// Whether keys have loaded at least once (readiness).
    pub fn loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Age of the current keys, for `portcullis_jwks_age_seconds`.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.current
            .load()
            .as_ref()
            .map(|s| now.saturating_duration_since(s.fetched_at))
    }

    /// Fetch now, because a token named an unknown `kid`. Single-flight and rate-limited.
    pub async fn refetch(self: &Arc<Self>) -> Refetch {
        let fetch = {
            let mut inflight = self.inflight.lock().expect("not poisoned");
            match inflight.as_ref() {
                Some(f) => f.clone(),
                None => {
                    let mut last = self.last_refetch.lock().expect("not poisoned");
                    let now = Instant::now();
                    if last.is_some_and(|t| now.duration_since(t) < self.config.jwks_min_refetch) {
                        return Refetch::RateLimited;
                    }
                    *last = Some(now);
                    let this = self.clone();
                    let task = tokio::spawn(async move {
                        let ok = this.fetch_and_store().await.is_ok();
                        *this.inflight.lock().expect("not poisoned") = None;
                        ok
                    });
                    let f = task.map(|joined| joined.unwrap_or(false)).boxed().shared();
                    *inflight = Some(f.clone());
                    f
                }
            }
        };
        match fetch.await {
            true => self
                .current
                .load_full()
                .map_or(Refetch::Failed, Refetch::Done),
            false => Refetch::Failed,
        }
    }

    /// The refresh loop: fetch, then again after `jwks_refresh` (or the response's max-age), or
    /// sooner after a failure. Ends when the last strong reference to the keys is dropped, or
    /// when a reload retires them.
    pub async fn refresh_loop(keys: Weak<IssuerKeys>) {
        let mut failures = 0u32;
        loop {
            let Some(this) = keys.upgrade().filter(|k| !k.retired()) else {
                return;
            };
            let wait = match this.fetch_and_store().await {
                Ok(next) => {
                    failures = 0;
                    next
                }
                Err(_) => {
                    failures = failures.saturating_add(1);
                    // 1s, 2s, 4s ... capped at 30s and at the refresh interval.
                    let backoff = Duration::from_secs(1u64 << failures.min(5).saturating_sub(1));
                    backoff
                        .min(Duration::from_secs(30))
                        .min(this.config.jwks_refresh)
                }
            };
            drop(this);
            tokio::time::sleep(wait).await;
        }
    }

    /// Fetch and, on success, swap in the new keys. Returns when to refresh next.
    async fn fetch_and_store(&self) -> Result<Duration, FetchError> {
        let result = self.fetch().await;
        let issuer = self.config.issuer.as_str();
        match &result {
            Ok((keys, _)) => {
                self.metrics
                    .jwks_fetches
                    .with_label_values(&[issuer, "ok"])
                    .inc();
                self.metrics
                    .jwks_keys
                    .with_label_values(&[issuer])
                    .set(keys.len() as i64);
                tracing::debug!(
                    issuer,
                    keys = keys.len(),
                    skipped = keys.skipped,
                    "keys loaded"
                );
            }
            Err(e) => {
                self.metrics
                    .jwks_fetches
                    .with_label_values(&[issuer, e.kind()])
                    .inc();
                tracing::warn!(issuer, error = %Untrusted(&e), "key fetch failed; keeping the last good keys");
            }
        }
        let (keys, next) = result?;
        self.current.store(Some(Arc::new(Snapshot {
            keys,
            fetched_at: Instant::now(),
        })));
        Ok(next)
    }

    async fn fetch(&self) -> Result<(KeySet, Duration), FetchError> {
        if let KeySource::HmacSecret(source) = &self.config.keys {
            let secret = source
                .read_at_least(crate::auth::settings::MIN_HMAC_SECRET_BYTES)
                .map_err(FetchError::Secret)?;
            return Ok((
                KeySet::from_hmac_secret(secret.as_bytes(), &self.config.algorithms),
                self.config.jwks_refresh,
            ));
        }
        let url = match self.jwks_uri.load_full() {
            Some(url) => url,
            None => {
                let metadata = fetch::discover(
                    &self.http,
                    &self.config.issuer,
                    self.config.allow_insecure_http,
                )
                .await?;
                let url = metadata.jwks_uri.ok_or(FetchError::Discovery {
                    url: self.config.issuer.clone(),
                    reason: "no `jwks_uri`",
                })?;
                let url = Arc::new(url);
                self.jwks_uri.store(Some(url.clone()));
                url
            }
        };
        let (body, max_age) = fetch::get(&self.http, &url, MAX_JWKS_BYTES).await?;
        let keys = KeySet::from_jwks(&body, &self.config.algorithms).map_err(|source| {
            FetchError::Jwks {
                url: url.to_string(),
                source,
            }
        })?;
        let next = max_age.map_or(self.config.jwks_refresh, |age| {
            age.clamp(Duration::from_secs(60), self.config.jwks_refresh)
        });
        Ok((keys, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_usable_until_max_stale_then_not() {
        let issuer = IssuerConfig {
            issuer: "https://id".into(),
            keys: KeySource::HmacSecret(crate::auth::settings::SecretSource::Env("UNUSED".into())),
            audiences: vec!["a".into()],
            algorithms: vec![Algorithm::HS256],
            leeway: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(300),
            jwks_max_stale: Duration::from_secs(3600),
            jwks_min_refetch: Duration::from_secs(10),
            require_typ: false,
            scope_claim: crate::auth::settings::ScopeClaim::Scope,
            max_token_lifetime: None,
            allow_insecure_http: false,
            require_dpop: false,
            ca_file: None,
        };
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        let keys = IssuerKeys::new(issuer, fetch::http_client(), metrics);
        let t0 = Instant::now();
        assert!(
            keys.current(t0).is_none() && !keys.loaded(),
            "nothing loaded yet"
        );
        keys.current.store(Some(Arc::new(Snapshot {
            keys: KeySet::from_hmac_secret(&[7; 32], &[Algorithm::HS256]),
            fetched_at: t0,
        })));
        assert!(keys.loaded());
        assert!(
            keys.current(t0 + Duration::from_secs(3600)).is_some(),
            "at max_stale"
        );
        assert!(
            keys.current(t0 + Duration::from_secs(3601)).is_none(),
            "past max_stale: 503, not stale keys"
        );
        assert_eq!(
            keys.age(t0 + Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
    }
}
