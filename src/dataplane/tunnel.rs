//! An upgraded connection (`Upgrade: websocket`, RFC 6455 §4): once hyper has written the 101
//! to the client and read it from the upstream, both sides are handed over as raw byte
//! streams and copied both ways until either side closes.
//!
//! hyper resolves the client's side only after the 101 has been written and the request's
//! (empty) body has ended, and the upstream's only after the 101 has been read, in whichever
//! order they happen: the race in which pingora 0.9.1 closed 1-2% of tunnels
//! (cloudflare/pingora#946) does not arise.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::pool::Checkout;

/// Copy between the two upgraded sides on the worker, until either closes.
pub fn spawn(client: OnUpgrade, upstream: OnUpgrade, checkout: Checkout) {
    tokio::task::spawn_local(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        // The upstream connection is the tunnel now: it never goes back to the pool.
        drop(checkout);
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
}
