//! What a request must look like before the gateway does any other work on it: bounded size,
//! exactly one valid Host, and one unambiguous body framing. Checked first, before routing and
//! before any token is looked at; the connection is closed after a refusal.
//!
//! hyper's parser already refuses what it cannot read (400), a head larger than its buffer
//! (431) and more than `max_header_fields` fields (431). These checks are stricter.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::request::Parts;
use http::Version;

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

/// A refusal with its status, error code and description.
pub const fn refusal(status: u16, error: &'static str, description: &'static str) -> Refusal {
    Refusal {
        status,
        error,
        description,
    }
}

/// The first rule `req` breaks, if any. `target` is the request target as received;
/// `raw_lengths` counts the raw head's `Content-Length` lines (hyper drops them from the parsed
/// head when `Transfer-Encoding` is present, and keeps one of several equal ones).
pub fn check(
    req: &Parts,
    target: &[u8],
    raw_lengths: impl FnOnce() -> usize,
    limits: &RequestLimits,
) -> Option<Refusal> {
    if req.method.as_str().len() > MAX_METHOD_BYTES {
        return Some(refusal(
            400,
            "bad_request",
            "The request method is longer than this gateway accepts.",
        ));
    }
    if req.method == http::Method::CONNECT {
        // A gateway is no tunnel (RFC 9110 §9.3.6), in any target form.
        return Some(refusal(
            400,
            "bad_request",
            "CONNECT is not accepted by this gateway.",
        ));
    }
    if target.len() > limits.max_uri_bytes {
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
    body_framing(req, raw_lengths).map(|description| refusal(400, "bad_request", description))
}

/// RFC 9112 §6.1 and §6.3: a body is framed by exactly one `Content-Length` field of digits
/// only, or by `Transfer-Encoding: chunked` alone. Anything else (a list such as `5, 5`, two
/// field lines, a sign) could be read differently by the upstream (request smuggling), so it is
/// refused.
fn body_framing(req: &Parts, raw_lengths: impl FnOnce() -> usize) -> Option<&'static str> {
    let mut codings = req.headers.get_all(TRANSFER_ENCODING).iter();
    let Some(first) = codings.next() else {
        let mut lengths = req.headers.get_all(CONTENT_LENGTH).iter();
        let first = lengths.next();
        let digits =
            first.is_none_or(|v| !v.is_empty() && v.as_bytes().iter().all(u8::is_ascii_digit));
        let several = lengths.next().is_some() || (first.is_some() && raw_lengths() > 1);
        return (several || !digits).then_some("Content-Length must be one field of digits.");
    };
    let only_chunked = codings.next().is_none()
        && std::str::from_utf8(first.as_bytes())
            .is_ok_and(|v| v.trim_matches([' ', '\t']).eq_ignore_ascii_case("chunked"));
    if !only_chunked {
        return Some("Only Transfer-Encoding: chunked is accepted.");
    }
    (raw_lengths() > 0).then_some("Content-Length and Transfer-Encoding together are not allowed.")
}

/// Whether the request line as it arrived (`line`, [`super::heads::Notable`]) held a
/// fragment (`#...`) that the parsed `target` lost. The line counts only when its target up to
/// the `#` is exactly `target` (an empty one is parsed as `/`), so a line kept from another
/// request never refuses this one. RFC 9112 §3.2: a fragment is not part of a request target;
/// such a request is refused, not corrected.
pub fn target_lost_fragment(line: &[u8], target: &[u8]) -> bool {
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
    let Some(fragment) = raw.iter().position(|&b| b == b'#') else {
        return false;
    };
    match &raw[..fragment] {
        [] => target == b"/",
        before => before == target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_uri_bytes: 64,
        max_header_bytes: 100,
    };

    fn req(path: &str, headers: &[(&str, &str)]) -> (Parts, String) {
        let mut r = http::Request::builder().method("POST").uri(path);
        for (name, value) in headers {
            r = r.header(*name, *value);
        }
        (r.body(()).unwrap().into_parts().0, path.to_owned())
    }

    #[test]
    fn each_rule_and_its_status() {
        let host = ("host", "a");
        let long_path = format!("/{}", "a".repeat(64));
        let cases: Vec<((Parts, String), usize, Option<u16>)> = vec![
            (req("/ok", &[host]), 0, None),
            (req(&long_path[..64], &[host]), 0, None),
            (req(&long_path, &[host]), 0, Some(414)),
            (req("/", &[host, ("x-big", &"v".repeat(90))]), 0, Some(431)),
            (req("/", &[("x-a", "b")]), 0, Some(400)),
            (req("/", &[host, ("host", "b")]), 0, Some(400)),
            (req("/", &[("host", "a/b")]), 0, Some(400)),
            (req("/", &[("host", "a b")]), 0, Some(400)),
            (req("/", &[("host", "a:65536")]), 0, Some(400)),
            (req("/", &[("host", "")]), 0, Some(400)),
            (req("/", &[("host", "u@a")]), 0, Some(400)),
            (req("/", &[("host", "a.example:8080")]), 0, None),
            (req("/", &[("host", "[::1]:8080")]), 0, None),
            (req("/", &[host, ("content-length", "3")]), 1, None),
            // Two equal lines, of which hyper kept one.
            (req("/", &[host, ("content-length", "3")]), 2, Some(400)),
            (
                req(
                    "/",
                    &[host, ("content-length", "3"), ("content-length", "3")],
                ),
                0,
                Some(400),
            ),
            (req("/", &[host, ("content-length", "3, 3")]), 0, Some(400)),
            (req("/", &[host, ("content-length", "+3")]), 0, Some(400)),
            (req("/", &[host, ("content-length", "")]), 0, Some(400)),
            (
                req(
                    "/",
                    &[host, ("content-length", "3"), ("content-length", "4")],
                ),
                0,
                Some(400),
            ),
            (req("/", &[host, ("transfer-encoding", "chunked")]), 0, None),
            (
                req("/", &[host, ("transfer-encoding", "\tCHUNKED ")]),
                0,
                None,
            ),
            (
                req("/", &[host, ("transfer-encoding", "chunked")]),
                1,
                Some(400),
            ),
            (
                req("/", &[host, ("transfer-encoding", "identity, chunked")]),
                0,
                Some(400),
            ),
            (
                req("/", &[host, ("transfer-encoding", "gzip")]),
                0,
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
                0,
                Some(400),
            ),
        ];
        for (i, ((r, target), raw_cl, want)) in cases.iter().enumerate() {
            let got = check(r, target.as_bytes(), || *raw_cl, &LIMITS).map(|f| f.status);
            assert_eq!(got, *want, "case {i}");
        }
    }

    #[test]
    fn a_method_longer_than_32_bytes_is_refused() {
        let (mut r, target) = req("/", &[("host", "a")]);
        r.method = http::Method::from_bytes(&[b'M'; 32]).unwrap();
        assert_eq!(check(&r, target.as_bytes(), || 0, &LIMITS), None);
        r.method = http::Method::from_bytes(&[b'M'; 33]).unwrap();
        let got = check(&r, target.as_bytes(), || 0, &LIMITS);
        assert_eq!(got.map(|f| f.status), Some(400));
    }

    #[test]
    fn http_1_0_needs_no_host() {
        let (mut r, target) = req("/", &[]);
        r.version = Version::HTTP_10;
        assert_eq!(check(&r, target.as_bytes(), || 0, &LIMITS), None);
    }

    #[test]
    fn a_lost_fragment_is_recognised_from_the_raw_line() {
        for (line, target, lost) in [
            (
                &b"GET /public#/../api HTTP/1.1\r\n"[..],
                &b"/public"[..],
                true,
            ),
            (b"GET /public?q#x HTTP/1.1\r\n", b"/public?q", true),
            (b"GET #/api/admin HTTP/1.1\r\n", b"/", true),
            (b"GET /a HTTP/1.1\r\n", b"/a", false),
            // A line from another request.
            (b"GET /x#y HTTP/1.1\r\n", b"/a", false),
            (b"garbage", b"/", false),
        ] {
            assert_eq!(
                target_lost_fragment(line, target),
                lost,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
