//! The verified-token cache: claims of tokens whose signature checked out, keyed by a
//! BLAKE2b-256 hash of the token (never the token), kept until `min(exp, cache_max_ttl)`.
//! A hit skips the signature check only: scopes are still checked per route, and an entry
//! whose signing key left the issuer's key set is dropped.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use moka::sync::Cache;

use super::Principal;

/// A token that verified, with what is needed to trust the entry later.
pub struct Verified {
    pub principal: Arc<Principal>,
    /// The issuer's keys: an entry counts only while they are the configured issuer's
    /// (a reload that drops or changes the issuer retires them).
    pub issuer: Arc<super::IssuerKeys>,
    /// Fingerprint of the key that verified the signature.
    pub key: u64,
    /// `exp` in seconds since the epoch.
    pub exp: i64,
    ttl: Duration,
}

struct ByEntry;

impl moka::Expiry<[u8; 32], Arc<Verified>> for ByEntry {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        value: &Arc<Verified>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// `None` inside when the capacity is 0.
pub struct TokenCache {
    inner: Option<Cache<[u8; 32], Arc<Verified>>>,
    max_ttl: Duration,
}

impl TokenCache {
    pub fn new(capacity: u64, max_ttl: Duration) -> TokenCache {
        let inner = (capacity > 0).then(|| {
            Cache::builder()
                .max_capacity(capacity)
                .expire_after(ByEntry)
                .build()
        });
        TokenCache { inner, max_ttl }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The BLAKE2b-256 of the token (RFC 7693): collision-resistant like SHA-256, so no token
    /// can take another's entry, and twice as fast on CPUs without SHA extensions
    /// (`cache_key_700_byte_token` in benches/hot_path.rs).
    pub fn key(token: &str) -> [u8; 32] {
        let hash = blake2b_simd::Params::new()
            .hash_length(32)
            .hash(token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(hash.as_bytes());
        key
    }

    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<Verified>> {
        self.inner.as_ref()?.get(key)
    }

    pub fn remove(&self, key: &[u8; 32]) {
        if let Some(c) = &self.inner {
            c.invalidate(key);
        }
    }

    /// Cache until `min(exp, max_ttl)`; `now` in seconds since the epoch.
    pub fn insert(
        &self,
        key: [u8; 32],
        principal: Arc<Principal>,
        issuer: Arc<super::IssuerKeys>,
        fingerprint: u64,
        exp: i64,
        now: i64,
    ) {
        let Some(c) = &self.inner else { return };
        let left = Duration::from_secs(u64::try_from(exp.saturating_sub(now)).unwrap_or(0));
        let ttl = left.min(self.max_ttl);
        if ttl.is_zero() {
            return;
        }
        c.insert(
            key,
            Arc::new(Verified {
                principal,
                issuer,
                key: fingerprint,
                exp,
                ttl,
            }),
        );
    }
}

/// One client connection's last token and its [`TokenCache::key`], so that a connection that
/// presents the same token request after request (a keep-alive client, an HTTP/2 client's
/// streams) hashes it once.
///
/// The token is compared in constant time (`CRYPTO_memcmp`): a connection that carries several
/// clients' requests (a load balancer in front) learns nothing of another client's token from
/// how long the comparison took. The copy lives as long as the connection, in memory that the
/// connection's own buffers share with the token anyway; it is never logged (`Debug` prints
/// none of it).
#[derive(Default)]
pub struct KeyMemo {
    last: Mutex<Option<Memo>>,
}

struct Memo {
    token: Vec<u8>,
    key: [u8; 32],
}

impl KeyMemo {
    /// `TokenCache::key(token)`, from the memo when `token` is the connection's last one.
    pub fn key(&self, token: &str) -> [u8; 32] {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = last.as_ref() {
            if aws_lc_rs::constant_time::verify_slices_are_equal(&m.token, token.as_bytes()).is_ok()
            {
                return m.key;
            }
        }
        let key = TokenCache::key(token);
        match last.as_mut() {
            // The buffer is reused: a connection whose client refreshed its token allocates
            // nothing new.
            Some(m) => {
                m.token.clear();
                m.token.extend_from_slice(token.as_bytes());
                m.key = key;
            }
            None => {
                *last = Some(Memo {
                    token: token.as_bytes().to_vec(),
                    key,
                })
            }
        }
        key
    }
}

impl std::fmt::Debug for KeyMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMemo")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_blake2b_256() {
        use blake2::Digest;
        for token in ["", "a", &"x".repeat(700), &"y".repeat(129)] {
            let portable: [u8; 32] =
                blake2::Blake2b::<blake2::digest::consts::U32>::digest(token.as_bytes()).into();
            assert_eq!(TokenCache::key(token), portable, "{} bytes", token.len());
        }
    }

    #[test]
    fn the_memo_gives_each_token_its_own_key() {
        let memo = KeyMemo::default();
        let a = format!("{}A", "x".repeat(699));
        // The same length and all but the last byte alike; then a prefix, and the empty token.
        let b = format!("{}B", "x".repeat(699));
        let tokens = [
            &a,
            &a,
            &b,
            &a,
            &b,
            &b,
            &a[..10].to_string(),
            &a,
            &String::new(),
            &a,
        ];
        for (i, token) in tokens.iter().enumerate() {
            assert_eq!(memo.key(token), TokenCache::key(token), "token {i}");
        }
        assert_eq!(format!("{memo:?}"), "KeyMemo", "Debug shows no token");
    }
}
