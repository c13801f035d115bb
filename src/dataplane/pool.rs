//! A worker's own pool of upstream connections: no lock, no channel, no other thread.
//!
//! Each connection is a hyper HTTP/1.1 client connection whose driver runs as a task on the
//! worker. A connection is taken for one request and given back on its response body's last
//! frame ([`Checkout::release`]); one whose body failed or was abandoned is dropped, which
//! closes it. Idle connections are kept per upstream, at most `max_idle` each, for at most
//! `idle_timeout`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::ClientBody;
use super::stall::WriteStall;

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
    sender: SendRequest<ClientBody>,
    since: Instant,
}

/// One worker's upstream connections.
pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
    settings: PoolSettings,
}

/// A connection taken for one request.
pub struct Checkout {
    pool: Rc<Pool>,
    addr: SocketAddr,
    pub sender: SendRequest<ClientBody>,
    /// It came from the pool (and may have been closed by the upstream meanwhile).
    pub reused: bool,
}

impl Checkout {
    /// The response is complete: the connection may serve the next request.
    pub fn release(self) {
        self.pool.put(self.addr, self.sender);
    }
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Rc<Pool> {
        Rc::new(Pool {
            idle: RefCell::default(),
            settings,
        })
    }

    /// An idle connection to `addr`, or a new one.
    pub async fn checkout(self: &Rc<Self>, addr: SocketAddr) -> Result<Checkout, ConnectError> {
        if let Some(sender) = self.take(addr) {
            return Ok(Checkout {
                pool: self.clone(),
                addr,
                sender,
                reused: true,
            });
        }
        self.connect(addr).await
    }

    /// A new connection to `addr`, whatever is idle.
    pub async fn connect(self: &Rc<Self>, addr: SocketAddr) -> Result<Checkout, ConnectError> {
        let stream = tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ConnectError::Timeout)?
            .map_err(ConnectError::Refused)?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(WriteStall::new(stream, self.settings.write_timeout, None));
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(ConnectError::Handshake)?;
        tokio::task::spawn_local(async move {
            let _ = connection.with_upgrades().await;
        });
        Ok(Checkout {
            pool: self.clone(),
            addr,
            sender,
            reused: false,
        })
    }

    /// The most recently used idle connection to `addr` that is still open and young enough.
    fn take(&self, addr: SocketAddr) -> Option<SendRequest<ClientBody>> {
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

    fn put(&self, addr: SocketAddr, sender: SendRequest<ClientBody>) {
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

    /// Close idle connections that are older than `idle_timeout` or already closed. The worker
    /// runs this every second.
    pub fn sweep(&self) {
        let now = Instant::now();
        let timeout = self.settings.idle_timeout;
        for list in self.idle.borrow_mut().values_mut() {
            list.retain(|c| !c.sender.is_closed() && now - c.since < timeout);
        }
    }
}
