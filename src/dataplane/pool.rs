//! A worker's own pool of upstream connections: no lock, no channel, no other thread.
//!
//! HTTP/1.1: each connection is a hyper client connection whose driver runs as a task on the
//! worker. A connection is taken for one request and given back on its response body's last
//! frame ([`Checkout::release`]); one whose body failed or was abandoned is dropped, which
//! closes it. Idle connections are kept per upstream, at most `max_idle` each, for at most
//! `idle_timeout`.
//!
//! HTTP/2 (`upstream_protocol = "http2"`, prior knowledge): a connection per upstream address
//! and worker carries up to `streams_per_connection` streams at once; each request takes a clone
//! of its sender and holds one of the connection's stream slots until its response body ends or
//! is dropped. When every connection to the address is full, another is opened. A connection is
//! let go when it closes (the upstream's GOAWAY, an error) or once it has had no stream open
//! for `idle_timeout`. A connection silent for `keepalive_interval` is pinged and closed when
//! the PING is not answered within as long, so one the network dropped without a FIN is found
//! and replaced. One on which a request waited out `read_timeout` while nothing was answered
//! is retired ([`Checkout::stalled`]).
//!
//! Connections are pooled by address and TLS settings (`upstream_tls`, [`UpstreamTls::id`]):
//! a connection made for one route's certificate and name never serves another's.
//!
//! Flow control (RFC 9113 §5.2): each stream may have [`STREAM_WINDOW`] bytes of response
//! unread, and the connection's window is that times `streams_per_connection`, so a client
//! that stops reading holds back its own stream only, never the connection's other streams.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::{Either, FutureExt, LocalBoxFuture, Shared};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::body::ClientBody;
use super::stall::WriteStall;
use super::upstream_tls::UpstreamTls;
use crate::auth::error::Untrusted;
use crate::config::UpstreamProtocol;

/// The largest flow-control window HTTP/2 allows (RFC 9113 §6.9.1).
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// `[upstream]` settings the pool applies.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    /// Idle connections kept per upstream and worker.
    pub max_idle: usize,
    /// Streams one HTTP/2 connection carries at once.
    pub streams_per_connection: usize,
    /// An HTTP/2 connection silent this long is pinged; one whose PING is not answered within
    /// as long is closed.
    pub keepalive_interval: Duration,
}

/// The response bytes one HTTP/2 stream from an upstream may have unread: what one request
/// can make the worker hold for a client that does not read.
pub const STREAM_WINDOW: u32 = 256 * 1024;

/// Why a new upstream connection could not be made (shared by the requests that waited for
/// it).
#[derive(Debug, Clone)]
pub enum ConnectError {
    Timeout,
    Refused(Rc<io::Error>),
    /// The TLS handshake failed: the certificate did not verify, or no common version.
    Tls(Rc<io::Error>),
    Handshake(Rc<hyper::Error>),
}

/// Where a request goes: an upstream address, in the route's protocol, over the route's TLS
/// (with the host of the `upstreams` entry the address came from) or in plain text.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    pub addr: SocketAddr,
    pub protocol: UpstreamProtocol,
    pub tls: Option<&'a Arc<UpstreamTls>>,
    pub host: &'a str,
}

impl Target<'_> {
    fn key(&self) -> Key {
        Key {
            addr: self.addr,
            tls: self.tls.map_or(0, |t| t.id),
        }
    }
}

/// What pooled connections are found by: the address, and the TLS settings' id (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    addr: SocketAddr,
    tls: u64,
}

struct Idle {
    sender: http1::SendRequest<ClientBody>,
    since: Instant,
}

/// An HTTP/2 connection being made, then its sender (or why it could not be made).
type Handshake =
    Shared<LocalBoxFuture<'static, Result<http2::SendRequest<ClientBody>, ConnectError>>>;

/// An HTTP/2 connection and its streams.
struct Multiplexed {
    handshake: Handshake,
    streams: Rc<Streams>,
}

/// An HTTP/2 connection's streams open now, and when one last began or ended: its idle time
/// counts from the end of its last stream, however long that stream ran.
struct Streams {
    open: Cell<usize>,
    used: Cell<Instant>,
    /// Response heads that arrived on the connection: its progress.
    answered: Cell<u64>,
    /// Given no new request, and closed once its last stream ends (see [`Checkout::stalled`]).
    retired: Cell<bool>,
    /// Tells the connection's task to close it.
    close: Notify,
}

impl Streams {
    fn new() -> Streams {
        Streams {
            open: Cell::new(0),
            used: Cell::new(Instant::now()),
            answered: Cell::new(0),
            retired: Cell::new(false),
            close: Notify::new(),
        }
    }
}

impl Multiplexed {
    /// Open or still being made, and not retired.
    fn usable(&self) -> bool {
        if self.streams.retired.get() {
            return false;
        }
        match self.handshake.peek() {
            Some(Ok(sender)) => !sender.is_closed(),
            Some(Err(_)) => false,
            None => true,
        }
    }
}

/// One of an HTTP/2 connection's stream slots, given back when dropped.
struct Slot(Rc<Streams>);

impl Slot {
    fn take(streams: &Rc<Streams>) -> Slot {
        streams.open.set(streams.open.get() + 1);
        streams.used.set(Instant::now());
        Slot(streams.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let streams = &self.0;
        streams.open.set(streams.open.get().saturating_sub(1));
        streams.used.set(Instant::now());
        if streams.retired.get() && streams.open.get() == 0 {
            streams.close.notify_one();
        }
    }
}

/// One worker's upstream connections.
pub struct Pool {
    idle: RefCell<HashMap<Key, Vec<Idle>>>,
    multiplexed: RefCell<HashMap<Key, Vec<Multiplexed>>>,
    settings: PoolSettings,
}

/// The sending side of a connection, in the protocol the route speaks to its upstreams.
pub enum Sender {
    Http1(http1::SendRequest<ClientBody>),
    Http2(http2::SendRequest<ClientBody>),
}

impl Sender {
    /// Wait until the connection can take a request (an error: it has closed).
    pub async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::Http1(s) => s.ready().await,
            Sender::Http2(s) => s.ready().await,
        }
    }

    /// Send `req`; it comes back in the error when the connection closed before any of it
    /// went out.
    pub fn try_send_request(
        &mut self,
        req: http::Request<ClientBody>,
    ) -> impl Future<Output = Result<http::Response<Incoming>, TrySendError<http::Request<ClientBody>>>>
    {
        match self {
            Sender::Http1(s) => Either::Left(s.try_send_request(req)),
            Sender::Http2(s) => Either::Right(s.try_send_request(req)),
        }
    }
}

/// A connection taken for one request.
pub struct Checkout {
    pool: Rc<Pool>,
    key: Key,
    pub sender: Sender,
    /// It came from the pool (and may have been closed by the upstream meanwhile).
    pub reused: bool,
    /// The HTTP/2 stream slot this request holds.
    _slot: Option<Slot>,
}

impl Checkout {
    /// The response is complete: an HTTP/1.1 connection may serve the next request. (An
    /// HTTP/2 one stays in the pool throughout; this clone of its sender and its stream slot
    /// go.)
    pub fn release(self) {
        if let Sender::Http1(sender) = self.sender {
            self.pool.put(self.key, sender);
        }
    }

    /// The HTTP/2 connection's answers so far, to tell after a wait whether any came.
    pub fn progress(&self) -> u64 {
        self._slot.as_ref().map_or(0, |slot| slot.0.answered.get())
    }

    /// A response head arrived for this request.
    pub fn answered(&self) {
        if let Some(slot) = &self._slot {
            slot.0.answered.set(slot.0.answered.get() + 1);
        }
    }

    /// This request waited out `read_timeout` on an HTTP/2 connection: if no stream on it got
    /// an answer since `progress`, the connection is retired, given no new request and
    /// closed once its last stream ends. Requests may be queued on it that will never be
    /// sent (the upstream allows fewer concurrent streams than the pool's limit, or none, or
    /// one long stream holds its only one), and hyper keeps each queued request, abandoned
    /// or not, until the connection closes.
    pub fn stalled(&self, progress: u64) {
        if let Some(slot) = &self._slot {
            if slot.0.answered.get() == progress {
                slot.0.retired.set(true);
            }
        }
    }
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Rc<Pool> {
        Rc::new(Pool {
            idle: RefCell::default(),
            multiplexed: RefCell::default(),
            settings,
        })
    }

    /// An idle (HTTP/1.1) or a shared (HTTP/2) connection to the target, or a new one.
    pub async fn checkout(self: &Rc<Self>, target: Target<'_>) -> Result<Checkout, ConnectError> {
        let key = target.key();
        match target.protocol {
            UpstreamProtocol::Http1 => match self.take(key) {
                Some(sender) => Ok(self.checkout_of(key, Sender::Http1(sender), true, None)),
                // Boxed: the connect's state (TLS handshake included) is several KiB, and
                // every request's future would carry it, and copy it, for the rare new one.
                None => Box::pin(self.connect(target)).await,
            },
            UpstreamProtocol::Http2 => {
                let (handshake, slot, reused) = match self.share(key) {
                    Some((handshake, slot)) => {
                        // One still being made counts as new: its failure is not retried.
                        let reused = handshake.peek().is_some();
                        (handshake, slot, reused)
                    }
                    None => {
                        let (handshake, slot) = self.start_http2(target);
                        (handshake, slot, false)
                    }
                };
                let sender = handshake.await?;
                Ok(self.checkout_of(key, Sender::Http2(sender), reused, Some(slot)))
            }
        }
    }

    /// A new connection to the target, whatever is pooled (a retry after a pooled one failed).
    /// For HTTP/2, another open (or being made) connection with a free slot serves as well,
    /// the failed one being let go of by then; a new one is shared by the requests that follow.
    pub async fn connect(self: &Rc<Self>, target: Target<'_>) -> Result<Checkout, ConnectError> {
        let key = target.key();
        match target.protocol {
            UpstreamProtocol::Http1 => {
                let sender = match made(target, &self.settings).await? {
                    Either::Left(plain) => http1_handshake(plain).await?,
                    Either::Right(tls) => http1_handshake(tls)
                        .await
                        .map_err(|e| refused_after_handshake(e, target.addr))?,
                };
                Ok(self.checkout_of(key, Sender::Http1(sender), false, None))
            }
            UpstreamProtocol::Http2 => {
                let (handshake, slot) = match self.share(key) {
                    Some(shared) => shared,
                    None => self.start_http2(target),
                };
                let sender = handshake.await?;
                Ok(self.checkout_of(key, Sender::Http2(sender), false, Some(slot)))
            }
        }
    }

    fn checkout_of(
        self: &Rc<Self>,
        key: Key,
        sender: Sender,
        reused: bool,
        slot: Option<Slot>,
    ) -> Checkout {
        Checkout {
            pool: self.clone(),
            key,
            sender,
            reused,
            _slot: slot,
        }
    }

    /// Begin a new HTTP/2 connection to the target and list it at once, so that the requests
    /// that come while it is being made wait for it rather than each making its own; take one
    /// of its stream slots.
    fn start_http2(self: &Rc<Self>, target: Target<'_>) -> (Handshake, Slot) {
        let settings = self.settings;
        let key = target.key();
        let (addr, protocol, host) = (target.addr, target.protocol, target.host.to_owned());
        let tls = target.tls.cloned();
        let streams = Rc::new(Streams::new());
        let task_streams = streams.clone();
        let made = async move {
            let target = Target {
                addr,
                protocol,
                tls: tls.as_ref(),
                host: &host,
            };
            match made(target, &settings).await? {
                Either::Left(plain) => http2_handshake(plain, &settings, task_streams).await,
                Either::Right(tls) => http2_handshake(tls, &settings, task_streams)
                    .await
                    .map_err(|e| refused_after_handshake(e, addr)),
            }
        };
        let handshake = made.boxed_local().shared();
        let slot = Slot::take(&streams);
        self.multiplexed
            .borrow_mut()
            .entry(key)
            .or_default()
            .push(Multiplexed {
                handshake: handshake.clone(),
                streams,
            });
        (handshake, slot)
    }

    /// An HTTP/2 connection for `key` (open, or being made) with a free stream slot, and the
    /// slot. Closed and failed connections are let go on the way.
    fn share(&self, key: Key) -> Option<(Handshake, Slot)> {
        let mut shared = self.multiplexed.borrow_mut();
        let list = shared.get_mut(&key)?;
        list.retain(Multiplexed::usable);
        let limit = self.settings.streams_per_connection;
        let conn = list.iter().find(|c| c.streams.open.get() < limit)?;
        Some((conn.handshake.clone(), Slot::take(&conn.streams)))
    }

    /// The most recently used idle connection for `key` that is still open and young enough.
    fn take(&self, key: Key) -> Option<http1::SendRequest<ClientBody>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        let now = Instant::now();
        while let Some(conn) = list.pop() {
            if !conn.sender.is_closed() && now - conn.since < self.settings.idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    }

    fn put(&self, key: Key, sender: http1::SendRequest<ClientBody>) {
        if sender.is_closed() || self.settings.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() >= self.settings.max_idle {
            // The oldest goes; dropping it closes it.
            list.remove(0);
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Close idle connections that are older than `idle_timeout` or already closed, and let go
    /// of HTTP/2 connections that carried no stream for `idle_timeout`. The worker runs this
    /// every second.
    pub fn sweep(&self) {
        let now = Instant::now();
        let timeout = self.settings.idle_timeout;
        for list in self.idle.borrow_mut().values_mut() {
            list.retain(|c| !c.sender.is_closed() && now - c.since < timeout);
        }
        self.multiplexed.borrow_mut().retain(|_, list| {
            list.retain(|c| {
                let streams = &c.streams;
                c.usable() && (streams.open.get() > 0 || now - streams.used.get() < timeout)
            });
            !list.is_empty()
        });
    }
}

type Plain = WriteStall<TcpStream>;

/// A connection to the target within `connect_timeout`, TLS handshake included, its writes
/// bounded by `write_timeout`. A TLS handshake still unfinished at the deadline (an upstream
/// that accepts and never answers the hello, or a port that speaks another protocol and waits)
/// is logged, as a failed one is: a plain 504 would leave the operator guessing.
async fn made(
    target: Target<'_>,
    settings: &PoolSettings,
) -> Result<Either<Plain, tokio_rustls::client::TlsStream<Plain>>, ConnectError> {
    let addr = target.addr;
    let in_handshake = std::cell::Cell::new(false);
    let connected = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::Refused(Rc::new(e)))?;
        in_handshake.set(true);
        let _ = stream.set_nodelay(true);
        let stream = WriteStall::new(stream, settings.write_timeout, None);
        let Some(tls) = target.tls else {
            return Ok(Either::Left(stream));
        };
        let refused = |e: io::Error| {
            tracing::warn!(upstream = %addr, error = %Untrusted(&e), "TLS handshake with an upstream failed");
            ConnectError::Tls(Rc::new(e))
        };
        let name = tls.name_for(target.host).ok_or_else(|| {
            refused(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no name to verify the upstream's certificate for",
            ))
        })?;
        let session = tls.handshake(name, stream).await.map_err(refused)?;
        // RFC 9113 §3.2: HTTP/2 over TLS is chosen by ALPN; an upstream that chose nothing
        // (or HTTP/1.1) would read the connection preface as a broken HTTP/1.1 request.
        let h2 = session.get_ref().1.alpn_protocol() == Some(b"h2");
        if target.protocol == UpstreamProtocol::Http2 && !h2 {
            return Err(refused(io::Error::new(
                io::ErrorKind::InvalidData,
                "the upstream did not choose h2 by ALPN (upstream_protocol = \"http2\" needs it)",
            )));
        }
        Ok(Either::Right(session))
    };
    tokio::time::timeout(settings.connect_timeout, connected)
        .await
        .map_err(|_| {
            if target.tls.is_some() && in_handshake.get() {
                tracing::warn!(
                    upstream = %addr,
                    connect_timeout_ms = settings.connect_timeout.as_millis(),
                    "TLS handshake with an upstream did not finish within connect_timeout"
                );
            }
            ConnectError::Timeout
        })?
}

/// A connection's HTTP handshake failed over TLS: when TLS is why (a TLS 1.3 server refusing
/// the client certificate says so only after the TLS handshake), it is a TLS failure, logged.
fn refused_after_handshake(e: ConnectError, addr: SocketAddr) -> ConnectError {
    let ConnectError::Handshake(http) = &e else {
        return e;
    };
    let Some(cause) = super::upstream_tls::failure(http.as_ref()) else {
        return e;
    };
    tracing::warn!(upstream = %addr, error = %Untrusted(cause), "TLS with an upstream failed after the handshake");
    ConnectError::Tls(Rc::new(io::Error::new(cause.kind(), cause.to_string())))
}

async fn http1_handshake<IO>(io: IO) -> Result<http1::SendRequest<ClientBody>, ConnectError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ConnectError::Handshake(Rc::new(e)))?;
    tokio::task::spawn_local(async move {
        let _ = connection.with_upgrades().await;
    });
    Ok(sender)
}

async fn http2_handshake<IO>(
    io: IO,
    settings: &PoolSettings,
    streams: Rc<Streams>,
) -> Result<http2::SendRequest<ClientBody>, ConnectError>
where
    IO: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let limit = settings.streams_per_connection;
    let window = (STREAM_WINDOW as usize).saturating_mul(limit);
    let (sender, connection) = http2::Builder::new(super::h2::LocalExec)
        .timer(TokioTimer::new())
        .adaptive_window(false)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(window.min(MAX_WINDOW as usize) as u32)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_interval)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ConnectError::Handshake(Rc::new(e)))?;
    tokio::task::spawn_local(async move {
        // A retired connection is dropped, with whatever hyper still queues on it.
        tokio::select! {
            _ = connection => {}
            () = streams.close.notified() => {}
        }
    });
    Ok(sender)
}
