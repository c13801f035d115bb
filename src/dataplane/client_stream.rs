//! The client connection's own deadlines, kept on the socket itself, the way nginx's
//! `client_header_timeout`, `keepalive_timeout` and `send_timeout` are.
//!
//! hyper's `header_read_timeout` starts when it begins waiting for a head, so on a kept-alive
//! connection it would count the idle wait too, and it closes without an answer. [`ClientStream`]
//! keeps the deadlines the gateway documents instead:
//!
//! - **Request head**: the head must be complete within `client_header_timeout`, counted from
//!   the accept for a connection's first request and from the first byte of each later one. A
//!   client that misses it gets a best-effort `408 Request Timeout` with `Connection: close`
//!   (RFC 9110 §15.5.9), sent only when some of the head had arrived, and the connection is
//!   closed. The service marks the head as read ([`ConnShared::head_read`]) and the response's
//!   end marks the request as done ([`ConnShared::request_done`]).
//! - **Idle**: between requests, a connection that sends nothing for `keepalive_timeout` is
//!   closed without an answer.
//! - **Request body**: each body read's deadline is the body's own (`client_body_timeout`, in
//!   [`super::body`]); reads pass through here.
//! - **Upgraded connections** (WebSocket tunnels): a read that waits longer than
//!   `client_body_timeout` fails, and the tunnel closes.
//! - **Sending**: a write that makes no progress for `send_timeout` (the client is not reading)
//!   fails, and the connection is closed.
//!
//! The same wrapper hands every byte it reads to the connection's [`HeadTracker`], which finds
//! each head as it arrived ([`ConnShared::next_head`], [`super::heads`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::heads::{Head, HeadTracker};
use super::stall::WriteStall;

/// The client-facing timeouts, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct ClientTimeouts {
    /// `client_header_timeout`: the whole request head.
    pub header: Duration,
    /// `client_body_timeout`: each read of a request body or of an upgraded connection.
    pub body: Duration,
    /// `send_timeout`: a write waiting on a client that does not read.
    pub send: Duration,
    /// `keepalive_timeout`: the wait for the next request on a kept-alive connection.
    pub keepalive: Duration,
}

/// Reading a request head: its deadline is armed.
const HEAD: u8 = 0;
/// The head was read; the body's own timeouts apply.
const BODY: u8 = 1;
/// Between requests: the deadline arms at the next request's first byte.
const IDLE: u8 = 2;
/// An upgraded connection (a WebSocket tunnel): each read waits at most `client_body_timeout`.
const TUNNEL: u8 = 3;
/// An HTTP/2 connection: its streams interleave, so reads carry no head or idle deadline here
/// (the connection's own watch keeps them, [`super::h2::Streams`]) and no head is tracked.
const MULTIPLEXED: u8 = 4;

/// Sent, without waiting, to a client whose request head missed its deadline.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// What the connection's service and its [`ClientStream`] share.
#[derive(Debug, Default)]
pub struct ConnShared {
    phase: AtomicU8,
    /// Every head of the connection as it arrived ([`super::heads`]).
    tracker: Mutex<HeadTracker>,
}

impl ConnShared {
    /// The request head has been read: stop its deadline.
    pub fn head_read(&self) {
        self.set_phase(BODY);
    }

    /// The response is complete: the next bytes on this connection start a new head.
    pub fn request_done(&self) {
        self.set_phase(IDLE);
    }

    /// The connection was upgraded: from now on it carries a tunnel's bytes.
    pub fn upgraded(&self) {
        self.set_phase(TUNNEL);
    }

    /// A connection's phase, except that an HTTP/2 connection's stays what it is: one stream's
    /// head or end says nothing of the others.
    fn set_phase(&self, phase: u8) {
        if self.phase.load(Ordering::Relaxed) != MULTIPLEXED {
            self.phase.store(phase, Ordering::Relaxed);
        }
    }

    /// The head of the request hyper parsed next, as it arrived; `None` when the connection's
    /// framing could not be followed (the request is then refused).
    pub fn next_head(&self) -> Option<Head> {
        self.tracker.lock().ok()?.next_head()
    }

    fn feed(&self, bytes: &[u8]) {
        if let Ok(mut tracker) = self.tracker.lock() {
            tracker.feed(bytes);
        }
    }
}

/// A client connection with the deadlines described in the [module docs](self).
pub struct ClientStream<S> {
    /// The socket; its writes carry `send_timeout`.
    inner: WriteStall<S>,
    shared: Arc<ConnShared>,
    head_deadline: Option<Instant>,
    /// Bytes of the current head have arrived (only then is a 408 worth sending).
    head_started: bool,
    /// When the connection was first seen idle.
    idle_since: Option<Instant>,
    expired: bool,
    timeouts: ClientTimeouts,
    timer: Option<Pin<Box<Sleep>>>,
    header_expired: IntCounter,
}

/// The counters of expired deadlines (`portcullis_client_timeouts_total{phase}`).
#[derive(Clone)]
pub struct Expired {
    pub header: IntCounter,
    pub send: IntCounter,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientStream<S> {
    /// Wrap an accepted connection; its first head's deadline starts now.
    pub fn new(inner: S, timeouts: ClientTimeouts, expired: &Expired) -> ClientStream<S> {
        ClientStream {
            inner: WriteStall::new(inner, timeouts.send, Some(expired.send.clone())),
            shared: Arc::default(),
            head_deadline: Some(Instant::now() + timeouts.header),
            head_started: false,
            idle_since: None,
            expired: false,
            timeouts,
            timer: None,
            header_expired: expired.header.clone(),
        }
    }

    /// The first head's deadline counts from `accepted` (when the first bytes were read before
    /// the stream was wrapped, to tell the protocol).
    pub fn accepted_at(mut self, accepted: Instant) -> ClientStream<S> {
        if self.head_deadline.is_some() {
            self.head_deadline = Some(accepted + self.timeouts.header);
        }
        self
    }

    /// Wrap an accepted HTTP/2 connection: reads pass through (see [`MULTIPLEXED`]); writes
    /// keep `send_timeout`.
    pub fn multiplexed(inner: S, timeouts: ClientTimeouts, expired: &Expired) -> ClientStream<S> {
        let stream = ClientStream {
            head_deadline: None,
            ..ClientStream::new(inner, timeouts, expired)
        };
        stream.shared.phase.store(MULTIPLEXED, Ordering::Relaxed);
        stream
    }

    /// The state the connection's service marks.
    pub fn shared(&self) -> Arc<ConnShared> {
        self.shared.clone()
    }

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

    /// New bytes of a head arrived.
    fn head_bytes(&mut self, phase: u8, bytes: &[u8]) {
        self.head_started = true;
        if phase == IDLE {
            // A new head: its deadline starts now.
            self.idle_since = None;
            self.head_deadline = Some(Instant::now() + self.timeouts.header);
            self.shared.phase.store(HEAD, Ordering::Relaxed);
        }
        self.shared.feed(bytes);
    }
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

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let phase = this.shared.phase.load(Ordering::Relaxed);
        if phase == MULTIPLEXED {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if phase == BODY {
            this.idle_since = None;
            let before = buf.filled().len();
            let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
            if buf.filled().len() > before {
                this.shared.feed(&buf.filled()[before..]);
            }
            return polled;
        }
        if phase == TUNNEL {
            let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
            if polled.is_pending() {
                let since = *this.idle_since.get_or_insert_with(Instant::now);
                if timer_fired(&mut this.timer, since + this.timeouts.body, cx) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "tunnel idle longer than client_body_timeout",
                    )));
                }
            } else {
                this.idle_since = None;
            }
            return polled;
        }
        let late = phase == HEAD && this.head_deadline.is_some_and(|d| Instant::now() >= d);
        if this.expired || late {
            return this.expire_head(cx);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.head_bytes(phase, &buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Pending if phase == HEAD => match this.head_deadline {
                Some(deadline) if timer_fired(&mut this.timer, deadline, cx) => {
                    this.expire_head(cx)
                }
                _ => Poll::Pending,
            },
            Poll::Pending => {
                let since = *this.idle_since.get_or_insert_with(Instant::now);
                if timer_fired(&mut this.timer, since + this.timeouts.keepalive, cx) {
                    // Idle too long: end the connection as if the client had closed it.
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
