//! W3C Trace Context (Recommendation, 2021): `traceparent` and `tracestate` on the way to the
//! upstream.
//!
//! The gateway is one hop of the trace: a valid `traceparent` keeps its trace id and flags, and
//! its parent id becomes a span id of the gateway's own (§3.2 "mutating the traceparent
//! field"), so the upstream's span is the gateway's child. A request without one, or with one
//! that does not parse (§3.2.2: more than one field line, a wrong length, upper-case or
//! non-hex digits, an all-zero id, version `ff`), starts a new trace: a random trace id, the
//! sampled flag as `[tracing] sample_ratio` decides (clear without `[tracing]`: the
//! gateway records no spans then), and its `tracestate` dropped (§3.3: it is meaningless without a valid parent). `tracestate` field lines are
//! joined into one (§3.3.1.1) and dropped beyond 512 bytes or 32 list members, which is what
//! §3.3.1.5 lets a vendor keep. The trace id goes into the access line.

use http::header::{HeaderMap, HeaderName, HeaderValue};

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The longest `tracestate` kept (§3.3.1.5: at least 512 bytes must be propagated).
const MAX_TRACESTATE_BYTES: usize = 512;
/// The most `tracestate` list members (§3.3.1.1).
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The trace a forwarded request belongs to, for the access line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trace {
    pub trace_id: u128,
    /// The gateway's span: the `parent-id` the upstream receives.
    pub span_id: u64,
    /// The client's `parent-id`, when its `traceparent` was kept (else the trace started here).
    pub parent: Option<u64>,
    /// The sampled flag the upstream receives: the client's, or for a trace started here the
    /// exporter's sampling decision (always clear without `[tracing]`).
    pub sampled: bool,
}

impl Trace {
    /// The trace id as the 32 lower-case hex digits of `traceparent`.
    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// A parsed `traceparent`: trace id, parent id, flags.
fn parse(value: &[u8]) -> Option<(u128, u64, u8)> {
    // version "-" trace-id "-" parent-id "-" trace-flags: 2 + 1 + 32 + 1 + 16 + 1 + 2.
    const LEN: usize = 55;
    let hex = |b: &[u8]| -> Option<u128> {
        let lower = b
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        lower
            .then(|| u128::from_str_radix(std::str::from_utf8(b).ok()?, 16).ok())
            .flatten()
    };
    if value.len() < LEN || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex(&value[0..2])?;
    // Version ff is invalid; 00 is exactly 55 bytes; a later version may append "-" and more.
    match version {
        0xff => return None,
        0 if value.len() != LEN => return None,
        _ if value.len() > LEN && value[LEN] != b'-' => return None,
        _ => {}
    }
    let trace_id = hex(&value[3..35])?;
    let parent = u64::try_from(hex(&value[36..52])?).ok()?;
    let flags = u8::try_from(hex(&value[53..55])?).ok()?;
    (trace_id != 0 && parent != 0).then_some((trace_id, parent, flags))
}

/// `tracestate` as one field line, or `None` when absent, too long or with too many members.
fn joined_tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut lines = headers.get_all(&TRACESTATE).iter();
    let first = lines.next()?;
    let mut text: Vec<u8> = first.as_bytes().to_vec();
    for line in lines {
        text.extend_from_slice(b",");
        text.extend_from_slice(line.as_bytes());
    }
    let members = text
        .split(|&b| b == b',')
        .filter(|m| !m.trim_ascii().is_empty());
    if text.len() > MAX_TRACESTATE_BYTES || members.count() > MAX_TRACESTATE_MEMBERS {
        return None;
    }
    HeaderValue::from_bytes(&text).ok()
}

/// Set the `traceparent` (and `tracestate`) the upstream receives, from the client's when
/// valid; `random` gives 64 random bits per call, and `sample` decides the sampled flag, given
/// the client's (`None`: the trace starts here) and the trace id. Returns the trace, for the
/// access line and the span.
pub fn propagate(
    headers: &mut HeaderMap,
    mut random: impl FnMut() -> u64,
    sample: impl FnOnce(Option<bool>, u128) -> bool,
) -> Trace {
    let mut lines = headers.get_all(&TRACEPARENT).iter();
    let parsed = match (lines.next(), lines.next()) {
        (Some(one), None) => parse(one.as_bytes()),
        _ => None,
    };
    let span_id = loop {
        let id = random();
        if id != 0 {
            break id;
        }
    };
    let (trace, flags, state) = match parsed {
        Some((trace_id, _, flags)) => {
            let sampled = sample(Some(flags & 0x01 == 1), trace_id);
            (
                trace_id,
                (flags & !0x01) | u8::from(sampled),
                joined_tracestate(headers),
            )
        }
        None => {
            let trace_id = loop {
                let id = (u128::from(random()) << 64) | u128::from(random());
                if id != 0 {
                    break id;
                }
            };
            // Level 2's random-trace-id flag: every bit of this id is random.
            (trace_id, 0x02 | u8::from(sample(None, trace_id)), None)
        }
    };
    // Only the sampled bit (and the random-trace-id bit of Level 2) are defined; others clear.
    let flags = flags & 0x03;
    headers.insert(
        TRACEPARENT.clone(),
        crate::spans::traceparent(trace, span_id, flags),
    );
    headers.remove(&TRACESTATE);
    if let Some(state) = state {
        headers.insert(TRACESTATE.clone(), state);
    }
    Trace {
        trace_id: trace,
        span_id,
        parent: parsed.map(|(_, parent, _)| parent),
        sampled: flags & 0x01 == 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0u64;
        move || {
            n += 1;
            n
        }
    }

    fn run(lines: &[(&str, &str)]) -> (Trace, Vec<String>, Vec<String>) {
        let mut h = HeaderMap::new();
        for (k, v) in lines {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let trace = propagate(&mut h, counter(), |client, _| client.unwrap_or(false));
        let all = |name: &HeaderName| {
            h.get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        };
        (trace, all(&TRACEPARENT), all(&TRACESTATE))
    }

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_parent_keeps_its_trace_and_flags_with_a_new_span() {
        let (trace, parent, state) =
            run(&[("traceparent", VALID), ("tracestate", "congo=t61rcWkgMzE")]);
        assert!(trace.parent.is_some());
        assert_eq!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            parent,
            ["00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000001-01"]
        );
        assert_eq!(state, ["congo=t61rcWkgMzE"]);
    }

    #[test]
    fn tracestate_lines_are_joined_and_an_oversized_one_is_dropped() {
        let (_, _, state) = run(&[
            ("traceparent", VALID),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ]);
        assert_eq!(state, ["a=1,b=2"]);
        let long = format!("a={}", "x".repeat(600));
        let (_, _, state) = run(&[("traceparent", VALID), ("tracestate", &long)]);
        assert!(state.is_empty());
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        let (_, _, state) = run(&[("traceparent", VALID), ("tracestate", &many)]);
        assert!(state.is_empty());
    }

    #[test]
    fn an_invalid_or_missing_parent_starts_a_trace_and_drops_tracestate() {
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut lines = vec![("tracestate", "vendor=secret")];
            if !bad.is_empty() {
                lines.push(("traceparent", bad));
            }
            let (trace, parent, state) = run(&lines);
            assert!(trace.parent.is_none() && !trace.sampled, "{bad:?}");
            assert_eq!(parent.len(), 1);
            assert!(
                // Not sampled; Level 2's random-trace-id flag set.
                parent[0].starts_with("00-") && parent[0].ends_with("-02"),
                "{parent:?}"
            );
            assert_ne!(trace.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(state.is_empty(), "{bad:?}");
        }
        // Two traceparent lines: invalid (§3.2.2).
        let (trace, _, _) = run(&[("traceparent", VALID), ("traceparent", VALID)]);
        assert!(trace.parent.is_none());
    }

    #[test]
    fn a_trace_started_here_is_sampled_as_the_exporter_decides_and_a_parent_keeps_its_flag() {
        let mut h = HeaderMap::new();
        let trace = propagate(&mut h, counter(), |client, _| client.unwrap_or(true));
        assert!(trace.sampled && trace.parent.is_none());
        assert!(h[&TRACEPARENT].to_str().unwrap().ends_with("-03"));
        // The decision is asked with the client's flag, and its answer is what the upstream
        // gets (`follow_client_sampling = false` overrides the client's); other bits stay.
        let cases = [
            ("00", None, "00"),
            ("01", Some(false), "00"),
            ("03", Some(false), "02"),
            ("00", Some(true), "01"),
        ];
        for (sent, decide, expect) in cases {
            let value = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{sent}");
            let mut h = HeaderMap::new();
            h.insert(&TRACEPARENT, value.parse().unwrap());
            let trace = propagate(&mut h, counter(), |client, id| {
                assert_eq!(client, Some(sent != "00"));
                assert_eq!(id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
                decide.unwrap_or(client.unwrap())
            });
            assert_eq!(trace.parent, Some(0x00f0_67aa_0ba9_02b7));
            assert_eq!(trace.sampled, expect.ends_with('1'));
            assert!(
                h[&TRACEPARENT].to_str().unwrap().ends_with(expect),
                "{sent}"
            );
        }
    }

    #[test]
    fn a_later_version_is_read_as_version_00() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-more";
        let (trace, parent, _) = run(&[("traceparent", later)]);
        assert!(trace.parent.is_some());
        assert_eq!(
            parent,
            ["00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000001-01"]
        );
    }
}
