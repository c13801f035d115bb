//! The identity-provider calls a request waited on, kept for its trace span (`[tracing]`).
//!
//! Transport-neutral: the auth core records into a [`CallLog`] that an adapter hands it in
//! [`RequestInfo`](crate::auth::RequestInfo), only for a request whose trace is sampled; the
//! data plane turns each [`Call`] into a child span of the request's span. The call itself
//! carries a W3C `traceparent` naming its span (Trace Context §3.2), so an identity provider
//! that traces joins the same trace.

use std::sync::Mutex;
use std::time::SystemTime;

use http::HeaderValue;

/// What the request waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// A key-set fetch for a token with an unknown `kid`, or with no usable keys yet.
    KeyFetch,
    /// An RFC 7662 introspection call (or the wait for another request's call for the same
    /// token, which answers both).
    Introspection,
}

impl CallKind {
    /// The span's name.
    pub fn name(self) -> &'static str {
        match self {
            CallKind::KeyFetch => "key set fetch",
            CallKind::Introspection => "token introspection",
        }
    }
}

/// One call, as its child span shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub span_id: u64,
    pub kind: CallKind,
    /// The configured issuer (or introspection endpoint origin) called.
    pub issuer: String,
    pub started: SystemTime,
    pub ended: SystemTime,
    /// A bounded outcome: `ok`, `rate_limited`, `failed`, `inactive`, …
    pub result: &'static str,
}

/// A call under way: [`CallLog::finish`] records it.
#[derive(Debug)]
pub struct Pending {
    span_id: u64,
    kind: CallKind,
    started: SystemTime,
}

/// The calls of one sampled request. Touched only on the slow path (a call to the identity
/// provider), never by a cache hit.
#[derive(Debug)]
pub struct CallLog {
    trace_id: u128,
    random: fn() -> u64,
    calls: Mutex<Vec<Call>>,
}

impl CallLog {
    /// `random`: 64 random bits per call, for span ids.
    pub fn new(trace_id: u128, random: fn() -> u64) -> CallLog {
        CallLog {
            trace_id,
            random,
            calls: Mutex::new(Vec::new()),
        }
    }

    /// A call starts now, with a span id of its own.
    pub fn start(&self, kind: CallKind) -> Pending {
        let span_id = loop {
            let id = (self.random)();
            if id != 0 {
                break id;
            }
        };
        Pending {
            span_id,
            kind,
            started: SystemTime::now(),
        }
    }

    /// The `traceparent` for the call's HTTP request: this trace, the call's span, sampled.
    pub fn traceparent(&self, call: &Pending) -> HeaderValue {
        traceparent(self.trace_id, call.span_id, 0x01)
    }

    /// The call ended now with `result`.
    pub fn finish(&self, call: Pending, issuer: &str, result: &'static str) {
        let done = Call {
            span_id: call.span_id,
            kind: call.kind,
            issuer: issuer.to_owned(),
            started: call.started,
            ended: SystemTime::now(),
            result,
        };
        self.calls.lock().expect("not poisoned").push(done);
    }

    /// Every call recorded, in the order they ended.
    pub fn take(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().expect("not poisoned"))
    }
}

/// `00-{trace}-{span}-{flags}` in lower-case hex (Trace Context §3.2), written in place.
pub fn traceparent(trace: u128, span: u64, flags: u8) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let mut put = |at: usize, digits: usize, value: u128| {
        for i in 0..digits {
            let nibble = (value >> (4 * (digits - 1 - i))) & 0xf;
            out[at + i] = HEX[nibble as usize];
        }
    };
    put(3, 32, trace);
    put(36, 16, u128::from(span));
    put(53, 2, u128::from(flags));
    HeaderValue::from_bytes(&out).expect("hex and dashes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seven() -> u64 {
        7
    }

    #[test]
    fn a_call_is_recorded_with_its_span_and_named_in_its_traceparent() {
        let log = CallLog::new(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736, seven);
        let call = log.start(CallKind::Introspection);
        assert_eq!(
            log.traceparent(&call),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000007-01"
        );
        log.finish(call, "https://idp.example", "inactive");
        let calls = log.take();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            (calls[0].span_id, calls[0].kind, calls[0].result),
            (7, CallKind::Introspection, "inactive")
        );
        assert!(calls[0].ended >= calls[0].started);
        assert!(log.take().is_empty());
    }
}
