//! Pull exactly one bearer token out of a request (RFC 6750 §2.1).
//!
//! `Authorization: Bearer <b64token>`: the scheme is case-insensitive (RFC 9110 §11.1), one or
//! more spaces follow it, and the token is `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" )
//! *"="`. Two `Authorization` fields, or anything else after `Bearer`, is a malformed request
//! (RFC 6750 §3.1 `invalid_request`). A request without `Authorization`, or with another scheme
//! such as `Basic`, carries no bearer token: the answer is a bare challenge.

use http::header::AUTHORIZATION;
use http::HeaderMap;

/// Why the `Authorization` field could not be read as one bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerFault {
    /// `Authorization` appears more than once.
    MultipleAuthorization,
    /// A token in the `Authorization` header and an `access_token` query parameter (RFC 6750 §2).
    TokenInHeaderAndQuery,
    /// `Bearer` without a token, or a token that is not a b64token.
    Malformed,
}

/// The bearer token of a request: `Ok(None)` when there is none. The query-parameter form
/// (RFC 6750 §2.3) is not accepted, since it leaks into logs, but a request that sends a token
/// both ways is malformed all the same.
pub fn extract_with_query<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
) -> Result<Option<&'a str>, BearerFault> {
    let token = extract(headers)?;
    if token.is_some() && query.is_some_and(has_access_token_param) {
        return Err(BearerFault::TokenInHeaderAndQuery);
    }
    Ok(token)
}

fn has_access_token_param(query: &str) -> bool {
    query_has_param(query, "access_token")
}

/// Whether `query` has a parameter that an upstream's parser would read as `name` (a lower-case
/// name of letters, digits and `_`). Pairs are split on `&` or `;` (older parsers, such as
/// Python's before 3.9.2, split on both), the key is percent-decoded with `+` as a space
/// (`access%5Ftoken` is `access_token`, RFC 3986 §2.1), and then it matches, without regard to
/// case (ASP.NET compares keys so), when any of these readings gives `name`:
/// - as sent;
/// - PHP's: cut at a NUL, leading spaces dropped, an array suffix (`name[...]`) cut, then space,
///   `.` and `[` read as `_`;
/// - Rack 2's and the `qs` package's (Rails, Express): brackets around it dropped
///   (`[name]`, `]name`, `name]`, `name[x]`).
pub fn query_has_param(query: &str, name: &str) -> bool {
    query.split(['&', ';']).any(|pair| {
        let key = pair.split('=').next().unwrap_or_default();
        if key.eq_ignore_ascii_case(name) {
            return true;
        }
        if !key.contains(['%', '+', '.', '[', ']', ' ']) {
            return false;
        }
        let plus_as_space = key.replace('+', " ");
        let decoded: Vec<u8> = percent_encoding::percent_decode_str(&plus_as_space).collect();
        let decoded = String::from_utf8_lossy(&decoded);
        let same = |k: &str| {
            k.len() == name.len()
                && k.bytes().zip(name.bytes()).all(|(k, n)| {
                    k.to_ascii_lowercase() == n || (n == b'_' && matches!(k, b' ' | b'.' | b'['))
                })
        };
        // PHP.
        let mut php = decoded
            .split('\0')
            .next()
            .unwrap_or_default()
            .trim_start_matches(' ');
        if let Some(open) = php.find('[') {
            if php[open..].contains(']') {
                php = &php[..open];
            }
        }
        // Rack 2 and qs: the first run of other characters after any leading brackets.
        let bracketed = decoded.trim_start_matches(['[', ']']);
        let bracketed = bracketed.split(['[', ']']).next().unwrap_or_default();
        same(php) || bracketed.eq_ignore_ascii_case(name) || decoded.eq_ignore_ascii_case(name)
    })
}

/// The bearer token of the `Authorization` header: `Ok(None)` when there is none.
pub fn extract(headers: &HeaderMap) -> Result<Option<&str>, BearerFault> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BearerFault::MultipleAuthorization);
    }
    parse(value.as_bytes())
}

/// The scheme an access token was presented with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    /// `DPoP` (RFC 9449 §7.1): the token comes with a proof.
    Dpop,
}

/// The access token of a request and its scheme: `Bearer`, or also `DPoP` when `dpop` (the
/// route takes DPoP-bound tokens; elsewhere a `DPoP` credential is no credential at all). The
/// `DPoP` scheme's token has the same b64token syntax (RFC 9449 §7.1).
pub fn credential<'a>(
    headers: &'a HeaderMap,
    query: Option<&str>,
    dpop: bool,
) -> Result<Option<(Scheme, &'a str)>, BearerFault> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BearerFault::MultipleAuthorization);
    }
    let value = value.as_bytes();
    let found = match parse(value)? {
        Some(token) => Some((Scheme::Bearer, token)),
        None if dpop => parse_scheme(value, b"dpop")?.map(|t| (Scheme::Dpop, t)),
        None => None,
    };
    if found.is_some() && query.is_some_and(has_access_token_param) {
        return Err(BearerFault::TokenInHeaderAndQuery);
    }
    Ok(found)
}

/// The scheme of an `Authorization` value is `DPoP`.
pub fn is_dpop_scheme(headers: &HeaderMap) -> bool {
    headers.get(AUTHORIZATION).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() > 4 && v[..4].eq_ignore_ascii_case(b"dpop") && v[4] == b' '
    })
}

/// Parse one `Authorization` field value.
pub fn parse(value: &[u8]) -> Result<Option<&str>, BearerFault> {
    parse_scheme(value, b"bearer")
}

/// Parse one `Authorization` field value for a token with `scheme` (lower case).
fn parse_scheme<'v>(value: &'v [u8], wanted: &[u8]) -> Result<Option<&'v str>, BearerFault> {
    // The scheme is a token (RFC 9110 §5.6.2); it ends at the first byte that is not a tchar.
    let scheme_end = value
        .iter()
        .position(|&b| !is_tchar(b))
        .unwrap_or(value.len());
    let (scheme, rest) = value.split_at(scheme_end);
    if !scheme.eq_ignore_ascii_case(wanted) {
        return Ok(None);
    }
    if !rest.starts_with(b" ") {
        return Err(BearerFault::Malformed);
    }
    let token = trim_leading_spaces(rest);
    if token.is_empty() || !is_b64token(token) {
        return Err(BearerFault::Malformed);
    }
    // is_b64token admits ASCII only, so this cannot fail.
    std::str::from_utf8(token)
        .map(Some)
        .map_err(|_| BearerFault::Malformed)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim_leading_spaces(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&c| c != b' ').unwrap_or(b.len());
    &b[start..]
}

/// One b64token body byte: `ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/"`. Written as
/// comparisons, not a table, so the check over a whole token compiles to SIMD.
#[inline(always)]
fn is_b64token_char(c: u8) -> bool {
    let lower = c | 0x20;
    lower.is_ascii_lowercase()
        | c.is_ascii_digit()
        | (c == b'-')
        | (c == b'.')
        | (c == b'_')
        | (c == b'~')
        | (c == b'+')
        | (c == b'/')
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="` (RFC 6750 §2.1).
fn is_b64token(token: &[u8]) -> bool {
    let body_len = token.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    let (body, padding) = token.split_at(body_len);
    // No early exit: each byte's fault is OR-ed into one byte, a reduction that compiles to
    // SIMD over the whole token.
    let faults = body
        .iter()
        .fold(0u8, |faults, &b| faults | u8::from(!is_b64token_char(b)));
    let all_valid = faults == 0;
    !body.is_empty() && all_valid && padding.iter().all(|&b| b == b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alphabet_is_exactly_rfc_6750s() {
        for c in 0..=255u8 {
            let expected = c.is_ascii_alphanumeric() || b"-._~+/".contains(&c);
            assert_eq!(is_b64token_char(c), expected, "byte {c:#04x}");
        }
    }
    use http::HeaderValue;

    #[test]
    fn parse_table() {
        use BearerFault::*;
        type Case<'a> = (&'a [u8], Result<Option<&'a str>, BearerFault>);
        let cases: &[Case] = &[
            (b"Bearer abc.def.ghi", Ok(Some("abc.def.ghi"))),
            (b"bearer abc", Ok(Some("abc"))),
            (b"BEARER abc", Ok(Some("abc"))),
            (b"Bearer    abc", Ok(Some("abc"))),
            (b"Bearer a-b_c~d+e/f==", Ok(Some("a-b_c~d+e/f=="))),
            (b"Basic dXNlcjpwYXNz", Ok(None)),
            (b"DPoPish abc", Ok(None)),
            (b"Bearerabc", Ok(None)),
            (b"Bearer", Err(Malformed)),
            (b"Bearer ", Err(Malformed)),
            (b"Bearer ===", Err(Malformed)),
            (b"Bearer a=b", Err(Malformed)),
            (b"Bearer abc def", Err(Malformed)),
            (b"Bearer abc,def", Err(Malformed)),
            (b"Bearer \"abc\"", Err(Malformed)),
            (b"Bearer\tabc", Err(Malformed)),
            (b"Bearer:abc", Err(Malformed)),
            (b"Bearer ab\xc3\xa9", Err(Malformed)),
        ];
        for (value, want) in cases {
            assert_eq!(parse(value), *want, "{}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn header_map_cases() {
        let mut headers = HeaderMap::new();
        assert_eq!(extract(&headers), Ok(None));
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer one"));
        assert_eq!(extract(&headers), Ok(Some("one")));
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer two"));
        assert_eq!(extract(&headers), Err(BearerFault::MultipleAuthorization));
    }

    #[test]
    fn a_token_in_header_and_query_is_malformed() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            extract_with_query(&headers, Some("access_token=x")),
            Ok(None),
            "query form is off"
        );
        headers.append(AUTHORIZATION, HeaderValue::from_static("Bearer one"));
        for q in [
            "access_token=x",
            "a=1&access_token=x",
            "access_token",
            "access_token=",
            "access%5Ftoken=x",
            "access%5ftoken",
            "%61ccess_token=x",
            "%61%63%63%65%73%73%5F%74%6F%6B%65%6E=x",
            "a=1;access_token=x",
            "ACCESS_TOKEN=x",
            "access.token=x",
            "access+token=x",
            "access%20token=x",
            "access[token=x",
            "access_token[]=x",
            "access_token[a]=x",
            "+access_token=x",
            "access_token%00=x",
            "access_token%00x[]=x",
            "[access_token]=x",
            "%5Baccess_token%5D=x",
            "[access_token][]=x",
            "access_token]=x",
            "]access_token=x",
        ] {
            assert_eq!(
                extract_with_query(&headers, Some(q)),
                Err(BearerFault::TokenInHeaderAndQuery),
                "{q}"
            );
        }
        for q in [
            "my_access_token=x",
            "a=access_token",
            "",
            "access%5Ftoken2=x",
            "access%5",
            "access%zztoken",
            "access-token=x",
            "accesstoken[=x",
            "access_token_=x",
        ] {
            assert_eq!(
                extract_with_query(&headers, Some(q)),
                Ok(Some("one")),
                "{q}"
            );
        }
    }
}
