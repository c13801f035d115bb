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
        let mut response = http::Response::new(B::from(self.body));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.content_type));
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
