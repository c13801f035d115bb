//! Verified claims beyond scopes: finding a claim by path, and rendering claims into the
//! headers a route maps them to.
//!
//! A value bound for a header follows the same rule as the `X-Auth-*` headers
//! ([`super::Principal::new`]): when the upstream could read it otherwise (a control character,
//! padding, too long), the token is refused ([`TokenFault::UnsafeClaim`]) rather than the
//! header dropped or mended.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::error::TokenFault;
use super::MAX_IDENTITY_HEADER_BYTES;

/// The verified claim set: a JWT's payload or an introspection answer.
pub type ClaimSet = Map<String, Value>;

/// The largest whole-claim-set header (`claims_header`), in bytes.
pub const MAX_CLAIMS_HEADER_BYTES: usize = 16 * 1024;

/// The separator of an array claim's elements in a header: the list separator of RFC 9110
/// §5.6.1, which every framework's header-list parser splits on.
pub const ARRAY_SEPARATOR: char = ',';

/// Where a claim is: a member name as written, or, when the claim set has no member of that
/// exact name, a dotted path into nested objects (`org.id`). Namespaced claims such as
/// `https://example.com/roles` are found by their whole name first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath {
    whole: String,
    segments: Vec<String>,
}

impl ClaimPath {
    /// `None` when a segment would be empty (`a..b`, `.a`, `a.`) or the path is empty.
    pub fn parse(path: &str) -> Option<ClaimPath> {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return None;
        }
        Some(ClaimPath {
            whole: path.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.whole
    }

    /// The claim's value, `None` when absent (a JSON `null` counts as absent).
    pub fn find<'c>(&self, claims: &'c ClaimSet) -> Option<&'c Value> {
        let found = match claims.get(&self.whole) {
            Some(v) => Some(v),
            None if self.segments.len() > 1 => {
                let mut value = claims.get(&self.segments[0])?;
                for segment in &self.segments[1..] {
                    value = value.as_object()?.get(segment)?;
                }
                Some(value)
            }
            None => None,
        };
        found.filter(|v| !v.is_null())
    }
}

/// Which claims a route passes on as headers (`claim_headers`, `claims_header`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimHeaders {
    /// Header name, claim path; in the order configured.
    pub map: Vec<(HeaderName, ClaimPath)>,
    /// The whole verified claim set as base64url JSON, in this header.
    pub whole: Option<HeaderName>,
}

impl ClaimHeaders {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty() && self.whole.is_none()
    }

    /// The headers for these claims (`encoded`: the claim set as base64url JSON). A claim that
    /// is absent has no header.
    pub fn render(
        &self,
        claims: Option<&ClaimSet>,
        encoded: Option<&Arc<str>>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, TokenFault> {
        let mut out = Vec::with_capacity(self.map.len() + 1);
        for (name, path) in &self.map {
            let Some(value) = claims.and_then(|c| path.find(c)) else {
                continue;
            };
            if let Some(value) = header_value(value)? {
                out.push((name.clone(), value));
            }
        }
        if let (Some(name), Some(encoded)) = (&self.whole, encoded) {
            if encoded.len() > MAX_CLAIMS_HEADER_BYTES {
                return Err(TokenFault::UnsafeClaim);
            }
            let value = HeaderValue::from_str(encoded).map_err(|_| TokenFault::UnsafeClaim)?;
            out.push((name.clone(), value));
        }
        Ok(out)
    }
}

/// A claim set from JSON text, refusing a repeated member name at any depth (RFC 7519 §4:
/// claim names are unique; and an upstream whose parser keeps the first of two would read
/// another value than the one checked). `None` for anything but such an object.
pub fn parse_claim_set(text: &[u8]) -> Option<ClaimSet> {
    match serde_json::from_slice::<Unique>(text).ok()?.0 {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// A JSON value whose objects have no repeated member names.
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Unique, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON without repeated member names")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Unique, E> {
        Ok(Unique(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Unique, E> {
        Ok(Unique(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Unique, E> {
        Ok(Unique(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Unique, E> {
        Ok(Unique(
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<Unique, E> {
        Ok(Unique(Value::String(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Unique, E> {
        Ok(Unique(Value::String(v)))
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique(Value::Null))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Unique(Value::Array(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut out = Map::new();
        while let Some((key, Unique(value))) = map.next_entry::<String, Unique>()? {
            if out.insert(key, value).is_some() {
                return Err(serde::de::Error::custom("a repeated member name"));
            }
        }
        Ok(Unique(Value::Object(out)))
    }
}

/// The claim set as base64url JSON, for `claims_header`.
pub fn encode(claims: &ClaimSet) -> Arc<str> {
    let json = serde_json::to_string(claims).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json).into()
}

/// One claim as a header value, `None` for an empty array (no header):
/// - a string as it is; a number or boolean as its JSON text;
/// - an array of those, its elements joined by [`ARRAY_SEPARATOR`].
///
/// An object, or an array holding an object or an array, refuses the token: as JSON text its
/// commas and strings would escape every check below (red team: `[{"k":"x,admins"}]`). Map
/// its members with dotted paths, or pass the whole claim set with `claims_header`.
///
/// A string or element holding the separator refuses the token: an upstream reading the header
/// as a list would see other values than the claim's (and `"a,admin"` would read like the
/// array `["a", "admin"]`); so does an empty element. So does a number beyond 2^53 that JSON
/// parsing made approximate: two different claims would give the same header.
pub fn header_value(value: &Value) -> Result<Option<HeaderValue>, TokenFault> {
    let text = match value {
        Value::Array(items) if items.is_empty() => return Ok(None),
        Value::Array(items) if items.iter().all(is_scalar) => {
            let mut joined = String::new();
            for (i, item) in items.iter().enumerate() {
                let item = scalar_text(item)?;
                if item.is_empty() {
                    return Err(TokenFault::UnsafeClaim);
                }
                check_text(&item)?;
                if i > 0 {
                    joined.push(ARRAY_SEPARATOR);
                }
                joined.push_str(&item);
            }
            joined
        }
        Value::Array(_) | Value::Object(_) => return Err(TokenFault::UnsafeClaim),
        scalar => scalar_text(scalar)?.into_owned(),
    };
    check_text(&text)?;
    HeaderValue::from_bytes(text.as_bytes())
        .map(Some)
        .map_err(|_| TokenFault::UnsafeClaim)
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// A string, number or boolean as text; see [`header_value`] for what refuses the token.
fn scalar_text(v: &Value) -> Result<std::borrow::Cow<'_, str>, TokenFault> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match v {
        // A quote or backslash would let a quote-aware list parser (RFC 9110 §5.6.4, structured
        // fields) read other elements than the claim's, as a comma would (red team).
        Value::String(s) if s.contains([ARRAY_SEPARATOR, '"', '\\']) => {
            Err(TokenFault::UnsafeClaim)
        }
        Value::String(s) => Ok(std::borrow::Cow::Borrowed(s)),
        Value::Number(n) if n.is_f64() && n.as_f64().is_some_and(|f| f.abs() >= EXACT) => {
            Err(TokenFault::UnsafeClaim)
        }
        other => Ok(std::borrow::Cow::Owned(other.to_string())),
    }
}

/// The rule of every identity header value ([`super::Principal::new`]).
pub(super) fn check_text(value: &str) -> Result<(), TokenFault> {
    // C0, DEL and C1 controls (NEL among them), and the Unicode line separators.
    let unsafe_char = value
        .chars()
        .any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'));
    // Whitespace (Unicode's, too: Go's TrimSpace and .NET's Trim strip it) and the characters
    // that display as nothing at either end: a normaliser that drops them would make
    // `admin\u{200d}` `admin`.
    let trimmable = |c: char| c.is_whitespace() || is_invisible(c);
    let padded = value.starts_with(trimmable) || value.ends_with(trimmable);
    if unsafe_char || padded || value.len() > MAX_IDENTITY_HEADER_BYTES {
        return Err(TokenFault::UnsafeClaim);
    }
    Ok(())
}

/// Unicode's default-ignorable code points (zero-width and format characters, variation
/// selectors, the Hangul fillers, tag characters) and the bidirectional controls.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00ad}' | '\u{034f}' | '\u{061c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}'
        | '\u{2800}' | '\u{ffa0}' | '\u{fff0}'..='\u{fffc}' | '\u{1bca0}'..='\u{1bca3}'
        | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(v: Value) -> ClaimSet {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn paths_find_whole_names_first_then_nested_members() {
        let claims = set(json!({
            "sub": "u1",
            "org": {"id": "acme", "unit": {"name": "eng"}},
            "https://example.com/roles": ["admin"],
            "a.b": "flat",
            "a": {"b": "nested"},
            "gone": null,
        }));
        let find = |p: &str| ClaimPath::parse(p).unwrap().find(&claims).cloned();
        assert_eq!(find("sub"), Some(json!("u1")));
        assert_eq!(find("org.id"), Some(json!("acme")));
        assert_eq!(find("org.unit.name"), Some(json!("eng")));
        assert_eq!(find("https://example.com/roles"), Some(json!(["admin"])));
        assert_eq!(find("a.b"), Some(json!("flat")));
        assert_eq!(find("org.missing"), None);
        assert_eq!(find("sub.x"), None);
        assert_eq!(find("gone"), None);
        for bad in ["", "a..b", ".a", "a."] {
            assert!(ClaimPath::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn values_render_as_documented_and_unsafe_ones_refuse_the_token() {
        let ok = |v: Value| header_value(&v).map(|h| h.unwrap().to_str().unwrap().to_owned());
        assert_eq!(ok(json!("acme")), Ok("acme".into()));
        assert_eq!(ok(json!(42)), Ok("42".into()));
        assert_eq!(ok(json!(true)), Ok("true".into()));
        assert_eq!(ok(json!(["a", "b", 3])), Ok("a,b,3".into()));

        assert_eq!(
            ok(json!(9_007_199_254_740_991u64)),
            Ok("9007199254740991".into())
        );
        assert_eq!(ok(json!(1.5)), Ok("1.5".into()));
        assert_eq!(header_value(&json!([])), Ok(None));
        assert_eq!(ok(json!("")), Ok("".into()));
        for bad in [
            json!("a\r\nX-Auth-Subject: admin"),
            json!(" admin"),
            json!("admin\u{a0}"),
            json!(["admins,root"]),
            json!(["a", ""]),
            json!(["ok", "x\ny"]),
            json!("x".repeat(MAX_IDENTITY_HEADER_BYTES + 1)),
            json!("acme,evil"),
            json!(1.2345678901234568e29),
            json!("admin\u{200d}"),
            json!("\u{202e}admin"),
            json!("admin\u{e0041}"),
            json!("admin\u{3164}"),
            json!("admin\u{2800}"),
            json!({"k": "v"}),
            json!([{"k": "x,admins,y"}]),
            json!([["x\",admins,\"y"]]),
            json!([[9_007_199_254_740_993u64]]),
            json!(["\"a", "admin\""]),
            json!("\"admin\""),
            json!("a\\b"),
        ] {
            assert_eq!(header_value(&bad), Err(TokenFault::UnsafeClaim), "{bad}");
        }
    }

    #[test]
    fn a_repeated_member_name_anywhere_refuses_the_claim_set() {
        assert!(parse_claim_set(br#"{"a":1,"org":{"id":"x"},"l":[{"k":1}]}"#).is_some());
        for bad in [
            &br#"{"role":"user","role":"admin"}"#[..],
            br#"{"org":{"id":"evil","id":"acme"}}"#,
            br#"{"l":[{"k":1,"k":2}]}"#,
            br#"{"name":"x\ud800"}"#,
            br#"[1]"#,
            br#"{"a":1} x"#,
        ] {
            assert!(
                parse_claim_set(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_mapping_renders_present_claims_and_the_whole_set() {
        let claims = set(json!({"sub": "u1", "groups": ["a", "b"]}));
        let headers = ClaimHeaders {
            map: vec![
                (
                    HeaderName::from_static("x-user-id"),
                    ClaimPath::parse("sub").unwrap(),
                ),
                (
                    HeaderName::from_static("x-tenant"),
                    ClaimPath::parse("org.id").unwrap(),
                ),
                (
                    HeaderName::from_static("x-groups"),
                    ClaimPath::parse("groups").unwrap(),
                ),
            ],
            whole: Some(HeaderName::from_static("x-claims")),
        };
        let encoded = encode(&claims);
        let got = headers.render(Some(&claims), Some(&encoded)).unwrap();
        let got: Vec<(&str, &str)> = got
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                ("x-user-id", "u1"),
                ("x-groups", "a,b"),
                ("x-claims", encoded.as_ref())
            ]
        );
        let decoded = URL_SAFE_NO_PAD.decode(encoded.as_bytes()).unwrap();
        let back: Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(back, json!({"sub": "u1", "groups": ["a", "b"]}));
    }
}
