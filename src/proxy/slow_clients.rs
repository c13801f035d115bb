//! Slow clients: a deadline for the whole request head and a send timeout, kept on the client
//! connection itself.
//!
//! pingora 0.9 times each read of a request head on its own (60 s), so a client that sends one
//! byte a minute (slowloris) could hold a connection as long as it liked, and it puts no timeout
//! on writing a response head to a client that stopped reading. [`Guarded`] wraps every accepted
//! connection in a [`ClientStream`] that adds what is missing, the way nginx's
//! `client_header_timeout` and `send_timeout` do:
//!
//! - **Request head**: the head must be complete within `client_header_timeout`, counted from the
//!   accept for a connection's first request and from the first byte of each later one (the
//!   idle wait between requests is pingora's keep-alive timeout). A client that misses it gets a
//!   best-effort `408 Request Timeout` with `Connection: close` (RFC 9110 §15.5.9) and the
//!   connection is closed. The proxy's `request_filter` marks the head as read
//!   ([`head_read`]) and its `logging` hook marks the request as done ([`request_done`]).
//! - **Request body**: pingora's per-read timeout, set from `client_body_timeout` by
//!   [`head_read`].
//! - **Sending**: a write that makes no progress for `send_timeout` (the client is not reading)
//!   fails, and the connection is closed.
//!
//! The same wrapper keeps each head's first line as it arrived ([`request_line`]): pingora
//! rewrites a request line its parser rejects, and only the original bytes show that.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use crate::metrics::Metrics;

/// The client-facing timeouts, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// `client_header_timeout`: the whole request head.
    pub header: Duration,
    /// `client_body_timeout`: each read of a request body.
    pub body: Duration,
    /// `send_timeout`: a write waiting on a client that does not read.
    pub send: Duration,
}

/// A [`ServerApp`] that hands `app` every connection wrapped in a [`ClientStream`].
pub struct Guarded<A> {
    app: Arc<A>,
    timeouts: ClientTimeouts,
    header_expired: IntCounter,
    send_expired: IntCounter,
}

impl<A> Guarded<A> {
    pub fn new(app: A, timeouts: ClientTimeouts, metrics: &Metrics) -> Self {
        Guarded {
            app: Arc::new(app),
            timeouts,
            header_expired: metrics.client_timeouts.with_label_values(&["header"]),
            send_expired: metrics.client_timeouts.with_label_values(&["send"]),
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream = ClientStream {
            inner: stream,
            phase: AtomicU8::new(HEAD),
            head_deadline: Some(Instant::now() + self.timeouts.header),
            head_started: false,
            request_line: RequestLine::default(),
            expired: false,
            timeouts: self.timeouts,
            head_timer: None,
            send_deadline: None,
            send_timer: None,
            header_expired: self.header_expired.clone(),
            send_expired: self.send_expired.clone(),
        };
        self.app.process_new(Box::new(stream), shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

/// Reading a request head: `head_deadline` is armed.
const HEAD: u8 = 0;
/// The head was read; pingora's own timeouts apply to the body.
const BODY: u8 = 1;
/// Between requests: the deadline arms at the next request's first byte.
const IDLE: u8 = 2;

/// Sent, without waiting, to a client whose request head missed its deadline.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// A client connection with the deadlines described in the [module docs](self).
pub struct ClientStream {
    inner: Stream,
    /// [`HEAD`], [`BODY`] or [`IDLE`]; the proxy's hooks move it through a shared reference.
    phase: AtomicU8,
    head_deadline: Option<Instant>,
    /// Bytes of the current head have arrived (only then is a 408 worth sending).
    head_started: bool,
    /// The current head's first line as it arrived, for [`request_line`].
    request_line: RequestLine,
    expired: bool,
    timeouts: ClientTimeouts,
    head_timer: Option<Pin<Box<Sleep>>>,
    /// Set while a write is waiting on the client.
    send_deadline: Option<Instant>,
    send_timer: Option<Pin<Box<Sleep>>>,
    header_expired: IntCounter,
    send_expired: IntCounter,
}

impl fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .field("head_deadline", &self.head_deadline)
            .finish_non_exhaustive()
    }
}

/// The request head has been read: stop its deadline and apply `client_body_timeout` to the
/// body. Called first thing in `request_filter`.
pub fn head_read(session: &mut Session, timeouts: &ClientTimeouts) {
    session.set_read_timeout(Some(timeouts.body));
    if let Some(stream) = client_stream(session) {
        stream.phase.store(BODY, Ordering::Relaxed);
    }
}

/// The request is answered: the next bytes on this connection start a new head.
pub fn request_done(session: &Session) {
    if let Some(stream) = client_stream(session) {
        stream.phase.store(IDLE, Ordering::Relaxed);
    }
}

/// The current request's first line exactly as the client sent it, when this connection saw
/// it whole (up to [`MAX_REQUEST_LINE`] bytes). pingora percent-encodes a space or control
/// byte in the request target before its parser runs again, so only these bytes tell whether
/// the client sent one raw (RFC 9112 §3.2: such a request is refused, never corrected).
pub fn request_line(session: &Session) -> Option<&[u8]> {
    let line = &client_stream(session)?.request_line;
    line.complete.then_some(line.bytes.as_slice())
}

/// The longest request line [`request_line`] keeps: the largest `max_uri_bytes` (1 MiB), a
/// method and the version.
pub const MAX_REQUEST_LINE: usize = (1 << 20) + 64;

/// The first line of a request head, collected as it is read.
#[derive(Debug, Default)]
struct RequestLine {
    bytes: Vec<u8>,
    /// The line's `\n` was seen within [`MAX_REQUEST_LINE`] bytes.
    complete: bool,
    /// Longer than [`MAX_REQUEST_LINE`]: given up.
    abandoned: bool,
}

impl RequestLine {
    /// For the next head; an ordinary buffer is kept (one allocation per connection, not per
    /// request), one grown past 8 KiB by a long line is let go.
    fn reset(&mut self) {
        if self.bytes.capacity() > 8 * 1024 {
            self.bytes = Vec::new();
        }
        self.bytes.clear();
        self.complete = false;
        self.abandoned = false;
    }

    fn collect(&mut self, read: &[u8]) {
        if self.complete || self.abandoned {
            return;
        }
        let end = read.iter().position(|&b| b == b'\n');
        let take = end.map_or(read.len(), |i| i + 1);
        if self.bytes.len() + take > MAX_REQUEST_LINE {
            self.abandoned = true;
            self.bytes = Vec::new();
            return;
        }
        self.bytes.extend_from_slice(&read[..take]);
        self.complete = end.is_some();
    }
}

fn client_stream(session: &Session) -> Option<&ClientStream> {
    let stream: &Stream = session.as_downstream().stream()?;
    // Through the trait object, so the concrete type is asked, not the Box.
    let io: &dyn pingora::protocols::IO = &**stream;
    io.as_any().downcast_ref()
}

/// Poll a lazily made timer set to `deadline`; ready once the deadline has passed.
fn timer_fired(timer: &mut Option<Pin<Box<Sleep>>>, deadline: Instant, cx: &mut Context) -> bool {
    let deadline = tokio::time::Instant::from_std(deadline);
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    if timer.deadline() != deadline {
        timer.as_mut().reset(deadline);
    }
    timer.as_mut().poll(cx).is_ready()
}

impl ClientStream {
    fn expire_head(&mut self, cx: &mut Context) -> Poll<io::Result<()>> {
        if !self.expired {
            self.expired = true;
            self.header_expired.inc();
            if self.head_started {
                // Best effort, never waited for: a merely slow client learns why.
                let _ = Pin::new(&mut self.inner).poll_write(cx, REQUEST_TIMEOUT);
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request head not complete within client_header_timeout",
        )))
    }

    /// A write is waiting on the client: fail it once it has waited `send_timeout`.
    fn send_stalled<T>(&mut self, cx: &mut Context) -> Poll<io::Result<T>> {
        let deadline = *self
            .send_deadline
            .get_or_insert_with(|| Instant::now() + self.timeouts.send);
        if timer_fired(&mut self.send_timer, deadline, cx) {
            self.send_expired.inc();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client did not read within send_timeout",
            )));
        }
        Poll::Pending
    }

    fn sent<T>(&mut self, result: Poll<io::Result<T>>, cx: &mut Context) -> Poll<io::Result<T>> {
        match result {
            Poll::Pending => self.send_stalled(cx),
            ready => {
                self.send_deadline = None;
                ready
            }
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let phase = this.phase.load(Ordering::Relaxed);
        if phase == BODY {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let late = phase == HEAD && this.head_deadline.is_some_and(|d| Instant::now() >= d);
        if this.expired || late {
            return this.expire_head(cx);
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        match result {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.head_started = true;
                if phase == IDLE {
                    // A new head: its first line starts with these bytes.
                    this.request_line.reset();
                }
                this.request_line.collect(&buf.filled()[before..]);
                if phase == IDLE {
                    this.head_deadline = Some(Instant::now() + this.timeouts.header);
                    this.phase.store(HEAD, Ordering::Relaxed);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match this.head_deadline {
                Some(deadline)
                    if phase == HEAD && timer_fired(&mut this.head_timer, deadline, cx) =>
                {
                    this.expire_head(cx)
                }
                _ => Poll::Pending,
            },
            other => other,
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.sent(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.sent(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.sent(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.sent(result, cx)
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        // pingora's shutdown flushes first, which waits on a client that does not read.
        let _ = tokio::time::timeout(self.timeouts.send, self.inner.shutdown()).await;
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for ClientStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}
