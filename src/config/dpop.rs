//! `[dpop]` and the routes' `dpop` key: DPoP proofs (RFC 9449), validated with their key paths.

use std::time::Duration;

use super::raw::RawDpop;
use super::validate::{is_env_name, Problems};
use crate::auth::dpop::{self, DpopMode, DpopSettings, NonceSettings, ReplaySettings};
use crate::auth::settings::Algorithm;

/// The shortest nonce secret accepted: 256 bits, the HMAC-SHA-256 key size.
const MIN_NONCE_SECRET_BYTES: usize = 32;

/// A route's `dpop`, default `"off"`.
pub(super) fn mode(p: &mut Problems, key: &str, raw: Option<&str>) -> DpopMode {
    match raw {
        None | Some("off") => DpopMode::Off,
        Some("optional") => DpopMode::Optional,
        Some("required") => DpopMode::Required,
        Some(other) => {
            p.push(
                format!("{key}.dpop"),
                format!("{other:?} is not a mode; use \"off\", \"optional\" (bearer or DPoP-bound tokens) or \"required\" (DPoP-bound tokens only)"),
            );
            DpopMode::Off
        }
    }
}

/// `[dpop]`, with every default.
pub(super) fn settings(p: &mut Problems, raw: &RawDpop) -> DpopSettings {
    let defaults = DpopSettings::default();
    let algorithms = match &raw.algorithms {
        None => defaults.algorithms,
        Some(list) => algorithms(p, list),
    };
    let max_age = p.duration(
        "dpop.proof_max_age",
        raw.proof_max_age.as_deref(),
        defaults.max_age,
    );
    if max_age.is_zero() || max_age > Duration::from_secs(600) {
        p.push(
            "dpop.proof_max_age",
            "must be between 1s and 10m: a proof is meant for one request, now",
        );
    }
    let leeway = p.duration(
        "dpop.proof_leeway",
        raw.proof_leeway.as_deref(),
        defaults.leeway,
    );
    if leeway > Duration::from_secs(60) {
        p.push("dpop.proof_leeway", "must be at most 60s");
    }
    let replay = replay(p, raw);
    DpopSettings {
        algorithms,
        max_age,
        leeway,
        replay,
        nonce: nonce(p, raw),
    }
}

fn algorithms(p: &mut Problems, list: &[String]) -> Vec<Algorithm> {
    let mut out = Vec::new();
    for (i, name) in list.iter().enumerate() {
        let k = format!("dpop.algorithms[{i}]");
        match Algorithm::from_name(name) {
            Some(a) if a.is_hmac() => p.push(
                k,
                format!("{name} is symmetric: a DPoP proof is signed with the client's private key (RFC 9449 §4.2)"),
            ),
            Some(a) if out.contains(&a) => p.push(k, format!("{name} is listed twice")),
            Some(a) => out.push(a),
            None => p.push(
                k,
                format!(
                    "unknown algorithm {name:?}; use some of {} (names are case-sensitive)",
                    dpop::DEFAULT_ALGORITHMS.map(Algorithm::name).join(", ")
                ),
            ),
        }
    }
    if list.is_empty() {
        p.push(
            "dpop.algorithms",
            "must list at least one algorithm, e.g. [\"ES256\"]; omit the key for the default list",
        );
    }
    out
}

fn replay(p: &mut Problems, raw: &RawDpop) -> ReplaySettings {
    let timeout = p.duration(
        "dpop.replay_store_timeout",
        raw.replay_store_timeout.as_deref(),
        Duration::from_millis(250),
    );
    match &raw.replay_store {
        None => {
            for (name, set) in [
                ("replay_store_timeout", raw.replay_store_timeout.is_some()),
                ("replay_store_prefix", raw.replay_store_prefix.is_some()),
            ] {
                if set {
                    p.push(
                        format!("dpop.{name}"),
                        "goes with replay_store = \"redis://…\"",
                    );
                }
            }
            let capacity = raw.replay_cache_capacity.unwrap_or(1_000_000);
            if capacity == 0 {
                p.push(
                    "dpop.replay_cache_capacity",
                    "must be above 0: without it proofs could be replayed",
                );
            }
            ReplaySettings::Memory { capacity }
        }
        Some(url) => {
            if let Err(why) = dpop::replay::check_url(url) {
                p.push("dpop.replay_store", format!("is not a Redis URL: {why}"));
            }
            if raw.replay_cache_capacity.is_some() {
                p.push(
                    "dpop.replay_cache_capacity",
                    "sizes the in-memory store; with replay_store set, proofs are kept in Redis",
                );
            }
            if timeout.is_zero() || timeout > Duration::from_secs(5) {
                p.push("dpop.replay_store_timeout", "must be between 1ms and 5s");
            }
            ReplaySettings::Redis {
                url: url.clone(),
                timeout,
                prefix: raw
                    .replay_store_prefix
                    .clone()
                    .unwrap_or_else(|| "portcullis:dpop:".into()),
            }
        }
    }
}

fn nonce(p: &mut Problems, raw: &RawDpop) -> Option<NonceSettings> {
    let lifetime = p.duration(
        "dpop.nonce_lifetime",
        raw.nonce_lifetime.as_deref(),
        Duration::from_secs(300),
    );
    if raw.nonce != Some(true) {
        for (name, set) in [
            ("nonce_secret_env", raw.nonce_secret_env.is_some()),
            ("nonce_secret_file", raw.nonce_secret_file.is_some()),
            ("nonce_lifetime", raw.nonce_lifetime.is_some()),
        ] {
            if set {
                p.push(format!("dpop.{name}"), "goes with nonce = true");
            }
        }
        return None;
    }
    if lifetime < Duration::from_secs(1) || lifetime > Duration::from_secs(86_400) {
        p.push("dpop.nonce_lifetime", "must be between 1s and 24h");
    }
    let secret = match (&raw.nonce_secret_env, &raw.nonce_secret_file) {
        (Some(env), None) if is_env_name(env) => match std::env::var(env) {
            Ok(v) => Some(v.into_bytes()),
            Err(_) => {
                p.push(
                    "dpop.nonce_secret_env",
                    format!("the environment variable {env} is not set; every replica needs the same secret"),
                );
                None
            }
        },
        (Some(_), None) => {
            p.push(
                "dpop.nonce_secret_env",
                "must name the environment variable holding the secret (letters, digits, _)",
            );
            None
        }
        (None, Some(path)) => match std::fs::read(path) {
            Ok(bytes) => Some(bytes.trim_ascii().to_vec()),
            Err(e) => {
                p.push(
                    "dpop.nonce_secret_file",
                    format!(
                        "cannot be read ({}); name a file holding the secret",
                        e.kind()
                    ),
                );
                None
            }
        },
        _ => {
            p.push(
                "dpop.nonce_secret_env",
                "nonce = true needs exactly one of nonce_secret_env or nonce_secret_file: the HMAC secret every replica shares",
            );
            None
        }
    }?;
    if secret.len() < MIN_NONCE_SECRET_BYTES {
        let key = match raw.nonce_secret_env {
            Some(_) => "dpop.nonce_secret_env",
            None => "dpop.nonce_secret_file",
        };
        p.push(
            key,
            format!("the secret must be at least {MIN_NONCE_SECRET_BYTES} bytes, e.g. `openssl rand -base64 32`"),
        );
    }
    Some(NonceSettings { secret, lifetime })
}
