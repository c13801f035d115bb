//! The verified-token cache: claims of tokens whose signature checked out, keyed by a
//! BLAKE2b-256 hash of the token (never the token), kept until `min(exp, cache_max_ttl)`.
//! A hit skips the signature check only: scopes are still checked per route, and an entry
//! whose signing key left the issuer's key set is dropped.

use std::sync::Arc;
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
}
