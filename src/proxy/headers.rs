//! The headers the gateway removes from and sets on a request to forward: what the client may
//! not choose goes ([`crate::gate::headers`] judges the names), then the identity headers,
//! `X-Forwarded-For/-Proto/-Host` and `X-Request-Id`.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::Result;

use crate::auth::{identity_header_spelling, Principal};
use crate::gate::headers;
pub use crate::gate::headers::Strip;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Remove every header the client may not choose ([`crate::gate::headers::unwanted`]) from a
/// request to forward.
pub fn strip_client_headers(req: &mut RequestHeader, strip: Strip) {
    let unwanted: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|name| headers::unwanted(name.as_str(), strip))
        .cloned()
        .collect();
    for name in unwanted {
        req.remove_header(&name);
    }
}

/// The identity headers of [`Principal::identity_headers`]: set only by the gateway.
/// Each is inserted under its static spelling: pingora copies a `HeaderName` on every insert.
pub fn set_identity_headers(req: &mut RequestHeader, p: &Principal) {
    for (name, value) in p.identity_headers() {
        let _ = match identity_header_spelling(name) {
            Some(spelling) => req.insert_header(spelling, value.clone()),
            None => req.insert_header(name.clone(), value.clone()),
        };
    }
}

/// `X-Forwarded-For` / `-Proto` / `-Host`. Untrusted (the default): the client's values are
/// replaced. Trusted: the client address is appended to the list a proxy in front sent; the
/// list's field lines are joined first, as one list (RFC 9110 §5.3), so a spoofed line ahead
/// of the trusted proxy's stays ahead of it.
pub fn set_forwarded_headers(
    req: &mut RequestHeader,
    client: Option<IpAddr>,
    trusted: bool,
) -> Result<()> {
    let client = client
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into());
    let prior: Vec<&str> = req
        .headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.trim_matches([' ', '\t']))
        .filter(|v| !v.is_empty())
        .collect();
    let forwarded_for = if trusted && !prior.is_empty() {
        format!("{}, {client}", prior.join(", "))
    } else {
        client
    };
    req.insert_header("X-Forwarded-For", forwarded_for)?;
    if !trusted || !req.headers.contains_key(&X_FORWARDED_PROTO) {
        req.insert_header("X-Forwarded-Proto", "http")?;
    }
    if !trusted || !req.headers.contains_key(&X_FORWARDED_HOST) {
        match req.headers.get(http::header::HOST).cloned() {
            Some(host) if !host.is_empty() => req.insert_header("X-Forwarded-Host", host)?,
            _ => {
                req.remove_header(&X_FORWARDED_HOST);
            }
        }
    }
    Ok(())
}

/// Keep a client's `X-Request-Id` when it is short printable ASCII; otherwise set a new one.
pub fn set_request_id(req: &mut RequestHeader) -> Result<()> {
    if !req
        .headers
        .get(&X_REQUEST_ID)
        .is_some_and(|v| is_request_id(v.as_bytes()))
    {
        req.insert_header("X-Request-Id", request_id())?;
    }
    Ok(())
}

/// A request id in the shape of a random (v4) UUID. Request ids must be unique, not secret: each
/// thread draws them from SplitMix64 over a counter, seeded once from aws-lc, instead of asking
/// the system's or aws-lc's generator for 16 bytes per request (about 1 µs, a percent of a
/// request's cost in the load benchmark's profile).
fn request_id() -> HeaderValue {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            aws_lc_rs::rand::fill(&mut seed).expect("aws-lc random generator");
            u64::from_le_bytes(seed)
        });
    }
    fn splitmix64(state: &Cell<u64>) -> u64 {
        let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    let (high, low) = STATE.with(|s| (splitmix64(s), splitmix64(s)));
    let bytes = ((u128::from(high) << 64) | u128::from(low)).to_be_bytes();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut text);
    HeaderValue::from_str(text).expect("hex and hyphens")
}

/// A client's request id is kept when it is short printable ASCII.
fn is_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_header_has_a_static_spelling() {
        let p = Principal::new(
            Some("s".into()),
            Some("c".into()),
            vec!["a".into()],
            "https://id.example".into(),
            None,
            crate::auth::TokenSource::Jwt,
        )
        .unwrap();
        assert_eq!(p.identity_headers().len(), 4);
        for (name, _) in p.identity_headers() {
            let spelling = identity_header_spelling(name).unwrap_or_else(|| panic!("{name}"));
            assert!(spelling.eq_ignore_ascii_case(name.as_str()));
        }
    }

    #[test]
    fn stripping_removes_every_unwanted_field_line_and_keeps_the_rest() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for name in [
            "X-Auth-Subject",
            "X_Auth_Subject",
            "x-auth_issuer",
            "X-Real-IP",
            "X-Original-URL",
            "x-authorization-hint",
            "x-other",
        ] {
            req.append_header(name.to_string(), "client").unwrap();
        }
        req.append_header("x-auth-scopes", "one").unwrap();
        req.append_header("x-auth-scopes", "two").unwrap();
        let strip = Strip {
            trusted: false,
            method_override: false,
        };
        strip_client_headers(&mut req, strip);
        let mut left: Vec<_> = req.headers.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["x-authorization-hint", "x-other"]);
    }

    #[test]
    fn forwarded_headers_replace_or_append() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("host", "api.example").unwrap();
        req.insert_header("x-forwarded-for", "6.6.6.6").unwrap();
        req.insert_header("x-forwarded-proto", "https").unwrap();
        let mut untrusted = req.clone();
        set_forwarded_headers(&mut untrusted, Some(ip), false).unwrap();
        assert_eq!(untrusted.headers["x-forwarded-for"], "10.1.2.3");
        assert_eq!(untrusted.headers["x-forwarded-proto"], "http");
        assert_eq!(untrusted.headers["x-forwarded-host"], "api.example");
        set_forwarded_headers(&mut req, Some(ip), true).unwrap();
        assert_eq!(req.headers["x-forwarded-for"], "6.6.6.6, 10.1.2.3");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn several_forwarded_for_lines_are_one_list() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-forwarded-for", "6.6.6.6").unwrap();
        req.append_header("x-forwarded-for", "203.0.113.7, 10.0.0.1")
            .unwrap();
        let mut untrusted = req.clone();
        set_forwarded_headers(&mut req, Some(ip), true).unwrap();
        let all: Vec<_> = req.headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["6.6.6.6, 203.0.113.7, 10.0.0.1, 127.0.0.1"]);
        set_forwarded_headers(&mut untrusted, Some(ip), false).unwrap();
        let all: Vec<_> = untrusted
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .collect();
        assert_eq!(all, ["127.0.0.1"]);
    }

    #[test]
    fn request_ids() {
        assert!(is_request_id(b"abc-123"));
        assert!(!is_request_id(b""));
        assert!(!is_request_id(b"has space"));
        assert!(!is_request_id(&[b'a'; 129]));
        let (a, b) = (request_id(), request_id());
        assert_ne!(a, b);
        let a = a.to_str().unwrap();
        let parsed = uuid::Uuid::parse_str(a).unwrap();
        assert_eq!(parsed.get_version(), Some(uuid::Version::Random));
        assert_eq!(parsed.get_variant(), uuid::Variant::RFC4122);
        assert!(is_request_id(a.as_bytes()));
        let many: std::collections::HashSet<_> = (0..10_000).map(|_| request_id()).collect();
        assert_eq!(many.len(), 10_000, "request ids repeat");
    }
}
