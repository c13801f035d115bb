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

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use url::Url;

use super::keys::{JwksError, KeySet, MAX_JWKS_BYTES};
use crate::config::{Algorithm, IssuerConfig, KeySource};
use crate::metrics::Metrics;

/// A key set and when it was fetched.
#[derive(Debug)]
pub struct Snapshot {
    pub keys: KeySet,
    pub fetched_at: Instant,
}

/// Why keys could not be fetched. Never shown to clients; logged and counted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("request to {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {source}")]
    Jwks {
        url: String,
        #[source]
        source: JwksError,
    },
    #[error("discovery metadata at {url} is invalid: {reason}")]
    Discovery { url: String, reason: &'static str },
    #[error("the HMAC secret variable {env} is unset or shorter than 32 bytes")]
    Secret { env: String },
}

impl FetchError {
    /// The bounded `result` label of `portcullis_jwks_fetch_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Http { .. } => "unreachable",
            FetchError::Status { .. } => "bad_status",
            FetchError::Jwks { .. } => "bad_jwks",
            FetchError::Discovery { .. } => "bad_discovery",
            FetchError::Secret { .. } => "bad_secret",
        }
    }
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
        }
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
    /// sooner after a failure. Ends when the last strong reference to the keys is dropped.
    pub async fn refresh_loop(keys: Weak<IssuerKeys>) {
        let mut failures = 0u32;
        loop {
            let Some(this) = keys.upgrade() else { return };
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
                tracing::warn!(issuer, error = %e, "key fetch failed; keeping the last good keys");
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
        if let KeySource::HmacSecret { env } = &self.config.keys {
            let secret = std::env::var(env).ok().filter(|s| s.len() >= 32);
            let secret = secret.ok_or_else(|| FetchError::Secret { env: env.clone() })?;
            return Ok((
                KeySet::from_hmac_secret(secret.as_bytes(), &self.config.algorithms),
                self.config.jwks_refresh,
            ));
        }
        let url = match self.jwks_uri.load_full() {
            Some(url) => url,
            None => {
                let url = Arc::new(self.discover().await?);
                self.jwks_uri.store(Some(url.clone()));
                url
            }
        };
        let (body, max_age) = self.get(&url).await?;
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

    /// OpenID Connect Discovery first, then RFC 8414 metadata.
    async fn discover(&self) -> Result<Url, FetchError> {
        let issuer = &self.config.issuer;
        let parsed = Url::parse(issuer).map_err(|_| FetchError::Discovery {
            url: issuer.clone(),
            reason: "the issuer is not a URL",
        })?;
        let oidc = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let path = parsed.path().trim_end_matches('/');
        let rfc8414 = format!(
            "{}/.well-known/oauth-authorization-server{path}",
            parsed.origin().ascii_serialization()
        );
        let mut last = None;
        for candidate in [oidc, rfc8414] {
            let url = Url::parse(&candidate).expect("built from a valid URL");
            match self.get(&url).await {
                Ok((body, _)) => return self.read_metadata(&url, &body),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("two candidates were tried"))
    }

    fn read_metadata(&self, url: &Url, body: &[u8]) -> Result<Url, FetchError> {
        #[derive(serde::Deserialize)]
        struct Metadata {
            issuer: String,
            jwks_uri: Option<String>,
        }
        let bad = |reason| FetchError::Discovery {
            url: url.to_string(),
            reason,
        };
        let m: Metadata =
            serde_json::from_slice(body).map_err(|_| bad("not a JSON object with `issuer`"))?;
        if m.issuer != self.config.issuer {
            return Err(bad("its `issuer` differs from the configured issuer"));
        }
        let jwks = m
            .jwks_uri
            .and_then(|u| Url::parse(&u).ok())
            .ok_or(bad("no valid `jwks_uri`"))?;
        let loopback = jwks.host().is_some_and(|h| match h {
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
            url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        });
        let secure = jwks.scheme() == "https"
            || (jwks.scheme() == "http" && (loopback || self.config.allow_insecure_http));
        if !secure {
            return Err(bad("its `jwks_uri` is not https"));
        }
        Ok(jwks)
    }

    /// GET with a body cap; returns the body and the response's `Cache-Control: max-age`.
    async fn get(&self, url: &Url) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let http_error = |e: reqwest::Error| FetchError::Http {
            url: url.to_string(),
            reason: e.without_url().to_string(),
        };
        let mut resp = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(http_error)?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        let too_large = || FetchError::Jwks {
            url: url.to_string(),
            source: JwksError::TooLarge,
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
        {
            return Err(too_large());
        }
        let max_age = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(http_error)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }
}

/// `max-age=N` from a Cache-Control value.
fn max_age(value: &str) -> Option<Duration> {
    value
        .split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|n| n.trim_matches('"').parse().ok())
        .map(Duration::from_secs)
}

/// The shared HTTP client for key, discovery and introspection requests: bounded timeouts,
/// redirects only within the same origin.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::custom(|attempt| {
            let same_origin = attempt
                .previous()
                .first()
                .is_some_and(|first| first.origin() == attempt.url().origin());
            if same_origin && attempt.previous().len() < 3 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        }))
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a TLS backend is compiled in")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_usable_until_max_stale_then_not() {
        let issuer = IssuerConfig {
            issuer: "https://id".into(),
            keys: KeySource::HmacSecret {
                env: "UNUSED".into(),
            },
            audiences: vec!["a".into()],
            algorithms: vec![Algorithm::HS256],
            leeway: Duration::from_secs(30),
            jwks_refresh: Duration::from_secs(300),
            jwks_max_stale: Duration::from_secs(3600),
            jwks_min_refetch: Duration::from_secs(10),
            require_typ: false,
            scope_claim: crate::config::ScopeClaim::Scope,
            max_token_lifetime: None,
            allow_insecure_http: false,
        };
        let metrics = Metrics::new(prometheus::Registry::new()).unwrap();
        let keys = IssuerKeys::new(issuer, http_client(), metrics);
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

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=120"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            max_age("max-age=\"60\", must-revalidate"),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age("no-cache"), None);
        assert_eq!(max_age("max-age=soon"), None);
    }
}
