//! Small request-answer services on the data plane's server: the decision endpoint, the admin
//! listener and `portcullis dev`'s issuer and demo upstream. A request body is read whole, up
//! to 64 KiB (more is 413); the answer is made whole.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::body::ResBody;
use crate::response::Synthetic;

/// The largest request target a simple listener reads (the decision endpoint's own limit is
/// `max_uri_bytes`, on the original URI it is asked about).
pub const MAX_URI: usize = 1 << 20;

/// The largest request body a simple listener reads.
const MAX_BODY: usize = 64 * 1024;

/// The client's address, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// A service that answers each request whole.
pub trait Handler: 'static {
    fn handle(&self, req: Request<Bytes>) -> impl Future<Output = Response<Bytes>>;
}

/// Read the body (bounded), then ask the handler.
pub async fn serve<H: Handler>(
    handler: Rc<H>,
    peer: std::net::SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<ResBody>, std::convert::Infallible> {
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(Peer(peer));
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(Synthetic::body_too_large().render()),
    };
    let response = handler.handle(Request::from_parts(parts, body)).await;
    Ok(response.map(ResBody::full))
}
