//! JWT parsing and claim checks (RFC 7519, RFC 8725, RFC 9068). Signatures are checked in
//! [`super::keys`]; this file never touches a key.
//!
//! Parsing is ours rather than the library's so that every rule is explicit: a size bound before
//! any decoding, exactly three base64url parts without padding (compact serialization, RFC 7515
//! §7.1), header and claims JSON objects, duplicate member names rejected (serde's derived
//! deserializers refuse a repeated field instead of keeping the last), and any `crit` header
//! refused (RFC 7515 §4.1.11: we understand no extensions). `jku`, `x5u`, `jwk` and `x5c` are
//! never read: a token does not get to say where its key lives (RFC 8725 §3.10).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::{self, IgnoredAny};
use serde::{Deserialize, Deserializer};

use super::error::TokenFault;
use super::settings::{Algorithm, ScopeClaim};

/// The JOSE header members we read. Unknown members are ignored; `crit` fails the token.
#[derive(Debug, Deserialize)]
pub struct JoseHeader {
    pub alg: String,
    pub kid: Option<String>,
    pub typ: Option<String>,
    #[serde(default)]
    crit: Present,
}

/// Whether a header member is there at all, whatever its value, `null` included: a `crit` of
/// any form fails the token (RFC 7515 §4.1.11; we understand no extensions).
#[derive(Debug, Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Present(true))
    }
}

/// The claims we read; a repeated member name is an error.
#[derive(Debug, Default, Deserialize)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub aud: Option<OneOrMany>,
    pub exp: Option<NumericDate>,
    pub nbf: Option<NumericDate>,
    pub iat: Option<NumericDate>,
    pub client_id: Option<String>,
    pub scope: Option<OneOrMany>,
    pub scp: Option<OneOrMany>,
    /// Read leniently ([`seconds`], strings only for `acr`): only step-up uses them, and a
    /// stray type must not refuse the token on every other route.
    pub acr: Option<serde_json::Value>,
    pub auth_time: Option<serde_json::Value>,
    /// `cnf` (RFC 7800): any value but `null` binds the token to a key or certificate
    /// ([`super::dpop::confirmation`]).
    pub cnf: Option<serde_json::Value>,
}

/// A JSON number of seconds, fractions truncated; anything else is `None`.
pub fn seconds(v: &serde_json::Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite())
            .map(|f| f.trunc() as i64)
    })
}

/// A string or an array of strings (`aud`, RFC 7519 §4.1.3; `scp`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn contains_any(&self, wanted: &[String]) -> bool {
        match self {
            OneOrMany::One(s) => wanted.contains(s),
            OneOrMany::Many(v) => v.iter().any(|s| wanted.contains(s)),
        }
    }
}

/// Seconds since the epoch (RFC 7519 §2): a JSON number, fractions truncated. Strings are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NumericDate(pub i64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = NumericDate;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of seconds")
            }
            fn visit_i64<E>(self, v: i64) -> Result<NumericDate, E> {
                Ok(NumericDate(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<NumericDate, E> {
                Ok(NumericDate(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<NumericDate, E> {
                if !v.is_finite() {
                    return Err(E::custom("not a finite number"));
                }
                // `as` saturates at the i64 bounds.
                Ok(NumericDate(v.trunc() as i64))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub header: JoseHeader,
    pub alg: Algorithm,
    pub claims: Claims,
    /// `base64url(header) . base64url(claims)`: what the signature covers.
    pub signing_input: &'a str,
    pub signature: &'a str,
}

/// Whether a token has the shape of a JWT at all: three non-empty base64url parts.
/// It runs on every token the verified-token cache does not know, over tokens of a kilobyte
/// or so, so it has no early exit: each check is a fold over 32-byte chunks with byte-wide
/// accumulators, which compiles to SIMD.
pub fn looks_like_jwt(token: &str) -> bool {
    let b = token.as_bytes();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    let (mut bad, mut dots) = (0u8, 0usize);
    for chunk in b.chunks(32) {
        let (mut chunk_bad, mut chunk_dots) = (0u8, 0u8);
        for &c in chunk {
            chunk_bad |= u8::from(!(is_base64url(c) | (c == b'.')));
            chunk_dots += u8::from(c == b'.');
        }
        bad |= chunk_bad;
        dots += usize::from(chunk_dots);
    }
    // Two dots side by side make an empty part: compare the token with itself shifted by one.
    let (left, right) = (&b[..b.len() - 1], &b[1..]);
    let mut adjacent = 0u8;
    for (l, r) in left.chunks(32).zip(right.chunks(32)) {
        let mut chunk_adjacent = 0u8;
        for (&x, &y) in l.iter().zip(r) {
            chunk_adjacent |= u8::from((x == b'.') & (y == b'.'));
        }
        adjacent |= chunk_adjacent;
    }
    bad == 0 && dots == 2 && adjacent == 0 && first != b'.' && last != b'.'
}

/// One base64url byte (RFC 4648 §5), as comparisons so that folds over a token vectorize.
#[inline(always)]
fn is_base64url(c: u8) -> bool {
    let lower = c | 0x20;
    lower.is_ascii_lowercase() | c.is_ascii_digit() | (c == b'-') | (c == b'_')
}

/// Split and decode a token of at most `max_size` bytes.
pub fn parse(token: &str, max_size: usize) -> Result<Unverified<'_>, TokenFault> {
    if token.len() > max_size {
        return Err(TokenFault::Oversize);
    }
    if !looks_like_jwt(token) {
        return Err(TokenFault::Malformed);
    }
    let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenFault::Malformed)?;
    let (header_b64, claims_b64) = signing_input.split_once('.').ok_or(TokenFault::Malformed)?;
    let header: JoseHeader = decode_json(header_b64)?;
    if header.crit.0 {
        return Err(TokenFault::CriticalHeader);
    }
    let alg = Algorithm::from_name(&header.alg).ok_or(TokenFault::AlgorithmNotAllowed)?;
    let claims: Claims = decode_json(claims_b64)?;
    Ok(Unverified {
        header,
        alg,
        claims,
        signing_input,
        signature,
    })
}

/// The payload of a token whose signature verified, as the whole claim set and its base64url
/// form (the token's own second part).
pub fn claim_set(signing_input: &str) -> Option<(super::claims::ClaimSet, &str)> {
    let (_, payload) = signing_input.split_once('.')?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    Some((super::claims::parse_claim_set(&bytes)?, payload))
}

/// base64url without padding, then a JSON object (serde refuses anything else for a struct) in
/// UTF-8 throughout (RFC 8259 §8.1: serde_json would not check members it ignores).
fn decode_json<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, TokenFault> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenFault::Malformed)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| TokenFault::Malformed)?;
    if !text.starts_with('{') {
        return Err(TokenFault::Malformed);
    }
    serde_json::from_str(text).map_err(|_| TokenFault::Malformed)
}

/// What claim checks need to know about the issuer.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub audiences: Vec<String>,
    pub leeway: Duration,
    pub require_typ: bool,
    pub scope_claim: ScopeClaim,
    pub max_token_lifetime: Option<Duration>,
}

/// The checks that follow a valid signature. `now` is passed in: the clock is read by callers.
///
/// `exp` is required and must be after `now - leeway`; `nbf` must not be after `now + leeway`;
/// an `iat` after `now + leeway` is refused; `aud` is required and must contain a configured
/// audience (RFC 7519 §4.1); `typ` is `at+jwt` when required (RFC 9068 §4).
pub fn check_claims(
    header: &JoseHeader,
    claims: &Claims,
    rules: &ClaimRules,
    now: SystemTime,
) -> Result<(), TokenFault> {
    let now = unix_seconds(now);
    let leeway = i64::try_from(rules.leeway.as_secs()).unwrap_or(i64::MAX);
    // A DPoP or certificate binding is checked against the request; any other refuses.
    super::dpop::confirmation(claims.cnf.as_ref())?;
    if rules.require_typ {
        let typ = header.typ.as_deref().unwrap_or("");
        if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
            return Err(TokenFault::WrongType);
        }
    }
    let exp = claims.exp.ok_or(TokenFault::MissingClaim)?.0;
    if now >= exp.saturating_add(leeway) {
        return Err(TokenFault::Expired);
    }
    if let Some(nbf) = claims.nbf {
        if now < nbf.0.saturating_sub(leeway) {
            return Err(TokenFault::NotYetValid);
        }
    }
    if let Some(iat) = claims.iat {
        if iat.0 > now.saturating_add(leeway) {
            return Err(TokenFault::NotYetValid);
        }
    }
    if let Some(max) = rules.max_token_lifetime {
        let iat = claims.iat.ok_or(TokenFault::MissingClaim)?.0;
        if exp.saturating_sub(iat) > i64::try_from(max.as_secs()).unwrap_or(i64::MAX) {
            return Err(TokenFault::LifetimeTooLong);
        }
    }
    match &claims.aud {
        Some(aud) if aud.contains_any(&rules.audiences) => Ok(()),
        _ => Err(TokenFault::WrongAudience),
    }
}

/// The token's scopes, from the configured claim.
pub fn scopes(claims: &Claims, claim: ScopeClaim) -> Vec<String> {
    let value = match claim {
        ScopeClaim::Scope => &claims.scope,
        ScopeClaim::Scp => &claims.scp,
    };
    match value {
        Some(OneOrMany::One(s)) => s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(OneOrMany::Many(v)) if claim == ScopeClaim::Scp => v.clone(),
        _ => Vec::new(),
    }
}

/// Seconds since the epoch; before 1970 counts as 0.
pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape() {
        for (token, shape) in [
            ("a.b.c", true),
            ("eyJh-_0.eyJ9.sig_-9", true),
            ("a.b", false),
            ("a.b.c.d", false),
            ("a.b.c.d.e", false),
            (".b.c", false),
            ("a..c", false),
            ("..", false),
            ("...", false),
            ("a.b.c.", false),
            (".", false),
            ("a.b.", false),
            ("a.b.c=", false),
            ("a.b+.c", false),
            ("a.b/.c", false),
            ("a.b .c", false),
            ("a.é.c", false),
            ("", false),
            ("opaque-token", false),
        ] {
            assert_eq!(looks_like_jwt(token), shape, "{token:?}");
        }
    }

    /// The shape by its definition: split on dots, three parts, each non-empty base64url.
    fn shape_by_splitting(token: &str) -> bool {
        let parts: Vec<&str> = token.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(is_base64url))
    }

    #[test]
    fn the_shape_check_agrees_with_splitting() {
        // Every short string over dots, base64url bytes and bytes outside it.
        let alphabet = ['a', 'Z', '9', '-', '_', '.', '=', '+', '~'];
        let checked = crate::testing::for_every_extension("", &alphabet, 6, |u| {
            assert_eq!(looks_like_jwt(u), shape_by_splitting(u), "{u:?}");
        });
        assert_eq!(checked, (1..=6).map(|n| 9usize.pow(n)).sum::<usize>());
        // Long tokens, the folds work in 32-byte chunks: two dots at every pair of places,
        // then a bad byte at every place of a good token.
        let n = 100;
        for i in 0..n {
            for j in i + 1..n {
                let mut b = vec![b'a'; n];
                b[i] = b'.';
                b[j] = b'.';
                let u = String::from_utf8(b).unwrap();
                assert_eq!(looks_like_jwt(&u), shape_by_splitting(&u), "{u:?}");
            }
        }
        let good = format!("{}.{}.{}", "a".repeat(31), "b".repeat(32), "c".repeat(33));
        assert!(looks_like_jwt(&good));
        for i in 0..good.len() {
            let mut b = good.clone().into_bytes();
            b[i] = if b[i] == b'.' { b'a' } else { b'=' };
            let u = String::from_utf8(b).unwrap();
            assert!(!looks_like_jwt(&u), "{u:?}");
        }
    }

    #[test]
    fn the_base64url_alphabet_is_exactly_rfc_4648s() {
        for c in 0..=255u8 {
            let expected = c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
            assert_eq!(is_base64url(c), expected, "byte {c:#04x}");
        }
    }

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn token(header: &str, claims: &str) -> String {
        format!("{}.{}.c2ln", b64(header), b64(claims))
    }

    const H: &str = r#"{"alg":"RS256","kid":"k1"}"#;

    #[test]
    fn shape_rules() {
        let ok = token(H, r#"{"iss":"i"}"#);
        assert!(parse(&ok, 8192).is_ok());
        let cases = [
            ("two parts", format!("{}.{}", b64(H), b64("{}"))),
            ("four parts", format!("{ok}.x")),
            ("five parts (JWE)", format!("{ok}.x.y")),
            ("padding", ok.replacen('.', "=.", 1)),
            (
                "standard alphabet",
                format!("{}+.{}.c2ln", b64(H), b64("{}")),
            ),
            ("empty signature", format!("{}.{}.", b64(H), b64("{}"))),
            ("header not an object", token(r#"["RS256"]"#, "{}")),
            ("claims not an object", token(H, "42")),
            (
                "claims not JSON",
                format!("{}.{}.c2ln", b64(H), b64("{nope")),
            ),
            ("trailing garbage", format!("{ok} x")),
        ];
        for (name, t) in cases {
            assert_eq!(
                parse(&t, 8192).err(),
                Some(TokenFault::Malformed),
                "{name}: {t}"
            );
        }
        assert_eq!(parse(&ok, ok.len() - 1).err(), Some(TokenFault::Oversize));
    }

    #[test]
    fn parts_must_be_utf8_json_even_in_ignored_members() {
        let encode = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let header = encode(b"{\"alg\":\"RS256\",\"x\":\"\xff\"}");
        let claims = encode(b"{\"x\":\"\xc3\x28\"}");
        let ok_header = encode(H.as_bytes());
        for t in [
            format!("{header}.{}.c2ln", encode(b"{}")),
            format!("{ok_header}.{claims}.c2ln"),
        ] {
            assert_eq!(parse(&t, 8192).err(), Some(TokenFault::Malformed), "{t}");
        }
    }

    #[test]
    fn header_rules() {
        let t = token(r#"{"alg":"RS256","crit":["exp"]}"#, "{}");
        assert_eq!(parse(&t, 8192).err(), Some(TokenFault::CriticalHeader));
        for crit in ["[]", "null", "\"exp\"", "{}", "0", "[\"b64\"]"] {
            let t = token(&format!(r#"{{"alg":"RS256","crit":{crit}}}"#), "{}");
            assert_eq!(
                parse(&t, 8192).err(),
                Some(TokenFault::CriticalHeader),
                "crit {crit}"
            );
        }
        for alg in ["none", "None", "NONE", "nOnE", "rs256", ""] {
            let t = token(&format!(r#"{{"alg":"{alg}"}}"#), "{}");
            assert_eq!(
                parse(&t, 8192).err(),
                Some(TokenFault::AlgorithmNotAllowed),
                "{alg}"
            );
        }
        let t = token(r#"{"alg":"RS256","alg":"HS256"}"#, "{}");
        assert_eq!(
            parse(&t, 8192).err(),
            Some(TokenFault::Malformed),
            "duplicate header member"
        );
        let t = token(
            r#"{"alg":"RS256","jku":"http://127.0.0.1:1/keys","jwk":{"kty":"oct"}}"#,
            "{}",
        );
        assert!(
            parse(&t, 8192).is_ok(),
            "jku and jwk are ignored, not followed"
        );
    }

    #[test]
    fn duplicate_claims_and_claim_types_are_refused() {
        for claims in [
            r#"{"iss":"a","iss":"b"}"#,
            r#"{"exp":1,"exp":99999999999}"#,
            r#"{"aud":"x","aud":"y"}"#,
            r#"{"exp":"99999999999"}"#,
            r#"{"exp":true}"#,
            r#"{"sub":1}"#,
            r#"{"aud":[1]}"#,
        ] {
            assert_eq!(
                parse(&token(H, claims), 8192).err(),
                Some(TokenFault::Malformed),
                "{claims}"
            );
        }
        let t = token(H, r#"{"exp":1.9e3,"nbf":-5,"iat":18446744073709551615}"#);
        let c = parse(&t, 8192).unwrap().claims;
        assert_eq!(
            (c.exp, c.nbf, c.iat),
            (
                Some(NumericDate(1900)),
                Some(NumericDate(-5)),
                Some(NumericDate(i64::MAX))
            )
        );
    }

    fn rules() -> ClaimRules {
        ClaimRules {
            audiences: vec!["api".into()],
            leeway: Duration::from_secs(30),
            require_typ: false,
            scope_claim: ScopeClaim::Scope,
            max_token_lifetime: None,
        }
    }

    fn header(typ: Option<&str>) -> JoseHeader {
        JoseHeader {
            alg: "RS256".into(),
            kid: None,
            typ: typ.map(Into::into),
            crit: Present(false),
        }
    }

    fn claims(exp: i64) -> Claims {
        Claims {
            aud: Some(OneOrMany::One("api".into())),
            exp: Some(NumericDate(exp)),
            ..Claims::default()
        }
    }

    fn at(secs: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    }

    #[test]
    fn time_boundaries_at_plus_minus_one_second_of_leeway() {
        let (h, r) = (header(None), rules());
        let exp = 1_000_000;
        assert_eq!(check_claims(&h, &claims(exp), &r, at(exp + 29)), Ok(()));
        assert_eq!(
            check_claims(&h, &claims(exp), &r, at(exp + 30)),
            Err(TokenFault::Expired)
        );
        assert_eq!(
            check_claims(&h, &claims(exp), &r, at(exp + 31)),
            Err(TokenFault::Expired)
        );

        let mut c = claims(exp + 3600);
        c.nbf = Some(NumericDate(exp));
        assert_eq!(
            check_claims(&h, &c, &r, at(exp - 31)),
            Err(TokenFault::NotYetValid)
        );
        assert_eq!(check_claims(&h, &c, &r, at(exp - 30)), Ok(()));
        assert_eq!(check_claims(&h, &c, &r, at(exp - 29)), Ok(()));

        let mut c = claims(exp + 3600);
        c.iat = Some(NumericDate(exp));
        assert_eq!(
            check_claims(&h, &c, &r, at(exp - 31)),
            Err(TokenFault::NotYetValid)
        );
        assert_eq!(check_claims(&h, &c, &r, at(exp - 30)), Ok(()));
    }

    #[test]
    fn required_claims_audience_type_and_lifetime() {
        let (h, r, now) = (header(None), rules(), at(1000));
        let mut c = claims(2000);
        c.exp = None;
        assert_eq!(check_claims(&h, &c, &r, now), Err(TokenFault::MissingClaim));
        let mut c = claims(2000);
        c.aud = None;
        assert_eq!(
            check_claims(&h, &c, &r, now),
            Err(TokenFault::WrongAudience)
        );
        c.aud = Some(OneOrMany::Many(vec!["other".into(), "api".into()]));
        assert_eq!(check_claims(&h, &c, &r, now), Ok(()));
        c.aud = Some(OneOrMany::Many(vec!["other".into()]));
        assert_eq!(
            check_claims(&h, &c, &r, now),
            Err(TokenFault::WrongAudience)
        );

        let strict = ClaimRules {
            require_typ: true,
            ..rules()
        };
        for (typ, ok) in [
            (Some("at+jwt"), true),
            (Some("AT+JWT"), true),
            (Some("application/at+jwt"), true),
            (Some("JWT"), false),
            (None, false),
        ] {
            assert_eq!(
                check_claims(&header(typ), &claims(2000), &strict, now).is_ok(),
                ok,
                "{typ:?}"
            );
        }

        let short = ClaimRules {
            max_token_lifetime: Some(Duration::from_secs(600)),
            ..rules()
        };
        let mut c = claims(1600);
        assert_eq!(
            check_claims(&h, &c, &short, now),
            Err(TokenFault::MissingClaim),
            "lifetime needs iat"
        );
        c.iat = Some(NumericDate(1000));
        assert_eq!(check_claims(&h, &c, &short, now), Ok(()));
        c.exp = Some(NumericDate(1601));
        assert_eq!(
            check_claims(&h, &c, &short, now),
            Err(TokenFault::LifetimeTooLong)
        );
    }

    #[test]
    fn scope_claims() {
        let c = Claims {
            scope: Some(OneOrMany::One("a  b c".into())),
            scp: Some(OneOrMany::Many(vec!["x".into(), "y".into()])),
            ..Claims::default()
        };
        assert_eq!(scopes(&c, ScopeClaim::Scope), ["a", "b", "c"]);
        assert_eq!(scopes(&c, ScopeClaim::Scp), ["x", "y"]);
        let c = Claims {
            scope: Some(OneOrMany::Many(vec!["a".into()])),
            ..Claims::default()
        };
        assert!(
            scopes(&c, ScopeClaim::Scope).is_empty(),
            "scope must be a string (RFC 9068)"
        );
    }
}
