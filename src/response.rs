//! Every answer the gateway makes itself, as data: one [`Synthetic`] type, rendered in one place
//! ([`Synthetic::render`]). The proxy listener, the decision endpoint and the admin listener
//! build one and render it; none writes its own error bodies.
//!
//! The JSON body is `{"error": ..., "error_description": ...}` with fixed text, never the
//! request's bytes. Every synthetic answer carries `Cache-Control: no-store`, except the public
//! documents of [`Synthetic::public`].

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE};
use http::StatusCode;

use crate::auth::Challenge;
use crate::gate::limit::Limited;
use crate::gate::{Denied, Refusal};

/// A response the gateway makes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synthetic {
    pub status: u16,
    /// Extra header fields (`WWW-Authenticate`, `Retry-After`, `Allow`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub content_type: &'static str,
    pub body: Bytes,
    /// Answer with `Connection: close` and close the connection afterwards.
    pub close: bool,
    /// `Cache-Control`: `no-store` but for [`Synthetic::public`].
    pub cache_control: &'static str,
}

impl Synthetic {
    /// A JSON error answer: `{"error": error, "error_description": description}`.
    pub fn error(status: u16, error: &str, description: &str) -> Synthetic {
        let body = serde_json::json!({ "error": error, "error_description": description });
        Synthetic::json(status, Bytes::from(body.to_string()))
    }

    /// A JSON answer with a body built elsewhere.
    pub fn json(status: u16, body: Bytes) -> Synthetic {
        Synthetic {
            status,
            headers: Vec::new(),
            content_type: "application/json",
            body,
            close: false,
            cache_control: "no-store",
        }
    }

    /// A plain-text answer (the admin listener).
    pub fn text(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Synthetic {
        Synthetic {
            status,
            headers: Vec::new(),
            content_type,
            body: body.into(),
            close: false,
            cache_control: "no-store",
        }
    }

    /// A request refused before any token is looked at: 400, 404, 405 (with `Allow`).
    pub fn refusal(refusal: Refusal<'_>) -> Synthetic {
        let mut answer = Synthetic::error(refusal.status(), refusal.error(), refusal.description());
        if let Refusal::MethodNotAllowed { allow } = refusal {
            if let Ok(v) = HeaderValue::from_str(allow) {
                answer.headers.push((http::header::ALLOW, v));
            }
        }
        answer
    }

    /// Any refusal of the gate: a [`Refusal`], a challenge, or a rate limit.
    pub fn denied(denied: Denied<'_>) -> Synthetic {
        match denied {
            Denied::Refused(refusal) => Synthetic::refusal(refusal),
            Denied::Challenged { challenge, .. } => Synthetic::from(challenge),
            Denied::Limited { limited, .. } => Synthetic::rate_limited(limited),
        }
    }

    /// 429 (RFC 6585 §4) with `Retry-After`, and the route's quota in the `RateLimit-Policy`
    /// and `RateLimit` fields of the IETF httpapi draft (draft-ietf-httpapi-ratelimit-headers:
    /// `q` requests per window of `w` seconds; `r` left, `t` seconds until more).
    pub fn rate_limited(limited: Limited) -> Synthetic {
        let mut answer = Synthetic::error(
            429,
            "rate_limited",
            "Too many requests for this route; retry after the time in Retry-After.",
        );
        let Limited {
            retry_after,
            quota,
            window,
        } = limited;
        for (name, value) in [
            (http::header::RETRY_AFTER, retry_after.to_string()),
            (
                HeaderName::from_static("ratelimit-policy"),
                format!("\"route\";q={quota};w={window}"),
            ),
            (
                HeaderName::from_static("ratelimit"),
                format!("\"route\";r=0;t={retry_after}"),
            ),
        ] {
            if let Ok(v) = HeaderValue::try_from(value) {
                answer.headers.push((name, v));
            }
        }
        answer
    }

    /// 503 with `Retry-After: 1`: this worker holds as many HTTP/2 streams as
    /// `max_streams_per_worker` allows.
    pub fn overloaded() -> Synthetic {
        let mut answer = Synthetic::error(
            503,
            "overloaded",
            "The gateway has too many requests in flight; retry after the time in Retry-After.",
        );
        answer
            .headers
            .push((http::header::RETRY_AFTER, HeaderValue::from_static("1")));
        answer
    }

    /// 502: the upstream could not be reached or broke the protocol.
    pub fn bad_gateway() -> Synthetic {
        Synthetic::error(502, "bad_gateway", "The upstream could not be reached.").closing()
    }

    /// 504: the upstream did not connect or answer in time.
    pub fn gateway_timeout() -> Synthetic {
        Synthetic::error(
            504,
            "gateway_timeout",
            "The upstream did not answer in time.",
        )
        .closing()
    }

    /// 408: the request body did not arrive in time.
    pub fn body_timeout() -> Synthetic {
        Synthetic::error(
            408,
            "request_timeout",
            "The request body did not arrive in time.",
        )
        .closing()
    }

    /// 400: the request body could not be read (bad chunked framing).
    pub fn bad_body() -> Synthetic {
        Synthetic::error(400, "bad_request", "The request could not be read.").closing()
    }

    /// 413: the request body is larger than `server.max_body_bytes`.
    pub fn body_too_large() -> Synthetic {
        Synthetic::error(
            413,
            "content_too_large",
            "The request body is larger than this gateway accepts.",
        )
        .closing()
    }

    /// The same answer as a public document that caches may keep for five minutes (RFC 9728
    /// metadata: the same for every client, and holding nothing secret).
    pub fn public(mut self) -> Synthetic {
        self.cache_control = "public, max-age=300";
        self
    }

    /// The same answer with `Allow: allow` (a 405).
    pub fn allow(mut self, allow: &'static str) -> Synthetic {
        self.headers
            .push((http::header::ALLOW, HeaderValue::from_static(allow)));
        self
    }

    /// The same answer, with the connection closed after it.
    pub fn closing(mut self) -> Synthetic {
        self.close = true;
        self
    }

    /// The HTTP response. A `HEAD` request gets the same head (its `Content-Length` included)
    /// and no body; the caller's server omits it.
    pub fn render<B: From<Bytes>>(self) -> http::Response<B> {
        self.build(false, B::from)
    }

    /// The answer to the request whose header fields are `request`: a gRPC request's refusal
    /// as a gRPC client reads it ([`Synthetic::render`] otherwise).
    ///
    /// gRPC over HTTP/2 (PROTOCOL-HTTP2.md, "Responses"): a call that fails before any message
    /// is answered *trailers-only*, one header block holding `:status 200`,
    /// `content-type: application/grpc`, `grpc-status` and `grpc-message`, and no body. gRPC
    /// clients read the outcome from `grpc-status` and, on any other `:status`, replace it by
    /// their own mapping of the HTTP status (grpc-go: 400 becomes INTERNAL and the message is
    /// lost), so the status is 200 here, as Envoy's local replies to gRPC send. The gateway's
    /// own header fields stay: `WWW-Authenticate` (RFC 6750 §3), `Retry-After`, `DPoP-Nonce`.
    /// Codes: [`grpc_status`].
    pub fn render_for<B: From<Bytes>>(self, request: &http::HeaderMap) -> http::Response<B> {
        match is_grpc(request) {
            true => self.render_grpc(),
            false => self.render(),
        }
    }

    /// The answer to a gRPC request ([`Synthetic::render_for`]): trailers-only when it refuses.
    pub fn render_grpc<B: From<Bytes>>(self) -> http::Response<B> {
        let grpc = self.status >= 400;
        self.build(grpc, B::from)
    }

    /// [`Synthetic::render_for`] into a body made from a `String` (the tower layer's bound).
    pub fn render_text_for<B: From<String>>(self, request: &http::HeaderMap) -> http::Response<B> {
        let grpc = self.status >= 400 && is_grpc(request);
        self.build(grpc, |b| B::from(String::from_utf8_lossy(&b).into_owned()))
    }

    fn build<B>(self, grpc: bool, body: impl FnOnce(Bytes) -> B) -> http::Response<B> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = match grpc {
            true => {
                let mut r = http::Response::new(body(Bytes::new()));
                let headers = r.headers_mut();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                headers.insert(
                    GRPC_STATUS.clone(),
                    HeaderValue::from(grpc_status(self.status)),
                );
                let message = grpc_message(&self.body, status);
                if let Ok(v) = HeaderValue::try_from(message) {
                    headers.insert(GRPC_MESSAGE.clone(), v);
                }
                // What the answer stands for, for the gateway's own counters and access line.
                r.extensions_mut().insert(Stands(self.status));
                r
            }
            false => {
                let mut r = http::Response::new(body(self.body));
                *r.status_mut() = status;
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
                r
            }
        };
        let headers = response.headers_mut();
        headers.insert(CACHE_CONTROL, HeaderValue::from_static(self.cache_control));
        if self.close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }
}

/// The HTTP status a gRPC trailers-only answer stands for (it is sent with `:status 200`), in
/// the response's extensions: requests are counted and logged by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stands(pub u16);

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// A gRPC request: `content-type` is `application/grpc`, alone or with a `+format` or
/// parameters (PROTOCOL-HTTP2.md, "Requests"). `application/grpc-web` is not: gRPC-Web carries
/// its trailers in the body, which these answers do not.
pub fn is_grpc(request: &http::HeaderMap) -> bool {
    let Some(value) = request.get(CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    let prefix = b"application/grpc";
    value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(value.get(prefix.len()), None | Some(b'+' | b';'))
}

/// The gRPC status code (gRPC's statuscodes.md) for a refusal with HTTP `status`: 16
/// UNAUTHENTICATED for 401, 7 PERMISSION_DENIED for 403, 14 UNAVAILABLE for 502, 503 and 504
/// (as gRPC's own HTTP mapping, so clients may retry), 3 INVALID_ARGUMENT for 400 (the request
/// as sent cannot succeed), 12 UNIMPLEMENTED for 404 and 405 (no route serves the method),
/// 4 DEADLINE_EXCEEDED for 408, 8 RESOURCE_EXHAUSTED for 413, 429 and 431 (a quota or size
/// limit), and 2 UNKNOWN for anything else.
pub fn grpc_status(status: u16) -> u16 {
    match status {
        400 => 3,
        401 => 16,
        403 => 7,
        404 | 405 => 12,
        408 => 4,
        413 | 429 | 431 => 8,
        502..=504 => 14,
        _ => 2,
    }
}

/// `grpc-message`: the answer's `error_description` (else the status's reason), percent-encoded
/// as gRPC requires: every byte outside printable ASCII, and `%`.
fn grpc_message(body: &[u8], status: StatusCode) -> String {
    let described = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error_description"].as_str().map(str::to_owned));
    let text = described.unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_owned());
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b' '..=b'~' if b != b'%' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `DPoP-Nonce` (RFC 9449 §8.1).
static DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

impl From<Challenge> for Synthetic {
    /// RFC 6750 §3: the status, `WWW-Authenticate` (or `Retry-After` for 503) and JSON body.
    fn from(c: Challenge) -> Synthetic {
        let mut answer = Synthetic::json(c.status, Bytes::from(c.body));
        for v in c.www_authenticate {
            if let Ok(v) = HeaderValue::try_from(v) {
                answer.headers.push((http::header::WWW_AUTHENTICATE, v));
            }
        }
        if let Some(v) = c.dpop_nonce.and_then(|v| HeaderValue::try_from(v).ok()) {
            answer.headers.push((DPOP_NONCE.clone(), v));
        }
        if let Some(secs) = c.retry_after {
            answer
                .headers
                .push((http::header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_status_type_cache_control_and_close() {
        let r: http::Response<Bytes> = Synthetic::gateway_timeout().render();
        assert_eq!(r.status(), 504);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[CONNECTION], "close");
        let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(body["error"], "gateway_timeout");
    }

    #[test]
    fn a_405_says_what_is_allowed() {
        let r: http::Response<Bytes> =
            Synthetic::refusal(Refusal::MethodNotAllowed { allow: "GET, HEAD" }).render();
        assert_eq!(r.status(), 405);
        assert_eq!(r.headers()[http::header::ALLOW], "GET, HEAD");
        assert!(!r.headers().contains_key(CONNECTION));
    }

    fn grpc_request(content_type: &'static str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        h
    }

    #[test]
    fn a_grpc_refusal_is_trailers_only_with_the_challenge_kept() {
        let c = Challenge {
            status: 401,
            www_authenticate: vec!["Bearer realm=\"r\", error=\"invalid_token\"".into()],
            retry_after: None,
            dpop_nonce: None,
            body: r#"{"error":"invalid_token","error_description":"100% expired"}"#.into(),
            outcome: "expired",
        };
        let r: http::Response<Bytes> =
            Synthetic::from(c).render_for(&grpc_request("application/grpc+proto"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "16");
        assert_eq!(r.headers()["grpc-message"], "100%25 expired");
        assert_eq!(
            r.headers()[http::header::WWW_AUTHENTICATE],
            "Bearer realm=\"r\", error=\"invalid_token\""
        );
        assert!(r.body().is_empty());
        assert_eq!(r.extensions().get::<Stands>(), Some(&Stands(401)));
    }

    #[test]
    fn grpc_is_told_by_its_content_type_only() {
        for (content_type, grpc) in [
            ("application/grpc", true),
            ("Application/GRPC", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=utf-8", true),
            ("application/grpc-web", false),
            ("application/grpc-web+proto", false),
            ("application/grpcx", false),
            ("application/json", false),
        ] {
            assert_eq!(is_grpc(&grpc_request(content_type)), grpc, "{content_type}");
        }
        assert!(!is_grpc(&http::HeaderMap::new()));
        // Plain HTTP callers, and successes, get the plain answer.
        let r: http::Response<Bytes> =
            Synthetic::gateway_timeout().render_for(&grpc_request("application/json"));
        assert_eq!(r.status(), 504);
        let r: http::Response<Bytes> = Synthetic::json(200, Bytes::from_static(b"{}"))
            .render_for(&grpc_request("application/grpc"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
    }

    #[test]
    fn grpc_codes_by_status() {
        for (status, code) in [
            (400, 3),
            (401, 16),
            (403, 7),
            (404, 12),
            (405, 12),
            (408, 4),
            (413, 8),
            (429, 8),
            (431, 8),
            (502, 14),
            (503, 14),
            (504, 14),
            (500, 2),
        ] {
            assert_eq!(grpc_status(status), code, "{status}");
        }
        let r: http::Response<Bytes> =
            Synthetic::overloaded().render_for(&grpc_request("application/grpc"));
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "1");
        assert!(r.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .starts_with("The gateway has"));
    }

    #[test]
    fn a_challenge_keeps_its_header_and_retry_after() {
        let c = Challenge {
            status: 503,
            www_authenticate: Vec::new(),
            retry_after: Some(7),
            dpop_nonce: None,
            body: "{}".into(),
            outcome: "idp_unavailable",
        };
        let r: http::Response<Bytes> = Synthetic::from(c).render();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "7");
        assert!(!r.headers().contains_key(http::header::WWW_AUTHENTICATE));
    }
}
