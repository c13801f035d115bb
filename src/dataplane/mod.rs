//! The data plane on hyper: `server.threads` workers, each a current-thread tokio runtime with
//! its own `SO_REUSEPORT` listener, its own upstream connection pool and its own round-robin
//! positions. Nothing on the request path takes a lock or wakes another thread; what workers
//! share is read-mostly (the gate's router and auth core: ArcSwap key sets, moka caches,
//! metrics).
//!
//! - [`proxy`]: the proxy listener's service.
//! - [`simple`]: the same server for the decision and admin listeners (and `portcullis dev`'s
//!   demo services), whose answers are small and made whole.
//! - Shutdown: listeners stop accepting, every connection finishes its in-flight request and
//!   closes (hyper's graceful shutdown), and a worker returns as soon as its last connection
//!   has, or when `shutdown_grace` is over.

pub mod body;
pub mod client_stream;
pub mod framing;
pub mod h2;
pub mod headers;
pub mod heads;
pub mod pool;
pub mod proxy;
pub mod simple;
pub mod stall;
pub mod tls;
pub mod trace;
pub mod tunnel;
pub mod upstream_tls;
pub mod upstreams;

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use client_stream::{ClientStream, Expired};
use proxy::{Conn, WorkerThread};

/// When to stop, and how long in-flight requests may take then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Running,
    /// Stop accepting; let connections finish for up to this long.
    Drain(Duration),
}

/// `n` listening sockets on `addr` with `SO_REUSEPORT`, one per worker: the kernel spreads
/// new connections over them. Port 0 is resolved by the first, and the others bind the same
/// port. A port another process holds (without `SO_REUSEPORT` for this user) fails here.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n.max(1) {
        let socket = Socket::new(Domain::for_address(bound), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&bound.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        bound = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// One plain listening socket (the admin listener, `portcullis dev`'s services).
pub fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The HTTP/1.1 server settings every listener uses.
fn server(header_timeout: Option<Duration>, max_buf: usize) -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(max_buf.max(8192))
        // hyper's default limit of 100 field lines stays (Envoy's default too): more are 431
        // (RFC 6585 §5), before any other work. Setting any limit makes hyper allocate and
        // zero a table of that size for every head it parses.
        // A read of zero bytes while a request is in flight means the client left (a half-close
        // looks the same): hyper then drops the request, which cancels the upstream exchange
        // and records 499, as nginx, Envoy and Go's ReverseProxy do.
        .half_close(false)
        .keep_alive(true);
    if let Some(timeout) = header_timeout {
        builder.header_read_timeout(timeout);
    } else {
        // The client stream keeps the head deadline (client_stream.rs).
        builder.header_read_timeout(None);
    }
    builder
}

/// Run one worker's proxy listener until `stop` says drain, then drain. With `tls`, each
/// connection's handshake comes first, bounded by `client_header_timeout` (which then starts
/// again for the first request head); ALPN chooses HTTP/2 or HTTP/1.1. Without, a plain
/// connection is HTTP/1.1, or HTTP/2 by its preface with `[server.http2] cleartext`.
pub async fn run_proxy(
    thread: Rc<WorkerThread>,
    listener: std::net::TcpListener,
    stop: watch::Receiver<Stop>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    // The head size limits size the parser's buffer for the listener's life, and the HTTP/2
    // settings are the listener's too: a reload that changes them says they need a restart
    // (`Config::restart_needed`).
    let settings = thread.current().shared.settings;
    let metrics = thread.current().shared.metrics.clone();
    let expired = Expired {
        header: metrics.client_timeouts.with_label_values(&["header"]),
        send: metrics.client_timeouts.with_label_values(&["send"]),
    };
    let max_buf = settings.limits.max_uri_bytes + settings.limits.max_header_bytes + 4096;
    let builder = server(None, max_buf);
    let http2 = h2::builder(&settings.http2, max_buf);
    let cleartext = settings.http2.cleartext;
    let counted = ["http/1.1", "h2"].map(|p| metrics.connections.with_label_values(&[p]));
    let worker_streams = h2::WorkerStreams::new(settings.http2.max_streams_per_worker);
    let sweeper = {
        let pool = thread.pool().clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                pool.sweep();
            }
        })
    };
    let handshakes =
        ["ok", "failed", "timeout"].map(|r| metrics.tls_handshakes.with_label_values(&[r]));
    accept_until_drained(listener, stop, |stream, peer, entered, stop| {
        // The client timeouts of the config now, for the connection's life.
        let timeouts = thread.current().shared.settings.timeouts;
        let served = Served {
            thread: thread.clone(),
            builder: builder.clone(),
            http2: http2.clone(),
            max_cancelled: settings.http2.max_cancelled_streams,
            worker_streams: worker_streams.clone(),
            counted: counted.clone(),
            expired: expired.clone(),
            metrics: metrics.clone(),
            timeouts,
            peer,
            accepted: Instant::now(),
        };
        match &tls {
            None if cleartext => {
                tokio::task::spawn_local(async move {
                    let mut stream = stream;
                    let sniffed = tokio::time::timeout(timeouts.header, h2::sniff(&mut stream));
                    let (multiplexed, first) = match sniffed.await {
                        Ok(Ok(sniffed)) => sniffed,
                        Ok(Err(_)) => return,
                        Err(_) => return served.expired.header.inc(),
                    };
                    let stream = h2::Rewound::new(first, stream);
                    let protocol = Protocol::from_h2(multiplexed);
                    served
                        .connection(stream, Transport::Plain, protocol, entered, stop)
                        .await;
                });
            }
            None => {
                tokio::task::spawn_local(served.connection(
                    stream,
                    Transport::Plain,
                    Protocol::Http1,
                    entered,
                    stop,
                ));
            }
            Some(acceptor) => {
                let handshake = acceptor.accept(stream);
                let [ok, failed, late] = handshakes.clone();
                tokio::task::spawn_local(async move {
                    let stream = match tokio::time::timeout(timeouts.header, handshake).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(_)) => return failed.inc(),
                        Err(_) => return late.inc(),
                    };
                    ok.inc();
                    // The first head's (or stream's) deadline starts after the handshake.
                    let served = Served {
                        accepted: Instant::now(),
                        ..served
                    };
                    let session = stream.get_ref().1;
                    let protocol = Protocol::from_h2(session.alpn_protocol() == Some(b"h2"));
                    // The client certificate rustls verified (with `client_ca`), if any.
                    let certificate = session.peer_certificates().and_then(|c| c.first());
                    let thumbprint = certificate.map(|c| tls::thumbprint(c));
                    let transport = Transport::Tls {
                        client_cert: thumbprint,
                    };
                    served
                        .connection(stream, transport, protocol, entered, stop)
                        .await;
                });
            }
        }
    })
    .await;
    sweeper.abort();
}

/// How a proxy connection arrived.
enum Transport {
    Plain,
    /// Over TLS, with the verified client certificate's thumbprint when one was presented.
    Tls {
        client_cert: Option<Box<str>>,
    },
}

/// What a proxy connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    H2,
}

impl Protocol {
    fn from_h2(h2: bool) -> Protocol {
        if h2 {
            Protocol::H2
        } else {
            Protocol::Http1
        }
    }
}

/// What serving one proxy connection takes.
struct Served {
    thread: Rc<WorkerThread>,
    builder: http1::Builder,
    http2: hyper::server::conn::http2::Builder<h2::LocalExec>,
    /// `[server.http2] max_cancelled_streams`.
    max_cancelled: u32,
    /// The worker's open HTTP/2 streams and `max_streams_per_worker`.
    worker_streams: h2::WorkerStreams,
    /// `portcullis_connections_total{protocol}`: HTTP/1.1, HTTP/2.
    counted: [prometheus::IntCounter; 2],
    expired: Expired,
    metrics: crate::metrics::Metrics,
    timeouts: client_stream::ClientTimeouts,
    peer: SocketAddr,
    accepted: Instant,
}

impl Served {
    /// Serve the connection (plain, or the TLS session over it) until it ends or the drain
    /// closes it.
    async fn connection<S>(
        self,
        stream: S,
        transport: Transport,
        protocol: Protocol,
        entered: Entered,
        stop: watch::Receiver<Stop>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let multiplexed = protocol == Protocol::H2;
        self.counted[usize::from(multiplexed)].inc();
        let stream = match multiplexed {
            false => {
                ClientStream::new(stream, self.timeouts, &self.expired).accepted_at(self.accepted)
            }
            true => ClientStream::multiplexed(stream, self.timeouts, &self.expired),
        };
        let tls = matches!(transport, Transport::Tls { .. });
        let mut conn = Conn::new(stream.shared(), self.peer.ip(), tls);
        if let Transport::Tls { client_cert } = transport {
            conn.client_cert = client_cert;
        }
        if multiplexed {
            conn.streams = Some(h2::Streams::new(self.max_cancelled, self.worker_streams));
        }
        let conn = Rc::new(conn);
        let thread = self.thread;
        if !multiplexed {
            let service = {
                let conn = conn.clone();
                hyper::service::service_fn(move |req| {
                    proxy::serve(thread.current(), conn.clone(), req)
                })
            };
            let connection = self
                .builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let never = std::future::pending();
            let ended = watched(connection, |c| c.graceful_shutdown(), stop, entered, never);
            if let Some(ended) = ended.await {
                parse_refusal(&self.metrics, ended);
            }
            return;
        }
        // Each stream's future is boxed at once: hyper moves it into the stream's task and
        // the task onto the worker, and the request's whole state (several KiB) would be
        // copied at every move.
        let service = {
            let conn = conn.clone();
            hyper::service::service_fn(move |req| {
                Box::pin(proxy::serve(thread.current(), conn.clone(), req))
            })
        };
        let connection = self.http2.serve_connection(TokioIo::new(stream), service);
        let timeouts = self.timeouts;
        let first = timeouts.header.saturating_sub(self.accepted.elapsed());
        let counters = h2::CloseCounters {
            header: self.expired.header,
            send: self.expired.send,
            rapid_reset: self.metrics.http2_rapid_reset_closes.clone(),
        };
        let closing = async move {
            let streams = conn.streams.as_ref().expect("set above");
            h2::until_closing(streams, first, timeouts, counters).await
        };
        drop(
            watched(
                connection,
                |c| c.graceful_shutdown(),
                stop,
                entered,
                closing,
            )
            .await,
        );
    }
}

/// Serve a [`simple::Handler`] on `listener` until `stop` says drain, then drain.
pub async fn run_simple<H: simple::Handler>(
    handler: Rc<H>,
    listener: std::net::TcpListener,
    header_timeout: Duration,
    stop: watch::Receiver<Stop>,
) {
    let builder = server(Some(header_timeout), 64 * 1024 + simple::MAX_URI);
    accept_until_drained(listener, stop, |stream, peer, entered, stop| {
        let handler = handler.clone();
        let service =
            hyper::service::service_fn(move |req| simple::serve(handler.clone(), peer, req));
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let never = std::future::pending();
        let ended = watched(connection, |c| c.graceful_shutdown(), stop, entered, never);
        tokio::task::spawn_local(async move { drop(ended.await) });
    })
    .await;
}

/// Accept on `listener` and hand each connection to `serve` until `stop` says drain; then
/// stop accepting and wait, at most the grace, until every connection has ended.
async fn accept_until_drained(
    listener: std::net::TcpListener,
    mut stop: watch::Receiver<Stop>,
    mut serve: impl FnMut(tokio::net::TcpStream, SocketAddr, Entered, watch::Receiver<Stop>),
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "listener");
            return;
        }
    };
    let live = Live::default();
    let grace = loop {
        if let Stop::Drain(grace) = *stop.borrow_and_update() {
            break grace;
        }
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        serve(stream, peer, live.enter(), stop.clone());
                    }
                    Err(e) => {
                        // Out of file descriptors (or another resource): the pending connection
                        // stays in the backlog and accept would fail again at once. Back off
                        // instead of spinning, so the open connections keep being served.
                        tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            changed = stop.changed() => {
                match (changed, *stop.borrow()) {
                    (Ok(()), Stop::Running) => continue,
                    (Ok(()), Stop::Drain(grace)) => break grace,
                    (Err(_), _) => break Duration::ZERO,
                }
            }
        }
    };
    // Connections the kernel completed before the listener closes are served their request,
    // not reset with the listening socket. (One whose handshake completes between this and the
    // close is still reset: the kernel allows no gentler close of a listening socket.)
    if let Ok(backlog) = listener.into_std() {
        while let Ok((stream, peer)) = backlog.accept() {
            let stream = stream
                .set_nonblocking(true)
                .and_then(|()| tokio::net::TcpStream::from_std(stream));
            if let Ok(stream) = stream {
                let _ = stream.set_nodelay(true);
                serve(stream, peer, live.enter(), stop.clone());
            }
        }
    }
    let _ = tokio::time::timeout(grace, live.drained()).await;
}

/// The connections a listener has open, so that a drain can wait for the last one.
#[derive(Default, Clone)]
struct Live(Rc<(Cell<usize>, Notify)>);

/// One open connection; dropping it says the connection is gone.
struct Entered(Live);

impl Live {
    fn enter(&self) -> Entered {
        self.0 .0.set(self.0 .0.get() + 1);
        Entered(self.clone())
    }

    /// Every connection is gone.
    async fn drained(&self) {
        while self.0 .0.get() > 0 {
            self.0 .1.notified().await;
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let inner = &(self.0).0;
        inner.0.set(inner.0.get() - 1);
        inner.1.notify_one();
    }
}

/// How long a connection is still driven as usual once the drain begins, before it is asked to
/// close (within the grace).
const SETTLE: Duration = Duration::from_millis(500);

/// Drive one connection; once `stop` says drain, drive it [`SETTLE`] more, then ask it to
/// finish its in-flight request and close (`graceful`), and drive it to its end. The settling
/// moment is for a connection accepted just before the drain: its request has usually been
/// sent but not read yet, and hyper would take it for idle and close it unanswered (red team).
/// When `close` is ready first, the connection is asked to close at once and given as long as
/// `close` said to end; beyond, it is dropped (`None`).
async fn watched<C: Future>(
    connection: C,
    graceful: impl FnOnce(Pin<&mut C>),
    mut stop: watch::Receiver<Stop>,
    _entered: Entered,
    close: impl Future<Output = Duration>,
) -> Option<C::Output> {
    let mut connection = pin!(connection);
    let mut close = pin!(close);
    let drained = tokio::select! {
        ended = connection.as_mut() => return Some(ended),
        _ = stop.wait_for(|s| *s != Stop::Running) => true,
        bound = close.as_mut() => {
            graceful(connection.as_mut());
            return tokio::time::timeout(bound, connection).await.ok();
        }
    };
    debug_assert!(drained);
    let settle = match *stop.borrow() {
        Stop::Drain(grace) => grace.min(SETTLE),
        Stop::Running => Duration::ZERO,
    };
    // While draining, `close` is still watched: an HTTP/2 client that cancels too much or
    // stalls is not kept for the rest of the grace.
    let bound = tokio::select! {
        ended = connection.as_mut() => return Some(ended),
        _ = tokio::time::sleep(settle) => None,
        bound = close.as_mut() => Some(bound),
    };
    graceful(connection.as_mut());
    let bound = match bound {
        Some(bound) => bound,
        None => tokio::select! {
            ended = connection.as_mut() => return Some(ended),
            bound = close.as_mut() => bound,
        },
    };
    tokio::time::timeout(bound, connection).await.ok()
}

/// A head hyper's parser refused, and answered itself (400, 414 or 431), never reached the
/// service: count and log it here, as the service does every other request.
fn parse_refusal(metrics: &crate::metrics::Metrics, ended: Result<(), hyper::Error>) {
    let Err(e) = ended else { return };
    let status = if e.is_parse_too_large() {
        // hyper says which of the two it answered only in its message.
        if e.to_string().contains("URI") {
            414
        } else {
            431
        }
    } else if e.is_parse() || e.is_parse_version_h2() {
        400
    } else {
        return;
    };
    proxy::log_refused_head(metrics, status);
}

/// Build the runtime of one worker or of the background thread.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Worker `index`'s state ([`proxy::WorkerThread`]), following `live` across reloads.
pub fn worker(
    live: Arc<crate::live::Live<proxy::Shared>>,
    pool: pool::PoolSettings,
    index: usize,
) -> Rc<WorkerThread> {
    Rc::new(WorkerThread::new(live, pool::Pool::new(pool), index))
}
