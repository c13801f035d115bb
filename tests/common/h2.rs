//! HTTP/2 by hand, for the cases no well-behaved client can send: frames (RFC 9113 §4) and the
//! few HPACK representations the attacks need (RFC 7541), written and read on a raw socket.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
/// SETTINGS_INITIAL_WINDOW_SIZE (RFC 9113 §6.5.2).
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

/// `ENHANCE_YOUR_CALM` (RFC 9113 §7).
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const CANCEL: u32 = 0x8;

/// One frame: its 9-byte header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, `flags` in the first byte's high bits (§5.1).
pub fn integer(flags: u8, n: u8, value: usize) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if value < max {
        return vec![flags | value as u8];
    }
    let mut out = vec![flags | max as u8];
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
    out
}

fn string(bytes: &[u8]) -> Vec<u8> {
    let mut out = integer(0, 7, bytes.len());
    out.extend(bytes);
    out
}

/// A literal field without indexing, with a new name (§6.2.2): `0x00`, name, value.
pub fn literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(string(name.as_bytes()));
    out.extend(string(value));
    out
}

/// A literal field added to the dynamic table, with a new name (§6.2.1).
pub fn indexed_literal(name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x40];
    out.extend(string(name.as_bytes()));
    out.extend(string(value));
    out
}

/// A request's header block: `method`, `:scheme http`, `path`, `authority`, then `fields`.
pub fn request(method: &str, path: &str, authority: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = literal(":method", method.as_bytes());
    out.extend(literal(":scheme", b"http"));
    out.extend(literal(":path", path.as_bytes()));
    if !authority.is_empty() {
        out.extend(literal(":authority", authority.as_bytes()));
    }
    for (name, value) in fields {
        out.extend(literal(name, value.as_bytes()));
    }
    out
}

/// A frame read back.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A GOAWAY's or RST_STREAM's error code.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            GOAWAY => 4,
            RST_STREAM => 0,
            _ => return None,
        };
        let code = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes(code.try_into().ok()?))
    }
}

/// A raw HTTP/2 connection (prior knowledge) to the gateway.
pub struct Raw {
    pub stream: TcpStream,
}

impl Raw {
    /// Connect, send the preface and an empty SETTINGS.
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw::connect_with(addr, &[]).await
    }

    /// Connect, send the preface and SETTINGS with these `(identifier, value)` pairs.
    pub async fn connect_with(addr: SocketAddr, settings: &[(u16, u32)]) -> Raw {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let payload: Vec<u8> = settings
            .iter()
            .flat_map(|(id, value)| {
                [id.to_be_bytes().to_vec(), value.to_be_bytes().to_vec()].concat()
            })
            .collect();
        let hello = [PREFACE.to_vec(), frame(SETTINGS, 0, 0, &payload)].concat();
        stream.write_all(&hello).await.unwrap();
        Raw { stream }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Send a request without a body: one HEADERS frame with END_HEADERS and END_STREAM.
    pub async fn request(&mut self, stream: u32, block: &[u8]) {
        let frame = frame(HEADERS, END_HEADERS | END_STREAM, stream, block);
        self.send(&frame).await.unwrap();
    }

    /// The next frame, answering SETTINGS and PING as a client must; `None` at the end of the
    /// connection (or a reset), or when nothing comes within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Option<Frame> {
        loop {
            let mut head = [0u8; 9];
            let read = tokio::time::timeout(wait, self.stream.read_exact(&mut head)).await;
            if !matches!(read, Ok(Ok(_))) {
                return None;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            let read = tokio::time::timeout(wait, self.stream.read_exact(&mut payload)).await;
            if !matches!(read, Ok(Ok(_))) {
                return None;
            }
            let f = Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]),
                payload,
            };
            match f.kind {
                SETTINGS if f.flags & ACK == 0 => {
                    let _ = self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                PING if f.flags & ACK == 0 => {
                    let _ = self.send(&frame(PING, ACK, 0, &f.payload)).await;
                }
                _ => return Some(f),
            }
        }
    }

    /// Frames until `done` says so or the connection ends; all of them.
    pub async fn until(
        &mut self,
        wait: Duration,
        mut done: impl FnMut(&Frame) -> bool,
    ) -> Vec<Frame> {
        let mut seen = Vec::new();
        while let Some(f) = self.next(wait).await {
            let stop = done(&f);
            seen.push(f);
            if stop {
                break;
            }
        }
        seen
    }

    /// Read until the gateway closes the connection (or `wait` passes with nothing): the
    /// frames, and whether it was closed.
    pub async fn read_to_close(&mut self, wait: Duration) -> (Vec<Frame>, bool) {
        let mut seen = Vec::new();
        loop {
            let mut head = [0u8; 9];
            match tokio::time::timeout(wait, self.stream.read_exact(&mut head)).await {
                Err(_) => return (seen, false),
                Ok(Err(_)) => return (seen, true),
                Ok(Ok(_)) => {}
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0; len];
            if self.stream.read_exact(&mut payload).await.is_err() {
                return (seen, true);
            }
            seen.push(Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]),
                payload,
            });
        }
    }
}

/// The status of a response header block the gateway's HPACK encoder wrote: `:status` is the
/// first field, either a static-table entry (RFC 7541 Appendix A) or a literal with the
/// `:status` name whose value is plain digits or Huffman-coded digits.
pub fn status(block: &[u8]) -> Option<u16> {
    let statics = [
        (0x88, 200),
        (0x89, 204),
        (0x8a, 206),
        (0x8b, 304),
        (0x8c, 400),
        (0x8d, 404),
        (0x8e, 500),
    ];
    if let Some((_, s)) = statics.iter().find(|(b, _)| *b == block[0]) {
        return Some(*s);
    }
    // A literal with indexed name 8 (`:status`), any of the three literal kinds.
    let name_index = match block[0] {
        b if b & 0xc0 == 0x40 => b & 0x3f,
        b if b & 0xf0 == 0x00 || b & 0xf0 == 0x10 => b & 0x0f,
        _ => return None,
    };
    if name_index != 8 {
        return None;
    }
    let (huffman, len) = (block[1] & 0x80 != 0, (block[1] & 0x7f) as usize);
    let value = block.get(2..2 + len)?;
    let digits = if huffman {
        huffman_digits(value)?
    } else {
        value.to_vec()
    };
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Decode a Huffman string of digits only (RFC 7541 Appendix B: '0'-'2' are 5 bits, '3'-'9'
/// are 6 bits).
fn huffman_digits(bytes: &[u8]) -> Option<Vec<u8>> {
    let codes: [(u32, u8); 10] = [
        (0x0, 5),
        (0x1, 5),
        (0x2, 5),
        (0x19, 6),
        (0x1a, 6),
        (0x1b, 6),
        (0x1c, 6),
        (0x1d, 6),
        (0x1e, 6),
        (0x1f, 6),
    ];
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = Vec::new();
    let mut at = 0;
    'next: while at < bits.len() {
        for (digit, (code, len)) in codes.iter().enumerate() {
            let len = *len as usize;
            if at + len > bits.len() {
                continue;
            }
            let value = bits[at..at + len]
                .iter()
                .fold(0u32, |v, b| v << 1 | u32::from(*b));
            if value == *code {
                out.push(b'0' + digit as u8);
                at += len;
                continue 'next;
            }
        }
        // The rest must be padding: all ones, shorter than a byte.
        return (bits.len() - at < 8 && bits[at..].iter().all(|b| *b == 1)).then_some(out);
    }
    Some(out)
}

/// The gateway process's resident memory (kB) and CPU time used (user + system, in clock
/// ticks), from /proc.
pub fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command's closing parenthesis: utime is the 14th field, stime the 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let cpu = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    (rss, cpu)
}

/// A connection of the h2 crate to `addr`, ready for a stream: for heads and bodies a client
/// library would not send (a Host beside `:authority`, trailers, a reset mid-call).
pub async fn client(addr: SocketAddr) -> ::h2::client::SendRequest<bytes::Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = ::h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    client.ready().await.unwrap()
}

/// Read a response body of the h2 crate to its end, giving its window back as it goes.
pub async fn read_body(body: &mut ::h2::RecvStream) -> Vec<u8> {
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    text
}

/// A plain HTTP/2 server (prior knowledge) answering each request with its HTTP version,
/// `:scheme` and `:authority` (`HTTP/2.0 http host:port`), to see the target the gateway sends.
pub async fn target_echo() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service =
                hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| {
                    let uri = req.uri();
                    let body = format!(
                        "{:?} {} {}",
                        req.version(),
                        uri.scheme_str().unwrap_or("-"),
                        uri.authority().map_or("-", |a| a.as_str())
                    );
                    async move {
                        let body = http_body_util::Full::new(bytes::Bytes::from(body));
                        Ok::<_, std::convert::Infallible>(http::Response::new(body))
                    }
                });
            serve(tcp, service);
        }
    });
    addr
}

/// Serve one accepted connection as a plain HTTP/2 server (prior knowledge), on a task.
pub fn serve<S, B>(tcp: TcpStream, service: S)
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let builder =
            hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
        let _ = builder
            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
            .await;
    });
}

/// A raw HTTP/2 upstream on 127.0.0.1:0, for upstreams no server library would be: each
/// connection that begins with the client preface (the gateway's health checks send none) is
/// handed to `serve`, the preface read. Returns its address.
pub async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(Raw) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = std::sync::Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let serve = serve.clone();
            tokio::spawn(async move {
                let mut upstream = Raw { stream: tcp };
                let mut preface = [0u8; 24];
                if upstream.stream.read_exact(&mut preface).await.is_ok() && preface == PREFACE {
                    serve(upstream).await;
                }
            });
        }
    });
    addr
}
