//! HTTP/2 from clients (RFC 9113), on hyper's server and the h2 crate: by TLS ALPN `h2`, and
//! with prior knowledge on plain listeners when `[server.http2] cleartext` is on.
//!
//! Each stream is one request through the same service as HTTP/1.1 ([`super::proxy::serve`]):
//! [`request_head`] first makes its head look like an HTTP/1.1 one (`:authority` as `Host`,
//! one `Cookie`, the `:path` as the target), so that every rule that follows (size limits,
//! framing, the canonical target, the gate, identity and forwarded headers) is the very same.
//! The upstream hop stays HTTP/1.1.
//!
//! The defences of the protocol layer, and ours around it:
//!
//! - **Concurrent streams**, **header list size**, **flow-control windows** and **pings**: the
//!   `[server.http2]` keys. A header block larger than `max_header_list_size` is answered 431 by
//!   h2 while the rest of it is decoded into nothing (an HPACK bomb costs its decoding, not
//!   memory), and h2 bounds the CONTINUATION frames of one block by that size (the
//!   CONTINUATION flood, CVE-2024-27316 class): beyond, the connection ends with an error.
//! - **Rapid reset** (CVE-2023-44487): streams cancelled before hyper hands them to us are
//!   bounded by h2 ([`PENDING_ACCEPT_RESETS`]); streams cancelled after, while the gateway works
//!   on them (waiting on an upstream, say), are counted per connection ([`Streams`]), and a
//!   connection that cancels more than `max_cancelled_streams` within [`CANCEL_WINDOW`] is
//!   closed.
//! - **Idle and slow connections**: a connection with no open stream is closed after
//!   `keepalive_timeout`, and one whose first stream has not arrived within
//!   `client_header_timeout` (counted from the accept) is closed too: GOAWAY, then at most
//!   `client_header_timeout` more before the socket is dropped. A request body's reads keep
//!   `client_body_timeout` and every write `send_timeout`, as on HTTP/1.1.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, COOKIE, HOST, TRANSFER_ENCODING};
use http::{HeaderValue, Uri};
use hyper::server::conn::http2;
use hyper_util::rt::TokioTimer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use crate::config::Http2Config;

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams a client may cancel before hyper has handed them to the service, after which h2
/// ends the connection with `ENHANCE_YOUR_CALM` (h2's own default, stated here).
pub const PENDING_ACCEPT_RESETS: usize = 20;

/// The window over which a connection's cancelled streams are counted.
pub const CANCEL_WINDOW: Duration = Duration::from_secs(10);

/// Response bytes buffered per stream ahead of the client's flow-control window. hyper's
/// default, 400 KiB, would let one connection that announces a large window and stops reading
/// hold 40 MB with 100 streams until `send_timeout`.
const MAX_SEND_BUFFER: usize = 64 << 10;

/// Runs a stream's task on the worker's own thread: the service's futures hold the worker's
/// `Rc` state and never leave it.
#[derive(Clone, Copy, Debug)]
pub struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// The server settings of every HTTP/2 connection of a proxy listener; `head_buffer` is the
/// HTTP/1.1 head buffer's size, the header list size unless `max_header_list_size` is set.
pub fn builder(config: &Http2Config, head_buffer: usize) -> http2::Builder<LocalExec> {
    let list_size = config
        .max_header_list_size
        .unwrap_or(u32::try_from(head_buffer).unwrap_or(u32::MAX));
    let mut builder = http2::Builder::new(LocalExec);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(list_size)
        .initial_stream_window_size(config.initial_stream_window_size)
        .initial_connection_window_size(config.initial_connection_window_size)
        .keep_alive_interval(config.ping_interval)
        .keep_alive_timeout(config.ping_timeout)
        .max_pending_accept_reset_streams(PENDING_ACCEPT_RESETS)
        .max_send_buf_size(MAX_SEND_BUFFER);
    builder
}

/// Why a stream's head is refused before anything else is looked at: the framing check's own
/// refusal.
pub type HeadFault = super::framing::Refusal;

const fn bad(description: &'static str) -> HeadFault {
    super::framing::refusal(400, "bad_request", description)
}

/// The most fields a head may have: hyper's HTTP/1.1 parser refuses more (431), and HTTP/2
/// is held to the same.
const MAX_FIELDS: usize = 100;

/// Make an HTTP/2 request head look like the HTTP/1.1 head it stands for, so that every later
/// rule reads it the same way:
///
/// - `:authority` becomes `Host` (RFC 9113 §8.3.1). Both present and different is malformed,
///   and so is an `:authority` with userinfo; neither present is refused as an HTTP/1.1
///   request without `Host` is (RFC 9112 §3.2). A request without `:path` is malformed.
/// - The target is `:path` alone (origin-form), so that no absolute-form rule applies.
/// - Several `Cookie` fields become one, joined by `"; "` (§8.2.3): an HTTP/1.1 upstream may
///   read only one.
/// - A body without `Content-Length` (`has_body`: the HEADERS frame did not end the stream)
///   goes to the upstream chunked, and the head says `Transfer-Encoding: chunked` from here
///   on: every rule that asks whether a request has a body (a CORS preflight has none) reads
///   what the upstream will read.
/// - More than [`MAX_FIELDS`] fields is 431, as on HTTP/1.1.
pub fn request_head(parts: &mut http::request::Parts, has_body: bool) -> Result<(), HeadFault> {
    if parts.headers.len() > MAX_FIELDS {
        return Err(super::framing::refusal(
            431,
            "header_fields_too_large",
            "The request has more header fields than this gateway accepts.",
        ));
    }
    // §8.2.1: a value with leading or trailing white space is malformed. An HTTP/1.1 parser
    // trims it, so the upstream would read another value than the one checked here.
    let padded = |v: &HeaderValue| {
        let b = v.as_bytes();
        let ws = |c: Option<&u8>| matches!(c, Some(b' ' | b'\t'));
        ws(b.first()) || ws(b.last())
    };
    if parts.headers.values().any(padded) {
        return Err(bad("A header field value begins or ends with white space."));
    }
    if let Some(authority) = parts.uri.authority() {
        if authority.as_str().contains('@') {
            return Err(bad("The :authority may not hold userinfo."));
        }
        match parts.headers.get(HOST) {
            Some(host)
                if !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes()) =>
            {
                return Err(bad("The Host header and :authority name different hosts."));
            }
            Some(_) => {}
            None => {
                let host = HeaderValue::from_str(authority.as_str())
                    .map_err(|_| bad("The :authority is not a valid host[:port]."))?;
                parts.headers.insert(HOST, host);
            }
        }
    } else if !parts.headers.contains_key(HOST) {
        return Err(bad("An HTTP/2 request needs :authority or a Host header."));
    }
    let Some(path) = parts.uri.path_and_query().cloned() else {
        return Err(bad("An HTTP/2 request needs a :path."));
    };
    parts.uri = Uri::from(path);
    let mut cookies = parts.headers.get_all(COOKIE).iter();
    if let (Some(_), Some(_)) = (cookies.next(), cookies.next()) {
        let joined = parts
            .headers
            .get_all(COOKIE)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect::<Vec<_>>()
            .join(&b"; "[..]);
        let joined = HeaderValue::from_bytes(&joined).map_err(|_| bad("A Cookie is not valid."))?;
        parts.headers.insert(COOKIE, joined);
    }
    if has_body && !parts.headers.contains_key(CONTENT_LENGTH) {
        // h2 refused any Transfer-Encoding the client sent (§8.2.2): this one is ours.
        parts
            .headers
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    Ok(())
}

/// When a stream's response last waited on the client: set when its head or a frame of its
/// body is handed to hyper, cleared when hyper asks for more. Still set after `send_timeout`
/// means the client's flow-control window has kept hyper from sending (a client that never
/// sends WINDOW_UPDATE stalls no socket write, so the socket's own `send_timeout` never fires).
pub type Handed = std::rc::Rc<Cell<Option<tokio::time::Instant>>>;

/// Why an HTTP/2 connection is to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// No stream open for `keepalive_timeout`.
    Idle,
    /// No first stream within `client_header_timeout` of the accept.
    NoFirstStream,
    /// More than `max_cancelled_streams` cancelled within [`CANCEL_WINDOW`].
    RapidReset,
    /// A response waited on the client's window longer than `send_timeout`.
    Stalled,
}

/// How often open streams are looked at for a stalled response, at most.
const STALL_SCAN: Duration = Duration::from_secs(1);

/// The open streams of one HTTP/2 connection, for its idle deadline, the rapid-reset count and
/// stalled responses. Touched only on the worker's thread.
#[derive(Debug)]
pub struct Streams {
    open: Cell<usize>,
    /// Streams begun so far.
    begun: Cell<u64>,
    /// Streams cancelled by the client before their answer, since `window`.
    cancelled: Cell<u32>,
    window: Cell<Instant>,
    max_cancelled: u32,
    /// The worker's open HTTP/2 streams, over all its connections, and their bound.
    worker: WorkerStreams,
    /// Too many cancelled: the connection is to close.
    calm: Cell<bool>,
    /// Each open stream's [`Handed`] (dead once the stream is gone).
    handed: std::cell::RefCell<Vec<std::rc::Weak<Cell<Option<tokio::time::Instant>>>>>,
    changed: Notify,
}

/// A worker's open HTTP/2 streams (`Rc`: one per worker and listener) and
/// `max_streams_per_worker`.
#[derive(Debug, Clone)]
pub struct WorkerStreams {
    pub open: std::rc::Rc<Cell<usize>>,
    pub max: usize,
}

impl WorkerStreams {
    pub fn new(max: u32) -> WorkerStreams {
        WorkerStreams {
            open: Default::default(),
            max: max as usize,
        }
    }
}

impl Streams {
    pub fn new(max_cancelled: u32, worker: WorkerStreams) -> Streams {
        Streams {
            worker,
            open: Cell::new(0),
            begun: Cell::new(0),
            cancelled: Cell::new(0),
            window: Cell::new(Instant::now()),
            max_cancelled,
            calm: Cell::new(false),
            handed: Default::default(),
            changed: Notify::new(),
        }
    }

    /// A stream's request reached the service: its [`Handed`], to give its response body.
    pub fn begin(&self) -> Handed {
        self.open.set(self.open.get() + 1);
        self.worker.open.set(self.worker.open.get() + 1);
        self.begun.set(self.begun.get() + 1);
        let handed = Handed::default();
        let mut all = self.handed.borrow_mut();
        all.retain(|h| h.strong_count() > 0);
        all.push(std::rc::Rc::downgrade(&handed));
        drop(all);
        // Only the first open stream changes what [`Streams::closing`] waits for.
        if self.open.get() == 1 {
            self.changed.notify_one();
        }
        handed
    }

    /// A stream ended: answered (`cancelled == false`) or dropped by the client before its
    /// answer.
    pub fn end(&self, cancelled: bool) {
        self.open.set(self.open.get().saturating_sub(1));
        self.worker
            .open
            .set(self.worker.open.get().saturating_sub(1));
        if cancelled {
            let now = Instant::now();
            if now.duration_since(self.window.get()) > CANCEL_WINDOW {
                self.window.set(now);
                self.cancelled.set(0);
            }
            self.cancelled.set(self.cancelled.get() + 1);
            if self.cancelled.get() > self.max_cancelled {
                self.calm.set(true);
            }
        }
        // The last open stream's end starts the idle deadline; too many cancelled close.
        if self.open.get() == 0 || self.calm.get() {
            self.changed.notify_one();
        }
    }

    /// The worker has more streams open than `max_streams_per_worker` (this one counted).
    pub fn worker_full(&self) -> bool {
        self.worker.open.get() > self.worker.max
    }

    /// Some open stream's response has waited on the client for `send` or longer.
    fn stalled(&self, send: Duration) -> bool {
        let now = tokio::time::Instant::now();
        self.handed.borrow().iter().any(|h| {
            h.upgrade()
                .and_then(|h| h.get())
                .is_some_and(|since| now.duration_since(since) >= send)
        })
    }

    /// Ready when the connection must close, and why: see [`Close`]. `first` is what is left
    /// of `client_header_timeout`, `keepalive` is `keepalive_timeout`, `send` is
    /// `send_timeout`.
    pub async fn closing(&self, first: Duration, keepalive: Duration, send: Duration) -> Close {
        let scan = send.min(STALL_SCAN);
        // One timer for the scans, reset only when it fires: a connection busy with streams
        // that come and go does not make a new one each time.
        let scanning = tokio::time::sleep(scan);
        tokio::pin!(scanning);
        loop {
            if self.calm.get() {
                return Close::RapidReset;
            }
            if self.open.get() > 0 {
                tokio::select! {
                    () = self.changed.notified() => {}
                    () = scanning.as_mut() => {
                        if self.stalled(send) {
                            return Close::Stalled;
                        }
                        scanning.as_mut().reset(tokio::time::Instant::now() + scan);
                    }
                }
                continue;
            }
            let begun = self.begun.get();
            let wait = if begun == 0 { first } else { keepalive };
            tokio::select! {
                () = tokio::time::sleep(wait) => {
                    if self.open.get() == 0 && self.begun.get() == begun {
                        return if begun == 0 { Close::NoFirstStream } else { Close::Idle };
                    }
                }
                () = self.changed.notified() => {}
            }
        }
    }
}

/// The counters of [`Close`]: `portcullis_client_timeouts_total{phase="header"|"send"}` and
/// `portcullis_http2_rapid_reset_closes_total`.
pub struct CloseCounters {
    pub header: prometheus::IntCounter,
    pub send: prometheus::IntCounter,
    pub rapid_reset: prometheus::IntCounter,
}

/// Ready when the connection must close (see [`Streams::closing`]), counted; then how long it
/// may still take to end after its GOAWAY.
pub async fn until_closing(
    streams: &Streams,
    first: Duration,
    timeouts: super::client_stream::ClientTimeouts,
    counters: CloseCounters,
) -> Duration {
    let why = streams
        .closing(first, timeouts.keepalive, timeouts.send)
        .await;
    match why {
        Close::Idle => {}
        Close::NoFirstStream => counters.header.inc(),
        Close::RapidReset => counters.rapid_reset.inc(),
        Close::Stalled => counters.send.inc(),
    }
    match why {
        // At once: hyper's graceful GOAWAY admits new streams until the client answers a
        // PING, which an attacker need not do. The GOAWAY is written (the connection is polled
        // once more), then the socket is dropped.
        Close::RapidReset | Close::Stalled => Duration::ZERO,
        // GOAWAY, then a bounded wait for the open streams (a handshake that never completes,
        // or a client that never answers the GOAWAY's PING, is not waited for longer).
        Close::Idle | Close::NoFirstStream => timeouts.header,
    }
}

/// Read the first bytes of a plain connection, at most the preface's length, and say whether
/// they are the HTTP/2 preface: with prior knowledge, the client sends it first (RFC 9113
/// §3.3). The bytes read are given back, to be read again by the protocol's parser.
/// HTTP/1.1 is told apart at its first byte that differs (a method's second letter at the
/// latest), so no HTTP/1.1 client waits here.
pub async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(bool, Vec<u8>)> {
    let mut seen = Vec::with_capacity(PREFACE.len());
    let mut chunk = [0u8; 24];
    loop {
        let n = stream
            .read(&mut chunk[..PREFACE.len() - seen.len()])
            .await?;
        seen.extend_from_slice(&chunk[..n]);
        if n == 0 || !PREFACE.starts_with(&seen) {
            return Ok((false, seen));
        }
        if seen.len() == PREFACE.len() {
            return Ok((true, seen));
        }
    }
}

/// A stream whose first bytes were already read ([`sniff`]): they are read again first.
pub struct Rewound<S> {
    first: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewound<S> {
    pub fn new(first: Vec<u8>, inner: S) -> Rewound<S> {
        Rewound {
            first,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.first.len() {
            let rest = &this.first[this.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.at += n;
            if this.at == this.first.len() {
                this.first = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut req = http::Request::builder()
            .uri(uri)
            .version(http::Version::HTTP_2);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn request_heads_become_http1_heads() {
        let mut p = head("https://api.example:8443/a/b?c=d", &[]);
        request_head(&mut p, false).unwrap();
        assert_eq!(p.uri, "/a/b?c=d");
        assert_eq!(p.headers[HOST], "api.example:8443");

        let mut p = head("https://API.example/x", &[("host", "api.EXAMPLE")]);
        request_head(&mut p, false).unwrap();
        assert_eq!(p.headers[HOST], "api.EXAMPLE");

        let mut p = head("/x", &[("host", "h")]);
        request_head(&mut p, false).unwrap();
        assert_eq!(p.uri, "/x");

        let mut p = head(
            "https://h/",
            &[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
        );
        request_head(&mut p, false).unwrap();
        let cookies: Vec<_> = p.headers.get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);

        let table: &[(&str, &[(&str, &str)])] = &[
            ("https://a/x", &[("host", "b")]),
            ("https://a/x", &[("x-a", " padded")]),
            ("https://a/x", &[("x-a", "padded\t")]),
            ("https://user@a/x", &[]),
            ("/x", &[]),
        ];
        for (uri, headers) in table {
            assert!(
                request_head(&mut head(uri, headers), false).is_err(),
                "{uri}"
            );
        }

        // A body without a length is chunked on the upstream hop, and the head says so.
        let mut p = head("https://h/", &[]);
        request_head(&mut p, true).unwrap();
        assert_eq!(p.headers[TRANSFER_ENCODING], "chunked");
        let mut p = head("https://h/", &[("content-length", "3")]);
        request_head(&mut p, true).unwrap();
        assert!(!p.headers.contains_key(TRANSFER_ENCODING));

        let many: Vec<(String, String)> =
            (0..101).map(|i| (format!("x-{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let fault = request_head(&mut head("https://h/", &many), false).unwrap_err();
        assert_eq!(fault.status, 431);
    }

    #[tokio::test]
    async fn the_preface_is_told_from_http1_at_the_first_byte_that_differs() {
        for (bytes, h2) in [
            (&PREFACE[..], true),
            (b"GET / HTTP/1.1\r\n".as_slice(), false),
            (b"POST / HTTP/1.1\r\n".as_slice(), false),
            (b"PRI * HTTP/1.1\r\n".as_slice(), false),
            (b"PR".as_slice(), false),
        ] {
            let mut more = bytes.to_vec();
            more.extend_from_slice(b"rest");
            let (mut client, mut server) = tokio::io::duplex(64);
            tokio::io::AsyncWriteExt::write_all(&mut client, &more)
                .await
                .unwrap();
            if bytes.len() < 3 {
                drop(client);
            }
            let (is_h2, seen) = sniff(&mut server).await.unwrap();
            assert_eq!(is_h2, h2, "{:?}", String::from_utf8_lossy(bytes));
            assert!(seen.len() <= PREFACE.len());
            let mut again = Rewound::new(seen, server);
            let mut all = vec![0; more.len()];
            if bytes.len() >= 3 {
                again.read_exact(&mut all).await.unwrap();
                assert_eq!(all, more, "every byte is read again");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_cancelling_and_stalled_connections_close() {
        let streams = Streams::new(2, WorkerStreams::new(10));
        let first = Duration::from_secs(10);
        let keep = Duration::from_secs(60);
        let started = tokio::time::Instant::now();
        let send = Duration::from_secs(30);
        assert_eq!(
            streams.closing(first, keep, send).await,
            Close::NoFirstStream
        );
        assert_eq!(started.elapsed(), first, "no stream: the first deadline");

        let streams = std::rc::Rc::new(Streams::new(2, WorkerStreams::new(10)));
        let _handed = streams.begin();
        let s = streams.clone();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                let started = tokio::time::Instant::now();
                let s2 = s.clone();
                tokio::task::spawn_local(async move {
                    tokio::time::sleep(Duration::from_secs(100)).await;
                    s2.end(false);
                });
                assert_eq!(s.closing(first, keep, send).await, Close::Idle);
                assert_eq!(started.elapsed(), Duration::from_secs(160));
            })
            .await;

        let streams = Streams::new(2, WorkerStreams::new(10));
        for _ in 0..3 {
            drop(streams.begin());
            streams.end(true);
        }
        let why = streams.closing(first, keep, send).await;
        assert_eq!(why, Close::RapidReset, "three cancelled of two");

        // A response handed to hyper and never asked for again: closed after send_timeout.
        let streams = Streams::new(2, WorkerStreams::new(10));
        let handed = streams.begin();
        handed.set(Some(tokio::time::Instant::now()));
        let started = tokio::time::Instant::now();
        assert_eq!(streams.closing(first, keep, send).await, Close::Stalled);
        let waited = started.elapsed();
        assert!(waited >= send && waited <= send + STALL_SCAN, "{waited:?}");
        // One that hyper keeps asking for is never stalled, however long the stream lasts.
        let streams = Streams::new(2, WorkerStreams::new(10));
        let handed = streams.begin();
        let closing = streams.closing(first, keep, send);
        let busy = async {
            for _ in 0..600 {
                handed.set(Some(tokio::time::Instant::now()));
                tokio::time::sleep(Duration::from_millis(100)).await;
                handed.set(None);
            }
        };
        tokio::select! {
            why = closing => panic!("closed: {why:?}"),
            () = busy => {}
        }
    }
}
