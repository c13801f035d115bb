//! A worker's own pool of upstream connections: no lock, no channel, no other thread.
//!
//! HTTP/1.1: each connection is a hyper client connection whose driver runs as a task on the
//! worker. A connection is taken for one request and given back on its response body's last
//! frame ([`Checkout::release`]); one whose body failed or was abandoned is dropped, which
//! closes it. Idle connections are kept per upstream, at most `max_idle` each, for at most
//! `idle_timeout`.
//!
//! HTTP/2 (`upstream_protocol = "http2"`, prior knowledge): one connection per upstream address
//! and worker carries every stream to it; each request takes a clone of its sender. It is
//! replaced when it closes (the upstream's GOAWAY, an error), and dropped after `idle_timeout`
//! without a request; streams still open on it keep it until they end.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::body::ClientBody;
use super::stall::WriteStall;
use crate::config::UpstreamProtocol;

/// `[upstream]` settings the pool applies.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    /// Idle connections kept per upstream and worker.
    pub max_idle: usize,
}

/// Why a new upstream connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    Timeout,
    Refused(io::Error),
    Handshake(hyper::Error),
}

struct Idle {
    sender: http1::SendRequest<ClientBody>,
    since: Instant,
}

/// An HTTP/2 connection's sender, and when a request last took it.
struct Multiplexed {
    sender: http2::SendRequest<ClientBody>,
    used: Instant,
}

/// One worker's upstream connections.
pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    multiplexed: RefCell<HashMap<SocketAddr, Multiplexed>>,
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
    addr: SocketAddr,
    pub sender: Sender,
    /// It came from the pool (and may have been closed by the upstream meanwhile).
    pub reused: bool,
}

impl Checkout {
    /// The response is complete: an HTTP/1.1 connection may serve the next request. (An
    /// HTTP/2 one stays in the pool throughout; this clone of its sender goes.)
    pub fn release(self) {
        if let Sender::Http1(sender) = self.sender {
            self.pool.put(self.addr, sender);
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

    /// An idle (HTTP/1.1) or the shared (HTTP/2) connection to `addr`, or a new one.
    pub async fn checkout(
        self: &Rc<Self>,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
    ) -> Result<Checkout, ConnectError> {
        let pooled = match protocol {
            UpstreamProtocol::Http1 => self.take(addr).map(Sender::Http1),
            UpstreamProtocol::Http2 => self.share(addr).map(Sender::Http2),
        };
        if let Some(sender) = pooled {
            return Ok(Checkout {
                pool: self.clone(),
                addr,
                sender,
                reused: true,
            });
        }
        self.connect(addr, protocol).await
    }

    /// A new connection to `addr`, whatever is pooled. A new HTTP/2 connection replaces the
    /// pooled one for the requests that follow.
    pub async fn connect(
        self: &Rc<Self>,
        addr: SocketAddr,
        protocol: UpstreamProtocol,
    ) -> Result<Checkout, ConnectError> {
        let stream = tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Refused)?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(WriteStall::new(stream, self.settings.write_timeout, None));
        let sender = match protocol {
            UpstreamProtocol::Http1 => {
                let (sender, connection) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(ConnectError::Handshake)?;
                tokio::task::spawn_local(async move {
                    let _ = connection.with_upgrades().await;
                });
                Sender::Http1(sender)
            }
            UpstreamProtocol::Http2 => {
                let (sender, connection) = http2::Builder::new(super::h2::LocalExec)
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(ConnectError::Handshake)?;
                tokio::task::spawn_local(async move {
                    let _ = connection.await;
                });
                self.multiplexed.borrow_mut().insert(
                    addr,
                    Multiplexed {
                        sender: sender.clone(),
                        used: Instant::now(),
                    },
                );
                Sender::Http2(sender)
            }
        };
        Ok(Checkout {
            pool: self.clone(),
            addr,
            sender,
            reused: false,
        })
    }

    /// A clone of the open HTTP/2 connection to `addr`'s sender.
    fn share(&self, addr: SocketAddr) -> Option<http2::SendRequest<ClientBody>> {
        let mut shared = self.multiplexed.borrow_mut();
        let conn = shared.get_mut(&addr)?;
        if conn.sender.is_closed() {
            shared.remove(&addr);
            return None;
        }
        conn.used = Instant::now();
        Some(conn.sender.clone())
    }

    /// The most recently used idle connection to `addr` that is still open and young enough.
    fn take(&self, addr: SocketAddr) -> Option<http1::SendRequest<ClientBody>> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(conn) = list.pop() {
            if !conn.sender.is_closed() && now - conn.since < self.settings.idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    }

    fn put(&self, addr: SocketAddr, sender: http1::SendRequest<ClientBody>) {
        if sender.is_closed() || self.settings.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
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
    /// of HTTP/2 connections no request took for `idle_timeout`. The worker runs this every
    /// second.
    pub fn sweep(&self) {
        let now = Instant::now();
        let timeout = self.settings.idle_timeout;
        for list in self.idle.borrow_mut().values_mut() {
            list.retain(|c| !c.sender.is_closed() && now - c.since < timeout);
        }
        self.multiplexed
            .borrow_mut()
            .retain(|_, c| !c.sender.is_closed() && now - c.used < timeout);
    }
}
