//! The pingora adapter: `request_filter` decides, `upstream_peer` picks, `upstream_request_filter`
//! adds headers, `logging` records. Decisions come from [`Router`] and [`Authenticator`].
//!
//! Hop-by-hop request headers, including every header `Connection` names (RFC 9110 §7.6.1), are
//! removed by pingora's standard upstream request policy before `upstream_request_filter` runs;
//! WebSocket upgrades pass through that policy.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::PeerOptions;
use pingora::{Error, ErrorSource, ErrorType};

use crate::auth::{identity_header_spelling, Authenticator, Challenge, Principal, RequestInfo};
use crate::config::{AuthMode, UpstreamConfig};
use crate::metrics::{status_class, Metrics, UpstreamErrorKind, NO_ROUTE};
use crate::routing::{is_canonical_path, Route, RouteMatch, Router};

pub mod framing;
pub mod slow_clients;

pub use framing::RequestLimits;
pub use slow_clients::ClientTimeouts;

/// The upstream pool of each route, indexed by [`Route::index`].
pub type Pools = Vec<Arc<LoadBalancer<RoundRobin>>>;

/// The gateway's `ProxyHttp` implementation.
pub struct Proxy {
    pub router: Router,
    pub pools: Pools,
    pub auth: Arc<Authenticator>,
    pub metrics: Metrics,
    /// Upstream connection settings, from [`peer_options`].
    pub peer_options: PeerOptions,
    pub trust_forwarded_headers: bool,
    /// Request size limits, checked before anything else.
    pub limits: RequestLimits,
    /// Client-side timeouts; the head's deadline is kept by [`slow_clients::Guarded`].
    pub client_timeouts: ClientTimeouts,
}

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    route: Option<Arc<Route>>,
    /// Upstreams already tried for this request, so a retry picks another.
    tried: Vec<PeerAddr>,
    upstream_error: Option<UpstreamErrorKind>,
    principal: Option<Arc<Principal>>,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            route: None,
            tried: Vec::new(),
            upstream_error: None,
            principal: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        slow_clients::head_read(session, &self.client_timeouts);
        let raw_content_length =
            || framing::raw_has_content_length(&session.as_downstream().to_h1_raw());
        if let Some(r) = framing::check(session.req_header(), raw_content_length, &self.limits) {
            session.set_keepalive(None);
            respond(session, r.status, &[], error_body(r.error, r.description)).await?;
            return Ok(true);
        }
        let req = session.req_header();
        if !is_canonical_path(req.uri.path()) {
            let body = error_body("bad_request", "The request path is not in canonical form.");
            respond(session, 400, &[], body).await?;
            return Ok(true);
        }
        let route = match self.router.find(&req.method, req.uri.path()) {
            RouteMatch::Found(route) => route.clone(),
            RouteMatch::NotFound => {
                let body = error_body("not_found", "No route matches this path.");
                respond(session, 404, &[], body).await?;
                return Ok(true);
            }
            RouteMatch::MethodNotAllowed { allow } => {
                let allow = [("allow", allow.to_owned())];
                let body = error_body(
                    "method_not_allowed",
                    "This path does not accept this method.",
                );
                respond(session, 405, &allow, body).await?;
                return Ok(true);
            }
        };
        ctx.route = Some(route.clone());
        if route.auth == AuthMode::Required {
            let info = RequestInfo {
                headers: &req.headers,
                query: req.uri.query(),
                route: &route.name,
                policy: &route.policy,
            };
            match self.auth.authorize(&info).await {
                Ok(principal) => ctx.principal = Some(principal),
                Err(error) => {
                    tracing::debug!(route = %route.name, outcome = error.kind(), "request refused");
                    let challenge = self.auth.challenge(&error, &route.policy);
                    respond_challenge(session, challenge).await?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx.route.as_ref().expect("request_filter sets the route");
        let pool = &self.pools[route.index];
        let tried = &ctx.tried;
        let Some(backend) =
            pool.select_with(b"", 256, |b, healthy| healthy && !tried.contains(&b.addr))
        else {
            ctx.upstream_error = Some(if ctx.tried.is_empty() {
                UpstreamErrorKind::NoHealthyUpstream
            } else {
                UpstreamErrorKind::Connect
            });
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "no healthy upstream",
            ));
        };
        ctx.tried.push(backend.addr.clone());
        let addr = backend
            .addr
            .as_inet()
            .expect("upstreams are TCP addresses")
            .to_owned();
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options = self.peer_options.clone();
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _s: &mut Session,
        _p: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.upstream_error = Some(upstream_error_kind(&e));
        // Nothing was sent yet, so any request may try the route's next upstream.
        let pool_size = ctx
            .route
            .as_ref()
            .map_or(0, |r| self.pools[r.index].backends().get_backend().len());
        if ctx.tried.len() < pool_size {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        strip_identity_headers(upstream);
        if let Some(principal) = &ctx.principal {
            set_identity_headers(upstream, principal);
        }
        if ctx
            .route
            .as_ref()
            .is_some_and(|r| r.auth == AuthMode::Required && !r.forward_token)
        {
            upstream.remove_header(&http::header::AUTHORIZATION);
        }
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        set_forwarded_headers(upstream, client_ip, self.trust_forwarded_headers)?;
        if !upstream
            .headers
            .get(&X_REQUEST_ID)
            .is_some_and(|v| is_request_id(v.as_bytes()))
        {
            upstream.insert_header("X-Request-Id", request_id())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(code), _) => *code,
            (_, ErrorSource::Upstream) => {
                let kind = upstream_error_kind(e);
                ctx.upstream_error = Some(kind);
                if kind == UpstreamErrorKind::Timeout {
                    504
                } else {
                    502
                }
            }
            (ErrorType::ReadTimedout, ErrorSource::Downstream) => 408,
            (
                ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::WriteTimedout
                | ErrorType::ConnectionClosed,
                ErrorSource::Downstream,
            ) => 0,
            (_, ErrorSource::Downstream) => 400,
            _ => 500,
        };
        if code > 0 && session.response_written().is_none() {
            // The connection is not reused after a failure (below): say so in the answer, or a
            // client may send its next request into a connection that is being closed.
            session.set_keepalive(None);
            let (error, description) = match code {
                502 => ("bad_gateway", "The upstream could not be reached."),
                504 => ("gateway_timeout", "The upstream did not answer in time."),
                400 => ("bad_request", "The request could not be read."),
                408 => (
                    "request_timeout",
                    "The request body did not arrive in time.",
                ),
                _ => (
                    "internal_error",
                    "The gateway failed to handle the request.",
                ),
            };
            let _ = respond(session, code, &[], error_body(error, description)).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        slow_clients::request_done(session);
        if e.is_some_and(|e| {
            e.esource() == &ErrorSource::Downstream && e.etype() == &ErrorType::ReadTimedout
        }) {
            self.metrics
                .client_timeouts
                .with_label_values(&["body"])
                .inc();
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route.as_ref().map_or(NO_ROUTE, |r| r.name.as_str());
        let elapsed = ctx.start.elapsed();
        self.metrics
            .requests
            .with_label_values(&[route, status_class(status)])
            .inc();
        self.metrics
            .request_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        if let Some(kind) = ctx.upstream_error {
            self.metrics
                .upstream_errors
                .with_label_values(&[route, kind.as_str()])
                .inc();
        }
        // tracing evaluates the fields only when the access log is enabled.
        tracing::info!(
            target: "portcullis::access",
            method = %session.req_header().method,
            route,
            status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream = ctx.tried.last().map_or_else(|| "-".to_owned(), |a| a.to_string()),
        );
    }
}

/// How the gateway connects to upstreams: built from `[upstream]` once, at start-up.
pub fn peer_options(upstream: &UpstreamConfig) -> PeerOptions {
    let mut options = PeerOptions::new();
    options.connection_timeout = Some(upstream.connect_timeout);
    options.total_connection_timeout = Some(upstream.connect_timeout);
    options.read_timeout = Some(upstream.read_timeout);
    options.write_timeout = Some(upstream.write_timeout);
    options.idle_timeout = Some(upstream.idle_timeout);
    options
}

fn upstream_error_kind(e: &Error) -> UpstreamErrorKind {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            UpstreamErrorKind::Timeout
        }
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::SocketError => UpstreamErrorKind::Connect,
        _ => UpstreamErrorKind::Protocol,
    }
}

/// Remove every client-sent header in the gateway's identity namespace: `X-Auth-*` in any case,
/// with `_` or `-`. Only the gateway speaks for the token's identity (shared/STANDARDS.md).
fn strip_identity_headers(req: &mut RequestHeader) {
    let forged: Vec<HeaderName> = req
        .headers
        .keys()
        .filter(|name| {
            let n = name.as_str().as_bytes(); // http lower-cases names
            n.len() > 7
                && n.starts_with(b"x")
                && matches!(n[1], b'-' | b'_')
                && &n[2..6] == b"auth"
                && matches!(n[6], b'-' | b'_')
        })
        .cloned()
        .collect();
    for name in forged {
        req.remove_header(&name);
    }
}

/// The identity headers of [`Principal::identity_headers`]: set only by the gateway.
/// Each is inserted under its static spelling: pingora copies a `HeaderName` on every insert.
fn set_identity_headers(req: &mut RequestHeader, p: &Principal) {
    for (name, value) in p.identity_headers() {
        let _ = match identity_header_spelling(name) {
            Some(spelling) => req.insert_header(spelling, value.clone()),
            None => req.insert_header(name.clone(), value.clone()),
        };
    }
}

/// `X-Forwarded-For` / `-Proto` / `-Host`. Untrusted (the default): the client's values are
/// replaced. Trusted: the client address is appended to the list a proxy in front sent.
fn set_forwarded_headers(
    req: &mut RequestHeader,
    client: Option<IpAddr>,
    trusted: bool,
) -> Result<()> {
    let client = client
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into());
    let prior_for = req
        .headers
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let forwarded_for = match prior_for {
        Some(prior) if trusted => format!("{prior}, {client}"),
        _ => client,
    };
    req.insert_header("X-Forwarded-For", forwarded_for)?;
    if !trusted || !req.headers.contains_key(&X_FORWARDED_PROTO) {
        req.insert_header("X-Forwarded-Proto", "http")?;
    }
    if !trusted || !req.headers.contains_key(&X_FORWARDED_HOST) {
        match req.headers.get(http::header::HOST).cloned() {
            Some(host) => req.insert_header("X-Forwarded-Host", host)?,
            None => {
                req.remove_header(&X_FORWARDED_HOST);
            }
        }
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

fn error_body(error: &str, description: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": error, "error_description": description }).to_string())
}

async fn respond_challenge(session: &mut Session, c: Challenge) -> Result<()> {
    let mut headers = Vec::with_capacity(2);
    if let Some(v) = c.www_authenticate {
        headers.push(("www-authenticate", v));
    }
    if let Some(secs) = c.retry_after {
        headers.push(("retry-after", secs.to_string()));
    }
    respond(session, c.status, &headers, Bytes::from(c.body)).await
}

/// Write a complete JSON response generated by the gateway itself.
async fn respond(
    session: &mut Session,
    status: u16,
    headers: &[(&'static str, String)],
    body: Bytes,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4 + headers.len()))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    for (name, value) in headers {
        resp.insert_header(*name, value.as_str())?;
    }
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Tests of the pure helpers; the proxy as a whole is tested in `tests/proxy.rs`.
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
        );
        assert_eq!(p.identity_headers().len(), 4);
        for (name, _) in p.identity_headers() {
            let spelling = identity_header_spelling(name).unwrap_or_else(|| panic!("{name}"));
            assert!(spelling.eq_ignore_ascii_case(name.as_str()));
        }
    }

    #[test]
    fn identity_headers_from_the_client_are_stripped_in_every_spelling() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        for name in [
            "X-Auth-Subject",
            "x-auth-scopes",
            "X_Auth_Subject",
            "x-auth_issuer",
            "X_AUTH-CLIENT-ID",
        ] {
            req.append_header(name.to_string(), "forged").unwrap();
        }
        req.append_header("x-authorization-hint", "kept").unwrap();
        req.append_header("x-other", "kept").unwrap();
        strip_identity_headers(&mut req);
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

    #[test]
    fn timeouts_are_504_material() {
        assert_eq!(
            upstream_error_kind(&Error::new(ErrorType::ReadTimedout)),
            UpstreamErrorKind::Timeout
        );
        assert_eq!(
            upstream_error_kind(&Error::new(ErrorType::ConnectRefused)),
            UpstreamErrorKind::Connect
        );
        assert_eq!(
            upstream_error_kind(&Error::new(ErrorType::InvalidHTTPHeader)),
            UpstreamErrorKind::Protocol
        );
    }
}
