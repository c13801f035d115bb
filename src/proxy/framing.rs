//! What a request must look like before the gateway does any other work on it: bounded size,
//! exactly one valid Host, and one unambiguous body framing. Checked first in `request_filter`, before routing
//! and before any token is looked at; the connection is closed after a refusal.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::Version;
use pingora::http::RequestHeader;

use crate::gate::valid_host;

/// `[server] max_uri_bytes` / `max_header_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// The longest request target; longer gets 414 (RFC 9112 §3).
    pub max_uri_bytes: usize,
    /// The largest header section, counted as `name: value\r\n` per field; larger gets 431
    /// (RFC 6585 §5).
    pub max_header_bytes: usize,
}

/// The longest request method: the longest registered one (`UPDATEREDIRECTREF`) is 17 bytes.
const MAX_METHOD_BYTES: usize = 32;

/// Why a request is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub error: &'static str,
    pub description: &'static str,
}

const fn refusal(status: u16, error: &'static str, description: &'static str) -> Refusal {
    Refusal {
        status,
        error,
        description,
    }
}

/// The first rule `req` breaks, if any. `raw_content_length` says whether the raw header block
/// carried `Content-Length` (pingora drops it from the parsed header when `Transfer-Encoding`
/// is present); it is only asked when `Transfer-Encoding` is.
pub fn check(
    req: &RequestHeader,
    raw_content_length: impl FnOnce() -> bool,
    limits: &RequestLimits,
) -> Option<Refusal> {
    if req.method.as_str().len() > MAX_METHOD_BYTES {
        return Some(refusal(
            400,
            "bad_request",
            "The request method is longer than this gateway accepts.",
        ));
    }
    if req.raw_path().len() > limits.max_uri_bytes {
        return Some(refusal(
            414,
            "uri_too_long",
            "The request target is longer than this gateway accepts.",
        ));
    }
    let header_bytes: usize = req
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Some(refusal(
            431,
            "header_fields_too_large",
            "The request header fields are larger than this gateway accepts.",
        ));
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host, or with several, is answered 400. A
    // Host that is not host[:port] is refused too: it would be copied into X-Forwarded-Host.
    let mut hosts = req.headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if req.version == Version::HTTP_11 => {
            return Some(refusal(
                400,
                "bad_request",
                "An HTTP/1.1 request needs a Host header.",
            ))
        }
        (Some(_), Some(_)) => {
            return Some(refusal(
                400,
                "bad_request",
                "A request may carry only one Host header.",
            ))
        }
        (Some(host), None) if !valid_host(host.as_bytes()) => {
            return Some(refusal(
                400,
                "bad_request",
                "The Host header is not a valid host[:port].",
            ))
        }
        _ => {}
    }
    body_framing(req, raw_content_length)
        .map(|description| refusal(400, "bad_request", description))
}

/// RFC 9112 §6.1 and §6.3: a body is framed by exactly one `Content-Length` field of digits
/// only, or by `Transfer-Encoding: chunked` alone. Anything else (a list such as `5, 5`, two
/// field lines, a sign) could be read differently by the upstream (request smuggling), so it is
/// refused.
fn body_framing(
    req: &RequestHeader,
    raw_content_length: impl FnOnce() -> bool,
) -> Option<&'static str> {
    let mut codings = req.headers.get_all(TRANSFER_ENCODING).iter();
    let Some(first) = codings.next() else {
        let mut lengths = req.headers.get_all(CONTENT_LENGTH).iter();
        let first = lengths.next();
        let digits =
            first.is_none_or(|v| !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit));
        return (lengths.next().is_some() || !digits)
            .then_some("Content-Length must be one field of digits.");
    };
    let only_chunked = codings.next().is_none()
        && std::str::from_utf8(first.as_bytes())
            .is_ok_and(|v| v.trim_matches([' ', '\t']).eq_ignore_ascii_case("chunked"));
    if !only_chunked {
        return Some("Only Transfer-Encoding: chunked is accepted.");
    }
    raw_content_length().then_some("Content-Length and Transfer-Encoding together are not allowed.")
}

/// Whether the client sent a space or control byte raw in the request target, which pingora
/// percent-encoded before the gateway saw the target (its parser fails on them, and it retries
/// with the target escaped), or a fragment (`#...`), which pingora drops. `line` is the request
/// line as it arrived ([`super::slow_clients::request_line`]); `target` is the target pingora
/// parsed. The line counts only when escaping its target (up to any `#`) as pingora does gives
/// exactly `target`, so a line kept from another request never refuses this one. RFC 9112
/// §3.2: such a request is refused, not corrected.
pub fn target_was_escaped(line: &[u8], target: &[u8]) -> bool {
    use percent_encoding::{percent_encode, CONTROLS};
    // pingora's `^\w+ (?P<uri>.+) HTTP/\d(?:\.\d)?`: after the method and one space, up to
    // the last " HTTP/".
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(space) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let rest = &line[space + 1..];
    let Some(end) = rest.windows(6).rposition(|w| w == b" HTTP/") else {
        return false;
    };
    let raw = &rest[..end];
    let fragment = raw.iter().position(|&b| b == b'#');
    let before_fragment = &raw[..fragment.unwrap_or(raw.len())];
    const ESCAPED: &percent_encoding::AsciiSet = &CONTROLS.add(b' ').add(b'<').add(b'>').add(b'"');
    // An empty target (`#...` alone) reaches the gateway as `/`.
    let parsed_as = match before_fragment {
        [] => "/".to_owned(),
        bytes => percent_encode(bytes, ESCAPED).to_string(),
    };
    (fragment.is_some() || raw.iter().any(|&b| b <= b' ' || b == 0x7f))
        && parsed_as.as_bytes() == target
}

/// Whether a raw HTTP/1 header block has a `Content-Length` field line.
pub fn raw_has_content_length(raw: &[u8]) -> bool {
    raw.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_uri_bytes: 64,
        max_header_bytes: 100,
    };

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", path.as_bytes(), None).unwrap();
        for (name, value) in headers {
            r.append_header(name.to_string(), *value).unwrap();
        }
        r
    }

    #[test]
    fn each_rule_and_its_status() {
        let host = ("host", "a");
        let long_path = format!("/{}", "a".repeat(64));
        let cases: Vec<(RequestHeader, bool, Option<u16>)> = vec![
            (req("/ok", &[host]), false, None),
            (req(&long_path[..64], &[host]), false, None),
            (req(&long_path, &[host]), false, Some(414)),
            (
                req("/", &[host, ("x-big", &"v".repeat(90))]),
                false,
                Some(431),
            ),
            (req("/", &[("x-a", "b")]), false, Some(400)),
            (req("/", &[host, ("host", "b")]), false, Some(400)),
            (req("/", &[("host", "a/b")]), false, Some(400)),
            (req("/", &[("host", "a b")]), false, Some(400)),
            (req("/", &[("host", "a:65536")]), false, Some(400)),
            (req("/", &[("host", "")]), false, Some(400)),
            (req("/", &[("host", "u@a")]), false, Some(400)),
            (req("/", &[("host", "a.example:8080")]), false, None),
            (req("/", &[("host", "[::1]:8080")]), false, None),
            (req("/", &[host, ("content-length", "3")]), false, None),
            (
                req(
                    "/",
                    &[host, ("content-length", "3"), ("content-length", "3")],
                ),
                false,
                Some(400),
            ),
            (
                req("/", &[host, ("content-length", "3, 3")]),
                false,
                Some(400),
            ),
            (
                req("/", &[host, ("content-length", "+3")]),
                false,
                Some(400),
            ),
            (req("/", &[host, ("content-length", "")]), false, Some(400)),
            (
                req(
                    "/",
                    &[host, ("content-length", "3"), ("content-length", "4")],
                ),
                false,
                Some(400),
            ),
            (
                req("/", &[host, ("transfer-encoding", "chunked")]),
                false,
                None,
            ),
            (
                req("/", &[host, ("transfer-encoding", "\tCHUNKED ")]),
                false,
                None,
            ),
            (
                req("/", &[host, ("transfer-encoding", "chunked")]),
                true,
                Some(400),
            ),
            (
                req("/", &[host, ("transfer-encoding", "identity, chunked")]),
                false,
                Some(400),
            ),
            (
                req("/", &[host, ("transfer-encoding", "gzip")]),
                false,
                Some(400),
            ),
            (
                req(
                    "/",
                    &[
                        host,
                        ("transfer-encoding", "chunked"),
                        ("transfer-encoding", "chunked"),
                    ],
                ),
                false,
                Some(400),
            ),
        ];
        for (i, (r, raw_cl, want)) in cases.iter().enumerate() {
            let got = check(r, || *raw_cl, &LIMITS).map(|f| f.status);
            assert_eq!(got, *want, "case {i}");
        }
    }

    #[test]
    fn a_method_longer_than_32_bytes_is_refused() {
        let mut r = req("/", &[("host", "a")]);
        r.set_method(http::Method::from_bytes(&[b'M'; 32]).unwrap());
        assert_eq!(check(&r, || false, &LIMITS), None);
        r.set_method(http::Method::from_bytes(&[b'M'; 33]).unwrap());
        assert_eq!(check(&r, || false, &LIMITS).map(|f| f.status), Some(400));
    }

    #[test]
    fn http_1_0_needs_no_host() {
        let mut r = req("/", &[]);
        r.set_version(Version::HTTP_10);
        assert_eq!(check(&r, || false, &LIMITS), None);
    }

    #[test]
    fn targets_pingora_escaped_are_recognised_from_the_raw_line() {
        for (line, target, escaped) in [
            (&b"GET /a b HTTP/1.1\r\n"[..], &b"/a%20b"[..], true),
            (b"GET  /orders HTTP/1.1\r\n", b"%20/orders", true),
            (b"GET /a\tb HTTP/1.1\n", b"/a%09b", true),
            (b"GET /a HTTP/1.1 HTTP/1.1\r\n", b"/a%20HTTP/1.1", true),
            (b"GET /public#/../api HTTP/1.1\r\n", b"/public", true),
            (b"GET /public?q#x HTTP/1.1\r\n", b"/public?q", true),
            (b"GET #/api/admin HTTP/1.1\r\n", b"/", true),
            // Sent encoded by the client: nothing was corrected.
            (b"GET /a%20b HTTP/1.1\r\n", b"/a%20b", false),
            // A line from another request.
            (b"GET /x y HTTP/1.1\r\n", b"/a%20b", false),
            (b"garbage", b"/", false),
        ] {
            assert_eq!(
                target_was_escaped(line, target),
                escaped,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn raw_content_length_lines() {
        assert!(raw_has_content_length(
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent-LENGTH: 3\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"POST /content-length: HTTP/1.1\r\nHost: a\r\n\r\n"
        ));
        assert!(!raw_has_content_length(
            b"POST / HTTP/1.1\r\nX-Content-Length: 3\r\n\r\n"
        ));
    }
}
