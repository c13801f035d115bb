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

/// The longest window validation allows.
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

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
    /// The window the estimate counts over: `burst / rate`; `None` when it cannot be a
    /// duration at all (validation refuses it, and any window over [`MAX_WINDOW`]).
    pub fn window(&self) -> Option<Duration> {
        let secs = self.per.as_secs_f64() * f64::from(self.burst) / f64::from(self.requests.max(1));
        Duration::try_from_secs_f64(secs).ok()
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
    rate: std::sync::Arc<Rate>,
    window: Duration,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("settings", &self.settings)
            .finish()
    }
}

/// What a request is counted as (the sketch keeps only counts, under hashes of this). A
/// subject or client counts under its issuer: another issuer's `sub` is another key.
#[derive(Hash)]
enum Counted<'a> {
    Address(IpAddr),
    Subject(&'a str, &'a str),
    Client(&'a str, &'a str),
}

/// An address as counted: IPv4-mapped IPv6 as IPv4, and IPv6 by its /64 (one subscriber or
/// host usually holds a whole /64, so counting single addresses would let it rotate).
fn counted_address(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

impl Limiter {
    /// The window must be at least a second (config validation checks it): pingora-limits
    /// counts in milliseconds from its start.
    /// The limit this limiter enforces.
    pub fn settings(&self) -> &RateLimit {
        &self.settings
    }

    pub fn new(settings: RateLimit) -> Limiter {
        Limiter::renewed(settings, None)
    }

    /// [`Limiter::new`] for a reloaded config: the counts of `previous` go on when what is
    /// counted and the window it is counted over stay (a changed `requests` with `burst`
    /// following it keeps the window), so a reload that tightens a limit gives nobody a fresh
    /// burst.
    pub fn renewed(settings: RateLimit, previous: Option<&Limiter>) -> Limiter {
        let window = settings
            .window()
            .unwrap_or(MAX_WINDOW)
            .clamp(Duration::from_secs(1), MAX_WINDOW);
        match previous.filter(|p| p.settings.key == settings.key && p.window == window) {
            Some(p) => Limiter {
                rate: p.rate.clone(),
                window,
                settings,
                hasher: p.hasher.clone(),
            },
            None => Limiter {
                rate: std::sync::Arc::new(Rate::new_with_estimator_config(window, HASHES, SLOTS)),
                window,
                settings,
                hasher: Default::default(),
            },
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
                Some(
                    p @ Principal {
                        subject: Some(s), ..
                    },
                ),
            ) => Counted::Subject(&p.issuer, s),
            (
                LimitKey::ClientId,
                Some(
                    p @ Principal {
                        client_id: Some(c), ..
                    },
                ),
            ) => Counted::Client(&p.issuer, c),
            _ => Counted::Address(counted_address(client)),
        };
        // Hashed once here (with this limiter's random keys): the sketch hashes its key again
        // for each of its rows, twice per request.
        let key = std::hash::BuildHasher::hash_one(&self.hasher, &counted);
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
/// (`trust_forwarded_headers`), the last `X-Forwarded-For` entry, the one that proxy appended,
/// in the forms proxies write it: `192.0.2.1`, `192.0.2.1:443`, `2001:db8::1`,
/// `[2001:db8::1]:443`, `fe80::1%eth0`. An entry in no such form counts as the peer (the proxy).
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
        .and_then(|last| parse_entry(last.trim()))
        .unwrap_or(peer)
}

fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    if let Ok(addr) = entry.parse::<std::net::SocketAddr>() {
        return Some(addr.ip());
    }
    let bare = entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .unwrap_or(entry);
    let unzoned = bare.split_once('%').map_or(bare, |(ip, _)| ip);
    unzoned.parse().ok()
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
    fn addresses_are_read_in_every_form_and_counted_by_v4_or_v6_64() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        for (entry, want) in [
            ("192.0.2.7", "192.0.2.7"),
            ("192.0.2.7:443", "192.0.2.7"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("fe80::1%eth0", "fe80::1"),
            ("spoofed, 198.51.100.2", "198.51.100.2"),
            ("garbage", "10.0.0.1"),
        ] {
            headers.insert("x-forwarded-for", entry.parse().unwrap());
            assert_eq!(
                client_address(&headers, peer, true).to_string(),
                want,
                "{entry}"
            );
            assert_eq!(client_address(&headers, peer, false), peer);
        }
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(counted_address(mapped), counted_address(v4));
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(counted_address(a), counted_address(b));
        assert_ne!(counted_address(a), counted_address(c));
    }

    #[test]
    fn the_window_is_burst_over_rate() {
        let l = RateLimit {
            key: LimitKey::Subject,
            requests: 100,
            per: Duration::from_secs(1),
            burst: 300,
        };
        assert_eq!(l.window(), Some(Duration::from_secs(3)));
    }
}
