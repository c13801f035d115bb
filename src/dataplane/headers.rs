//! The headers the gateway removes from and sets on a request to forward, and removes from a
//! response to pass on: the hop-by-hop fields (RFC 9110 §7.6.1), what the client may not choose
//! ([`crate::gate::headers`] judges the names), then the identity headers,
//! `X-Forwarded-For/-Proto/-Host` and `X-Request-Id`.

use std::net::IpAddr;

use http::header::{
    CONNECTION, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::auth::Grant;
use crate::gate::headers;
pub use crate::gate::headers::Strip;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Remove the hop-by-hop fields of one HTTP/1.1 hop (RFC 9110 §7.6.1): `Connection` and every
/// field it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Transfer-Encoding`,
/// `Upgrade`, `HTTP2-Settings` (connection-specific: RFC 7540 §3.2.1), and the credentials of
/// a proxy hop, `Proxy-Authorization` / `Proxy-Authenticate` (RFC 9110 §11.7: meant for the
/// next proxy, which is this one). `Host` is never removed, whatever `Connection` names; the fields the gateway sets
/// itself are set after this, so a client that names them loses only its own copy. Returns the
/// `Upgrade` value when the message asked for a WebSocket upgrade (`Connection: upgrade` and
/// `Upgrade: websocket`), the only upgrade the gateway passes on. `Trailer` (which fields the
/// trailers hold, RFC 9110 §6.6.2) is end-to-end and stays.
pub fn remove_hop_by_hop(map: &mut HeaderMap) -> Option<HeaderValue> {
    // One pass over the names: most messages carry none of these, or only `Connection`.
    if !map.keys().any(is_hop_by_hop) {
        return None;
    }
    let mut upgrade_asked = false;
    if map.contains_key(&CONNECTION) {
        let mut named: Vec<HeaderName> = Vec::new();
        let options = map
            .get_all(&CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok());
        for option in options.flat_map(|v| v.split(',')) {
            let option = option.trim_matches([' ', '\t']);
            if option.eq_ignore_ascii_case("upgrade") {
                upgrade_asked = true;
            } else if option.eq_ignore_ascii_case("keep-alive")
                || option.eq_ignore_ascii_case("close")
            {
                // Options, not names of fields to remove (`Keep-Alive` goes below anyway).
            } else if let Ok(name) = HeaderName::from_bytes(option.as_bytes()) {
                named.push(name);
            }
        }
        for name in named {
            if name != HOST {
                map.remove(&name);
            }
        }
        map.remove(&CONNECTION);
    }
    let upgrade = map.remove(&UPGRADE);
    let present: Vec<HeaderName> = map.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    for name in present {
        map.remove(&name);
    }
    upgrade.filter(|v| upgrade_asked && is_websocket(v))
}

/// The fixed hop-by-hop names ([`remove_hop_by_hop`]).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == UPGRADE
        || name == TE
        || name == TRANSFER_ENCODING
        || name == PROXY_AUTHORIZATION
        || name == PROXY_AUTHENTICATE
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == HTTP2_SETTINGS
}

/// `Upgrade: websocket` (one protocol, any case, RFC 6455 §4.1). `h2c` and every other
/// protocol are never passed on.
fn is_websocket(v: &HeaderValue) -> bool {
    v.to_str().is_ok_and(|v| {
        v.trim_matches([' ', '\t'])
            .eq_ignore_ascii_case("websocket")
    })
}

/// The request's `TE` lists `trailers` (RFC 9110 §10.1.4): the client takes trailer fields.
/// Read before [`remove_hop_by_hop`] removes `TE`; an HTTP/2 hop carries it on as
/// `te: trailers`, the one value HTTP/2 allows (RFC 9113 §8.2.2), which gRPC servers require.
pub fn accepts_trailers(map: &HeaderMap) -> bool {
    map.get_all(http::header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim_matches([' ', '\t']).eq_ignore_ascii_case("trailers"))
        })
}

/// Remove every header the client may not choose ([`crate::gate::headers::unwanted`]) from a
/// request to forward.
pub fn strip_client_headers(map: &mut HeaderMap, strip: Strip) {
    if !map
        .keys()
        .any(|name| headers::unwanted(name.as_str(), strip))
    {
        return;
    }
    let unwanted: Vec<HeaderName> = map
        .keys()
        .filter(|name| headers::unwanted(name.as_str(), strip))
        .cloned()
        .collect();
    for name in unwanted {
        map.remove(&name);
    }
}

/// The identity headers of [`Grant::headers`]: set only by the gateway.
pub fn set_identity_headers(map: &mut HeaderMap, grant: &Grant) {
    for (name, value) in grant.headers() {
        map.insert(name.clone(), value.clone());
    }
}

/// `X-Forwarded-For` / `-Proto` / `-Host`. Untrusted (the default): the client's values are
/// replaced. Trusted: the client address is appended to the list a proxy in front sent; the
/// list's field lines are joined first, as one list (RFC 9110 §5.3), so a spoofed line ahead
/// of the trusted proxy's stays ahead of it. `tls`: the client's connection was TLS
/// (`X-Forwarded-Proto: https`).
pub fn set_forwarded_headers(map: &mut HeaderMap, client: &ClientAddr, trusted: bool, tls: bool) {
    if !(trusted && map.contains_key(&X_FORWARDED_FOR)) {
        map.insert(X_FORWARDED_FOR.clone(), client.value.clone());
    } else {
        append_forwarded_for(map, &client.text);
    }
    if !trusted || !map.contains_key(&X_FORWARDED_PROTO) {
        let proto = if tls { "https" } else { "http" };
        map.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    }
    if !trusted || !map.contains_key(&X_FORWARDED_HOST) {
        match map.get(HOST).cloned() {
            Some(host) if !host.is_empty() => {
                map.insert(X_FORWARDED_HOST.clone(), host);
            }
            _ => {
                map.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// A client's address, rendered once per connection for `X-Forwarded-For`.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    text: String,
    value: HeaderValue,
}

impl ClientAddr {
    pub fn new(ip: IpAddr) -> ClientAddr {
        let text = ip.to_string();
        let value = HeaderValue::try_from(text.as_str()).expect("an IP address is ASCII");
        ClientAddr { text, value }
    }
}

/// Trusted: the prior list's field lines joined, then the client address.
fn append_forwarded_for(map: &mut HeaderMap, client: &str) {
    let client = client.to_owned();
    let forwarded_for = {
        let prior: Vec<&str> = map
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.trim_matches([' ', '\t']))
            .filter(|v| !v.is_empty())
            .collect();
        match prior.is_empty() {
            true => client,
            false => format!("{}, {client}", prior.join(", ")),
        }
    };
    if let Ok(v) = HeaderValue::try_from(forwarded_for) {
        map.insert(X_FORWARDED_FOR.clone(), v);
    }
}

/// Keep a client's `X-Request-Id` when it is short printable ASCII; otherwise set a new one.
/// Returns the id, for the access line.
pub fn set_request_id(map: &mut HeaderMap) -> HeaderValue {
    match map.get(&X_REQUEST_ID) {
        Some(v) if is_request_id(v.as_bytes()) => v.clone(),
        _ => {
            let id = request_id();
            map.insert(X_REQUEST_ID.clone(), id.clone());
            id
        }
    }
}

/// A request id in the shape of a random (v4) UUID. Request ids must be unique, not secret: each
/// thread draws them from SplitMix64 over a counter, seeded once from aws-lc, instead of asking
/// the system's or aws-lc's generator for 16 bytes per request (about 1 µs, a percent of a
/// request's cost in the load benchmark's profile).
fn request_id() -> HeaderValue {
    let (high, low) = (random_u64(), random_u64());
    let bytes = ((u128::from(high) << 64) | u128::from(low)).to_be_bytes();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .encode_lower(&mut text);
    HeaderValue::from_str(text).expect("hex and hyphens")
}

/// 64 random bits, unique rather than secret (request ids, trace and span ids): SplitMix64 per
/// thread over a counter seeded once from aws-lc.
pub fn random_u64() -> u64 {
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
    STATE.with(splitmix64)
}

/// A client's request id is kept when it is short printable ASCII.
fn is_request_id(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (name, value) in fields {
            m.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        m
    }

    fn names(m: &HeaderMap) -> Vec<String> {
        let mut left: Vec<_> = m.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        left
    }

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_go() {
        let mut m = map(&[
            ("connection", "keep-alive, X-Secret, host"),
            ("connection", "x-other"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("host", "a"),
            ("x-kept", "3"),
        ]);
        assert_eq!(remove_hop_by_hop(&mut m), None);
        assert_eq!(names(&m), ["host", "trailer", "x-kept"]);
    }

    #[test]
    fn only_a_websocket_upgrade_that_connection_asks_for_is_kept() {
        let mut asked = map(&[("connection", "Upgrade"), ("upgrade", "WebSocket")]);
        assert_eq!(remove_hop_by_hop(&mut asked).unwrap(), "WebSocket");
        assert!(asked.is_empty());
        let mut not_asked = map(&[("upgrade", "websocket")]);
        assert_eq!(remove_hop_by_hop(&mut not_asked), None);
        let mut h2c = map(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ]);
        assert_eq!(remove_hop_by_hop(&mut h2c), None);
        assert!(h2c.is_empty());
        let mut several = map(&[("connection", "upgrade"), ("upgrade", "websocket, h2c")]);
        assert_eq!(remove_hop_by_hop(&mut several), None);
    }

    #[test]
    fn stripping_removes_every_unwanted_field_line_and_keeps_the_rest() {
        let mut m = map(&[
            ("X-Auth-Subject", "client"),
            ("X_Auth_Subject", "client"),
            ("x-auth_issuer", "client"),
            ("X-Real-IP", "client"),
            ("X-Original-URL", "client"),
            ("x-authorization-hint", "client"),
            ("x-other", "client"),
            ("x-auth-scopes", "one"),
            ("x-auth-scopes", "two"),
        ]);
        let strip = Strip {
            trusted: false,
            method_override: false,
            identity: &Default::default(),
        };
        strip_client_headers(&mut m, strip);
        assert_eq!(names(&m), ["x-authorization-hint", "x-other"]);
    }

    #[test]
    fn forwarded_headers_replace_or_append() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mut m = map(&[
            ("host", "api.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ]);
        let mut untrusted = m.clone();
        set_forwarded_headers(&mut untrusted, &ClientAddr::new(ip), false, false);
        assert_eq!(untrusted["x-forwarded-for"], "10.1.2.3");
        assert_eq!(untrusted["x-forwarded-proto"], "http");
        assert_eq!(untrusted["x-forwarded-host"], "api.example");
        set_forwarded_headers(&mut m, &ClientAddr::new(ip), true, false);
        assert_eq!(m["x-forwarded-for"], "6.6.6.6, 10.1.2.3");
        assert_eq!(m["x-forwarded-proto"], "https");
    }

    #[test]
    fn several_forwarded_for_lines_are_one_list() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut m = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.1"),
        ]);
        let mut untrusted = m.clone();
        set_forwarded_headers(&mut m, &ClientAddr::new(ip), true, false);
        let all: Vec<_> = m.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, ["6.6.6.6, 203.0.113.7, 10.0.0.1, 127.0.0.1"]);
        set_forwarded_headers(&mut untrusted, &ClientAddr::new(ip), false, false);
        let all: Vec<_> = untrusted.get_all("x-forwarded-for").iter().collect();
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
