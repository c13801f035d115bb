//! The bodies the data plane streams, never buffers: [`ClientBody`] (a request body on its way
//! to the upstream) and [`ResBody`] (every response to the client, the upstream's or the
//! gateway's own). [`ResBody`] carries the request's [`Finish`], which records it once the
//! response is done (or abandoned).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

use super::pool::Checkout;
use crate::gate::headers::{self as gate_headers, IdentityNames, Strip};

/// A boxed error, as hyper wants from a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request body stopped: the answer is the client's fault, not the upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// No bytes for `client_body_timeout`: 408.
    Timeout,
    /// Bad chunked framing, or the client went away: 400.
    Malformed,
    /// More than `max_body_bytes`: 413.
    TooLarge,
}

/// A deadline that is armed while a body waits and disarmed by every frame.
#[derive(Default)]
struct Stall {
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    /// The body is waiting: true once it has waited `limit`.
    fn expired(&mut self, limit: Duration, cx: &mut Context<'_>) -> bool {
        let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + limit);
        let at = tokio::time::Instant::from_std(deadline);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        timer.as_mut().poll(cx).is_ready()
    }

    fn progressed(&mut self) {
        self.deadline = None;
    }
}

/// A client's request body, forwarded frame by frame: each wait for the client is bounded by
/// `client_body_timeout`, the total by `max_body_bytes`, and trailer fields the client may not
/// choose are dropped. Why it stopped, if it did, is kept in `fault` for the answer.
pub struct ClientBody {
    /// `None`: a bodiless request's body, made again to send the request once more.
    inner: Option<Incoming>,
    timeout: Duration,
    stall: Stall,
    limit: Option<u64>,
    seen: u64,
    strip: TrailerRule,
    state: Rc<BodyState>,
    timeouts: prometheus::IntCounter,
}

/// What a [`ClientBody`] tells the request that forwards it.
#[derive(Default)]
pub struct BodyState {
    /// Why the body stopped, if it did.
    pub fault: Cell<Option<BodyFault>>,
    /// The body has been read to its end (and so sent, up to the socket).
    done: Cell<bool>,
    finished: tokio::sync::Notify,
    /// The last read found the client had sent nothing more yet: the wait is the client's.
    on_client: Cell<bool>,
    /// Told at every read of the body.
    read: tokio::sync::Notify,
}

impl BodyState {
    /// Wait until the body has been read to its end; at once for a body that had ended.
    pub async fn finished(&self) {
        if !self.done.get() {
            self.finished.notified().await;
        }
    }

    /// The body has been read to its end.
    pub fn is_done(&self) -> bool {
        self.done.get()
    }

    /// Return when the upstream's side has not read the body for `limit` while the client
    /// had more of it ready (or before the first read): the upstream does not take the
    /// request, e.g. an HTTP/2 stream that never opens because the upstream's connection
    /// allows no more, or a flow-control window it never opens. Waits on the client's pace
    /// do not count (they are bounded by `client_body_timeout`); never returns once the body
    /// is read whole.
    pub async fn upstream_stalled(&self, limit: Duration) {
        loop {
            let read = self.read.notified();
            if self.done.get() {
                return std::future::pending().await;
            }
            if self.on_client.get() {
                read.await;
            } else if tokio::time::timeout(limit, read).await.is_err() {
                return;
            }
        }
    }

    fn finish(&self) {
        if !self.done.replace(true) {
            self.finished.notify_one();
        }
    }
}

/// What [`keep_trailers`] needs: the request's [`Strip`], owned by the body.
#[derive(Clone)]
pub struct TrailerRule {
    pub trusted: bool,
    pub method_override: bool,
    /// The worker's copy of the gate's names (an `Rc`: no atomic per request).
    pub identity: Rc<IdentityNames>,
}

impl ClientBody {
    pub fn new(
        inner: Incoming,
        timeout: Duration,
        limit: Option<u64>,
        strip: TrailerRule,
        timeouts: prometheus::IntCounter,
    ) -> ClientBody {
        ClientBody {
            inner: Some(inner),
            timeout,
            stall: Stall::default(),
            limit,
            seen: 0,
            strip,
            state: Rc::default(),
            timeouts,
        }
        .ended_if_empty()
    }

    fn ended_if_empty(self) -> ClientBody {
        if self.is_end_stream() {
            self.state.finish();
        }
        self
    }

    /// The same body again, for a request sent once more: only a bodiless request's, which
    /// has nothing to replay (`None` for any other).
    pub fn again(&self) -> Option<ClientBody> {
        (self.seen == 0 && self.is_end_stream()).then(|| ClientBody {
            inner: None,
            timeout: self.timeout,
            stall: Stall::default(),
            limit: self.limit,
            seen: 0,
            strip: self.strip.clone(),
            state: self.state.clone(),
            timeouts: self.timeouts.clone(),
        })
    }

    /// Where the body's fault and end are recorded.
    pub fn state(&self) -> Rc<BodyState> {
        self.state.clone()
    }

    fn fail(
        &mut self,
        fault: BodyFault,
        why: &'static str,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.state.fault.set(Some(fault));
        Poll::Ready(Some(Err(why.into())))
    }
}

/// Trailer fields never forwarded: framing, routing and identity fields, every field the
/// client may not choose in the head ([`gate_headers::unwanted`]), and the fields the gateway
/// sets in the head itself (`X-Forwarded-*`, `X-Request-Id`, `traceparent`, `tracestate`). Frameworks that merge trailers
/// into the headers (Apache's `MergeTrailers`) would otherwise read them as the client's
/// choice.
fn keep_trailers(trailers: &mut HeaderMap, rule: &TrailerRule) {
    let strip = Strip {
        trusted: rule.trusted,
        method_override: rule.method_override,
        identity: &rule.identity,
    };
    let drop: Vec<_> = trailers
        .keys()
        .filter(|name| {
            let n = name.as_str();
            gate_headers::unwanted(n, strip)
                || matches!(
                    n,
                    "authorization"
                        | "host"
                        | "content-length"
                        | "transfer-encoding"
                        | "te"
                        | "trailer"
                        | "connection"
                        | "cookie"
                        | "dpop"
                        | "forwarded"
                        | "x-request-id"
                        | "expect"
                        | "upgrade"
                        | "keep-alive"
                        | "proxy-connection"
                        | "proxy-authorization"
                        | "proxy-authenticate"
                        | "http2-settings"
                        | "traceparent"
                        | "tracestate"
                )
                || n.starts_with("x-forwarded-")
        })
        .cloned()
        .collect();
    for name in drop {
        trailers.remove(&name);
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        this.state.read.notify_waiters();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        this.state.on_client.set(polled.is_pending());
        match polled {
            Poll::Pending => {
                if this.stall.expired(this.timeout, cx) {
                    this.timeouts.inc();
                    return this.fail(BodyFault::Timeout, "client_body_timeout");
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.progressed();
                let frame = match frame.into_data() {
                    Ok(data) => {
                        this.seen += data.len() as u64;
                        if this.limit.is_some_and(|limit| this.seen > limit) {
                            return this.fail(BodyFault::TooLarge, "max_body_bytes");
                        }
                        if this.is_end_stream() {
                            this.state.finish();
                        }
                        Frame::data(data)
                    }
                    Err(frame) => match frame.into_trailers() {
                        Ok(mut trailers) => {
                            keep_trailers(&mut trailers, &this.strip);
                            this.state.finish();
                            Frame::trailers(trailers)
                        }
                        Err(_) => {
                            // Neither data nor trailers: skipped.
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    },
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => this.fail(BodyFault::Malformed, "request body"),
            Poll::Ready(None) => {
                this.state.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// An upstream's response body, streamed to the client. Each wait for the upstream is bounded by
/// `read_timeout`. Its connection goes back to the worker's pool on the body's last frame, when
/// the request's body has been sent whole too; it is dropped (closed) if either body failed,
/// was abandoned, or the request's was still arriving (an upstream that answered early would
/// otherwise be handed to another request while this one's body, or what the client sends as
/// its body, still follows on the connection).
pub struct UpstreamBody {
    inner: Incoming,
    checkout: Option<Checkout>,
    request: Rc<BodyState>,
    timeout: Duration,
    stall: Stall,
    /// Set when the upstream broke off the body or stalled: counted by [`Finish`].
    broken: Rc<Cell<Option<crate::metrics::UpstreamErrorKind>>>,
}

impl UpstreamBody {
    pub fn new(
        inner: Incoming,
        checkout: Option<Checkout>,
        request: Rc<BodyState>,
        timeout: Duration,
        broken: Rc<Cell<Option<crate::metrics::UpstreamErrorKind>>>,
    ) -> UpstreamBody {
        let mut body = UpstreamBody {
            inner,
            checkout,
            request,
            timeout,
            stall: Stall::default(),
            broken,
        };
        body.release_if_done();
        body
    }

    fn release_if_done(&mut self) {
        if self.inner.is_end_stream() {
            self.release();
        }
    }

    /// The response has ended: pool the connection if the request's body has too.
    fn release(&mut self) {
        if let Some(checkout) = self.checkout.take() {
            if self.request.is_done() && self.request.fault.get().is_none() {
                checkout.release();
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use crate::metrics::UpstreamErrorKind;
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                if this.stall.expired(this.timeout, cx) {
                    this.checkout = None;
                    this.broken.set(Some(UpstreamErrorKind::Timeout));
                    return Poll::Ready(Some(Err("upstream read_timeout".into())));
                }
                Poll::Pending
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.stall.progressed();
                this.release_if_done();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.checkout = None;
                this.broken.set(Some(UpstreamErrorKind::Protocol));
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a response's end records: a boxed callback, run once when the body is done or dropped.
pub struct Finish(Option<Box<dyn FnOnce()>>);

impl Finish {
    pub fn new(done: impl FnOnce() + 'static) -> Finish {
        Finish(Some(Box::new(done)))
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done();
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

/// Every response body the data plane sends.
pub struct ResBody {
    kind: Kind,
    finish: Option<Finish>,
    /// On HTTP/2: when this body last waited for hyper to ask for more ([`super::h2::Handed`]).
    handed: Option<super::h2::Handed>,
}

impl ResBody {
    pub fn full(bytes: Bytes) -> ResBody {
        ResBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            finish: None,
            handed: None,
        }
    }

    pub fn empty() -> ResBody {
        ResBody::full(Bytes::new())
    }

    pub fn upstream(body: UpstreamBody) -> ResBody {
        ResBody {
            kind: Kind::Upstream(body),
            finish: None,
            handed: None,
        }
    }

    /// On HTTP/2: mark `handed` now (the response head goes to hyper) and at each frame, and
    /// clear it whenever hyper asks for the next one.
    pub fn with_handed(mut self, handed: super::h2::Handed) -> ResBody {
        handed.set(Some(tokio::time::Instant::now()));
        self.handed = Some(handed);
        self
    }

    /// Run `finish` when this body is done or dropped.
    pub fn with_finish(mut self, finish: Finish) -> ResBody {
        self.finish = Some(finish);
        self
    }
}

impl From<Bytes> for ResBody {
    fn from(bytes: Bytes) -> ResBody {
        ResBody::full(bytes)
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(handed) = &this.handed {
            handed.set(None);
        }
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
        };
        if let (Some(handed), Poll::Ready(Some(Ok(_)))) = (&this.handed, &polled) {
            handed.set(Some(tokio::time::Instant::now()));
        }
        if let Poll::Ready(None | Some(Err(_))) = polled {
            this.finish = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(body) => body.size_hint(),
        }
    }
}
