//! The pingora adapter: `request_filter` decides, `upstream_peer` picks, `upstream_request_filter`
//! adds headers, `logging` records. Decisions come from [`Router`] and [`Authenticator`].
//!
//! Hop-by-hop request headers, including every header `Connection` names (RFC 9110 §7.6.1), are
//! removed by pingora's standard upstream request policy before `upstream_request_filter` runs;
//! WebSocket upgrades pass through that policy.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::{selection::RoundRobin, LoadBalancer};
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PeerAddr;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::PeerOptions;
use pingora::{Error, ErrorSource, ErrorType};

use crate::auth::{Authenticator, Challenge, Principal, RequestInfo};
use crate::config::{AuthMode, UpstreamConfig};
use crate::gate::{self, Refusal};
use crate::metrics::{method_label, status_class, Metrics, UpstreamErrorKind, NO_ROUTE};
use crate::routing::{Route, Router};

pub mod framing;
pub mod headers;
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
    /// The target to forward, when it is not the one received.
    rewrite: Option<Rewrite>,
}

/// A normalised or absolute-form target, forwarded in origin-form.
struct Rewrite {
    target: http::Uri,
    /// An absolute-form target's authority: the forwarded `Host` (RFC 9112 §3.2.2).
    authority: Option<String>,
}

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
            rewrite: None,
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
        if slow_clients::request_line(session)
            .is_some_and(|line| framing::target_was_escaped(line, req.raw_path()))
        {
            let refusal = Refusal::Target(gate::TargetFault::RawByte);
            respond_refusal(session, refusal).await?;
            return Ok(true);
        }
        let routed = match gate::route(&self.router, &req.method, req.raw_path()) {
            Ok(routed) => routed,
            Err(refusal) => {
                respond_refusal(session, refusal).await?;
                return Ok(true);
            }
        };
        let route = routed.route.clone();
        if routed.target.rewritten() {
            // Canonical targets are valid origin-form URIs; a failure would be a gate bug, and
            // the request is refused rather than forwarded as received.
            let Ok(target) = http::Uri::try_from(routed.target.origin_form()) else {
                respond_refusal(session, Refusal::Target(gate::TargetFault::Form)).await?;
                return Ok(true);
            };
            ctx.rewrite = Some(Rewrite {
                target,
                authority: routed.target.authority().map(str::to_owned),
            });
        }
        ctx.route = Some(route.clone());
        if route.auth == AuthMode::Required {
            let info = RequestInfo {
                headers: &req.headers,
                query: routed.target.query(),
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
        let route = ctx.route.as_ref().expect("request_filter sets the route");
        // The route was chosen on the canonical target: forward exactly that. Kept in the
        // context, not taken: pingora runs this filter again, from the client's head, when it
        // retries a request whose reused upstream connection failed.
        if let Some(rewrite) = &ctx.rewrite {
            upstream.set_uri(rewrite.target.clone());
            if let Some(authority) = &rewrite.authority {
                upstream.insert_header(http::header::HOST, authority.as_str())?;
            }
        }
        headers::strip_client_headers(
            upstream,
            headers::Strip {
                trusted: self.trust_forwarded_headers,
                method_override: route.method_override,
            },
        );
        if let Some(principal) = &ctx.principal {
            headers::set_identity_headers(upstream, principal);
        }
        if !route.forward_token {
            upstream.remove_header(&http::header::AUTHORIZATION);
        }
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        headers::set_forwarded_headers(upstream, client_ip, self.trust_forwarded_headers)?;
        headers::set_request_id(upstream)
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
            method = method_label(&session.req_header().method),
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

fn error_body(error: &str, description: &str) -> Bytes {
    Bytes::from(serde_json::json!({ "error": error, "error_description": description }).to_string())
}

/// The answer to a request refused before any token is looked at (400, 404, 405).
async fn respond_refusal(session: &mut Session, refusal: Refusal<'_>) -> Result<()> {
    close_if_body_unread(session);
    let allow = match refusal {
        Refusal::MethodNotAllowed { allow } => vec![("allow", allow.to_owned())],
        _ => Vec::new(),
    };
    let body = error_body(refusal.error(), refusal.description());
    respond(session, refusal.status(), &allow, body).await
}

/// A request answered before its body was read: the connection is not kept. pingora would
/// drain the body after the answer, and those bytes would be read as the start of the next
/// head (the kept request line, the head deadline).
fn close_if_body_unread(session: &mut Session) {
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
}

async fn respond_challenge(session: &mut Session, c: Challenge) -> Result<()> {
    close_if_body_unread(session);
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
