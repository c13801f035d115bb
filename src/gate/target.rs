//! The request target in canonical form: the bytes the route is chosen on are the bytes the
//! upstream receives.
//!
//! Upstream frameworks decode the path before they route (Starlette, WSGI, Go `net/http`,
//! Spring, Express), some strip `;` parameters (Tomcat, Jetty, Spring) and some trim
//! whitespace around segments (Spring's `AntPathMatcher` with `trimTokens`). A gateway that
//! matched its prefixes on the raw bytes and forwarded them unchanged would authorize one path
//! and let the upstream serve another. So, before routing:
//!
//! - Only origin-form targets (`/path?query`) are routed; absolute-form (`http://host/path`) is
//!   reduced to origin-form and its authority replaces `Host` (RFC 9112 §3.2.2). Asterisk-form
//!   (`*`) is recognised for `OPTIONS *` only; authority-form, other schemes and targets that do
//!   not start with `/` are refused (RFC 9112 §3.2).
//! - Raw bytes outside visible ASCII (space, control bytes, non-ASCII) and `#` are refused,
//!   never corrected; the path may hold raw only what RFC 3986 §3.3 allows (no `\`, `"`, `<`,
//!   `>`, `^`, `` ` ``, `{`, `|`, `}`).
//! - Percent-encoding is normalised as RFC 3986 §6.2.2 says: octets of unreserved characters are
//!   decoded (`%61` is `a`, §6.2.2.2), the hex digits of every other escape are upper-cased
//!   (§6.2.2.1). The normalised path is what the router matches and what is forwarded.
//! - Then the path must be canonical: no `.` or `..` segment, also with a `;` parameter
//!   (`..;`, which Tomcat and Jetty read as `..`), no segment ending in `.` (IIS and .NET strip
//!   trailing dots: `admin.` is `admin` to them), no empty segment (`//`), no encoded `/`, `\`
//!   or control character, no encoded `%` that starts another escape (`%2561`: an upstream that
//!   decodes twice would see `a`), no encoded space at either end of a segment, and the
//!   percent-encoded bytes must be UTF-8 (which also refuses overlong forms such as `%C0%AF`).
//!   Percent-encoded UTF-8 such as `%C3%A9` stays valid and stays encoded; a trailing `/` stays.
//!
//! The query is not routed: it is checked for raw bytes only and forwarded as sent.

use std::borrow::Cow;

/// Why a request target is refused. Every fault is a 400 before any other work is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetFault {
    /// Not origin-form, absolute-form `http(s)://`, or `*`: a relative path, authority-form,
    /// another scheme, or `*` with a method other than `OPTIONS` (RFC 9112 §3.2).
    Form,
    /// A space, control byte, non-ASCII byte or `#` in the target, or `\` in its path.
    RawByte,
    /// `%` not followed by two hex digits (RFC 3986 §2.1).
    BadEscape,
    /// An encoded `/` or `\` (`%2F`, `%5C`): one segment here, two segments upstream.
    EncodedSeparator,
    /// An encoded control character (`%00`-`%1F`, `%7F`).
    EncodedControl,
    /// `%25` followed by two hex digits: a second escape for an upstream that decodes twice.
    DoubleEncoding,
    /// The percent-encoded octets are not UTF-8.
    NotUtf8,
    /// A `.` or `..` segment (RFC 3986 §5.2.4), also with a `;` parameter (`..;`).
    DotSegment,
    /// An empty segment (`//`).
    EmptySegment,
    /// A segment that starts or ends with an encoded space, which some frameworks trim.
    EdgeSpace,
    /// A segment that ends with `.` (`admin.`, `...`), which IIS and .NET strip.
    TrailingDot,
    /// The authority of an absolute-form target is not `host[:port]`.
    BadAuthority,
}

impl TargetFault {
    /// The `error_description` of the 400: fixed ASCII text, never the request's own bytes.
    pub fn description(self) -> &'static str {
        match self {
            TargetFault::Form => "The request target must be an absolute path such as /orders/1.",
            TargetFault::RawByte => {
                "The request target holds a byte that must be percent-encoded, or a fragment."
            }
            TargetFault::BadEscape => "The request target holds a malformed percent-escape.",
            TargetFault::EncodedSeparator => "The request path holds an encoded / or backslash.",
            TargetFault::EncodedControl => "The request path holds an encoded control character.",
            TargetFault::DoubleEncoding => "The request path holds a double percent-encoding.",
            TargetFault::NotUtf8 => "The request path's percent-encoded bytes are not UTF-8.",
            TargetFault::DotSegment => "The request path holds a . or .. segment.",
            TargetFault::EmptySegment => "The request path holds an empty segment (//).",
            TargetFault::EdgeSpace => "A request path segment starts or ends with a space.",
            TargetFault::TrailingDot => "A request path segment ends with a dot.",
            TargetFault::BadAuthority => "The request target's authority is not a valid host.",
        }
    }
}

/// A request target in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The normalised path; `*` for asterisk-form.
    path: Cow<'a, str>,
    query: Option<&'a str>,
    /// The authority of an absolute-form target.
    authority: Option<&'a str>,
    /// The scheme of an absolute-form target, in lower case.
    scheme: Option<&'static str>,
    /// The path holds `;` or `%3B`.
    params: bool,
}

impl<'a> Target<'a> {
    /// The normalised path: what routes are matched on and what the upstream receives.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query, as sent (without the `?`).
    pub fn query(&self) -> Option<&'a str> {
        self.query
    }

    /// An absolute-form target's authority: it replaces `Host` (RFC 9112 §3.2.2).
    pub fn authority(&self) -> Option<&'a str> {
        self.authority
    }

    /// An absolute-form target's scheme, `http` or `https`.
    pub fn scheme(&self) -> Option<&'static str> {
        self.scheme
    }

    /// `*` (RFC 9112 §3.2.4).
    pub fn is_asterisk(&self) -> bool {
        self.path == "*"
    }

    /// Whether the path holds `;` parameters (RFC 3986 §3.3), raw or encoded (`%3B`, which
    /// some servlet containers decode before they strip parameters).
    pub fn has_parameters(&self) -> bool {
        self.params
    }

    /// Whether the target to forward differs from the one received: its path was normalised
    /// or it was absolute-form.
    pub fn rewritten(&self) -> bool {
        matches!(self.path, Cow::Owned(_)) || self.authority.is_some()
    }

    /// The origin-form target to forward: the normalised path and the query as sent.
    pub fn origin_form(&self) -> String {
        match self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone().into_owned(),
        }
    }
}

/// Put a raw request target in canonical form, or say why it cannot be routed.
/// See the [module docs](self) for the rules.
pub fn canonical(raw: &[u8]) -> Result<Target<'_>, TargetFault> {
    // Visible ASCII only: no space, control, non-ASCII byte or fragment anywhere.
    if raw
        .iter()
        .any(|&b| !(0x21..=0x7e).contains(&b) || b == b'#')
    {
        return Err(TargetFault::RawByte);
    }
    let raw = std::str::from_utf8(raw).map_err(|_| TargetFault::RawByte)?;
    if raw == "*" {
        return Ok(Target {
            path: Cow::Borrowed(raw),
            query: None,
            authority: None,
            scheme: None,
            params: false,
        });
    }
    let (scheme, authority, rest) = if raw.starts_with('/') {
        (None, None, raw)
    } else {
        let (scheme, authority, rest) = absolute_form(raw)?;
        (Some(scheme), Some(authority), rest)
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    let (path, params) = if path.is_empty() {
        // "http://host" and "http://host?q" mean the root (RFC 9112 §3.2.1).
        (Cow::Borrowed("/"), false)
    } else {
        normalise(path)?
    };
    Ok(Target {
        path,
        query,
        authority,
        scheme,
        params,
    })
}

/// `http://authority/rest` or `https://...` (scheme case-insensitive): the scheme, the
/// authority and the rest (path and query, possibly empty).
fn absolute_form(raw: &str) -> Result<(&'static str, &str, &str), TargetFault> {
    let (scheme, rest) = raw.split_once("://").ok_or(TargetFault::Form)?;
    let scheme = match scheme {
        s if s.eq_ignore_ascii_case("http") => "http",
        s if s.eq_ignore_ascii_case("https") => "https",
        _ => return Err(TargetFault::Form),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, rest) = rest.split_at(end);
    if !valid_host(authority.as_bytes()) {
        return Err(TargetFault::BadAuthority);
    }
    Ok((scheme, authority, rest))
}

/// Normalise a path that starts with `/` (RFC 3986 §6.2.2) and check that it is canonical.
/// Borrows when the path is already in normal form, which is the common case.
pub fn normalise_path(path: &str) -> Result<Cow<'_, str>, TargetFault> {
    normalise(path).map(|(path, _)| path)
}

/// [`normalise_path`] for a DPoP proof's `htu` path ([`crate::auth::RequestUri`]): `None`
/// when it is not canonical, which no routed path can equal.
pub fn normalise_proof_path(path: &str) -> Option<Cow<'_, str>> {
    normalise_path(path).ok()
}

/// [`normalise_path`], and whether the path holds `;` parameters (raw or `%3B`). One pass over
/// the bytes, then the segment rules; the UTF-8 and double-escape checks run only when the pass
/// saw what they look for.
fn normalise(path: &str) -> Result<(Cow<'_, str>, bool), TargetFault> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(TargetFault::Form);
    }
    let mut out: Option<String> = None;
    let (mut non_ascii, mut params, mut escaped_percent) = (false, false, false);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if !PATH_BYTES[usize::from(c)] {
            return Err(TargetFault::RawByte);
        }
        if c != b'%' {
            params |= c == b';';
            if let Some(out) = out.as_mut() {
                out.push(char::from(c));
            }
            i += 1;
            continue;
        }
        let (Some(&hi), Some(&lo)) = (b.get(i + 1), b.get(i + 2)) else {
            return Err(TargetFault::BadEscape);
        };
        let v = hex_pair(hi, lo).ok_or(TargetFault::BadEscape)?;
        match v {
            b'/' | b'\\' => return Err(TargetFault::EncodedSeparator),
            0..=0x1f | 0x7f => return Err(TargetFault::EncodedControl),
            0x80.. => non_ascii = true,
            b';' => params = true,
            b'%' => escaped_percent = true,
            _ => {}
        }
        if is_unreserved(v) {
            out.get_or_insert_with(|| path[..i].to_owned())
                .push(char::from(v));
        } else if hi.is_ascii_lowercase() || lo.is_ascii_lowercase() {
            let out = out.get_or_insert_with(|| path[..i].to_owned());
            out.push('%');
            out.push(char::from(hi.to_ascii_uppercase()));
            out.push(char::from(lo.to_ascii_uppercase()));
        } else if let Some(out) = out.as_mut() {
            out.push_str(&path[i..i + 3]);
        }
        i += 3;
    }
    let path = out.map_or(Cow::Borrowed(path), Cow::Owned);
    // On the normal form: `%25%36%31` and `%256%31` become `%2561` only once decoded.
    if escaped_percent && double_escape(&path) {
        return Err(TargetFault::DoubleEncoding);
    }
    if non_ascii
        && percent_encoding::percent_decode_str(&path)
            .decode_utf8()
            .is_err()
    {
        return Err(TargetFault::NotUtf8);
    }
    check_segments(&path, params)?;
    Ok((path, params))
}

/// Whether an encoded `%` (`%25`) is followed by two hex digits: a second escape.
fn double_escape(path: &str) -> bool {
    path.match_indices("%25").any(|(i, _)| {
        let b = path.as_bytes();
        matches!((b.get(i + 3), b.get(i + 4)), (Some(&h), Some(&l)) if hex_pair(h, l).is_some())
    })
}

/// The segment rules, on a normalised path; `params`: it holds `;` or `%3B`.
fn check_segments(path: &str, params: bool) -> Result<(), TargetFault> {
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment.is_empty() {
            if last {
                break; // a trailing "/" (or the root) is fine
            }
            return Err(TargetFault::EmptySegment);
        }
        // Tomcat and Jetty read "..;x" as "..": the dot check looks past a parameter.
        let name = if params {
            segment_name(segment)
        } else {
            segment
        };
        if name == "." || name == ".." {
            return Err(TargetFault::DotSegment);
        }
        if segment.starts_with("%20") || segment.ends_with("%20") || name.ends_with("%20") {
            return Err(TargetFault::EdgeSpace);
        }
        if name.ends_with('.') {
            return Err(TargetFault::TrailingDot);
        }
    }
    Ok(())
}

/// A normalised segment without its parameters: up to the first `;` or `%3B`.
fn segment_name(segment: &str) -> &str {
    let b = segment.as_bytes();
    let end = (0..b.len())
        .find(|&i| b[i] == b';' || (b[i] == b'%' && b.get(i + 1..i + 3) == Some(b"3B")))
        .unwrap_or(b.len());
    &segment[..end]
}

/// A normalised path with every segment's `;` parameters removed, as Tomcat, Jetty and Spring
/// route it.
pub fn without_parameters(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment_name(segment));
    }
    out
}

/// The bytes a path may hold raw: `pchar` or `/` (RFC 3986 §3.3), that is unreserved, `%`,
/// sub-delims, `:` and `@`. Not `\\`, `"`, `<`, `>`, `^`, `` ` ``, `{`, `|`, `}`, space, `#`, `?`
/// or anything outside visible ASCII. A table: it is asked for every byte of every path.
static PATH_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~')
            || matches!(
                c,
                b'%' | b'/'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'@'
            );
        b += 1;
    }
    table
};

/// `unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"` (RFC 3986 §2.3).
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_pair(hi: u8, lo: u8) -> Option<u8> {
    let digit = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    Some(digit(hi)? << 4 | digit(lo)?)
}

/// Whether a `Host` field value (or an absolute-form authority) is `host [":" port]`
/// (RFC 9110 §7.2, RFC 3986 §3.2.2): a DNS name (up to 253 bytes) or IPv4 address of letters,
/// digits and `- . _ ~`, or a bracketed IPv6 address; a port from 1 to 65535. No user
/// information, path, space or other byte. Empty is not valid here.
pub fn valid_host(value: &[u8]) -> bool {
    let (host, port) = if value.first() == Some(&b'[') {
        let Some(close) = value.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = std::str::from_utf8(&value[1..close]).unwrap_or("");
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match &value[close + 1..] {
            [] => (&value[..=close], None),
            [b':', port @ ..] => (&value[..=close], Some(port)),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        }
    };
    let host_ok = host.first() == Some(&b'[')
        || ((1..=253).contains(&host.len()) && host.iter().all(|&b| is_unreserved(b)));
    let port_ok = port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(p)
                .ok()
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|p| (1..=65535).contains(&p))
    });
    host_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(raw: &str) -> Result<String, TargetFault> {
        canonical(raw.as_bytes()).map(|t| t.path().to_owned())
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_other_hex_upper_cased() {
        for (raw, want) in [
            ("/orders/1", "/orders/1"),
            ("/api/%61dmin/users", "/api/admin/users"),
            ("/%6Frders/1", "/orders/1"),
            ("/%7E%2D%2e%5F%41%7a%30", "/~-._Az0"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/caf%C3%A9", "/caf%C3%A9"),
            ("/a%3bb", "/a%3Bb"),
            ("/a%3fb", "/a%3Fb"),
            ("/a%25", "/a%25"),
            ("/a%25zz", "/a%25zz"),
            ("/a%20b", "/a%20b"),
            ("/orders/", "/orders/"),
            ("/", "/"),
            ("/a.b/c..d/.e/f.g", "/a.b/c..d/.e/f.g"),
            ("/a;b=c/d", "/a;b=c/d"),
            ("/x:y@z!$&'()*+,=", "/x:y@z!$&'()*+,="),
        ] {
            assert_eq!(path_of(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn the_query_is_kept_as_sent_and_the_path_borrowed_when_normal() {
        let t = canonical(b"/orders/1?card=4111&x=%2f..%00").unwrap();
        assert_eq!(t.path(), "/orders/1");
        assert_eq!(t.query(), Some("card=4111&x=%2f..%00"));
        assert!(!t.rewritten());
        assert_eq!(t.origin_form(), "/orders/1?card=4111&x=%2f..%00");
        let t = canonical(b"/%6frders?q").unwrap();
        assert!(t.rewritten());
        assert_eq!(t.origin_form(), "/orders?q");
        assert_eq!(canonical(b"/a?").unwrap().origin_form(), "/a?");
    }

    #[test]
    fn absolute_form_is_reduced_to_origin_form() {
        for (raw, authority, origin) in [
            ("http://h/orders/1?x", "h", "/orders/1?x"),
            ("HTTPS://api.example:8443/%61", "api.example:8443", "/a"),
            ("http://h", "h", "/"),
            ("http://h?q=1", "h", "/?q=1"),
            ("http://[::1]:80/x", "[::1]:80", "/x"),
        ] {
            let t = canonical(raw.as_bytes()).unwrap();
            assert_eq!(t.authority(), Some(authority), "{raw}");
            assert_eq!(t.origin_form(), origin, "{raw}");
            assert!(t.rewritten());
        }
        for raw in [
            "http://u@h/x",
            "http://h:99999/x",
            "http:///x",
            "http://h%2f/x",
            "http://h:/x",
        ] {
            assert_eq!(path_of(raw), Err(TargetFault::BadAuthority), "{raw}");
        }
    }

    #[test]
    fn every_refused_class() {
        use TargetFault::*;
        for (raw, want) in [
            ("%2forders/1", Form),
            ("orders/1", Form),
            ("a/../orders/1", Form),
            ("*/orders", Form),
            ("foo:bar://h/orders/1", Form),
            ("ftp://h/orders", Form),
            ("h:443", Form),
            ("%20/orders/1", Form),
            ("", Form),
            ("/a b", RawByte),
            ("/a\tb", RawByte),
            ("/a\x7fb", RawByte),
            ("/caf\u{e9}", RawByte),
            ("/a#b", RawByte),
            ("/a\\b", RawByte),
            ("/a?b c", RawByte),
            ("/a%", BadEscape),
            ("/a%4", BadEscape),
            ("/a%zz", BadEscape),
            ("/a%2fb", EncodedSeparator),
            ("/a%5Cb", EncodedSeparator),
            ("/a%00b", EncodedControl),
            ("/a%0d%0a", EncodedControl),
            ("/a%7F", EncodedControl),
            ("/api/%2561dmin", DoubleEncoding),
            ("/api/%256%31dmin", DoubleEncoding),
            ("/api/%25%36%31dmin", DoubleEncoding),
            ("/a%ff", NotUtf8),
            ("/a%c0%af", NotUtf8),
            ("/a%c3", NotUtf8),
            ("/public/../orders/1", DotSegment),
            ("/public/%2e%2e/orders", DotSegment),
            ("/public/.%2E/orders", DotSegment),
            ("/public/%2e/orders", DotSegment),
            ("/public/..;/orders/1", DotSegment),
            ("/public/..;x=1/orders/1", DotSegment),
            ("/public/.;/orders", DotSegment),
            ("/public/..%3b/orders", DotSegment),
            ("/..", DotSegment),
            ("//orders", EmptySegment),
            ("/public//orders", EmptySegment),
            ("/api/admin%20/users", EdgeSpace),
            ("/api/%20admin", EdgeSpace),
            ("/api/admin%20;x/users", EdgeSpace),
            ("/api/admin./users", TrailingDot),
            ("/api/admin.", TrailingDot),
            ("/api/admin%2e", TrailingDot),
            ("/api/...", TrailingDot),
            ("/api/admin.;x", TrailingDot),
            ("/a\"b", RawByte),
            ("/a<b>", RawByte),
            ("/a{b}", RawByte),
            ("/a|b", RawByte),
            ("/a^b", RawByte),
            ("/a`b", RawByte),
        ] {
            assert_eq!(path_of(raw), Err(want), "{raw:?}");
        }
    }

    #[test]
    fn the_path_byte_table_is_rfc_3986s_pchar_and_slash() {
        for b in 0..=255u8 {
            let pchar = is_unreserved(b) || b"%/!$&'()*+,;=:@".contains(&b);
            assert_eq!(PATH_BYTES[usize::from(b)], pchar, "byte {b:#04x}");
        }
    }

    #[test]
    fn asterisk_form_is_recognised() {
        let t = canonical(b"*").unwrap();
        assert!(t.is_asterisk());
        assert!(!canonical(b"/*").unwrap().is_asterisk());
    }

    #[test]
    fn parameters_are_stripped_per_segment() {
        assert_eq!(without_parameters("/api/admin;/users"), "/api/admin/users");
        assert_eq!(without_parameters("/a;x=1;y/b;z"), "/a/b");
        assert_eq!(without_parameters("/a/b"), "/a/b");
        assert_eq!(without_parameters("/a%3Bx/b"), "/a/b");
        assert!(canonical(b"/a;x").unwrap().has_parameters());
        assert!(canonical(b"/a%3bx").unwrap().has_parameters());
        assert!(!canonical(b"/a%3Cx").unwrap().has_parameters());
    }

    #[test]
    fn hosts() {
        for ok in [
            "a",
            "api.example.com",
            "api.example.com:8080",
            "127.0.0.1:1",
            "[::1]",
            "[2001:db8::1]:443",
            "x_y~z-1:65535",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "a:65536",
            "a:99999",
            "a:",
            "a:0x1",
            "a:0",
            ":80",
            "u@a",
            "[::1",
            "[::1]x",
            "[zz]",
            "a:1:2",
            "a\tb",
            "a?b",
            "a%41",
            "caf\u{e9}",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
        assert!(valid_host("a".repeat(253).as_bytes()));
        assert!(!valid_host("a".repeat(254).as_bytes()));
    }

    /// The definition of a canonical path before percent-encoding was normalised: everything
    /// it refused stays refused.
    fn canonical_by_decoding(path: &str) -> bool {
        if !path.starts_with('/') || path.contains("//") || path.contains('\\') {
            return false;
        }
        let lower = path.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
            return false;
        }
        lower.split('/').all(|segment| {
            let decoded = segment.replace("%2e", ".");
            decoded != "." && decoded != ".."
        })
    }

    /// A framework's view of a path: every escape decoded once.
    fn decoded(path: &str) -> Vec<u8> {
        percent_encoding::percent_decode_str(path).collect()
    }

    #[test]
    fn every_short_path_is_refused_or_means_what_it_meant() {
        let alphabet = [
            '/', '.', '%', '2', 'e', 'E', 'f', 'F', '5', 'c', '0', '\\', 'a', ';', '6', '1',
        ];
        let mut accepted = 0;
        let checked = crate::testing::for_every_extension("/", &alphabet, 5, |q| {
            if let Ok(normal) = normalise_path(q) {
                accepted += 1;
                assert!(canonical_by_decoding(q), "{q:?} was refused before");
                // Normalising never changes what a decoding upstream sees, and is idempotent.
                assert_eq!(decoded(&normal), decoded(q), "{q:?}");
                assert_eq!(normalise_path(&normal).as_deref(), Ok(&*normal), "{q:?}");
                assert!(!normal.contains("%2E") && !normal.contains("%61"), "{q:?}");
            }
        });
        assert_eq!(checked, (1..=5).map(|n| 16usize.pow(n)).sum::<usize>());
        assert!(accepted > 10_000, "{accepted}");
    }
}
