//! Replay protection for DPoP proofs (RFC 9449 §11.1): a proof's `jti` is accepted once while
//! its `iat` is inside the window, per key (the key of an entry is a hash of the key thumbprint
//! and the `jti`, never the proof).
//!
//! - In memory (the default): a bounded set, split in shards. An entry stays until its window
//!   has passed, never less: when the set is full of live entries a new proof is refused (503),
//!   since dropping an entry early would let its proof be replayed (red team: a client flooding
//!   its own proofs made a cache with eviction forget a victim's). A replica sees only its own
//!   proofs, so behind a load balancer a proof can be replayed once per replica.
//! - In Redis: one `SET key 1 NX PX <ttl>` per proof, shared by every replica. An unreachable
//!   or slow Redis fails closed (503), as an unreachable identity provider does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The store cannot take the proof: Redis did not answer, or the in-memory set is full of
/// live entries. The request is answered 503.
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
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl ReplayStore {
    /// An in-memory store of at most `capacity` live proofs. `full` counts proofs refused
    /// because it was full.
    pub fn memory(capacity: u64, full: prometheus::IntCounter) -> ReplayStore {
        ReplayStore::Memory(MemoryStore::new(capacity, full))
    }

    /// Whether this is the first use of `key` within `ttl`; the use is recorded.
    pub async fn first_use(&self, key: [u8; 16], ttl: Duration) -> Result<bool, StoreUnavailable> {
        match self {
            ReplayStore::Memory(m) => m.first_use(key, ttl, Instant::now()),
            ReplayStore::Redis(redis) => redis.first_use(key, ttl).await,
        }
    }

    /// Proofs kept in memory now (0 for Redis).
    pub fn entries(&self) -> u64 {
        match self {
            ReplayStore::Memory(m) => m.len.load(Ordering::Relaxed),
            ReplayStore::Redis(_) => 0,
        }
    }
}

/// Shards of the in-memory set: a request holds one shard's lock for one map operation (and,
/// at most once a second per shard, a sweep of that shard's expired entries), so requests on
/// other shards never wait.
const SHARDS: usize = 64;

struct Shard {
    /// Replay key -> when its window ends.
    entries: HashMap<[u8; 16], Instant>,
    next_sweep: Instant,
}

/// The in-memory replay set.
pub struct MemoryStore {
    shards: Vec<Mutex<Shard>>,
    capacity: u64,
    len: AtomicU64,
    full: prometheus::IntCounter,
    created: Instant,
    /// When, in milliseconds after `created`, a full set may next sweep every shard: once per
    /// [`FULL_SWEEP_EVERY`], so a flood against a full set costs one sweep, not one per request.
    next_full_sweep: AtomicU64,
}

/// How often a full set sweeps every shard for expired entries.
const FULL_SWEEP_EVERY: Duration = Duration::from_millis(250);

impl MemoryStore {
    fn new(capacity: u64, full: prometheus::IntCounter) -> MemoryStore {
        let now = Instant::now();
        MemoryStore {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::new(),
                        next_sweep: now,
                    })
                })
                .collect(),
            capacity,
            len: AtomicU64::new(0),
            full,
            created: now,
            next_full_sweep: AtomicU64::new(0),
        }
    }

    fn first_use(
        &self,
        key: [u8; 16],
        ttl: Duration,
        now: Instant,
    ) -> Result<bool, StoreUnavailable> {
        if self.len.load(Ordering::Relaxed) >= self.capacity {
            self.sweep_all(now);
        }
        let mut shard = self.lock(usize::from(key[0]) % SHARDS);
        if now >= shard.next_sweep {
            self.sweep(&mut shard, now);
        }
        if let Some(&until) = shard.entries.get(&key) {
            if until > now {
                return Ok(false);
            }
        }
        if self.len.load(Ordering::Relaxed) >= self.capacity {
            self.full.inc();
            return Err(StoreUnavailable);
        }
        if shard.entries.insert(key, now + ttl).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// A poisoned lock means a panic mid-operation elsewhere; the map is still consistent
    /// (every operation is one map call), so it is used as it is.
    fn lock(&self, i: usize) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sweep every shard, one at a time, unless another request did so moments ago.
    fn sweep_all(&self, now: Instant) {
        let at = u64::try_from(now.saturating_duration_since(self.created).as_millis())
            .unwrap_or(u64::MAX);
        let next = self.next_full_sweep.load(Ordering::Relaxed);
        let every = FULL_SWEEP_EVERY.as_millis() as u64;
        if at < next
            || self
                .next_full_sweep
                .compare_exchange(next, at + every, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        for i in 0..SHARDS {
            let mut shard = self.lock(i);
            self.sweep(&mut shard, now);
        }
    }

    /// Drop the shard's entries whose window has passed.
    fn sweep(&self, shard: &mut Shard, now: Instant) {
        let before = shard.entries.len();
        shard.entries.retain(|_, until| *until > now);
        let removed = (before - shard.entries.len()) as u64;
        self.len.fetch_sub(removed, Ordering::Relaxed);
        shard.next_sweep = now + Duration::from_secs(1);
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
    async fn memory_store_accepts_a_proof_once() {
        let full = prometheus::IntCounter::new("f", "f").unwrap();
        let store = ReplayStore::memory(1000, full.clone());
        let ttl = Duration::from_secs(60);
        assert_eq!(store.first_use(key("k", "1"), ttl).await, Ok(true));
        assert_eq!(store.first_use(key("k", "1"), ttl).await, Ok(false));
        assert_eq!(store.first_use(key("k", "2"), ttl).await, Ok(true));
        assert_eq!(store.first_use(key("other", "1"), ttl).await, Ok(true));
        assert_eq!((store.entries(), full.get()), (3, 0));
    }

    /// A flood of fresh proofs never pushes out a live entry: when the set is full of live
    /// entries, new proofs are refused (fail closed) and the old one stays a replay.
    #[test]
    fn a_full_set_refuses_new_proofs_and_never_forgets_a_live_one() {
        let full = prometheus::IntCounter::new("f", "f").unwrap();
        let store = MemoryStore::new(100, full.clone());
        let (t0, ttl) = (Instant::now(), Duration::from_secs(60));
        let victim = key("victim", "j");
        assert_eq!(store.first_use(victim, ttl, t0), Ok(true));
        let mut refused = 0;
        for i in 0..1000 {
            match store.first_use(key("attacker", &i.to_string()), ttl, t0) {
                Ok(true) => {}
                Err(StoreUnavailable) => refused += 1,
                Ok(false) => panic!("a fresh proof called a replay"),
            }
        }
        assert_eq!(refused, 901);
        assert_eq!(full.get(), 901);
        assert_eq!(
            store.first_use(victim, ttl, t0),
            Ok(false),
            "still a replay"
        );
        // Once the window has passed the entries go, and new proofs are taken again.
        let later = t0 + ttl + Duration::from_secs(2);
        for i in 0..100 {
            assert_eq!(
                store.first_use(key("next", &i.to_string()), ttl, later),
                Ok(true)
            );
        }
        assert!(store.len.load(Ordering::Relaxed) <= 100);
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
