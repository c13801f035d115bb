//! Replay protection for DPoP proofs (RFC 9449 §11.1): a proof's `jti` is accepted once while
//! its `iat` is inside the window, per key (the key of an entry is a hash of the key thumbprint
//! and the `jti`, never the proof).
//!
//! - In memory (the default): a bounded moka cache, atomic per key. A replica sees only its own
//!   proofs, so behind a load balancer a proof can be replayed once per replica.
//! - In Redis: one `SET key 1 NX PX <ttl>` per proof, shared by every replica. An unreachable
//!   or slow Redis fails closed (503), as an unreachable identity provider does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use moka::notification::RemovalCause;
use moka::sync::Cache;

/// The shared store cannot be asked: the request is answered 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUnavailable;

/// The replay key of a proof: BLAKE2b-128 over the thumbprint and the `jti`, length-prefixed.
pub fn key(jkt: &str, jti: &str) -> [u8; 16] {
    let mut state = blake2b_simd::Params::new().hash_length(16).to_state();
    state.update(&(jkt.len() as u64).to_be_bytes());
    state.update(jkt.as_bytes());
    state.update(jti.as_bytes());
    state
        .finalize()
        .as_bytes()
        .try_into()
        .expect("16-byte hash")
}

/// Where seen proofs are kept.
pub enum ReplayStore {
    Memory(Cache<[u8; 16], ()>),
    Redis(RedisStore),
}

impl ReplayStore {
    /// An in-memory store of at most `capacity` proofs, each kept for `ttl`. `evicted` counts
    /// proofs dropped for room before their time: a replay of one would not be noticed, so
    /// it is a metric to alert on.
    pub fn memory(capacity: u64, ttl: Duration, evicted: prometheus::IntCounter) -> ReplayStore {
        ReplayStore::Memory(
            Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                // Newest first: a proof near the end of its window goes before a fresh one.
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .eviction_listener(move |_, _, cause| {
                    if cause == RemovalCause::Size {
                        evicted.inc();
                    }
                })
                .build(),
        )
    }

    /// Whether this is the first use of `key` within `ttl`; the use is recorded.
    pub async fn first_use(&self, key: [u8; 16], ttl: Duration) -> Result<bool, StoreUnavailable> {
        match self {
            ReplayStore::Memory(cache) => Ok(cache.entry(key).or_insert(()).is_fresh()),
            ReplayStore::Redis(redis) => redis.first_use(key, ttl).await,
        }
    }

    /// Proofs kept in memory now (0 for Redis).
    pub fn entries(&self) -> u64 {
        match self {
            ReplayStore::Memory(cache) => cache.entry_count(),
            ReplayStore::Redis(_) => 0,
        }
    }
}

/// Why `url` cannot name a replay store, for the config's message.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err("must start with redis:// (or rediss:// for TLS)".into());
    }
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| e.to_string())
}

static NEXT_STORE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// One multiplexed connection per store and thread: each worker's runtime drives its own,
    /// so no worker waits on another's, and none outlives the runtime that drives it.
    static CONNECTIONS: RefCell<HashMap<usize, redis::aio::ConnectionManager>> =
        RefCell::new(HashMap::new());
}

/// Proofs kept in Redis, under `prefix` + the hex of the replay key.
pub struct RedisStore {
    id: usize,
    /// `None` when the URL does not parse: every call fails, closed.
    client: Option<redis::Client>,
    prefix: String,
    timeout: Duration,
}

impl RedisStore {
    /// A store at `url` (`redis://` or `rediss://`); nothing connects until the first proof.
    pub fn new(url: &str, prefix: String, timeout: Duration) -> RedisStore {
        RedisStore {
            id: NEXT_STORE.fetch_add(1, Ordering::Relaxed),
            client: redis::Client::open(url).ok(),
            prefix,
            timeout,
        }
    }

    fn connection(&self) -> Option<redis::aio::ConnectionManager> {
        CONNECTIONS.with(|c| {
            let mut map = c.borrow_mut();
            if let Some(conn) = map.get(&self.id) {
                return Some(conn.clone());
            }
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(self.timeout))
                .set_response_timeout(Some(self.timeout))
                .set_number_of_retries(1)
                .set_max_delay(self.timeout);
            let client = self.client.clone()?;
            let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config).ok()?;
            map.insert(self.id, conn.clone());
            Some(conn)
        })
    }

    async fn first_use(&self, key: [u8; 16], ttl: Duration) -> Result<bool, StoreUnavailable> {
        let mut conn = self.connection().ok_or(StoreUnavailable)?;
        let mut name = String::with_capacity(self.prefix.len() + 32);
        name.push_str(&self.prefix);
        for b in key {
            name.push_str(&format!("{b:02x}"));
        }
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(&name).arg(1).arg("NX").arg("PX").arg(millis);
        let answer =
            tokio::time::timeout(self.timeout, cmd.query_async::<Option<String>>(&mut conn));
        match answer.await {
            Ok(Ok(Some(_))) => Ok(true),
            Ok(Ok(None)) => Ok(false),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the DPoP replay store failed");
                Err(StoreUnavailable)
            }
            Err(_) => {
                tracing::warn!("the DPoP replay store did not answer in time");
                Err(StoreUnavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_thumbprint_and_jti() {
        assert_ne!(key("ab", "c"), key("a", "bc"));
        assert_ne!(key("k1", "j"), key("k2", "j"));
        assert_eq!(key("k", "j"), key("k", "j"));
    }

    #[tokio::test]
    async fn memory_store_accepts_a_proof_once_and_counts_evictions() {
        let evicted = prometheus::IntCounter::new("e", "e").unwrap();
        let store = ReplayStore::memory(1000, Duration::from_secs(60), evicted.clone());
        let ttl = Duration::from_secs(60);
        assert_eq!(store.first_use(key("k", "1"), ttl).await, Ok(true));
        assert_eq!(store.first_use(key("k", "1"), ttl).await, Ok(false));
        assert_eq!(store.first_use(key("k", "2"), ttl).await, Ok(true));
        assert_eq!(store.first_use(key("other", "1"), ttl).await, Ok(true));
        assert_eq!(evicted.get(), 0);
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_closed_within_the_timeout() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = dead.local_addr().unwrap();
        drop(dead);
        let store = ReplayStore::Redis(RedisStore::new(
            &format!("redis://{addr}"),
            "p:".into(),
            Duration::from_millis(200),
        ));
        let started = std::time::Instant::now();
        let answer = store
            .first_use(key("k", "1"), Duration::from_secs(60))
            .await;
        assert_eq!(answer, Err(StoreUnavailable));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
