//! The load benchmark's bound: hyper forwarding with nothing else, on one current-thread
//! runtime with a pool of upstream connections, built with the same hyper, allocator and
//! socket settings as Portcullis. Portcullis's own work is the difference between its
//! scenarios and this one.
//!
//! `load_bare_hyper <listen addr> <upstream addr>`; runs until killed.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Pool = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

/// Forward one request; the connection goes back to the pool when the response head is in
/// (the bench's upstream answers small bodies, so the next taker's `ready()` waits little).
async fn forward(
    pool: Pool,
    upstream: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, hyper::Error> {
    let pooled = pool.borrow_mut().pop();
    let mut sender = match pooled {
        Some(s) if !s.is_closed() => s,
        _ => {
            let stream = TcpStream::connect(upstream).await.expect("upstream");
            let _ = stream.set_nodelay(true);
            let (sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::task::spawn_local(conn);
            sender
        }
    };
    sender.ready().await?;
    let response = sender.send_request(req).await?;
    pool.borrow_mut().push(sender);
    Ok(response)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: load_bare_hyper <listen addr> <upstream addr>");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("listen address");
    let upstream: SocketAddr = upstream.parse().expect("upstream address");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(listen).await.expect("listen");
        let pool: Pool = Rc::default();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let pool = pool.clone();
            let service =
                hyper::service::service_fn(move |req| forward(pool.clone(), upstream, req));
            tokio::task::spawn_local(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
}
