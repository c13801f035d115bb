//! The load benchmark's bound: a pingora reverse proxy that does nothing but forward, built with
//! the same pingora, allocator and server settings as Portcullis (one thread).
//! Portcullis's own work is the difference between its scenarios and this one.
//!
//! `load_bare_pingora <listen addr> <upstream addr>`; runs until killed.

use std::net::SocketAddr;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare(SocketAddr);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: load_bare_pingora <listen addr> <upstream addr>");
        std::process::exit(2);
    };
    let upstream: SocketAddr = upstream.parse().expect("upstream is an ip:port");
    let conf = ServerConf {
        threads: 1,
        upstream_keepalive_pool_size: 512,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = http_proxy_service(&server.configuration, Bare(upstream));
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
