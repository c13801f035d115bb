//! The DPoP proof JWT (RFC 9449 §4.2) and its checks (§4.3), in the order the RFC lists them.
//! Everything here is local work: no state, no clock but the `now` passed in.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::HeaderMap;
use serde::Deserialize;

use super::{DpopFault, DpopSettings, RequestUri};
use crate::auth::jwt::{looks_like_jwt, NumericDate};
use crate::auth::keys::{self, RawJwk};
use crate::auth::settings::Algorithm;

/// The largest `DPoP` header accepted: an RSA-4096 key's JWK and a signature fit in 2 KB.
pub const MAX_PROOF_BYTES: usize = 4096;

/// The longest `jti` accepted (RFC 9449 §4.2 asks for 96 bits of randomness; a UUID is 36).
const MAX_JTI_BYTES: usize = 256;

/// The header members a proof must carry. `crit` fails the proof (RFC 7515 §4.1.11); other
/// members are ignored. Serde refuses a repeated member name.
#[derive(Deserialize)]
struct Header {
    typ: Option<String>,
    alg: String,
    jwk: Option<RawJwk>,
    crit: Option<serde::de::IgnoredAny>,
}

/// The claims of a proof (RFC 9449 §4.2).
#[derive(Deserialize)]
struct Claims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<NumericDate>,
    ath: Option<String>,
    nonce: Option<String>,
}

/// A proof that passed every local check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The RFC 7638 thumbprint of the proof's key: the token's `cnf.jkt` must equal it.
    pub jkt: String,
    /// `jti`, which must not have been seen before.
    pub jti: String,
    /// `iat`, seconds since the epoch.
    pub iat: i64,
    /// `nonce`, when the proof has one.
    pub nonce: Option<String>,
}

/// Check one proof for a request with `method` and `uri`, carrying `token`, at `now` (seconds
/// since the epoch). The nonce and the replay check are the caller's: they need state.
pub fn check(
    proof: &[u8],
    settings: &DpopSettings,
    method: &str,
    uri: &RequestUri<'_>,
    headers: &HeaderMap,
    token: &str,
    now: i64,
) -> Result<Checked, DpopFault> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(DpopFault::Malformed);
    }
    let proof = std::str::from_utf8(proof).map_err(|_| DpopFault::Malformed)?;
    // A compact JWS, three base64url parts (RFC 9449 §4.3 items 2 and 3).
    if !looks_like_jwt(proof) {
        return Err(DpopFault::Malformed);
    }
    let (signing_input, signature) = proof.rsplit_once('.').ok_or(DpopFault::Malformed)?;
    let (header_b64, claims_b64) = signing_input.split_once('.').ok_or(DpopFault::Malformed)?;
    let header: Header = decode_json(header_b64)?;
    if header.crit.is_some() {
        return Err(DpopFault::Malformed);
    }
    // Item 4: `typ` is `dpop+jwt` (media types compare without regard to case).
    if !header
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(DpopFault::WrongType);
    }
    // Item 5: an asymmetric algorithm from the allow-list (`none` and HMAC never are).
    let alg = Algorithm::from_name(&header.alg)
        .filter(|a| !a.is_hmac() && settings.algorithms.contains(a))
        .ok_or(DpopFault::AlgorithmNotAllowed)?;
    // Items 6 and 7: a public key only, usable with that algorithm, and the signature.
    let jwk = header.jwk.as_ref().ok_or(DpopFault::BadKey)?;
    if jwk.is_private() {
        return Err(DpopFault::PrivateKey);
    }
    let (key, jkt) = keys::proof_key(jwk, alg).ok_or(DpopFault::BadKey)?;
    if !keys::verify_parts(&key, signing_input, signature) {
        return Err(DpopFault::BadSignature);
    }
    let claims: Claims = decode_json(claims_b64)?;
    let (Some(jti), Some(htm), Some(htu), Some(iat)) =
        (claims.jti, claims.htm, claims.htu, claims.iat)
    else {
        return Err(DpopFault::Malformed);
    };
    if jti.is_empty() || jti.len() > MAX_JTI_BYTES {
        return Err(DpopFault::Malformed);
    }
    // Item 8: the method, exactly (RFC 9110 §9.1: methods are case-sensitive).
    if htm != method {
        return Err(DpopFault::WrongMethod);
    }
    // Item 9: the URI without query and fragment, both sides normalised.
    if !same_uri(&htu, uri, headers) {
        return Err(DpopFault::WrongUri);
    }
    // Item 11: `iat` within the window, with leeway for clocks running ahead.
    let (max_age, leeway) = (secs(settings.max_age), secs(settings.leeway));
    let iat = iat.0;
    if iat > now.saturating_add(leeway) || iat < now.saturating_sub(max_age + leeway) {
        return Err(DpopFault::Stale);
    }
    // Item 12 (at a resource server): `ath` is the access token's SHA-256, base64url.
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut expected = [0u8; 43];
    let written = URL_SAFE_NO_PAD
        .encode_slice(digest.as_ref(), &mut expected)
        .map_err(|_| DpopFault::WrongTokenHash)?;
    if claims.ath.as_deref().map(str::as_bytes) != Some(&expected[..written]) {
        return Err(DpopFault::WrongTokenHash);
    }
    Ok(Checked {
        jkt,
        jti,
        iat,
        nonce: claims.nonce,
    })
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

/// base64url without padding, then a JSON object in UTF-8 throughout.
fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, DpopFault> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| DpopFault::Malformed)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| DpopFault::Malformed)?;
    if !text.starts_with('{') {
        return Err(DpopFault::Malformed);
    }
    serde_json::from_str(text).map_err(|_| DpopFault::Malformed)
}

/// Whether `htu` names the request's URI (RFC 9449 §4.3 item 9): the query and fragment are
/// ignored, and both sides are compared after syntax- and scheme-based normalisation (RFC 3986
/// §6.2.2, §6.2.3): scheme and host without regard to case, the default port implied, dot
/// segments removed, and the path's percent-encoding put in the normal form the gateway
/// routes and forwards (the same function). A `htu` with user information never matches.
pub fn same_uri(htu: &str, uri: &RequestUri<'_>, headers: &HeaderMap) -> bool {
    let Ok(claimed) = url::Url::parse(htu) else {
        return false;
    };
    if !matches!(claimed.scheme(), "http" | "https")
        || !claimed.username().is_empty()
        || claimed.password().is_some()
    {
        return false;
    }
    let Some(origin) = uri.origin(headers) else {
        return false;
    };
    let Ok(request) = url::Url::parse(&format!("{}://{}/", origin.0, origin.1)) else {
        return false;
    };
    if claimed.scheme() != request.scheme()
        || claimed.host() != request.host()
        || claimed.port_or_known_default() != request.port_or_known_default()
    {
        return false;
    }
    let path: Option<Cow<'_, str>> = (uri.normalise)(claimed.path());
    path.is_some_and(|p| p == uri.path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devkeys::DevKey;
    use serde_json::{json, Value};

    const TOKEN: &str = "the-access-token";

    fn uri(path: &str) -> RequestUri<'_> {
        RequestUri {
            path,
            authority: None,
            scheme: "http",
            forwarded: false,
            // The gateway passes its own path normalisation (tests/dpop.rs); here paths
            // compare as they are.
            normalise: |p| Some(Cow::Borrowed(p)),
        }
    }

    fn host(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("host", value.parse().unwrap());
        h
    }

    fn run(
        proof: &str,
        method: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Checked, DpopFault> {
        let now = crate::auth::jwt::unix_seconds(std::time::SystemTime::now());
        check(
            proof.as_bytes(),
            &DpopSettings::default(),
            method,
            &uri(path),
            headers,
            TOKEN,
            now,
        )
    }

    /// A proof with this header and these claims, signed by `key` whatever the header says.
    fn raw(key: &DevKey, header: Value, claims: Value) -> String {
        key.sign_raw(&header, &claims)
    }

    #[test]
    fn a_good_proof_names_its_key_by_thumbprint() {
        let h = host("api.example.com");
        for alg in [
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::PS256,
            Algorithm::RS256,
            Algorithm::EdDSA,
        ] {
            let key = DevKey::generate(alg, "k");
            let proof = key.dpop_proof("POST", "http://api.example.com/orders", TOKEN, &json!({}));
            let checked =
                run(&proof, "POST", "/orders", &h).unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
            assert_eq!(checked.jkt, key.thumbprint(), "{alg:?}");
        }
    }

    #[test]
    fn the_rfc_7638_example_thumbprint() {
        let jwk: RawJwk = serde_json::from_value(json!({
            "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        }))
        .unwrap();
        assert_eq!(
            jwk.thumbprint().as_deref(),
            Some("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
        );
    }

    #[test]
    fn every_check_of_rfc_9449_section_4_3_refuses() {
        let key = DevKey::generate(Algorithm::ES256, "k");
        let other = DevKey::generate(Algorithm::ES256, "o");
        let h = host("api.example.com");
        let htu = "http://api.example.com/orders";
        let now = crate::auth::jwt::unix_seconds(std::time::SystemTime::now());
        let good = key.dpop_proof("GET", htu, TOKEN, &json!({}));
        let parts: Vec<&str> = good.split('.').collect();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let with = |h: &Value, c: &Value| raw(&key, h.clone(), c.clone());
        let set = |v: &Value, k: &str, x: Value| {
            let mut v = v.clone();
            let o = v.as_object_mut().unwrap();
            match x {
                Value::Null => drop(o.remove(k)),
                x => drop(o.insert(k.into(), x)),
            }
            v
        };
        let mut private_jwk = key.jwk();
        private_jwk["d"] = json!("c2VjcmV0");
        let hmac = DevKey::hmac(Algorithm::HS256, "h", b"0123456789abcdef0123456789abcdef");
        let hmac_proof = hmac.sign_raw(
            &json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": {"kty": "oct", "k": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}}),
            &claims,
        );
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(set(&header, "alg", json!("none")).to_string()),
            parts[1]
        );
        let cases: Vec<(&str, String, DpopFault)> = vec![
            (
                "typ missing",
                with(&set(&header, "typ", Value::Null), &claims),
                DpopFault::WrongType,
            ),
            (
                "typ JWT",
                with(&set(&header, "typ", json!("JWT")), &claims),
                DpopFault::WrongType,
            ),
            ("alg none", unsigned, DpopFault::Malformed),
            (
                "alg none, signed",
                with(&set(&header, "alg", json!("none")), &claims),
                DpopFault::AlgorithmNotAllowed,
            ),
            ("HMAC", hmac_proof, DpopFault::AlgorithmNotAllowed),
            (
                "private key",
                with(&set(&header, "jwk", private_jwk), &claims),
                DpopFault::PrivateKey,
            ),
            (
                "no jwk",
                with(&set(&header, "jwk", Value::Null), &claims),
                DpopFault::BadKey,
            ),
            (
                "jwk of another curve",
                with(&set(&header, "alg", json!("ES384")), &claims),
                DpopFault::BadKey,
            ),
            (
                "crit",
                with(&set(&header, "crit", json!(["exp"])), &claims),
                DpopFault::Malformed,
            ),
            (
                "another key signs",
                raw(&other, header.clone(), claims.clone()),
                DpopFault::BadSignature,
            ),
            (
                "method",
                with(&header, &set(&claims, "htm", json!("POST"))),
                DpopFault::WrongMethod,
            ),
            (
                "method case",
                with(&header, &set(&claims, "htm", json!("get"))),
                DpopFault::WrongMethod,
            ),
            (
                "another path",
                with(
                    &header,
                    &set(&claims, "htu", json!("http://api.example.com/admin")),
                ),
                DpopFault::WrongUri,
            ),
            (
                "a prefix",
                with(
                    &header,
                    &set(&claims, "htu", json!("http://api.example.com/order")),
                ),
                DpopFault::WrongUri,
            ),
            (
                "another host",
                with(
                    &header,
                    &set(&claims, "htu", json!("http://evil.example.com/orders")),
                ),
                DpopFault::WrongUri,
            ),
            (
                "another port",
                with(
                    &header,
                    &set(&claims, "htu", json!("http://api.example.com:8443/orders")),
                ),
                DpopFault::WrongUri,
            ),
            (
                "another scheme",
                with(
                    &header,
                    &set(&claims, "htu", json!("https://api.example.com/orders")),
                ),
                DpopFault::WrongUri,
            ),
            (
                "query trick",
                with(
                    &header,
                    &set(
                        &claims,
                        "htu",
                        json!("http://api.example.com/admin?/orders"),
                    ),
                ),
                DpopFault::WrongUri,
            ),
            (
                "fragment trick",
                with(
                    &header,
                    &set(
                        &claims,
                        "htu",
                        json!("http://api.example.com/admin#/orders"),
                    ),
                ),
                DpopFault::WrongUri,
            ),
            (
                "user info",
                with(
                    &header,
                    &set(&claims, "htu", json!("http://u@api.example.com/orders")),
                ),
                DpopFault::WrongUri,
            ),
            (
                "encoded slash",
                with(
                    &header,
                    &set(&claims, "htu", json!("http://api.example.com/%2Forders")),
                ),
                DpopFault::WrongUri,
            ),
            (
                "relative",
                with(&header, &set(&claims, "htu", json!("/orders"))),
                DpopFault::WrongUri,
            ),
            (
                "stale",
                with(&header, &set(&claims, "iat", json!(now - 120))),
                DpopFault::Stale,
            ),
            (
                "future",
                with(&header, &set(&claims, "iat", json!(now + 60))),
                DpopFault::Stale,
            ),
            (
                "iat as string",
                with(&header, &set(&claims, "iat", json!(now.to_string()))),
                DpopFault::Malformed,
            ),
            (
                "ath of another token",
                with(
                    &header,
                    &set(&claims, "ath", json!(URL_SAFE_NO_PAD.encode([0u8; 32]))),
                ),
                DpopFault::WrongTokenHash,
            ),
            (
                "no ath",
                with(&header, &set(&claims, "ath", Value::Null)),
                DpopFault::WrongTokenHash,
            ),
            (
                "no jti",
                with(&header, &set(&claims, "jti", Value::Null)),
                DpopFault::Malformed,
            ),
            (
                "empty jti",
                with(&header, &set(&claims, "jti", json!(""))),
                DpopFault::Malformed,
            ),
            (
                "long jti",
                with(&header, &set(&claims, "jti", json!("j".repeat(300)))),
                DpopFault::Malformed,
            ),
            ("two parts", parts[..2].join("."), DpopFault::Malformed),
            (
                "oversize",
                format!("{good}{}", "A".repeat(MAX_PROOF_BYTES)),
                DpopFault::Malformed,
            ),
        ];
        assert_eq!(
            run(&good, "GET", "/orders", &h).map(|c| c.jkt),
            Ok(key.thumbprint())
        );
        for (name, proof, want) in cases {
            assert_eq!(
                run(&proof, "GET", "/orders", &h).err(),
                Some(want),
                "{name}"
            );
        }
        // Repeated member names, in the header and in the claims.
        let twice = key.sign_text(
            &format!(
                "{{\"typ\":\"dpop+jwt\",\"alg\":\"ES256\",\"alg\":\"ES256\",\"jwk\":{}}}",
                header["jwk"]
            ),
            &claims.to_string(),
        );
        assert_eq!(
            run(&twice, "GET", "/orders", &h).err(),
            Some(DpopFault::Malformed)
        );
    }

    #[test]
    fn the_uri_is_compared_in_normal_form() {
        let key = DevKey::generate(Algorithm::ES256, "k");
        let h = host("API.Example.com:80");
        for htu in [
            "http://api.example.com/orders/~1",
            "HTTP://API.EXAMPLE.COM:80/orders/~1",
            "http://api.example.com/orders/~1?page=2",
            "http://api.example.com/x/../orders/~1",
            "http://api.example.com/orders/~1#top",
        ] {
            let proof = key.dpop_proof("GET", htu, TOKEN, &json!({}));
            assert!(run(&proof, "GET", "/orders/~1", &h).is_ok(), "{htu}");
        }
        // The scheme and host a trusted proxy in front names.
        let mut forwarded = host("10.0.0.7:8080");
        forwarded.insert("x-forwarded-proto", "https".parse().unwrap());
        forwarded.insert("x-forwarded-host", "api.example.com".parse().unwrap());
        let proof = key.dpop_proof("GET", "https://api.example.com/orders", TOKEN, &json!({}));
        let trusted = RequestUri {
            forwarded: true,
            ..uri("/orders")
        };
        let now = crate::auth::jwt::unix_seconds(std::time::SystemTime::now());
        let settings = DpopSettings::default();
        assert!(check(
            proof.as_bytes(),
            &settings,
            "GET",
            &trusted,
            &forwarded,
            TOKEN,
            now
        )
        .is_ok());
        // Behind a proxy that appends, the last value is the proxy's own; a client's values
        // before it, or a host with a path or user information, do not count.
        let mut appended = forwarded.clone();
        appended.insert("x-forwarded-proto", "http, https".parse().unwrap());
        appended.insert(
            "x-forwarded-host",
            "evil.example, api.example.com".parse().unwrap(),
        );
        assert!(check(
            proof.as_bytes(),
            &settings,
            "GET",
            &trusted,
            &appended,
            TOKEN,
            now
        )
        .is_ok());
        for (name, value) in [
            ("x-forwarded-proto", "https, http"),
            ("x-forwarded-host", "api.example.com, evil.example"),
            ("x-forwarded-host", "api.example.com/x"),
            ("x-forwarded-host", "user@api.example.com"),
        ] {
            let mut h = forwarded.clone();
            h.insert(name, value.parse().unwrap());
            assert_eq!(
                check(proof.as_bytes(), &settings, "GET", &trusted, &h, TOKEN, now).err(),
                Some(DpopFault::WrongUri),
                "{name}: {value}"
            );
        }
        // Not trusted: the listener's scheme and the Host header.
        assert_eq!(
            check(
                proof.as_bytes(),
                &settings,
                "GET",
                &uri("/orders"),
                &forwarded,
                TOKEN,
                now
            )
            .err(),
            Some(DpopFault::WrongUri)
        );
    }
}
