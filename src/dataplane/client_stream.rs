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
//! The same wrapper keeps each head as it arrived and reports what its parsed form lost
//! ([`ConnShared::notable`]): the `http` crate drops a fragment from the target it parses, and
//! hyper drops a `Content-Length` that comes with `Transfer-Encoding` and keeps one of several
//! equal `Content-Length` lines. All are refused (RFC 9112 §3.2, §6.1, RFC 9110 §8.6), not
//! corrected.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

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

/// Sent, without waiting, to a client whose request head missed its deadline.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// The largest head kept for [`ConnShared::notable`]: the largest `max_uri_bytes` and
/// `max_header_bytes` (1 MiB each) and a little more; a larger one is refused by the parser.
pub const MAX_HEAD: usize = (2 << 20) + 4096;

/// What the connection's service and its [`ClientStream`] share.
#[derive(Debug, Default)]
pub struct ConnShared {
    phase: AtomicU8,
    /// `notable` holds something: the common head takes no lock.
    has_notable: AtomicBool,
    /// Heads collected whole so far (a head pipelined behind another in one read is not).
    heads: AtomicU64,
    /// What the current head's parsed form lost, when anything.
    notable: Mutex<Option<Notable>>,
}

impl ConnShared {
    /// The request head has been read: stop its deadline.
    pub fn head_read(&self) {
        self.phase.store(BODY, Ordering::Relaxed);
    }

    /// The response is complete: the next bytes on this connection start a new head.
    pub fn request_done(&self) {
        self.phase.store(IDLE, Ordering::Relaxed);
    }

    /// How many heads this connection's stream has collected whole. A request whose number
    /// on the connection is higher arrived with the one before it, unseen.
    pub fn heads_seen(&self) -> u64 {
        self.heads.load(Ordering::Relaxed)
    }

    /// The connection was upgraded: from now on it carries a tunnel's bytes.
    pub fn upgraded(&self) {
        self.phase.store(TUNNEL, Ordering::Relaxed);
    }

    /// What the current head as it arrived shows and its parsed form does not (taken: asked
    /// once per request). Only heads read while the previous request was done are seen
    /// (a pipelined head that arrived with the one before it is not).
    pub fn notable(&self) -> Option<Notable> {
        if !self.has_notable.swap(false, Ordering::Relaxed) {
            return None;
        }
        self.notable.lock().ok()?.take()
    }
}

/// A client connection with the deadlines described in the [module docs](self).
pub struct ClientStream {
    /// The socket; its writes carry `send_timeout`.
    inner: WriteStall<TcpStream>,
    shared: Arc<ConnShared>,
    head_deadline: Option<Instant>,
    /// Bytes of the current head have arrived (only then is a 408 worth sending).
    head_started: bool,
    /// When the connection was first seen idle.
    idle_since: Option<Instant>,
    head: RawHead,
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

impl ClientStream {
    /// Wrap an accepted connection; its first head's deadline starts now.
    pub fn new(inner: TcpStream, timeouts: ClientTimeouts, expired: &Expired) -> ClientStream {
        ClientStream {
            inner: WriteStall::new(inner, timeouts.send, Some(expired.send.clone())),
            shared: Arc::default(),
            head_deadline: Some(Instant::now() + timeouts.header),
            head_started: false,
            idle_since: None,
            head: RawHead::default(),
            expired: false,
            timeouts,
            timer: None,
            header_expired: expired.header.clone(),
        }
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
            // A new head: its first line starts with these bytes.
            self.head.reset();
            self.idle_since = None;
            self.head_deadline = Some(Instant::now() + self.timeouts.header);
            self.shared.phase.store(HEAD, Ordering::Relaxed);
        }
        if self.head.collect(bytes) {
            self.shared.heads.fetch_add(1, Ordering::Relaxed);
            if let Some(notable) = self.head.notable() {
                if let Ok(mut kept) = self.shared.notable.lock() {
                    *kept = Some(notable);
                    self.shared.has_notable.store(true, Ordering::Relaxed);
                }
            }
        }
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

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let phase = this.shared.phase.load(Ordering::Relaxed);
        if phase == BODY {
            this.idle_since = None;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
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

impl AsyncWrite for ClientStream {
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

/// A request head, collected as it is read (up to [`MAX_HEAD`] bytes).
#[derive(Debug, Default)]
struct RawHead {
    bytes: Vec<u8>,
    /// The head's blank line was seen.
    complete: bool,
    /// Longer than [`MAX_HEAD`]: given up.
    abandoned: bool,
}

impl RawHead {
    /// For the next head; an ordinary buffer is kept (one allocation per connection, not per
    /// request), one grown past 16 KiB by a large head is let go.
    fn reset(&mut self) {
        if self.bytes.capacity() > 16 * 1024 {
            self.bytes = Vec::new();
        }
        self.bytes.clear();
        self.complete = false;
        self.abandoned = false;
    }

    /// Add the bytes of a read; true when this read completed the head.
    fn collect(&mut self, read: &[u8]) -> bool {
        if self.complete || self.abandoned {
            return false;
        }
        // Empty lines before a request line are skipped, as hyper skips them.
        let read = match self.bytes.is_empty() {
            true => {
                let start = read.iter().position(|&b| b != b'\r' && b != b'\n');
                &read[start.unwrap_or(read.len())..]
            }
            false => read,
        };
        if read.is_empty() {
            return false;
        }
        // The blank line may straddle reads: search from a few bytes back. hyper's parser
        // ends a head at `\n\n` or `\n\r\n` (so `\r\n\r\n` too): so does this.
        let from = self.bytes.len().saturating_sub(3);
        if self.bytes.len() + read.len() > MAX_HEAD {
            self.abandoned = true;
            self.bytes = Vec::new();
            return false;
        }
        self.bytes.extend_from_slice(read);
        let end = self.bytes[from..]
            .iter()
            .enumerate()
            .filter(|(_, &b)| b == b'\n')
            .find_map(|(i, _)| match &self.bytes[from + i + 1..] {
                [b'\n', ..] => Some(from + i + 2),
                [b'\r', b'\n', ..] => Some(from + i + 3),
                _ => None,
            });
        match end {
            Some(end) => {
                self.bytes.truncate(end);
                self.complete = true;
                true
            }
            None => false,
        }
    }

    /// What the parsed request no longer shows: a `#` in the request line, a `Content-Length`
    /// line beside `Transfer-Encoding` (hyper drops the length), or several `Content-Length`
    /// lines (hyper keeps one of equal ones).
    fn notable(&self) -> Option<Notable> {
        let line_end = self.bytes.iter().position(|&b| b == b'\n')?;
        let line = &self.bytes[..line_end + 1];
        let (mut cl, mut te) = (0, false);
        for field in self.bytes[line_end + 1..].split(|&b| b == b'\n') {
            let starts = |name: &[u8]| {
                field.len() > name.len() && field[..name.len()].eq_ignore_ascii_case(name)
            };
            cl += usize::from(starts(b"content-length:"));
            te |= starts(b"transfer-encoding:");
        }
        let fragment = line.contains(&b'#').then(|| line.to_vec());
        (fragment.is_some() || (cl > 0 && te) || cl > 1).then_some(Notable {
            fragment_line: fragment,
            length_beside_chunked: cl > 0 && te,
            length_lines: cl,
        })
    }
}

/// A head's facts that its parsed form lost ([`ConnShared::notable`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notable {
    /// The request line as it arrived, when it held a `#`.
    pub fragment_line: Option<Vec<u8>>,
    /// The head had both `Content-Length` and `Transfer-Encoding` lines.
    pub length_beside_chunked: bool,
    /// The head's `Content-Length` lines (hyper keeps one of several equal ones).
    pub length_lines: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_collected_across_reads_and_capped() {
        let mut head = RawHead::default();
        assert!(!head.collect(b"GET /a#"));
        assert!(!head.collect(b"b HTTP/1.1\r\nHost: x\r"));
        assert!(head.collect(b"\n\r\nGET /next HTTP/1.1\r\n"));
        assert_eq!(head.bytes, b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n");
        let notable = head.notable().unwrap();
        assert_eq!(notable.fragment_line.unwrap(), b"GET /a#b HTTP/1.1\r\n");
        assert!(!notable.length_beside_chunked);
        assert!(!head.collect(b"more"), "a complete head takes no more");
        head.reset();
        assert!(!head.collect(&vec![b'a'; MAX_HEAD + 1]));
        assert!(head.abandoned && head.bytes.is_empty());
    }

    #[test]
    fn a_length_beside_chunked_is_seen_in_any_case_and_order() {
        for raw in [
            // hyper ends a head at `\n\r\n` too.
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\n\r\n0\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-LENGTH: 3\r\n\r\n",
            b"POST / HTTP/1.1\nContent-Length: 3\nTRANSFER-encoding: chunked\n\n",
        ] {
            let mut head = RawHead::default();
            assert!(head.collect(raw));
            assert!(head.notable().unwrap().length_beside_chunked);
        }
        let mut leading = RawHead::default();
        assert!(!leading.collect(b"\r\n\n"));
        assert!(leading
            .collect(b"\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"));
        assert_eq!(leading.notable().unwrap().length_lines, 2);
        let mut plain = RawHead::default();
        assert!(plain.collect(b"POST /content-length: HTTP/1.1\r\nContent-Length: 3\r\n\r\n"));
        assert_eq!(plain.notable(), None);
    }
}
