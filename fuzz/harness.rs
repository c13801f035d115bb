//! What each fuzz target does with one input: call the parser and check what must hold of its
//! answer. Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and by `tests/fuzz_corpus.rs`,
//! which replays the committed corpus on every `make test`.
//!
//! Every function must return normally for every input: a panic is a finding.

use std::sync::LazyLock;
use std::time::{Duration, UNIX_EPOCH};

use portcullis::auth::bearer;
use portcullis::auth::introspection::answer::{self, Answer, Expectations};
use portcullis::auth::jwt::{self, ClaimRules};
use portcullis::auth::keys::{self, KeySet, Lookup};
use portcullis::config::{Algorithm, Config, ScopeClaim};

/// The fixed key set of the JWT target: public ES256, RS256 and EdDSA keys (their private halves
/// signed the seed tokens and were thrown away), and an HS256 secret.
const JWKS: &[u8] = include_bytes!("fixtures/jwks.json");
pub const HMAC_SECRET: &[u8] = b"fuzz-fixture-hmac-secret-of-32-bytes!!";
/// The seeds' claims are valid at this instant (2026-11-21).
const NOW: u64 = 1_795_300_000;

/// `Authorization` header value -> at most one bearer token (RFC 6750 §2.1).
pub fn bearer(data: &[u8]) {
    if let Ok(Some(token)) = bearer::parse(data) {
        assert!(!token.is_empty(), "an empty token was accepted");
        let b64token = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
        assert!(
            token.bytes().all(b64token),
            "a token outside the b64token alphabet: {token:?}"
        );
        let first_eq = token.find('=').unwrap_or(token.len());
        assert!(
            token[first_eq..].bytes().all(|b| b == b'='),
            "`=` before the end: {token:?}"
        );
    }
}

/// A token string -> decode, key choice, signature, claims, against the fixed key set.
pub fn jwt(data: &[u8]) {
    jwt_accepted(data);
}

/// Whether the token passes every check (what [`jwt`] does, with the outcome).
pub fn jwt_accepted(data: &[u8]) -> bool {
    let Ok(token) = std::str::from_utf8(data) else {
        return false;
    };
    // Built once: parsing the fixture per input would be most of the work.
    static ASYMMETRIC: LazyLock<KeySet> =
        LazyLock::new(|| KeySet::from_jwks(JWKS, &Algorithm::ALL).expect("the fixture parses"));
    static HMAC: LazyLock<KeySet> =
        LazyLock::new(|| KeySet::from_hmac_secret(HMAC_SECRET, &[Algorithm::HS256]));
    let Ok(parsed) = jwt::parse(token, 8192) else {
        return false;
    };
    assert!(jwt::looks_like_jwt(token), "parsed without a JWT's shape");
    let set: &KeySet = if parsed.alg == Algorithm::HS256 {
        &HMAC
    } else {
        &ASYMMETRIC
    };
    let Lookup::Candidates(candidates) = set.lookup(parsed.header.kid.as_deref(), parsed.alg)
    else {
        return false;
    };
    let Some(key) = candidates.into_iter().find(|k| keys::verify(&parsed, k)) else {
        return false;
    };
    // Only the seeds' signers could have produced this: the key must be bound to the token's alg.
    assert_eq!(
        key.alg, parsed.alg,
        "verified with a key of another algorithm"
    );
    let rules = ClaimRules {
        audiences: vec!["https://api.example".into()],
        leeway: Duration::from_secs(30),
        require_typ: false,
        scope_claim: ScopeClaim::Scope,
        max_token_lifetime: Some(Duration::from_secs(3600)),
    };
    let now = UNIX_EPOCH + Duration::from_secs(NOW);
    if jwt::check_claims(&parsed.header, &parsed.claims, &rules, now).is_err() {
        return false;
    }
    let exp = parsed.claims.exp.expect("exp is required").0;
    assert!(exp + 30 > NOW as i64, "an expired token passed");
    let _ = jwt::scopes(&parsed.claims, ScopeClaim::Scope);
    true
}

/// A JWKS document -> the usable keys.
pub fn jwks(data: &[u8]) {
    let Ok(set) = KeySet::from_jwks(data, &Algorithm::ALL) else {
        return;
    };
    let Some(json) = json_oracle(data) else {
        return;
    };
    let listed = json["keys"]
        .as_array()
        .map(Vec::len)
        .expect("a set parsed from something that is not a JWKS");
    assert!(
        !set.is_empty() && set.len() <= listed,
        "{} keys from {listed} listed",
        set.len()
    );
    for alg in Algorithm::ALL {
        if let Lookup::Candidates(keys) = set.lookup(None, alg) {
            assert!(
                keys.iter().all(|k| k.alg == alg),
                "a key offered for another alg"
            );
        }
    }
}

/// The input as a JSON value, to check a parser's answer against. `None` for what the JSON
/// grammar allows and serde_json's value type cannot hold: numbers beyond f64 (RFC 8259 §6) and
/// unpaired surrogate escapes (§8.2); the parsers skip both in members they ignore. Anything
/// else that is not JSON panics: the parser that accepted it was wrong.
fn json_oracle(data: &[u8]) -> Option<serde_json::Value> {
    match serde_json::from_slice(data) {
        Ok(v) => Some(v),
        Err(e) if e.to_string().starts_with("number out of range") => None,
        Err(e) if e.to_string().contains("surrogate") => None,
        // serde_json's words for a leading surrogate escape that no `\u` follows (`"\uD800"`).
        Err(e) if e.to_string().starts_with("unexpected end of hex escape") => None,
        Err(e) => panic!("a parser accepted non-JSON: {e}"),
    }
}

/// An introspection answer body -> active or inactive, as the JSON's `active` says.
pub fn introspection_answer(data: &[u8]) {
    let Ok(parsed) = answer::parse(data) else {
        return;
    };
    let Some(json) = json_oracle(data) else {
        return;
    };
    match parsed {
        Answer::Active(claims) => {
            assert_eq!(json["active"], true, "active without \"active\": true");
            let expect = Expectations {
                audiences: vec!["orders".into()],
                issuer: Some("https://id.example".into()),
                leeway: 30,
            };
            if claims.check(&expect, NOW as i64).is_ok() {
                assert!(
                    claims.aud.iter().any(|a| a == "orders"),
                    "passed without aud"
                );
                assert!(claims.exp.is_none_or(|e| e > NOW as i64), "expired passed");
            }
        }
        Answer::Inactive => {
            assert_eq!(json["active"], false, "inactive without \"active\": false")
        }
    }
}

/// A configuration file -> a validated config, or problems that each name a key.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text) {
        Ok(config) => assert!(!config.routes.is_empty(), "a config without routes"),
        Err(e) => assert!(
            e.lines().iter().all(|l| !l.trim().is_empty()),
            "an empty problem line"
        ),
    }
}

/// A raw request target -> its canonical form (`portcullis::gate::target`), or a refusal.
/// What is accepted is origin-form (or `*`), visible ASCII, already in normal form, free of
/// every refused shape, and means to a decoding upstream exactly what the raw path meant.
pub fn request_target(data: &[u8]) {
    use portcullis::gate::target::{canonical, normalise_path};
    let Ok(t) = canonical(data) else {
        return;
    };
    let path = t.path();
    if t.is_asterisk() {
        assert_eq!(data, b"*");
        return;
    }
    assert!(path.starts_with('/'), "not origin-form: {path:?}");
    assert!(
        path.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'\\'),
        "a raw byte survived: {path:?}"
    );
    assert_eq!(
        normalise_path(path).as_deref(),
        Ok(path),
        "normalising is not idempotent"
    );
    let decoded = percent_decode(path);
    let text = std::str::from_utf8(&decoded).expect("the decoded path is UTF-8");
    assert!(!text.contains("//") && !text.contains('\\'), "{path:?}");
    assert!(
        !text.bytes().any(|b| b < 0x20 || b == 0x7f),
        "a control character: {path:?}"
    );
    for segment in text.split('/') {
        let name = segment.split(';').next().unwrap_or_default();
        assert!(name != "." && name != "..", "a dot segment: {path:?}");
    }
    // The same path to an upstream that decodes: the raw path and the normal one decode alike.
    let raw = std::str::from_utf8(data).expect("accepted targets are ASCII");
    // Absolute-form: the path starts after the authority ("://" may also sit in a query).
    let raw_path = match raw.split_once("://") {
        Some((_, rest)) if !raw.starts_with('/') => {
            &rest[rest.find(['/', '?']).unwrap_or(rest.len())..]
        }
        _ => raw,
    };
    let raw_path = raw_path.split('?').next().unwrap_or_default();
    if !raw_path.is_empty() {
        assert_eq!(
            percent_decode(raw_path),
            decoded,
            "normalising changed the path"
        );
    }
}

/// Every well-formed `%XX` decoded (a test oracle, independent of the code under test).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}
