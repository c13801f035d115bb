//! Every request head on a client connection, as it arrived.
//!
//! hyper's parsed request hides three things the gateway refuses (RFC 9112 §3.2, §6.1, RFC
//! 9110 §8.6): a `#` fragment in the target (the `http` crate drops it), a `Content-Length`
//! beside `Transfer-Encoding` (hyper drops the length) and several equal `Content-Length`
//! lines (hyper keeps one). [`HeadTracker`] reads the connection's bytes in the order hyper
//! reads them and follows the same framing hyper does: a head up to its blank line (`\n\n` or
//! `\n\r\n`, after any empty lines), then a body of `Content-Length` bytes or chunked (sizes,
//! data, trailers), then the next head. So the n-th head it finds is the n-th request hyper
//! parses, pipelined or not, however the bytes were split into segments.
//!
//! If the bytes cannot be framed as hyper frames them (a malformed chunk, a head too large),
//! the tracker is lost and says so: every later request on the connection is refused.

use std::collections::VecDeque;

/// The largest head kept: the largest `max_uri_bytes` and `max_header_bytes` (1 MiB each) and
/// a little more; a larger one is refused by the parser.
pub const MAX_HEAD: usize = (2 << 20) + 4096;

/// A head's facts that its parsed form lost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Notable {
    /// The request line as it arrived, when it held a `#`.
    pub fragment_line: Option<Vec<u8>>,
    /// The head had both `Content-Length` and `Transfer-Encoding` lines.
    pub length_beside_chunked: bool,
    /// The head's `Content-Length` lines.
    pub length_lines: usize,
}

/// What one head said, for the request hyper parses from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// `None` for the common head that hides nothing.
    pub notable: Option<Box<Notable>>,
}

/// Where the tracker is. The chunked states are hyper's own (`proto::h1::decode`), byte for
/// byte, with its limits: 16 KiB of chunk extensions, 16 KiB and 100 lines of trailers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a head.
    Head,
    /// This many body bytes are left.
    Length(u64),
    /// A chunk-size line: the first hex digit, more digits (the size so far), whitespace after
    /// them, an extension (its length so far), the LF after the CR.
    ChunkStart,
    ChunkSize(u64),
    ChunkSizeLws(u64),
    ChunkExtension(u64, u64),
    ChunkSizeLf(u64),
    /// This many bytes of chunk data are left, then CR LF.
    ChunkData(u64),
    ChunkDataCr,
    ChunkDataLf,
    /// After the last chunk: the CR that ends the body, or a trailer line; `bytes` and `lines`
    /// of trailers so far.
    EndCr {
        bytes: usize,
        lines: usize,
    },
    EndLf,
    Trailer {
        bytes: usize,
        lines: usize,
    },
    TrailerLf {
        bytes: usize,
        lines: usize,
    },
    /// Framing not followed: no later head can be trusted.
    Lost,
}

/// hyper's limits on what it reads of a chunked body beside the data.
const MAX_EXTENSION_BYTES: u64 = 16 * 1024;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
const MAX_TRAILER_LINES: usize = 100;

/// Follows a client connection's bytes head by head ([module docs](self)).
#[derive(Debug)]
pub struct HeadTracker {
    state: State,
    head: Vec<u8>,
    /// Heads found, not yet asked for.
    found: VecDeque<Head>,
}

impl Default for HeadTracker {
    fn default() -> HeadTracker {
        HeadTracker {
            state: State::Head,
            head: Vec::new(),
            found: VecDeque::new(),
        }
    }
}

/// How the body after a head is framed, as hyper frames a request's.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// hyper refuses such a head.
    Bad,
}

impl HeadTracker {
    /// The next head's facts, for the request hyper parsed from it; `None` when the tracker is
    /// lost (or behind, which cannot happen: hyper reads only what this has seen).
    pub fn next_head(&mut self) -> Option<Head> {
        self.found.pop_front()
    }

    /// Follow `bytes`, read from the connection in order.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let used = match self.state {
                State::Lost => return,
                State::Head => self.feed_head(bytes),
                State::Length(left) | State::ChunkData(left) => {
                    let take = left.min(bytes.len() as u64);
                    let chunked = matches!(self.state, State::ChunkData(_));
                    self.state = match (left - take, chunked) {
                        (0, false) => State::Head,
                        (0, true) => State::ChunkDataCr,
                        (rest, false) => State::Length(rest),
                        (rest, true) => State::ChunkData(rest),
                    };
                    take as usize
                }
                state => {
                    self.state = chunked_step(state, bytes[0]);
                    1
                }
            };
            bytes = &bytes[used..];
        }
    }

    /// Collect head bytes; returns how many of `bytes` were used.
    fn feed_head(&mut self, bytes: &[u8]) -> usize {
        // Empty lines before a request line are skipped, as hyper skips them.
        let mut start = 0;
        if self.head.is_empty() {
            start = bytes
                .iter()
                .position(|&b| b != b'\r' && b != b'\n')
                .unwrap_or(bytes.len());
            if start == bytes.len() {
                return start;
            }
        }
        // The blank line may straddle reads: search from a few bytes back.
        let from = self.head.len().saturating_sub(2);
        let before = self.head.len();
        let room = MAX_HEAD.saturating_sub(before);
        let chunk = &bytes[start..];
        self.head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        // memchr: the head is scanned for line ends many bytes at a time (a bearer token makes
        // it close to a kilobyte).
        let end = memchr::memchr_iter(b'\n', &self.head[from..]).find_map(|i| {
            match &self.head[from + i + 1..] {
                [b'\n', ..] => Some(from + i + 2),
                [b'\r', b'\n', ..] => Some(from + i + 3),
                _ => None,
            }
        });
        let Some(end) = end else {
            if chunk.len() > room {
                self.state = State::Lost;
            }
            return bytes.len();
        };
        let used = start + (end - before);
        self.head.truncate(end);
        let (framing, notable) = inspect(&self.head);
        self.found.push_back(Head {
            notable: notable.map(Box::new),
        });
        self.state = match framing {
            Framing::None | Framing::Length(0) => State::Head,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::ChunkStart,
            Framing::Bad => State::Lost,
        };
        if self.head.capacity() > 16 * 1024 {
            self.head = Vec::new();
        }
        self.head.clear();
        used
    }
}

/// One byte of a chunked body outside its data, as hyper's decoder takes it (RFC 9112 §7.1).
fn chunked_step(state: State, b: u8) -> State {
    let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
    let grow = |size: u64, digit: u64| size.checked_mul(16)?.checked_add(digit);
    match (state, b) {
        (State::ChunkStart, b) => match hex(b).and_then(|d| grow(0, d)) {
            Some(size) => State::ChunkSize(size),
            None => State::Lost,
        },
        (State::ChunkSize(size), b) if hex(b).is_some() => {
            match hex(b).and_then(|d| grow(size, d)) {
                Some(size) => State::ChunkSize(size),
                None => State::Lost,
            }
        }
        (State::ChunkSize(size) | State::ChunkSizeLws(size), b' ' | b'\t') => {
            State::ChunkSizeLws(size)
        }
        (State::ChunkSize(size) | State::ChunkSizeLws(size), b';') => {
            State::ChunkExtension(size, 0)
        }
        (State::ChunkSize(size) | State::ChunkSizeLws(size), b'\r') => State::ChunkSizeLf(size),
        (State::ChunkExtension(size, _), b'\r') => State::ChunkSizeLf(size),
        (State::ChunkExtension(_, _), b'\n') => State::Lost,
        (State::ChunkExtension(size, n), _) if n + 1 < MAX_EXTENSION_BYTES => {
            State::ChunkExtension(size, n + 1)
        }
        (State::ChunkSizeLf(0), b'\n') => State::EndCr { bytes: 0, lines: 0 },
        (State::ChunkSizeLf(size), b'\n') => State::ChunkData(size),
        (State::ChunkDataCr, b'\r') => State::ChunkDataLf,
        (State::ChunkDataLf, b'\n') => State::ChunkStart,
        (State::EndCr { .. }, b'\r') => State::EndLf,
        (State::EndCr { bytes, lines } | State::Trailer { bytes, lines }, b) => {
            if bytes + 1 > MAX_TRAILER_BYTES {
                State::Lost
            } else if b == b'\r' {
                State::TrailerLf {
                    bytes: bytes + 1,
                    lines,
                }
            } else {
                State::Trailer {
                    bytes: bytes + 1,
                    lines,
                }
            }
        }
        (State::TrailerLf { bytes, lines }, b'\n') if lines < MAX_TRAILER_LINES => State::EndCr {
            bytes: bytes + 1,
            lines: lines + 1,
        },
        (State::EndLf, b'\n') => State::Head,
        _ => State::Lost,
    }
}

/// The framing hyper applies to a request with this head, and what the head hides.
fn inspect(head: &[u8]) -> (Framing, Option<Notable>) {
    let line_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
    let line = &head[..(line_end + 1).min(head.len())];
    let http_10 = line.windows(8).any(|w| w == b"HTTP/1.0");
    let (mut lengths, mut te, mut chunked) = (Vec::new(), false, false);
    // The field lines, as `split` on `\n` gives them (the last one after the last `\n`), found
    // with memchr: a field value such as a bearer token is hundreds of bytes.
    let fields = &head[(line_end + 1).min(head.len())..];
    let ends = memchr::memchr_iter(b'\n', fields).chain(std::iter::once(fields.len()));
    let mut start = 0;
    for end in ends {
        let field = &fields[start..end];
        start = end + 1;
        let Some(colon) = memchr::memchr(b':', field) else {
            continue;
        };
        let name = &field[..colon];
        let value = trim(&field[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths.push(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            te = true;
            // hyper: chunked when the last coding of the last line is `chunked`.
            let last = value.rsplit(|&b| b == b',').next().map(trim);
            chunked = last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        }
    }
    let framing = if te {
        match (chunked, http_10) {
            (true, false) => Framing::Chunked,
            _ => Framing::Bad,
        }
    } else if let Some(first) = lengths.first() {
        let parse = |v: &[u8]| -> Option<u64> {
            (!v.is_empty() && v.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(v).ok()?.parse().ok())
                .flatten()
        };
        match parse(first) {
            Some(n) if lengths.iter().all(|v| parse(v) == Some(n)) => Framing::Length(n),
            _ => Framing::Bad,
        }
    } else {
        Framing::None
    };
    let fragment = line.contains(&b'#').then(|| line.to_vec());
    let cl = lengths.len();
    let notable = (fragment.is_some() || (cl > 0 && te) || cl > 1).then_some(Notable {
        fragment_line: fragment,
        length_beside_chunked: cl > 0 && te,
        length_lines: cl,
    });
    (framing, notable)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|&b| !matches!(b, b' ' | b'\t' | b'\r'));
    let end = v.iter().rposition(|&b| !matches!(b, b' ' | b'\t' | b'\r'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `bytes` split at every position: the heads found are the same.
    fn heads_at_every_split(bytes: &[u8]) -> Vec<Option<Notable>> {
        let mut whole = HeadTracker::default();
        whole.feed(bytes);
        let want: Vec<_> = whole
            .found
            .drain(..)
            .map(|h| h.notable.map(|n| *n))
            .collect();
        for split in 0..bytes.len() {
            let mut t = HeadTracker::default();
            t.feed(&bytes[..split]);
            t.feed(&bytes[split..]);
            let got: Vec<_> = t.found.drain(..).map(|h| h.notable.map(|n| *n)).collect();
            assert_eq!(got, want, "split at {split}");
        }
        want
    }

    #[test]
    fn pipelined_heads_are_found_through_bodies_of_every_framing() {
        let stream = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\
            POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
            POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n\
            3;ext=1\r\nabc\r\n0\r\nx-t: 1\r\n\r\n\
            POST /d HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello\
            GET /e#x HTTP/1.1\nHost: h\n\r\n";
        let heads = heads_at_every_split(stream);
        assert_eq!(heads.len(), 5);
        assert_eq!(heads[..3], [None, None, None]);
        assert_eq!(heads[3].as_ref().unwrap().length_lines, 2);
        assert!(heads[4].as_ref().unwrap().fragment_line.is_some());
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_a_body() {
        // A POST whose body is a clean head, then the smuggling head: the tracker finds the
        // second as a head, not the body.
        let decoy = b"GET /f HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut stream = format!(
            "POST /e HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            decoy.len()
        )
        .into_bytes();
        stream.extend_from_slice(decoy);
        stream.extend_from_slice(
            b"POST /s HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        let heads = heads_at_every_split(&stream);
        assert_eq!(heads.len(), 2);
        assert!(heads[1].as_ref().unwrap().length_beside_chunked);
    }

    #[test]
    fn head_endings_and_leading_empty_lines_follow_hyper() {
        let heads = heads_at_every_split(
            b"\r\n\nPOST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\n\r\n0\r\n\r\n",
        );
        assert!(heads[0].as_ref().unwrap().length_beside_chunked);
    }

    #[test]
    fn framing_it_cannot_follow_loses_the_tracker() {
        for bad in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            let mut t = HeadTracker::default();
            t.feed(bad);
            t.feed(b"GET / HTTP/1.1\r\n\r\n");
            assert_eq!(t.state, State::Lost, "{}", String::from_utf8_lossy(bad));
            assert!(t.found.len() <= 1, "nothing after is trusted");
        }
    }

    #[test]
    fn chunk_framing_follows_hyper_byte_for_byte() {
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let next = b"GET /next#x HTTP/1.1\r\n\r\n";
        // (body, followed): hyper reads these to their end, and the next head is found.
        for (body, followed) in [
            (&b"1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n"[..], true),
            (b"5 ;x=\"y\"\r\nhello\r\n0\r\n\r\n", true),
            (
                b"00000000000000005\r\nhello\r\n00000000000000000\r\n\r\n",
                true,
            ),
            (b"0\r\nX: y\r\nZ: w\r\n\r\n", true),
            // A bare LF in the trailers is a trailer byte: only CRLF CRLF ends them, so the
            // "next head" is a trailer line here, as hyper reads it.
            (b"0\r\n\nX: y\r\n\r\n", true),
            (b"5\nhello\r\n0\r\n\r\n", false),
            (b"\r\n", false),
            (b"x\r\n", false),
            (b"5 x\r\nhello\r\n0\r\n\r\n", false),
            (b"5;a\nb\r\nhello\r\n0\r\n\r\n", false),
            (b"3\r\nabcXY", false),
            (b"11111111111111111\r\n", false),
        ] {
            let mut bytes = head.clone();
            bytes.extend_from_slice(body);
            bytes.extend_from_slice(next);
            let mut t = HeadTracker::default();
            t.feed(&bytes);
            let found = t.found.len();
            assert_eq!(found == 2, followed, "{}", String::from_utf8_lossy(body));
            if !followed {
                assert_eq!(t.state, State::Lost, "{}", String::from_utf8_lossy(body));
            }
        }
        // The bare-LF trailer case: the would-be head is swallowed as a trailer, as hyper does,
        // and the head after the real end of the trailers is found.
        let mut t = HeadTracker::default();
        t.feed(&head);
        t.feed(b"0\r\n\nX: y\r\nGET /swallowed HTTP/1.1\r\n\r\nGET /real#x HTTP/1.1\r\n\r\n");
        assert_eq!(t.found.len(), 2);
        assert!(t.found[1]
            .notable
            .as_ref()
            .unwrap()
            .fragment_line
            .as_ref()
            .unwrap()
            .starts_with(b"GET /real"));
    }

    /// One request of a generated stream: how its head lines end, its body's framing, and
    /// the odd-but-valid spellings hyper accepts.
    #[derive(Debug, Clone)]
    enum Body {
        None,
        Length(Vec<u8>),
        /// Chunks: (data, leading zeros of the size, upper-case hex, an extension), then
        /// trailer lines.
        Chunked(Vec<(Vec<u8>, usize, bool, Option<String>)>, Vec<String>),
    }

    fn request() -> impl proptest::strategy::Strategy<Value = (bool, bool, Body)> {
        use proptest::prelude::*;
        let data = proptest::collection::vec(any::<u8>(), 1..40);
        let chunk = (
            data.clone(),
            0usize..20,
            any::<bool>(),
            proptest::option::of("[a-z]{1,5}(=\"[ a-z;]{0,6}\")?"),
        );
        let body = prop_oneof![
            Just(Body::None),
            proptest::collection::vec(any::<u8>(), 0..60).prop_map(Body::Length),
            (
                proptest::collection::vec(chunk, 0..4),
                // A trailer line may start with a bare LF: hyper takes it as a trailer byte.
                proptest::collection::vec("\n?x-[a-z]{1,6}: [a-z\t ]{0,8}", 0..3),
            )
                .prop_map(|(chunks, trailers)| Body::Chunked(chunks, trailers)),
        ];
        (any::<bool>(), any::<bool>(), body)
    }

    fn render(n: usize, (bare_lf, leading, body): &(bool, bool, Body)) -> Vec<u8> {
        let eol: &[u8] = if *bare_lf { b"\n" } else { b"\r\n" };
        let mut out = Vec::new();
        if *leading {
            out.extend_from_slice(b"\r\n");
        }
        let method = if matches!(body, Body::None) {
            "GET"
        } else {
            "POST"
        };
        out.extend_from_slice(format!("{method} /r{n} HTTP/1.1").as_bytes());
        out.extend_from_slice(eol);
        out.extend_from_slice(b"Host: h");
        out.extend_from_slice(eol);
        match body {
            Body::None => {}
            Body::Length(data) => {
                out.extend_from_slice(format!("Content-Length: {}", data.len()).as_bytes());
                out.extend_from_slice(eol);
            }
            Body::Chunked(..) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked");
                out.extend_from_slice(eol);
            }
        }
        out.extend_from_slice(eol);
        match body {
            Body::None => {}
            Body::Length(data) => out.extend_from_slice(data),
            Body::Chunked(chunks, trailers) => {
                for (data, zeros, upper, ext) in chunks {
                    let size = format!("{}{:x}", "0".repeat(*zeros), data.len());
                    let size = if *upper { size.to_uppercase() } else { size };
                    out.extend_from_slice(size.as_bytes());
                    if let Some(ext) = ext {
                        out.extend_from_slice(format!(" ;{ext}").as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(data);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                for t in trailers {
                    out.extend_from_slice(t.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        out
    }

    /// The requests hyper's server parses from `bytes`, by their targets.
    fn hyper_reads(bytes: Vec<u8>) -> Vec<String> {
        use http_body_util::BodyExt;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (mut client, server) = tokio::io::duplex(1 << 20);
            let seen = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
            let record = seen.clone();
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        record.borrow_mut().push(req.uri().to_string());
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Empty::<bytes::Bytes>::new(),
                        ))
                    }
                });
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    let conn = tokio::task::spawn_local(
                        hyper::server::conn::http1::Builder::new()
                            .half_close(true)
                            .serve_connection(hyper_util::rt::TokioIo::new(server), service),
                    );
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    client.write_all(&bytes).await.unwrap();
                    client.shutdown().await.unwrap();
                    let mut sink = Vec::new();
                    let _ = client.read_to_end(&mut sink).await;
                    let _ = conn.await;
                })
                .await;
            let seen = seen.borrow().clone();
            seen
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// On streams of valid requests in every framing and odd-but-valid spelling, split
        /// anywhere, the tracker finds exactly the heads hyper parses.
        #[test]
        fn the_tracker_finds_the_heads_hyper_parses(
            requests in proptest::collection::vec(request(), 1..6),
            split in 0usize..400,
        ) {
            let bytes: Vec<u8> = requests.iter().enumerate().flat_map(|(n, r)| render(n, r)).collect();
            let parsed = hyper_reads(bytes.clone());
            let want: Vec<String> = (0..requests.len()).map(|n| format!("/r{n}")).collect();
            proptest::prop_assert_eq!(&parsed, &want, "hyper's reading of {:?}", String::from_utf8_lossy(&bytes));
            let mut t = HeadTracker::default();
            let split = split.min(bytes.len());
            t.feed(&bytes[..split]);
            t.feed(&bytes[split..]);
            proptest::prop_assert!(t.state != State::Lost);
            proptest::prop_assert_eq!(t.found.len(), requests.len());
        }
    }
}
