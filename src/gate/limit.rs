//! Per-route rate limits, per gateway instance.
//!
//! A route allows `burst` requests per key in any window of `burst / rate` (so `rate` on
//! average, and never more than `burst` back to back). The count per key is pingora-limits'
//! sliding-window estimate (the previous window's count, weighted by how much of it the
//! sliding window still covers, plus the current one's) over a count-min sketch: memory is
//! fixed whatever the number of keys, and a key is never under-counted, so the limit is never
//! exceeded; with very many busy keys a key may be over-counted by about the window's total
//! requests / [`SLOTS`].

use std::hash::Hash;
use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::rate::{Rate, RateComponents};

use crate::auth::Principal;

/// Counters per sketch row: 2 windows × 4 rows × 16384 × 8 bytes = 1 MiB per limited route.
pub const SLOTS: usize = 16 * 1024;
const HASHES: usize = 4;

/// What a route's requests are counted by (`rate_limit.key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKey {
    /// `"client_address"`: the client's IP address (with `trust_forwarded_headers`, the last
    /// `X-Forwarded-For` entry, which the trusted proxy appended). Counted before the token is
    /// checked, so a flood of bad tokens is limited too.
    ClientAddress,
    /// `"sub"`: the token's subject; a token without one is counted by its client address.
    Subject,
    /// `"client_id"`: the token's client; a token without one is counted by its client address.
    ClientId,
}

/// `[routes.rate_limit]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub key: LimitKey,
    /// `requests` per `per`: the average rate.
    pub requests: u32,
    pub per: Duration,
    /// `burst`, default `requests`: at most this many at once.
    pub burst: u32,
}

impl RateLimit {
    /// The window the estimate counts over: `burst / rate`.
    pub fn window(&self) -> Duration {
        self.per
            .mul_f64(f64::from(self.burst) / f64::from(self.requests.max(1)))
    }
}

/// A request over its route's limit: what the 429 says (IETF httpapi RateLimit fields).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// `Retry-After`, whole seconds (at least 1).
    pub retry_after: u64,
    /// The quota of `RateLimit-Policy` (`q`), per window of `window` seconds (`w`).
    pub quota: u32,
    pub window: u64,
}

/// One route's counters.
pub struct Limiter {
    settings: RateLimit,
    rate: Rate,
    window: Duration,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("settings", &self.settings)
            .finish()
    }
}

/// What a request is counted as (the sketch keeps only counts, under hashes of this).
#[derive(Hash)]
enum Counted<'a> {
    Address(IpAddr),
    Subject(&'a str),
    Client(&'a str),
}

impl Limiter {
    /// The window must be at least a second (config validation checks it): pingora-limits
    /// counts in milliseconds from its start.
    pub fn new(settings: RateLimit) -> Limiter {
        let window = settings.window().max(Duration::from_secs(1));
        Limiter {
            rate: Rate::new_with_estimator_config(window, HASHES, SLOTS),
            window,
            settings,
        }
    }

    pub fn key(&self) -> LimitKey {
        self.settings.key
    }

    /// Count one request of `principal` (`None` before the token is checked, or on a route that
    /// checks none) from `client`, unless it is over the limit.
    pub fn admit(&self, principal: Option<&Principal>, client: IpAddr) -> Result<(), Limited> {
        let counted = match (self.settings.key, principal) {
            (
                LimitKey::Subject,
                Some(Principal {
                    subject: Some(s), ..
                }),
            ) => Counted::Subject(s),
            (
                LimitKey::ClientId,
                Some(Principal {
                    client_id: Some(c), ..
                }),
            ) => Counted::Client(c),
            _ => Counted::Address(client),
        };
        let key = counted;
        let burst = f64::from(self.settings.burst);
        let (estimate, left) = self.rate.rate_with(&key, |c: RateComponents| {
            let count =
                c.prev_samples as f64 * (1.0 - c.current_interval_fraction) + c.curr_samples as f64;
            (count, 1.0 - c.current_interval_fraction)
        });
        if estimate + 1.0 > burst {
            return Err(Limited {
                retry_after: (self.window.as_secs_f64() * left).ceil().max(1.0) as u64,
                quota: self.settings.burst,
                window: self.window.as_secs().max(1),
            });
        }
        self.rate.observe(&key, 1);
        Ok(())
    }
}

/// The address a request is counted by: the peer's, or with a trusted proxy in front
/// (`trust_forwarded_headers`), the last `X-Forwarded-For` entry, the one that proxy appended.
pub fn client_address(headers: &http::HeaderMap, peer: IpAddr, trusted: bool) -> IpAddr {
    if !trusted {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_and_other_keys_are_not_touched() {
        let limiter = Limiter::new(RateLimit {
            key: LimitKey::ClientAddress,
            requests: 5,
            per: Duration::from_secs(60),
            burst: 5,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..5 {
            assert!(limiter.admit(None, a).is_ok());
        }
        let limited = limiter.admit(None, a).unwrap_err();
        assert_eq!((limited.quota, limited.window), (5, 60));
        assert!((1..=60).contains(&limited.retry_after));
        assert!(limiter.admit(None, b).is_ok());
    }

    /// Memory is fixed; many other keys over-count a key by about their total / SLOTS, not more.
    #[test]
    fn twenty_thousand_other_keys_barely_touch_a_key() {
        let limiter = Limiter::new(RateLimit {
            key: LimitKey::ClientAddress,
            requests: 10,
            per: Duration::from_secs(60),
            burst: 10,
        });
        for i in 0..20_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert!(limiter.admit(None, ip).is_ok());
        }
        let me: IpAddr = "192.0.2.77".parse().unwrap();
        let admitted = (0..10).filter(|_| limiter.admit(None, me).is_ok()).count();
        assert!(admitted >= 8, "{admitted} of 10");
        assert!(limiter.admit(None, me).is_err());
    }

    #[test]
    fn the_window_is_burst_over_rate() {
        let l = RateLimit {
            key: LimitKey::Subject,
            requests: 100,
            per: Duration::from_secs(1),
            burst: 300,
        };
        assert_eq!(l.window(), Duration::from_secs(3));
    }
}
