//! Validation of one `[[issuers]]` entry.

use std::time::Duration;

use url::Url;

use super::raw::RawIssuer;
use super::validate::{http_url, Problems};
use super::{Algorithm, IssuerConfig, KeySource, ScopeClaim};

pub(super) const HTTPS_RULE: &str =
    "must be https:// (plain http only on a loopback address, or with allow_insecure_http = true)";

pub(super) fn issuer(p: &mut Problems, key: &str, raw: &RawIssuer) -> Option<IssuerConfig> {
    let before = p.0.len();
    let issuer = match raw.issuer.as_deref() {
        None | Some("") => {
            p.push(
                format!("{key}.issuer"),
                "is required: the exact `iss` value of its tokens",
            );
            None
        }
        Some(s) => http_url(p, &format!("{key}.issuer"), s).map(|_| s.to_owned()),
    };
    let insecure_ok = raw.allow_insecure_http.unwrap_or(false);
    let keys = key_source(p, key, raw, insecure_ok);
    if raw.audiences.is_empty() || raw.audiences.iter().any(String::is_empty) {
        p.push(
            format!("{key}.audiences"),
            "must list at least one non-empty audience (the `aud` your API's tokens carry)",
        );
    }
    let algorithms = algorithms(p, key, raw);
    let d = |p: &mut Problems, name: &str, value: &Option<String>, default: u64| {
        p.duration(
            &format!("{key}.{name}"),
            value.as_deref(),
            Duration::from_secs(default),
        )
    };
    let leeway = d(p, "leeway", &raw.leeway, 30);
    if leeway > Duration::from_secs(300) {
        p.push(
            format!("{key}.leeway"),
            "must be at most 5m; clock skew beyond that is a broken clock",
        );
    }
    let jwks_refresh = d(p, "jwks_refresh", &raw.jwks_refresh, 300);
    if jwks_refresh < Duration::from_secs(1) {
        p.push(format!("{key}.jwks_refresh"), "must be at least 1s");
    }
    let jwks_max_stale = d(p, "jwks_max_stale", &raw.jwks_max_stale, 24 * 3600);
    let jwks_min_refetch = d(p, "jwks_min_refetch", &raw.jwks_min_refetch, 10);
    let scope_claim = match raw.scope_claim.as_deref() {
        None | Some("scope") => ScopeClaim::Scope,
        Some("scp") => ScopeClaim::Scp,
        Some(_) => {
            p.push(
                format!("{key}.scope_claim"),
                "must be \"scope\" (a space-separated string) or \"scp\" (a string or an array)",
            );
            ScopeClaim::Scope
        }
    };
    let max_token_lifetime = raw
        .max_token_lifetime
        .as_ref()
        .map(|v| d(p, "max_token_lifetime", &Some(v.clone()), 0));
    if p.0.len() > before {
        return None;
    }
    Some(IssuerConfig {
        issuer: issuer?,
        keys: keys?,
        audiences: raw.audiences.clone(),
        algorithms,
        leeway,
        jwks_refresh,
        jwks_max_stale,
        jwks_min_refetch,
        require_typ: raw.require_typ.unwrap_or(false),
        scope_claim,
        max_token_lifetime,
        allow_insecure_http: insecure_ok,
        require_dpop: raw.require_dpop.unwrap_or(false),
        ca_file: raw.ca_file.as_deref().map(Into::into),
    })
}

/// Exactly one of `jwks_uri`, `discovery = true`, `hmac_secret_env`.
fn key_source(
    p: &mut Problems,
    key: &str,
    raw: &RawIssuer,
    insecure_ok: bool,
) -> Option<KeySource> {
    let hmac = raw
        .hmac_secret_env
        .as_deref()
        .or(raw.hmac_secret_file.as_deref());
    match (
        raw.jwks_uri.as_deref(),
        raw.discovery.unwrap_or(false),
        hmac,
    ) {
        (Some(_), true, _) => {
            p.push(
                format!("{key}.jwks_uri"),
                "set either jwks_uri or discovery = true, not both",
            );
            None
        }
        (Some(_), _, Some(_)) | (_, true, Some(_)) => {
            p.push(
                format!("{key}.hmac_secret_env"),
                "an issuer signs with a shared secret or publishes public keys, not both; remove hmac_secret_env or jwks_uri / discovery",
            );
            None
        }
        (Some(uri), false, None) => {
            let k = format!("{key}.jwks_uri");
            let url = http_url(p, &k, uri)?;
            if !secure_enough(&url, insecure_ok) {
                p.push(k, HTTPS_RULE);
            }
            Some(KeySource::JwksUri(url))
        }
        (None, true, None) => {
            let issuer_url = raw.issuer.as_deref().and_then(|i| Url::parse(i).ok());
            if issuer_url.is_some_and(|u| !secure_enough(&u, insecure_ok)) {
                p.push(
                    format!("{key}.issuer"),
                    format!("with discovery = true, {HTTPS_RULE}"),
                );
            }
            Some(KeySource::Discovery)
        }
        (None, false, Some(_)) => p
            .secret_source(
                &format!("{key}.hmac_secret"),
                raw.hmac_secret_env.as_deref(),
                raw.hmac_secret_file.as_deref(),
            )
            .map(KeySource::HmacSecret),
        (None, false, None) => {
            p.push(
                format!("{key}.jwks_uri"),
                "is required: set jwks_uri = \"https://...\" or discovery = true",
            );
            None
        }
    }
}

fn algorithms(p: &mut Problems, key: &str, raw: &RawIssuer) -> Vec<Algorithm> {
    let mut algorithms = Vec::new();
    for (i, name) in raw.algorithms.iter().enumerate() {
        let k = format!("{key}.algorithms[{i}]");
        match Algorithm::from_name(name) {
            Some(a) if !algorithms.contains(&a) => algorithms.push(a),
            Some(_) => p.push(k, format!("{name} is listed twice")),
            None if name.eq_ignore_ascii_case("none") => p.push(
                k,
                "\"none\" is never allowed: unsigned tokens prove nothing (RFC 8725 §3.1)",
            ),
            None => p.push(
                k,
                format!(
                    "unknown algorithm {name:?}; use one of {} (names are case-sensitive)",
                    Algorithm::ALL.map(Algorithm::name).join(", ")
                ),
            ),
        }
    }
    if raw.algorithms.is_empty() {
        p.push(
            format!("{key}.algorithms"),
            "must list at least one algorithm, e.g. [\"RS256\"]",
        );
    }
    let hmac = algorithms.iter().any(|a| a.is_hmac());
    if hmac && algorithms.iter().any(|a| !a.is_hmac()) {
        p.push(
            format!("{key}.algorithms"),
            "HS256/384/512 cannot be mixed with public-key algorithms for one issuer (algorithm confusion, RFC 8725 §2.1)",
        );
    } else if hmac != (raw.hmac_secret_env.is_some() || raw.hmac_secret_file.is_some()) {
        p.push(
            format!("{key}.hmac_secret_env"),
            if hmac {
                "HS256/384/512 need hmac_secret_env naming the variable (or hmac_secret_file naming the file) that holds the shared secret"
            } else {
                "hmac_secret_env only goes with HS256/384/512 algorithms"
            },
        );
    }
    algorithms
}

/// Keys and metadata come over https, except from a loopback address (a sidecar identity
/// provider, tests) or when the issuer explicitly allows plain http.
pub(super) fn secure_enough(url: &Url, allow_insecure_http: bool) -> bool {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    url.scheme() == "https" || loopback || allow_insecure_http
}
