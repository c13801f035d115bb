//! The proxy listener's service: framing checks, [`Gate::check`](crate::gate::Gate::check),
//! then the request forwarded through the worker's own pool, streamed both ways. Every answer
//! the gateway makes itself is a [`Synthetic`].

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{CONTENT_LENGTH, EXPECT, HOST};
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Incoming};

use super::body::{BodyFault, BodyState, ClientBody, Finish, ResBody, TrailerRule, UpstreamBody};
use super::client_stream::{ClientTimeouts, ConnShared};
use super::framing::{self, RequestLimits};
use super::headers::{self, Strip};
use super::pool::{Checkout, ConnectError, Pool, Target};
use super::upstream_tls::{self, UpstreamTls};
use super::upstreams::Member;
use super::upstreams::{Rotation, Upstreams};
use crate::auth::error::Untrusted;
use crate::auth::Grant;
use crate::config::UpstreamProtocol;
use crate::gate::headers::IdentityNames;
use crate::gate::{limit, Denied, Gate, Refusal, TargetFault};
use crate::live::Live;
use crate::metrics::{
    method_label, status_class, Metrics, ResendReason, UpstreamErrorKind, NO_ROUTE,
};
use crate::otlp::{Exporter, RequestSpan};
use crate::response::Synthetic;
use crate::routing::Route;

/// The DPoP proof header (RFC 9449 §4.1).
static DPOP: http::HeaderName = http::HeaderName::from_static("dpop");

/// What every worker shares: the gate, the metrics, the upstream groups and the settings.
pub struct Shared {
    pub gate: Arc<Gate>,
    pub metrics: Metrics,
    pub upstreams: Arc<Upstreams>,
    /// Each route's `upstream_tls`, by route index.
    pub upstream_tls: Arc<[Option<Arc<UpstreamTls>>]>,
    pub settings: Settings,
    /// `[tracing]`: the span exporter, the same one across reloads.
    pub exporter: Option<Arc<crate::otlp::Exporter>>,
}

/// The proxy listener's settings, from `[server]` and `[upstream]`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub trust_forwarded_headers: bool,
    pub limits: RequestLimits,
    pub timeouts: ClientTimeouts,
    /// `[upstream] read_timeout`: the wait for a response head and for each body read.
    pub read_timeout: Duration,
    /// `[server] max_body_bytes`: a longer request body is refused (413); `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// `[log] log_subject`.
    pub log_subject: bool,
    /// `[server.http2]`: read when a listener starts.
    pub http2: crate::config::Http2Config,
}

/// One worker thread: its own upstream pool, and its copy of the current config's parts,
/// renewed at the first request after a reload ([`WorkerThread::current`]).
pub struct WorkerThread {
    live: Arc<Live<Shared>>,
    pool: Rc<Pool>,
    index: usize,
    current: std::cell::RefCell<(u64, Rc<Worker>)>,
}

impl WorkerThread {
    pub fn new(live: Arc<Live<Shared>>, pool: Rc<Pool>, index: usize) -> WorkerThread {
        let generation = live.generation();
        let worker = Rc::new(Worker::new(live.load(), pool.clone(), index));
        WorkerThread {
            live,
            pool,
            index,
            current: std::cell::RefCell::new((generation, worker)),
        }
    }

    /// The parts of the config now. One atomic read when nothing was reloaded; after a reload,
    /// this worker's parts are built anew (the pool stays: connections to upstreams that remain
    /// are reused).
    pub fn current(&self) -> Rc<Worker> {
        let generation = self.live.generation();
        let mut current = self.current.borrow_mut();
        if current.0 != generation {
            let worker = Worker::new(self.live.load(), self.pool.clone(), self.index);
            *current = (generation, Rc::new(worker));
        }
        current.1.clone()
    }

    pub fn pool(&self) -> &Rc<Pool> {
        &self.pool
    }
}

/// One worker's parts of one config: shared parts and its own pool, round-robin positions and
/// metric handles.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub pool: Rc<Pool>,
    pub rotation: Rotation,
    pub counters: RequestCounters,
    /// The gate's identity header names, this worker's copy.
    pub identity: Rc<IdentityNames>,
}

impl Worker {
    fn new(shared: Arc<Shared>, pool: Rc<Pool>, index: usize) -> Worker {
        Worker {
            counters: RequestCounters::new(shared.metrics.clone(), shared.gate.router.len()),
            rotation: shared.upstreams.rotation(index),
            pool,
            identity: Rc::new(shared.gate.identity.clone()),
            shared,
        }
    }
}

/// A worker's handles of `portcullis_requests_total{route, status}` and
/// `portcullis_request_duration_seconds{route}`, looked up once per route and status class
/// rather than per request (a label lookup hashes the values under the vector's lock).
pub struct RequestCounters {
    metrics: Metrics,
    /// `portcullis_client_timeouts_total{phase="body"}`.
    body_timeouts: prometheus::IntCounter,
    /// Per route index, then one more for requests with no route.
    by_route: std::cell::RefCell<Vec<Option<RouteCounters>>>,
}

struct RouteCounters {
    duration: prometheus::Histogram,
    /// Per status class, in `status_class` order.
    classes: [Option<prometheus::IntCounter>; 6],
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

impl RequestCounters {
    pub fn new(metrics: Metrics, routes: usize) -> RequestCounters {
        RequestCounters {
            body_timeouts: metrics.client_timeouts.with_label_values(&["body"]),
            metrics,
            by_route: std::cell::RefCell::new((0..=routes).map(|_| None).collect()),
        }
    }

    /// Count one answered request.
    fn record(&self, route: Option<&Route>, status: u16, seconds: f64) {
        let name = route.map_or(NO_ROUTE, |r| r.name.as_str());
        let mut by_route = self.by_route.borrow_mut();
        let slot = route.map_or(by_route.len() - 1, |r| r.index);
        let counters = by_route[slot].get_or_insert_with(|| RouteCounters {
            duration: self.metrics.request_duration.with_label_values(&[name]),
            classes: Default::default(),
        });
        counters.duration.observe(seconds);
        let class = status_class(status);
        let i = CLASSES.iter().position(|c| *c == class).unwrap_or(5);
        counters.classes[i]
            .get_or_insert_with(|| self.metrics.requests.with_label_values(&[name, class]))
            .inc();
    }
}

/// One client connection, as its requests see it.
pub struct Conn {
    pub stream: Arc<ConnShared>,
    /// The peer's address, rendered once for `X-Forwarded-For`.
    pub client: headers::ClientAddr,
    /// The peer's address.
    pub ip: IpAddr,
    /// The connection came over TLS (`X-Forwarded-Proto: https`, a DPoP proof's `htu`).
    pub tls: bool,
    /// The client certificate it presented, verified: its SHA-256 thumbprint, base64url.
    pub client_cert: Option<Box<str>>,
    /// An HTTP/2 connection's open and cancelled streams; `None` on HTTP/1.1.
    pub streams: Option<super::h2::Streams>,
    /// The last token presented on the connection and its verified-token cache key.
    pub token_key: crate::auth::cache::KeyMemo,
}

impl Conn {
    pub fn new(stream: Arc<ConnShared>, client: IpAddr, tls: bool) -> Conn {
        Conn {
            stream,
            client: headers::ClientAddr::new(client),
            ip: client,
            tls,
            client_cert: None,
            streams: None,
            token_key: Default::default(),
        }
    }
}

/// The request target as received, for the gate: origin-form as it came; absolute-form
/// rebuilt from its parts (`http` keeps them as sent); `*` as `*`.
pub fn raw_target(uri: &Uri) -> std::borrow::Cow<'_, str> {
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => {
            let rest = uri.path_and_query().map_or("", |pq| pq.as_str());
            std::borrow::Cow::Owned(format!("{scheme}://{authority}{rest}"))
        }
        (None, Some(authority)) => std::borrow::Cow::Borrowed(authority.as_str()),
        _ => std::borrow::Cow::Borrowed(uri.path_and_query().map_or("/", |pq| pq.as_str())),
    }
}

/// What the request's end records.
struct Record {
    start: Instant,
    method: &'static str,
    route: Option<Arc<Route>>,
    upstream: Option<SocketAddr>,
    error: Rc<Cell<Option<UpstreamErrorKind>>>,
    /// The `X-Request-Id` forwarded (the client's, when it is short printable ASCII).
    request_id: Option<HeaderValue>,
    /// The W3C trace the request belongs to (`traceparent`), once its head was read.
    trace: Option<super::trace::Trace>,
    /// The identity-provider calls the request waited on, kept when its trace is exported.
    calls: Option<Arc<crate::spans::CallLog>>,
    /// The client's address (with `trust_forwarded_headers`, the one requests are counted by).
    client: Option<IpAddr>,
    /// The auth decision: an `outcome` label of `portcullis_auth_decisions_total`, `none` on a
    /// route that checks no token, `rate_limited`, or `-` when refused before.
    outcome: &'static str,
    /// Who the request acted for, once it passed.
    grant: Option<Grant>,
    /// `[log] log_subject`: the access line names the token's `sub`.
    log_subject: bool,
}

impl Record {
    fn new(method: &'static str) -> Record {
        Record {
            start: Instant::now(),
            method,
            route: None,
            upstream: None,
            error: Rc::default(),
            request_id: None,
            trace: None,
            calls: None,
            client: None,
            outcome: "-",
            grant: None,
            log_subject: false,
        }
    }
}

/// Serve one request. Never fails: every refusal and upstream failure is a response.
pub async fn serve(
    worker: Rc<Worker>,
    conn: Rc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, std::convert::Infallible> {
    conn.stream.head_read();
    let handed = conn.streams.as_ref().map(|s| s.begin());
    let mut pending = Abandoned {
        worker: worker.clone(),
        conn: conn.clone(),
        record: Some(Record {
            log_subject: worker.shared.settings.log_subject,
            ..Record::new(method_label(req.method()))
        }),
    };
    let record = pending.record.as_mut().expect("set above");
    let grpc = crate::response::is_grpc(req.headers());
    let response = match forward(&worker, &conn, req, record).await {
        Ok(response) => response,
        Err(synthetic) if grpc => synthetic.render_grpc(),
        Err(synthetic) => synthetic.render(),
    };
    // The answer is ready: from here on the response body's end records the request.
    let record = pending.record.take().expect("taken only here");
    let tunnel = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    // A gRPC refusal is sent as 200 and counted as what it stands for.
    let status = response
        .extensions()
        .get::<crate::response::Stands>()
        .map_or(response.status().as_u16(), |s| s.0);
    let finish = Finish::new(move || {
        if tunnel {
            conn.stream.upgraded();
        } else {
            conn.stream.request_done();
        }
        if let Some(streams) = &conn.streams {
            streams.end(false);
        }
        let seconds = record.start.elapsed().as_secs_f64();
        worker
            .counters
            .record(record.route.as_deref(), status, seconds);
        log_request(&worker.shared.metrics, &record, status, seconds);
        export_span(worker.shared.exporter.as_deref(), record, status, seconds);
    });
    Ok(response.map(|body| {
        let body = body.with_finish(finish);
        match handed {
            Some(handed) => body.with_handed(handed),
            None => body,
        }
    }))
}

/// The record of a request whose future hyper dropped before its answer was ready: the client
/// closed its connection. Counted and logged as 499, nginx's "client closed request", so that an
/// abandoned request is never invisible.
struct Abandoned {
    worker: Rc<Worker>,
    conn: Rc<Conn>,
    record: Option<Record>,
}

/// The status recorded for a request whose client went away before the answer.
const CLIENT_CLOSED: u16 = 499;

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            if let Some(streams) = &self.conn.streams {
                // An HTTP/2 client cancelled the stream (RST_STREAM), or the connection ended.
                streams.end(true);
            }
            let seconds = record.start.elapsed().as_secs_f64();
            self.worker
                .counters
                .record(record.route.as_deref(), CLIENT_CLOSED, seconds);
            log_request(&self.worker.shared.metrics, &record, CLIENT_CLOSED, seconds);
            let exporter = self.worker.shared.exporter.as_deref();
            export_span(exporter, record, CLIENT_CLOSED, seconds);
        }
    }
}

/// The access line, and the upstream error counter (rare: looked up when it happens).
fn log_request(metrics: &Metrics, record: &Record, status: u16, seconds: f64) {
    let route = record.route.as_ref().map_or(NO_ROUTE, |r| r.name.as_str());
    if let Some(kind) = record.error.get() {
        metrics
            .upstream_errors
            .with_label_values(&[route, kind.as_str()])
            .inc();
    }
    // tracing evaluates field values only when the line is written (the bench runs at warn):
    // the addresses are rendered inside the macros.
    let principal = record.grant.as_ref().map(|g| &*g.principal);
    let client_id = principal
        .and_then(|p| p.client_id.as_deref())
        .unwrap_or("-");
    let request_id = record
        .request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let text = |a: Option<String>| a.unwrap_or_else(|| "-".to_owned());
    let duration_ms = seconds * 1000.0;
    let (method, outcome) = (record.method, record.outcome);
    match principal.and_then(|p| p.subject.as_deref()) {
        Some(sub) if record.log_subject => tracing::info!(
            target: "portcullis::access",
            request_id, method, route, status, outcome, duration_ms,
            trace_id = text(record.trace.map(|t| t.trace_id_hex())),
            upstream = text(record.upstream.map(|a| a.to_string())),
            client = text(record.client.map(|a| a.to_string())),
            client_id, sub,
        ),
        _ => tracing::info!(
            target: "portcullis::access",
            request_id, method, route, status, outcome, duration_ms,
            trace_id = text(record.trace.map(|t| t.trace_id_hex())),
            upstream = text(record.upstream.map(|a| a.to_string())),
            client = text(record.client.map(|a| a.to_string())),
            client_id,
        ),
    }
}

/// The request's span, and the spans of the identity-provider calls it waited on, when its
/// trace is sampled and `[tracing]` exports.
fn export_span(exporter: Option<&Exporter>, record: Record, status: u16, seconds: f64) {
    let (Some(exporter), Some(trace)) = (exporter, record.trace) else {
        return;
    };
    if !trace.sampled {
        return;
    }
    let ended = SystemTime::now();
    let principal = record.grant.as_ref().map(|g| &*g.principal);
    let span = RequestSpan {
        trace,
        method: record.method,
        route: record.route.as_ref().map_or(NO_ROUTE, |r| r.name.as_str()),
        status,
        outcome: record.outcome,
        started: ended - Duration::from_secs_f64(seconds),
        ended,
        request_id: record.request_id.as_ref().and_then(|v| v.to_str().ok()),
        client: record.client,
        upstream: record.upstream,
        client_id: principal.and_then(|p| p.client_id.as_deref()),
    };
    let calls = record.calls.as_ref().map(|c| c.take()).unwrap_or_default();
    exporter.record(&span, calls);
}

/// A head refused by hyper's parser (see `parse_refusal` in the module above): counted under
/// no route, logged with no method (none was read).
pub fn log_refused_head(metrics: &Metrics, status: u16) {
    let record = Record::new("-");
    metrics
        .requests
        .with_label_values(&[NO_ROUTE, status_class(status)])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[NO_ROUTE])
        .observe(0.0);
    log_request(metrics, &record, status, 0.0);
}

/// An RFC 9728 document (§3.2): public JSON, cacheable, to `GET` and `HEAD` only.
fn resource_document(method: &Method, document: &bytes::Bytes) -> Synthetic {
    if *method == Method::GET || *method == Method::HEAD {
        Synthetic::json(200, document.clone()).public()
    } else {
        Synthetic::error(
            405,
            "method_not_allowed",
            "This document accepts GET and HEAD.",
        )
        .allow("GET, HEAD")
    }
}

async fn forward(
    worker: &Worker,
    conn: &Conn,
    req: Request<Incoming>,
    record: &mut Record,
) -> Result<Response<ResBody>, Synthetic> {
    let shared = &*worker.shared;
    let settings = &shared.settings;
    let (mut parts, body) = req.into_parts();
    let body_unread = !body.is_end_stream();
    // A request answered before its body was read is not kept: the unread bytes would be
    // read as the next head.
    let early = |s: Synthetic| if body_unread { s.closing() } else { s };
    if conn.streams.as_ref().is_some_and(|s| s.worker_full()) {
        // Before any other work: the stream would hold one more upstream connection.
        return Err(Synthetic::overloaded());
    }
    if parts.version == Version::HTTP_2 {
        if let Err(fault) = super::h2::request_head(&mut parts, body_unread) {
            return Err(Synthetic::error(
                fault.status,
                fault.error,
                fault.description,
            ));
        }
    }
    let head = match conn.streams {
        // An HTTP/2 head has no raw form to follow: h2 decoded it, and checked its framing
        // (RFC 9113 §8.1.1: a Content-Length that disagrees with the DATA is a stream error).
        Some(_) => Some(super::heads::Head::default()),
        None => conn.stream.next_head(),
    };
    let Some(head) = head else {
        // The connection's bytes could not be framed as the HTTP parser frames them, so no
        // head on it can be checked as it arrived: refused, and the connection closed.
        return Err(Synthetic::error(
            400,
            "bad_request",
            "The request's framing on this connection could not be followed.",
        )
        .closing());
    };
    record.request_id = Some(headers::set_request_id(&mut parts.headers));
    let exporter = shared.exporter.as_deref();
    let trace = super::trace::propagate(&mut parts.headers, headers::random_u64, |client, id| {
        match exporter {
            Some(e) => e.sample(client, id),
            // Nothing is recorded here: a client's flag passes through, a new trace is unsampled.
            None => client.unwrap_or(false),
        }
    });
    if trace.sampled && exporter.is_some() {
        let log = crate::spans::CallLog::new(trace.trace_id, headers::random_u64);
        record.calls = Some(Arc::new(log));
    }
    record.trace = Some(trace);
    record.client = Some(conn.ip);
    let notable = head.notable.map(|n| *n).unwrap_or_default();
    let target = raw_target(&parts.uri);
    let target_bytes = target.as_bytes();
    let length_beside_chunked = notable.length_beside_chunked;
    let length_lines = notable.length_lines;
    let raw_lengths = || {
        if length_beside_chunked {
            length_lines.max(1)
        } else {
            length_lines
        }
    };
    if let Some(r) = framing::check(&parts, target_bytes, raw_lengths, &settings.limits) {
        return Err(Synthetic::error(r.status, r.error, r.description).closing());
    }
    if let (Some(limit), Some(length)) = (settings.max_body_bytes, declared_length(&parts)) {
        if length > limit {
            return Err(Synthetic::body_too_large());
        }
    }
    if notable
        .fragment_line
        .is_some_and(|line| framing::target_lost_fragment(&line, target_bytes))
    {
        return Err(early(Synthetic::refusal(Refusal::Target(
            TargetFault::RawByte,
        ))));
    }
    if let Some(document) = shared.gate.resource_document(parts.uri.path()) {
        return Err(early(resource_document(&parts.method, document)));
    }
    let client = limit::client_address(&parts.headers, conn.ip, settings.trust_forwarded_headers);
    let pass = match shared
        .gate
        .check(
            &parts.method,
            target_bytes,
            &parts.headers,
            client,
            crate::gate::Via {
                forwarded: settings.trust_forwarded_headers,
                tls: conn.tls,
                client_cert: conn.client_cert.as_deref(),
                token_key: Some(&conn.token_key),
            },
            record.calls.clone().as_deref(),
        )
        .await
    {
        Ok(pass) => pass,
        Err(denied) => {
            match &denied {
                Denied::Challenged { route, challenge } => {
                    record.route = Some((*route).clone());
                    record.outcome = challenge.outcome;
                }
                Denied::Limited { route, .. } => {
                    record.route = Some((*route).clone());
                    record.outcome = "rate_limited";
                }
                Denied::Refused(_) => {}
            }
            return Err(early(Synthetic::denied(denied)));
        }
    };
    record.client = Some(client);
    record.outcome = if pass.grant.is_some() {
        "allowed"
    } else {
        "none"
    };
    let route = pass.route.clone();
    record.route = Some(route.clone());

    // The route was chosen on the canonical target: forward exactly that, in origin-form
    // (RFC 9112 §3.2.1), with an absolute-form target's authority as Host (§3.2.2).
    let rewrite = if pass.target.rewritten() || parts.uri.scheme().is_some() {
        match Uri::try_from(pass.target.origin_form()) {
            Ok(uri) => Some((
                uri,
                pass.target
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a).ok()),
            )),
            // A canonical target is a valid origin-form URI; a failure would be a gate bug,
            // and the request is refused rather than forwarded as received.
            Err(_) => {
                return Err(early(Synthetic::refusal(Refusal::Target(
                    TargetFault::Form,
                ))))
            }
        }
    } else {
        None
    };
    let grant = pass.grant;
    drop(target);
    if let Some((uri, authority)) = rewrite {
        parts.uri = uri;
        if let Some(host) = authority {
            parts.headers.insert(HOST, host);
        }
    }

    let map = &mut parts.headers;
    let http2 = route.upstream_protocol == UpstreamProtocol::Http2;
    let te_trailers = http2 && headers::accepts_trailers(map);
    // An HTTP/2 hop has no `Upgrade` (RFC 9113 §8.6): the request goes on without it, as a
    // server may ignore an upgrade (RFC 9110 §7.8).
    let websocket = headers::remove_hop_by_hop(map).filter(|_| !http2);
    if te_trailers {
        map.insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
    let strip = Strip {
        trusted: settings.trust_forwarded_headers,
        method_override: route.method_override,
        identity: &worker.identity,
    };
    headers::strip_client_headers(map, strip);
    if let Some(grant) = &grant {
        headers::set_identity_headers(map, grant);
    }
    if !route.forward_token {
        map.remove(http::header::AUTHORIZATION);
    }
    // The DPoP proof goes with the token it names, and only when it is the proof that was
    // checked: an unchecked one (beside a bearer token) never reaches the upstream.
    if !route.forward_token || !grant.as_ref().is_some_and(|g| g.dpop_checked) {
        map.remove(&DPOP);
    }
    // hyper frames the forwarded body itself, from the body it streams: one valid length or
    // chunked (RFC 9110 §8.6). `Expect` was answered here, on the client's hop.
    map.remove(CONTENT_LENGTH);
    map.remove(EXPECT);
    headers::set_forwarded_headers(
        map,
        &conn.client,
        settings.trust_forwarded_headers,
        conn.tls,
    );
    record.grant = grant;
    if let Some(upgrade) = &websocket {
        map.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        map.insert(http::header::UPGRADE, upgrade.clone());
    }
    parts.version = Version::HTTP_11;

    let client_upgrade = websocket
        .is_some()
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten();
    let body = ClientBody::new(
        body,
        settings.timeouts.body,
        settings.max_body_bytes,
        TrailerRule {
            trusted: strip.trusted,
            method_override: strip.method_override,
            identity: worker.identity.clone(),
        },
        worker.counters.body_timeouts.clone(),
    );
    let body_state = body.state();
    let head_only = parts.method == Method::HEAD;
    let upstream_req = Request::from_parts(parts, body);

    let (response, checkout) = match send(worker, &route, upstream_req, &body_state, record).await {
        Ok(sent) => sent,
        Err(kind) => {
            record.error.set(Some(kind));
            return Err(match body_state.fault.get() {
                Some(BodyFault::Timeout) => Synthetic::body_timeout(),
                Some(BodyFault::Malformed) => Synthetic::bad_body(),
                Some(BodyFault::TooLarge) => Synthetic::body_too_large(),
                None if kind == UpstreamErrorKind::Timeout => Synthetic::gateway_timeout(),
                None => Synthetic::bad_gateway(),
            });
        }
    };
    let (mut rparts, rbody) = response.into_parts();
    if rparts.status == StatusCode::SWITCHING_PROTOCOLS {
        // An upstream may switch protocols only when asked to (RFC 9110 §15.2.2).
        let (Some(client_upgrade), Some(upgrade)) = (client_upgrade, websocket) else {
            record.error.set(Some(UpstreamErrorKind::Protocol));
            return Err(Synthetic::bad_gateway());
        };
        let Some(upstream_upgrade) = rparts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            record.error.set(Some(UpstreamErrorKind::Protocol));
            return Err(Synthetic::bad_gateway());
        };
        drop(rbody);
        headers::remove_hop_by_hop(&mut rparts.headers);
        rparts.headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
        rparts.headers.insert(http::header::UPGRADE, upgrade);
        super::tunnel::spawn(client_upgrade, upstream_upgrade, checkout);
        return Ok(Response::from_parts(rparts, ResBody::empty()));
    }
    let bodiless = head_only
        || rparts.status == StatusCode::NO_CONTENT
        || rparts.status == StatusCode::NOT_MODIFIED;
    // After an answer without a body, bytes an upstream sends anyway would be read as the
    // answer to the next request on the connection (response queue poisoning): such a
    // connection is not pooled, whatever it announced.
    let checkout = (!bodiless).then_some(checkout);
    headers::remove_hop_by_hop(&mut rparts.headers);
    rparts.version = Version::HTTP_11;
    normalise_length(&mut rparts.headers, bodiless);
    let body = UpstreamBody::new(
        rbody,
        checkout,
        body_state,
        settings.read_timeout,
        record.error.clone(),
    );
    Ok(Response::from_parts(rparts, ResBody::upstream(body)))
}

/// An HTTP/2 hop names the host in `:authority`, not `Host` (RFC 9113 §8.3.1): the target
/// becomes `{scheme}://{Host}{path}`, from which h2 writes `:scheme` (`https` over TLS,
/// `http` otherwise), `:authority` and `:path`. `OPTIONS *` keeps its form (and `Host`).
fn to_authority(req: &mut Request<ClientBody>, tls: bool) {
    if req.uri().authority().is_some() || req.uri().path() == "*" {
        return;
    }
    let Some(host) = req.headers().get(HOST).and_then(|h| h.to_str().ok()) else {
        return;
    };
    let scheme = if tls { "https" } else { "http" };
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    if let Ok(uri) = Uri::try_from(format!("{scheme}://{host}{path}")) {
        *req.uri_mut() = uri;
        req.headers_mut().remove(HOST);
    }
}

/// The request's `Content-Length`, when it has one (framing checked it already).
fn declared_length(parts: &http::request::Parts) -> Option<u64> {
    parts
        .headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A response's `Content-Length`: hyper accepted it (one value, or a list of equal values);
/// pass one value on (RFC 9110 §8.6). On a body hyper frames itself, it goes: the length of
/// the streamed body decides. On a HEAD or 304 answer, which has no body, its value is kept.
fn normalise_length(map: &mut http::HeaderMap, bodiless: bool) {
    let Some(first) = map.remove(CONTENT_LENGTH) else {
        return;
    };
    if bodiless {
        let value = first
            .to_str()
            .ok()
            .and_then(|v| v.split(',').next())
            .and_then(|v| HeaderValue::try_from(v.trim_matches([' ', '\t'])).ok());
        if let Some(v) = value {
            map.insert(CONTENT_LENGTH, v);
        }
    }
}

/// A request's head kept beside it, to send it once more ([`send`]).
struct Again {
    /// The method is idempotent (RFC 9110 §9.2.2) and the route forwards no method override,
    /// which could make the upstream run another.
    idempotent: bool,
    method: Method,
    uri: Uri,
    version: Version,
    headers: http::HeaderMap,
    body: ClientBody,
}

impl Again {
    fn of(req: &Request<ClientBody>, body: ClientBody, route: &Route) -> Again {
        Again {
            idempotent: req.method().is_idempotent() && !route.method_override,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            headers: req.headers().clone(),
            body,
        }
    }

    fn request(self) -> Request<ClientBody> {
        let mut req = Request::new(self.body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// The HTTP/2 upstream did not process the stream, so sending it again cannot act twice:
/// it reset the stream with `REFUSED_STREAM`, which says no processing happened (RFC 9113
/// §8.7), for any request; or its `GOAWAY` ended the stream (§6.8), for an `idempotent` one
/// only. h2 gives the GOAWAY's error to the streams above its last processed one (those lost
/// as the connection then closes get a broken pipe), but that is h2's choice, not a promise;
/// a request that is safe to repeat stays safe if it ever changes. The answer is the reason,
/// as `portcullis_upstream_resends_total` counts it.
fn unprocessed(error: &hyper::Error, idempotent: bool) -> Option<ResendReason> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if !h2.is_remote() {
                return None;
            }
            if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Some(ResendReason::RefusedStream);
            }
            return (h2.is_go_away() && idempotent).then_some(ResendReason::GoAway);
        }
        next = e.source();
    }
    None
}

/// Send `req` to one of the route's upstreams: round-robin over the healthy ones, the next
/// one after a connect failure. A pooled connection that turns out closed before the request
/// went out is replaced by a new one to the same upstream. Once any of the request was sent,
/// only a bodiless request that an HTTP/2 upstream left unprocessed ([`unprocessed`]) is sent
/// again, once, to the same upstream: on the pool's open connection to it that has a free
/// stream (a refused stream leaves its connection open), else a new one; if that cannot be
/// made, the next upstream, as after any connect failure.
async fn send(
    worker: &Worker,
    route: &Route,
    mut req: Request<ClientBody>,
    body: &BodyState,
    record: &mut Record,
) -> Result<(Response<Incoming>, Checkout), UpstreamErrorKind> {
    let upstreams = &worker.shared.upstreams;
    let read_timeout = worker.shared.settings.read_timeout;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_error = UpstreamErrorKind::NoHealthyUpstream;
    let mut fresh: Option<&Member> = None;
    let mut replayed = false;
    // A resend's reason, until it is sent.
    let mut resend: Option<ResendReason> = None;
    let protocol = route.upstream_protocol;
    let tls = worker
        .shared
        .upstream_tls
        .get(route.index)
        .and_then(Option::as_ref);
    loop {
        let (member, new) = match fresh.take() {
            Some(member) => (member, true),
            None => {
                let Some(member) = upstreams.select(&worker.rotation, route.index, &tried) else {
                    return Err(last_error);
                };
                tried.push(member.backend.addr);
                (member, false)
            }
        };
        let addr = member.backend.addr;
        let target = Target {
            addr,
            protocol,
            tls,
            host: &member.host,
        };
        let made = match new {
            // Boxed, as in `Pool::checkout`: a new connection is the rare case.
            true => Box::pin(worker.pool.connect(target)).await,
            false => worker.pool.checkout(target).await,
        };
        record.upstream = Some(addr);
        // An HTTP/1.0 client may send no Host; the upstream hop is HTTP/1.1, which needs one.
        if !req.headers().contains_key(HOST) && req.uri().authority().is_none() {
            if let Ok(host) = HeaderValue::try_from(addr.to_string()) {
                req.headers_mut().insert(HOST, host);
            }
        }
        if protocol == UpstreamProtocol::Http2 {
            to_authority(&mut req, tls.is_some());
        }
        let mut checkout = match made {
            Ok(checkout) => checkout,
            Err(e) => {
                last_error = match e {
                    ConnectError::Timeout => UpstreamErrorKind::Timeout,
                    ConnectError::Tls(_) => UpstreamErrorKind::Tls,
                    ConnectError::Refused(_) | ConnectError::Handshake(_) => {
                        UpstreamErrorKind::Connect
                    }
                };
                continue;
            }
        };
        if let Err(e) = checkout.sender.ready().await {
            if checkout.reused {
                fresh = Some(member);
            } else if let Some(cause) = tls.and(upstream_tls::failure(&e)) {
                tracing::warn!(
                    upstream = %addr,
                    error = %Untrusted(cause),
                    "TLS with an upstream failed after the handshake"
                );
                last_error = UpstreamErrorKind::Tls;
            } else {
                last_error = UpstreamErrorKind::Connect;
            }
            continue;
        }
        // `read_timeout` counts from the end of the request body: a slow upload is bounded by
        // `client_body_timeout` per read, not by the upstream's answer time. Until then it
        // bounds each wait for the upstream to take more of the body the client has ready.
        let progress = checkout.progress();
        // What sending the request once more takes, kept while an HTTP/2 upstream might refuse
        // the stream unprocessed: the head, and a bodiless request's (empty) body.
        let again = match protocol == UpstreamProtocol::Http2 && !replayed {
            true => req
                .body()
                .again()
                .map(|empty| Again::of(&req, empty, route)),
            false => None,
        };
        // Counted as it goes out: a resend whose new connection fails and finds no other
        // upstream never happened.
        if let Some(reason) = resend.take() {
            worker
                .shared
                .metrics
                .upstream_resends
                .with_label_values(&[route.name.as_str(), reason.as_str()])
                .inc();
        }
        let answered = checkout.sender.try_send_request(req);
        let waited = async {
            tokio::select! {
                () = async {
                    body.finished().await;
                    tokio::time::sleep(read_timeout).await;
                } => {}
                () = body.upstream_stalled(read_timeout) => {}
            }
        };
        let sent = tokio::select! {
            biased;
            sent = answered => Ok(sent),
            () = waited => Err(()),
        };
        match sent {
            Ok(Ok(response)) => {
                checkout.answered();
                return Ok((response, checkout));
            }
            Ok(Err(mut e)) => match e.take_message() {
                Some(back) => {
                    req = back;
                    if checkout.reused {
                        fresh = Some(member);
                    } else {
                        last_error = UpstreamErrorKind::Connect;
                    }
                }
                None => {
                    let unsent = again.and_then(|a| {
                        unprocessed(e.error(), a.idempotent).map(|reason| (a, reason))
                    });
                    if let Some((again, reason)) = unsent {
                        tracing::debug!(upstream = %addr, reason = reason.as_str(), "HTTP/2 upstream left the stream unprocessed; sending it again");
                        resend = Some(reason);
                        req = again.request();
                        replayed = true;
                        fresh = Some(member);
                        continue;
                    }
                    let tls_failure = tls.and(upstream_tls::failure(e.error()));
                    let Some(cause) = tls_failure else {
                        return Err(UpstreamErrorKind::Protocol);
                    };
                    tracing::warn!(
                        upstream = %addr,
                        error = %Untrusted(cause),
                        "TLS with an upstream failed after the handshake"
                    );
                    return Err(UpstreamErrorKind::Tls);
                }
            },
            Err(_elapsed) => {
                checkout.stalled(progress);
                return Err(UpstreamErrorKind::Timeout);
            }
        }
    }
}
