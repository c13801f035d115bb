//! DPoP: sender-constrained access tokens (RFC 9449).
//!
//! A DPoP-bound token (`cnf.jkt`, §6) is valid only with a proof: a JWT in the `DPoP` header,
//! signed by the key the token is bound to, for this method and URI, fresh, not seen before,
//! and naming the token (`ath`). A route says whether it takes such tokens
//! ([`DpopMode`]); [`Dpop`] checks proofs, keeps the replay state and issues nonces.
//!
//! The URI a proof must name (`htu`) is built from the request: the scheme of the listener
//! (`http`), or `X-Forwarded-Proto` when a trusted proxy sets it; the host from `Host` (or an
//! absolute-form target), or `X-Forwarded-Host` from a trusted proxy; and the canonical path
//! the route was chosen on ([`RequestUri`]).

pub mod nonce;
pub mod proof;
pub mod replay;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

pub use nonce::Nonces;
pub use proof::Checked;
pub use replay::{ReplayStore, StoreUnavailable};

use super::error::TokenFault;
use super::settings::Algorithm;

/// Whether a route takes DPoP-bound tokens (`dpop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpopMode {
    /// Bearer tokens only; a bound token is refused (the default).
    #[default]
    Off,
    /// Bearer tokens, and DPoP-bound tokens with the `DPoP` scheme and a proof.
    Optional,
    /// DPoP-bound tokens only.
    Required,
}

impl DpopMode {
    pub fn name(self) -> &'static str {
        match self {
            DpopMode::Off => "off",
            DpopMode::Optional => "optional",
            DpopMode::Required => "required",
        }
    }
}

/// Where proofs are remembered against replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplaySettings {
    /// In this process: `replay_cache_capacity` proofs at most.
    Memory { capacity: u64 },
    /// In Redis at `url` (`replay_store`), each call bounded by `timeout`, keys under `prefix`.
    Redis {
        url: String,
        timeout: Duration,
        prefix: String,
    },
}

/// Stateless nonces (`nonce = true`).
#[derive(Clone, PartialEq, Eq)]
pub struct NonceSettings {
    /// The HMAC secret every replica shares (from `nonce_secret_env` or `nonce_secret_file`).
    pub secret: Vec<u8>,
    /// `nonce_lifetime`: how long a nonce stays current (it is accepted one lifetime longer).
    pub lifetime: Duration,
}

impl std::fmt::Debug for NonceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceSettings")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// `[dpop]`: how proofs are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopSettings {
    /// `algorithms`: the proof signature algorithms accepted, asymmetric only.
    pub algorithms: Vec<Algorithm>,
    /// `proof_max_age`, default 60 s: how old a proof's `iat` may be.
    pub max_age: Duration,
    /// `proof_leeway`, default 5 s: clock skew allowed on `iat`, both ways.
    pub leeway: Duration,
    pub replay: ReplaySettings,
    pub nonce: Option<NonceSettings>,
}

impl Default for DpopSettings {
    fn default() -> DpopSettings {
        DpopSettings {
            algorithms: DEFAULT_ALGORITHMS.to_vec(),
            max_age: Duration::from_secs(60),
            leeway: Duration::from_secs(5),
            replay: ReplaySettings::Memory {
                capacity: 1_000_000,
            },
            nonce: None,
        }
    }
}

/// The proof algorithms accepted by default: what the common authorization servers and client
/// libraries sign DPoP proofs with.
pub const DEFAULT_ALGORITHMS: [Algorithm; 6] = [
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::PS256,
    Algorithm::RS256,
    Algorithm::EdDSA,
    Algorithm::PS384,
];

/// Why a DPoP proof was refused: 401 `invalid_dpop_proof`, or `use_dpop_nonce`
/// (RFC 9449 §7.1, §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DpopFault {
    /// The `DPoP` scheme without a `DPoP` header.
    Missing,
    /// More than one `DPoP` header (§4.3 item 1).
    Multiple,
    /// Not a compact JWS of JSON objects, a `crit` header, a missing or overlong claim, or
    /// larger than [`proof::MAX_PROOF_BYTES`].
    Malformed,
    /// `typ` is not `dpop+jwt`.
    WrongType,
    /// `alg` is `none`, symmetric, or not in `algorithms`.
    AlgorithmNotAllowed,
    /// No `jwk`, or one the key policy refuses, or one that does not fit `alg`.
    BadKey,
    /// The `jwk` holds a private key.
    PrivateKey,
    /// The signature does not verify with the `jwk`.
    BadSignature,
    /// `htm` is not the request's method.
    WrongMethod,
    /// `htu` is not the request's URI.
    WrongUri,
    /// `iat` is outside the window.
    Stale,
    /// `ath` is missing or not the hash of the token presented.
    WrongTokenHash,
    /// The proof's key is not the one the token is bound to (`cnf.jkt`).
    KeyMismatch,
    /// This `jti` was seen before, with this key, inside the window.
    Replayed,
    /// No nonce, or one that is not current: `use_dpop_nonce` with a fresh one.
    NonceRequired,
}

impl DpopFault {
    /// The bounded metric label.
    pub fn kind(self) -> &'static str {
        match self {
            DpopFault::Missing => "dpop_proof_missing",
            DpopFault::Multiple => "dpop_proof_multiple",
            DpopFault::Malformed => "dpop_proof_malformed",
            DpopFault::WrongType => "dpop_proof_wrong_type",
            DpopFault::AlgorithmNotAllowed => "dpop_proof_algorithm_not_allowed",
            DpopFault::BadKey => "dpop_proof_bad_key",
            DpopFault::PrivateKey => "dpop_proof_private_key",
            DpopFault::BadSignature => "dpop_proof_bad_signature",
            DpopFault::WrongMethod => "dpop_proof_wrong_method",
            DpopFault::WrongUri => "dpop_proof_wrong_uri",
            DpopFault::Stale => "dpop_proof_stale",
            DpopFault::WrongTokenHash => "dpop_proof_wrong_ath",
            DpopFault::KeyMismatch => "dpop_proof_key_mismatch",
            DpopFault::Replayed => "dpop_proof_replayed",
            DpopFault::NonceRequired => "dpop_nonce_required",
        }
    }

    /// Every fault, for the metric labels' whole set.
    pub const ALL: [DpopFault; 15] = [
        DpopFault::Missing,
        DpopFault::Multiple,
        DpopFault::Malformed,
        DpopFault::WrongType,
        DpopFault::AlgorithmNotAllowed,
        DpopFault::BadKey,
        DpopFault::PrivateKey,
        DpopFault::BadSignature,
        DpopFault::WrongMethod,
        DpopFault::WrongUri,
        DpopFault::Stale,
        DpopFault::WrongTokenHash,
        DpopFault::KeyMismatch,
        DpopFault::Replayed,
        DpopFault::NonceRequired,
    ];
}

/// What a proof's `htu` is compared with: the request's URI as the gateway routed it.
#[derive(Clone, Copy)]
pub struct RequestUri<'a> {
    /// The canonical path the route was chosen on (and the upstream receives).
    pub path: &'a str,
    /// An absolute-form target's authority, which stands for `Host` (RFC 9112 §3.2.2).
    pub authority: Option<&'a str>,
    /// The scheme of the listener the request came in on.
    pub scheme: &'static str,
    /// Take scheme and host from `X-Forwarded-Proto` and `X-Forwarded-Host`: a trusted proxy
    /// in front sets them (`trust_forwarded_headers`), or the proxy asking the decision
    /// endpoint describes its own request with them.
    pub forwarded: bool,
    /// The gateway's path normalisation, applied to the proof's path (`None`: not canonical).
    pub normalise: fn(&str) -> Option<Cow<'_, str>>,
}

impl std::fmt::Debug for RequestUri<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The path is never logged.
        f.debug_struct("RequestUri")
            .field("scheme", &self.scheme)
            .field("forwarded", &self.forwarded)
            .finish_non_exhaustive()
    }
}

impl<'a> RequestUri<'a> {
    /// A URI whose path is compared as it is, with no normalisation.
    pub fn exact(path: &'a str, authority: Option<&'a str>) -> RequestUri<'a> {
        RequestUri {
            path,
            authority,
            scheme: "http",
            forwarded: false,
            normalise: |p| Some(Cow::Borrowed(p)),
        }
    }

    /// The request's scheme and authority, as the client addressed it.
    pub fn origin<'h>(&self, headers: &'h HeaderMap) -> Option<(&'h str, &'h str)>
    where
        'a: 'h,
    {
        // The last value of the last field line: what the proxy in front set or appended
        // (a client's own values come before it).
        let last = |name: &str| -> Option<&'h str> {
            let value = headers.get_all(name).iter().next_back()?.to_str().ok()?;
            Some(value.rsplit(',').next()?.trim()).filter(|v| !v.is_empty())
        };
        let forwarded = |name| last(name).filter(|_| self.forwarded);
        let scheme = match forwarded("x-forwarded-proto") {
            Some(s) if s.eq_ignore_ascii_case("https") => "https",
            Some(s) if s.eq_ignore_ascii_case("http") => "http",
            Some(_) => return None,
            None => self.scheme,
        };
        let authority = forwarded("x-forwarded-host")
            .or(self.authority)
            .or_else(|| last("host"))?;
        // `host[:port]` only: no path, user information or other delimiter a URL parser would
        // read past.
        let plain = |b: u8| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b);
        authority.bytes().all(plain).then_some((scheme, authority))
    }
}

/// What a token's `cnf` claim (RFC 7800 §3.1) binds it to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Confirmation {
    /// `jkt`: a DPoP key's RFC 7638 thumbprint (RFC 9449 §6.1).
    pub jkt: Option<String>,
    /// `x5t#S256`: a client certificate's SHA-256 thumbprint, base64url (RFC 8705 §3.1).
    pub x5t: Option<String>,
}

/// The binding of a token by its `cnf` claim: a `cnf` object with exactly one member, a
/// non-empty string `jkt` (DPoP) or `x5t#S256` (mutual-TLS), or no `cnf` (or `null`). Any other
/// confirmation method (`jwk`, `jku`, `kid`), or both at once, cannot be checked here and
/// refuses the token.
pub fn confirmation(cnf: Option<&serde_json::Value>) -> Result<Confirmation, TokenFault> {
    let Some(cnf) = cnf.filter(|c| !c.is_null()) else {
        return Ok(Confirmation::default());
    };
    let members = cnf.as_object().filter(|m| m.len() == 1);
    let (name, value) = members
        .and_then(|m| m.iter().next())
        .ok_or(TokenFault::SenderConstrained)?;
    let value = match value {
        serde_json::Value::String(v) if !v.is_empty() => Some(v.clone()),
        _ => return Err(TokenFault::SenderConstrained),
    };
    match name.as_str() {
        "jkt" => Ok(Confirmation {
            jkt: value,
            x5t: None,
        }),
        "x5t#S256" => Ok(Confirmation {
            jkt: None,
            x5t: value,
        }),
        _ => Err(TokenFault::SenderConstrained),
    }
}

/// What a reload carried over from an earlier config's replay protection.
#[derive(Clone)]
struct Before {
    /// The earlier store, when the new config has another one: asked until `store_until`.
    store: Option<Arc<ReplayStore>>,
    /// The latest `iat` a proof used before the reload can have (the reload's second plus the
    /// earlier leeway): such a proof is held to `old_window`, as long as its record lasts.
    latest: i64,
    /// The earlier window (`proof_max_age` + `proof_leeway`), in seconds.
    old_window: i64,
    /// After this, nothing recorded under the earlier config is live.
    store_until: i64,
    /// After this, no window of the config in use takes a proof with `iat` up to `latest`.
    hold_until: i64,
}

impl Before {
    /// Carried into a config whose window is `window`: the hold lasts as long as that window
    /// could take a proof it holds. `None` once neither part can matter.
    fn renewed(&self, window: i64, now: i64) -> Option<Before> {
        let hold_until = self
            .hold_until
            .max(self.latest.saturating_add(window).saturating_add(1));
        (hold_until > now || self.store_until > now).then(|| Before {
            hold_until,
            ..self.clone()
        })
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// How long after its `iat` a proof is accepted, and remembered: `proof_max_age` +
/// `proof_leeway`, in seconds.
fn window_secs(settings: &DpopSettings) -> i64 {
    secs(settings.max_age).saturating_add(secs(settings.leeway))
}

/// Checks proofs for every route that takes DPoP: the settings, the replay store and nonces.
pub struct Dpop {
    pub settings: DpopSettings,
    replay: Arc<ReplayStore>,
    /// What earlier configs promised, while it still matters ([`Dpop::renewed`]).
    before: Vec<Before>,
    nonces: Option<Nonces>,
    /// `DPoP algs="…"` (RFC 9449 §7.1), rendered once.
    algs: String,
}

impl Dpop {
    /// The checker for `settings`. `full` counts proofs refused because the in-memory replay
    /// set was full of live entries. A Redis
    /// URL that does not parse (the config checks it first: [`replay::check_url`]) makes a
    /// store that fails every call, closed.
    pub fn new(settings: DpopSettings, full: prometheus::IntCounter) -> Dpop {
        Dpop::renewed(settings, full, None)
    }

    /// [`Dpop::new`] for a reloaded config, so that no proof used before the reload passes
    /// after it (RFC 9449 §11.1):
    /// - the replay store of `previous` is kept when the replay settings are equal;
    /// - when they differ (another capacity, Redis instead of memory), the old store is still
    ///   asked, and written, for as long as a proof it recorded could be live;
    /// - when the window (`proof_max_age` + `proof_leeway`) grows, a proof whose `iat` is
    ///   before the reload is still held to the old window: its replay record lasts only that
    ///   long.
    pub fn renewed(
        settings: DpopSettings,
        full: prometheus::IntCounter,
        previous: Option<&Dpop>,
    ) -> Dpop {
        Dpop::renewed_at(
            settings,
            full,
            previous,
            super::jwt::unix_seconds(std::time::SystemTime::now()),
        )
    }

    /// [`Dpop::renewed`] at `now`, seconds since the epoch.
    fn renewed_at(
        settings: DpopSettings,
        full: prometheus::IntCounter,
        previous: Option<&Dpop>,
        now: i64,
    ) -> Dpop {
        let kept = previous
            .filter(|p| p.settings.replay == settings.replay)
            .map(|p| p.replay.clone());
        let window = window_secs(&settings);
        // What earlier reloads carried, for as long as this config's window could still take
        // a proof they hold.
        let mut before: Vec<Before> = previous
            .map(|p| {
                p.before
                    .iter()
                    .filter_map(|b| b.renewed(window, now))
                    .collect()
            })
            .unwrap_or_default();
        if let Some(p) = previous {
            let old_window = window_secs(&p.settings);
            let store = kept.is_none().then(|| p.replay.clone());
            if store.is_some() || old_window < window {
                // A proof recorded before `now` has `iat` at most `now + leeway`.
                let latest = now.saturating_add(secs(p.settings.leeway));
                before.push(Before {
                    store,
                    latest,
                    old_window,
                    // Its record ends `old_window + 1` seconds after its `iat`.
                    store_until: latest.saturating_add(old_window).saturating_add(1),
                    hold_until: latest.saturating_add(window).saturating_add(1),
                });
            }
        }
        let replay = kept.unwrap_or_else(|| {
            Arc::new(match &settings.replay {
                ReplaySettings::Memory { capacity } => ReplayStore::memory(*capacity, full),
                ReplaySettings::Redis {
                    url,
                    timeout,
                    prefix,
                } => ReplayStore::Redis(replay::RedisStore::new(url, prefix.clone(), *timeout)),
            })
        });
        let nonces = settings
            .nonce
            .as_ref()
            .map(|n| Nonces::new(&n.secret, n.lifetime));
        let algs = settings
            .algorithms
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(" ");
        Dpop {
            settings,
            replay,
            before,
            nonces,
            algs,
        }
    }

    /// The `algs` attribute's value: the accepted proof algorithms, space-separated.
    pub fn algs(&self) -> &str {
        &self.algs
    }

    /// A fresh nonce, when nonces are on.
    pub fn nonce(&self, now: i64) -> Option<String> {
        self.nonces.as_ref().map(|n| n.current(now))
    }

    /// The local checks of the one `DPoP` header of a request, and its nonce.
    pub fn check(
        &self,
        headers: &HeaderMap,
        method: &str,
        uri: &RequestUri<'_>,
        token: &str,
        now: i64,
    ) -> Result<Checked, DpopFault> {
        let mut values = headers.get_all("dpop").iter();
        let proof = values.next().ok_or(DpopFault::Missing)?;
        if values.next().is_some() {
            return Err(DpopFault::Multiple);
        }
        let checked = proof::check(
            proof.as_bytes(),
            &self.settings,
            method,
            uri,
            headers,
            token,
            now,
        )?;
        // A proof from before a reload that lengthened the window: its replay record lasts
        // only the old window, so the old window is its limit.
        if self
            .before
            .iter()
            .any(|b| checked.iat <= b.latest && now > checked.iat.saturating_add(b.old_window))
        {
            return Err(DpopFault::Stale);
        }
        if let Some(nonces) = &self.nonces {
            if !checked
                .nonce
                .as_deref()
                .is_some_and(|n| nonces.accepts(n, now))
            {
                return Err(DpopFault::NonceRequired);
            }
        }
        Ok(checked)
    }

    /// Record the proof's use until its window has passed (`iat` + `proof_max_age` +
    /// `proof_leeway`, and a second more): `Ok(false)` when it was used before (a replay).
    pub async fn first_use(&self, proof: &Checked, now: i64) -> Result<bool, StoreUnavailable> {
        let end = proof
            .iat
            .saturating_add(window_secs(&self.settings))
            .saturating_add(1);
        let ttl = Duration::from_secs(u64::try_from(end.saturating_sub(now)).unwrap_or(0).max(1));
        let key = replay::key(&proof.jkt, &proof.jti);
        // The stores of earlier configs first: a proof they recorded is a replay.
        for b in self.before.iter().filter(|b| b.store_until > now) {
            if let Some(store) = &b.store {
                if !store.first_use(key, ttl).await? {
                    return Ok(false);
                }
            }
        }
        self.replay.first_use(key, ttl).await
    }

    /// Proofs remembered in memory now.
    pub fn replay_entries(&self) -> u64 {
        self.replay.entries()
    }
}

#[cfg(test)]
mod reload_tests {
    use super::*;
    use crate::devkeys::DevKey;
    use serde_json::json;

    const TOKEN: &str = "the-access-token";
    const NOW: i64 = 1_900_000_000;

    fn settings(max_age: u64, capacity: u64) -> DpopSettings {
        DpopSettings {
            max_age: Duration::from_secs(max_age),
            leeway: Duration::from_secs(1),
            replay: ReplaySettings::Memory { capacity },
            ..DpopSettings::default()
        }
    }

    fn full() -> prometheus::IntCounter {
        prometheus::IntCounter::new("full", "full").unwrap()
    }

    fn proof(key: &DevKey, iat: i64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", "api.example.com".parse().unwrap());
        let p = key.dpop_proof(
            "GET",
            "http://api.example.com/x",
            TOKEN,
            &json!({ "iat": iat }),
        );
        h.insert("dpop", p.parse().unwrap());
        h
    }

    fn check(d: &Dpop, h: &HeaderMap, now: i64) -> Result<Checked, DpopFault> {
        let uri = RequestUri {
            path: "/x",
            authority: None,
            scheme: "http",
            forwarded: false,
            normalise: |p| Some(Cow::Borrowed(p)),
        };
        d.check(h, "GET", &uri, TOKEN, now)
    }

    /// Old window 11 s, new 61 s: a proof with `iat` before the reload was recorded for 12 s
    /// only, so after 11 s it is stale, although the new window would take it.
    #[test]
    fn a_longer_window_holds_proofs_from_before_the_reload_to_the_old_one() {
        let key = DevKey::generate(crate::auth::settings::Algorithm::ES256, "c");
        let old = Dpop::renewed_at(settings(10, 1000), full(), None, NOW - 100);
        let used = proof(&key, NOW);
        assert!(check(&old, &used, NOW).is_ok());
        let new = Dpop::renewed_at(settings(60, 1000), full(), Some(&old), NOW + 1);
        assert!(Arc::ptr_eq(&old.replay, &new.replay), "the same store");
        assert!(check(&new, &used, NOW + 5).is_ok(), "inside the old window");
        assert_eq!(check(&new, &used, NOW + 13).err(), Some(DpopFault::Stale));
        // A proof made after the reload (later than its second plus the old leeway) has the
        // new window.
        assert!(check(&new, &proof(&key, NOW + 3), NOW + 40).is_ok());
        // Without the rule the new window would take the old proof.
        let fresh = Dpop::renewed_at(settings(60, 1000), full(), None, NOW + 1);
        assert!(check(&fresh, &used, NOW + 13).is_ok());
    }

    /// Red team round 2: a proof used in the reload's own second, or dated ahead within the
    /// leeway, is held too; and a later reload that changes something else keeps the hold for
    /// as long as the longer window could take the proof.
    #[test]
    fn the_hold_covers_the_reload_second_future_proofs_and_later_reloads() {
        let key = DevKey::generate(crate::auth::settings::Algorithm::ES256, "c");
        let old = Dpop::renewed_at(settings(2, 1000), full(), None, NOW - 100);
        let same_second = proof(&key, NOW);
        let ahead = proof(&key, NOW + 1);
        assert!(check(&old, &same_second, NOW).is_ok());
        assert!(check(&old, &ahead, NOW).is_ok(), "inside the leeway");
        // Reloaded in the same second to a 30 s window.
        let new = Dpop::renewed_at(settings(30, 1000), full(), Some(&old), NOW);
        assert_eq!(
            check(&new, &same_second, NOW + 5).err(),
            Some(DpopFault::Stale)
        );
        assert_eq!(check(&new, &ahead, NOW + 5).err(), Some(DpopFault::Stale));
        // A later reload (another capacity) at +8 s: the hold stays.
        let later = Dpop::renewed_at(settings(30, 2000), full(), Some(&new), NOW + 8);
        assert_eq!(
            check(&later, &same_second, NOW + 9).err(),
            Some(DpopFault::Stale)
        );
        // Once every held proof is past the 31 s window, and the store replaced at +8 s can
        // hold nothing live, both go.
        let much_later = Dpop::renewed_at(settings(30, 2000), full(), Some(&later), NOW + 45);
        assert!(much_later.before.is_empty());
    }

    /// Another capacity means another in-memory store: the old one still refuses what it
    /// recorded, until nothing in it can be live.
    #[tokio::test]
    async fn another_store_still_asks_the_old_one() {
        let key = DevKey::generate(crate::auth::settings::Algorithm::ES256, "c");
        let old = Dpop::renewed_at(settings(10, 1000), full(), None, NOW - 100);
        let used = check(&old, &proof(&key, NOW), NOW).unwrap();
        assert!(old.first_use(&used, NOW).await.unwrap());
        let new = Dpop::renewed_at(settings(10, 2000), full(), Some(&old), NOW + 1);
        assert!(!Arc::ptr_eq(&old.replay, &new.replay));
        assert!(!new.first_use(&used, NOW + 2).await.unwrap(), "a replay");
        let other = check(&new, &proof(&key, NOW + 2), NOW + 2).unwrap();
        assert!(new.first_use(&other, NOW + 2).await.unwrap());
        // Once the old window and leeway are over, the old store is let go at the next reload.
        let later = Dpop::renewed_at(settings(10, 2000), full(), Some(&new), NOW + 20);
        assert!(later.before.is_empty());
    }
}

#[cfg(test)]
mod confirmation_tests {
    use super::{confirmation, Confirmation};
    use crate::auth::TokenFault;
    use serde_json::json;

    #[test]
    fn one_binding_is_read_and_anything_else_refuses_the_token() {
        let read = |v: serde_json::Value| confirmation(Some(&v));
        assert_eq!(confirmation(None), Ok(Confirmation::default()));
        assert_eq!(read(json!(null)), Ok(Confirmation::default()));
        assert_eq!(read(json!({"jkt": "k"})).unwrap().jkt.as_deref(), Some("k"));
        let x5t = read(json!({"x5t#S256": "t"})).unwrap();
        assert_eq!((x5t.jkt, x5t.x5t.as_deref()), (None, Some("t")));
        for refused in [
            json!({"jkt": "k", "x5t#S256": "t"}),
            json!({"jwk": {"kty": "EC"}}),
            json!({"x5t#S256": ""}),
            json!({"x5t#S256": 7}),
            json!({}),
            json!("k"),
        ] {
            assert_eq!(
                read(refused.clone()),
                Err(TokenFault::SenderConstrained),
                "{refused}"
            );
        }
    }
}
