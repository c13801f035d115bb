//! `[tracing]`: the real binary exports one server span per sampled request, with a client span
//! for each identity-provider call it waited on, over OTLP/HTTP to a receiver the test starts
//! (decoded with the OpenTelemetry protobuf messages). The ids are the ones the upstream sees
//! in `traceparent`; sampling follows the client's flag and `sample_ratio`; a collector that
//! refuses or is gone is counted and slows no request.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::authz::MockAs;
use common::binary::GatewayProcess;
use common::collector::{Collector, Received};
use common::idp::{claims, MockIdp};
use common::{became_ready, client, eventually, scrape_until, EchoUpstream};
use portcullis::config::Algorithm;
use portcullis::devkeys::DevKey;

/// OTLP's `SpanKind` values (trace.proto).
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_PARENT: &str = "b7ad6b7169203331";

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// A gateway exporting to `collector` (`tracing` more keys of `[tracing]`), with `auth` as its
/// validator section(s) and route `api` (scope `orders:read`) to `up`.
fn config(collector: &str, tracing: &str, auth: &str, up: SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [tracing]\notlp_endpoint = \"{collector}\"\nservice_name = \"edge-gateway\"\n{tracing}\n\
         {auth}\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{up}\"]\nscopes = [\"orders:read\"]\n"
    )
}

fn issuer_section(idp: &MockIdp) -> String {
    format!(
        "[[issuers]]\nissuer = \"{iss}\"\njwks_uri = \"{iss}/jwks\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n",
        iss = idp.issuer()
    )
}

async fn start(config: &str) -> GatewayProcess {
    let gw = GatewayProcess::start(config, &[("INTROSPECTION_SECRET", "s3cr:et+/%&=")]);
    assert!(
        became_ready(&gw.metrics.to_string(), Duration::from_secs(10)).await,
        "{}",
        gw.log()
    );
    gw
}

async fn get(gw: &GatewayProcess, path: &str, token: &str, traceparent: Option<&str>) -> u16 {
    let mut request = client()
        .get(format!("http://{}{path}", gw.proxy))
        .bearer_auth(token);
    if let Some(t) = traceparent {
        request = request.header("traceparent", t);
    }
    request.send().await.unwrap().status().as_u16()
}

/// The `traceparent` of the last request the upstream received, split into its four fields.
fn upstream_traceparent(up: &EchoUpstream) -> Vec<String> {
    let seen = up.seen();
    let last = seen.last().expect("the upstream got a request");
    let value = last.headers.get("traceparent").expect("a traceparent");
    value
        .to_str()
        .unwrap()
        .split('-')
        .map(str::to_owned)
        .collect()
}

/// Wait until the collector holds at least `count` spans of the trace.
async fn exported(collector: &Collector, trace: &[u8], count: usize) -> Vec<Received> {
    let arrived = eventually(Duration::from_secs(15), || async {
        collector.trace(trace).len() >= count
    })
    .await;
    assert!(arrived, "spans received: {:?}", collector.spans());
    collector.trace(trace)
}

#[tokio::test]
async fn a_request_is_a_server_span_whose_key_fetch_is_its_child_and_whose_child_is_the_upstream() {
    let (old, new) = (
        DevKey::generate(Algorithm::ES256, "old"),
        DevKey::generate(Algorithm::ES256, "new"),
    );
    let idp = MockIdp::start(&[&old]).await;
    let up = EchoUpstream::start("orders").await;
    let collector = Collector::start().await;
    let gw = start(&config(
        &collector.endpoint(),
        "",
        &issuer_section(&idp),
        up.addr,
    ))
    .await;
    // A token by a key the gateway has not loaded: the request waits for a key-set fetch.
    idp.set_keys(&[&old, &new]);
    let token = new.sign(&claims(&idp, "orders:read"));
    let sent = format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-01");
    let status = get(&gw, "/api/orders/secret-path?q=hidden", &token, Some(&sent)).await;
    assert_eq!(status, 200, "{}", gw.log());
    let upstream = upstream_traceparent(&up);
    assert_eq!(
        (upstream[1].as_str(), upstream[3].as_str()),
        (CLIENT_TRACE, "01")
    );

    let spans = exported(&collector, &hex(CLIENT_TRACE), 2).await;
    assert_eq!(spans.len(), 2, "{spans:?}");
    let server = spans
        .iter()
        .find(|r| r.span.kind == SERVER)
        .expect("a server span");
    let fetch = spans
        .iter()
        .find(|r| r.span.kind == CLIENT)
        .expect("a client span");
    // The gateway's span is the client's parent's child and the upstream's parent.
    assert_eq!(server.span.parent_span_id, hex(CLIENT_PARENT));
    assert_eq!(server.span.span_id, hex(&upstream[2]));
    assert_eq!(server.span.name, "GET api");
    assert_eq!(server.service_name.as_deref(), Some("edge-gateway"));
    assert_eq!(server.scope, "portcullis");
    for (key, value) in [
        ("http.request.method", "GET"),
        ("http.response.status_code", "200"),
        ("portcullis.route", "api"),
        ("portcullis.auth.outcome", "allowed"),
        ("client.address", "127.0.0.1"),
        ("portcullis.client_id", "app"),
        ("portcullis.upstream", &up.addr.to_string()),
    ] {
        assert_eq!(server.attribute(key).as_deref(), Some(value), "{key}");
    }
    // The key fetch: a child of the request's span, inside it in time.
    assert_eq!(fetch.span.name, "key set fetch");
    assert_eq!(fetch.span.parent_span_id, server.span.span_id);
    assert_ne!(fetch.span.span_id, server.span.span_id);
    assert_eq!(fetch.attribute("portcullis.result").as_deref(), Some("ok"));
    assert_eq!(fetch.attribute("portcullis.issuer"), Some(idp.issuer()));
    assert!(fetch.span.start_time_unix_nano >= server.span.start_time_unix_nano);
    assert!(fetch.span.end_time_unix_nano <= server.span.end_time_unix_nano);
    assert!(server.span.end_time_unix_nano > server.span.start_time_unix_nano);
    // Never a path, a query, a token or a subject.
    for value in spans.iter().flat_map(Received::values) {
        for secret in ["secret-path", "hidden", token.as_str(), "user-7"] {
            assert!(!value.contains(secret), "{value:?} holds {secret:?}");
        }
    }
    let types = collector.content_types();
    assert!(
        types.iter().all(|t| t == "application/x-protobuf"),
        "{types:?}"
    );

    // A trace started here (sample_ratio defaults to 1): sampled, and a root span.
    assert_eq!(get(&gw, "/api/again", &token, None).await, 200);
    let started = upstream_traceparent(&up);
    assert_eq!(
        started[3], "03",
        "sampled for the upstream too, its id random"
    );
    let spans = exported(&collector, &hex(&started[1]), 1).await;
    assert_eq!(spans.len(), 1, "a cache hit waits for no call: {spans:?}");
    assert!(spans[0].span.parent_span_id.is_empty());
    assert_eq!(spans[0].span.span_id, hex(&started[2]));

    // A method the gateway does not know is `_OTHER` (HTTP semantic conventions).
    let sent = format!("00-{}-{CLIENT_PARENT}-01", "3".repeat(32));
    let resp = client()
        .request(
            reqwest::Method::from_bytes(b"BREW").unwrap(),
            format!("http://{}/api/pot", gw.proxy),
        )
        .bearer_auth(&token)
        .header("traceparent", &sent)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let spans = exported(&collector, &hex(&"3".repeat(32)), 1).await;
    assert_eq!(spans[0].span.name, "HTTP api");
    assert_eq!(
        spans[0].attribute("http.request.method").as_deref(),
        Some("_OTHER")
    );
}

#[tokio::test]
async fn sampling_follows_the_clients_flag_and_the_ratio_for_traces_started_here() {
    let key = DevKey::generate(Algorithm::ES256, "k");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("orders").await;
    let collector = Collector::start().await;
    let gw = start(&config(
        &collector.endpoint(),
        "sample_ratio = 0.0",
        &issuer_section(&idp),
        up.addr,
    ))
    .await;
    let token = key.sign(&claims(&idp, "orders:read"));
    // Started here with a ratio of 0: not sampled, and the upstream is told so.
    assert_eq!(get(&gw, "/api/a", &token, None).await, 200);
    let started = upstream_traceparent(&up);
    assert_eq!(started[3], "02", "not sampled, its id random");
    // The client's trace, not sampled: not exported.
    let unsampled = "11111111111111111111111111111111";
    let sent = format!("00-{unsampled}-{CLIENT_PARENT}-00");
    assert_eq!(get(&gw, "/api/b", &token, Some(&sent)).await, 200);
    assert_eq!(upstream_traceparent(&up)[3], "00");
    // The client's trace, sampled: exported whatever the ratio. It is recorded after the two
    // above (one worker, each request answered before the next is sent), so once it arrives
    // they would have too.
    let sent = format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-01");
    assert_eq!(get(&gw, "/api/c", &token, Some(&sent)).await, 200);
    exported(&collector, &hex(CLIENT_TRACE), 1).await;
    let traces: Vec<Vec<u8>> = collector
        .spans()
        .into_iter()
        .map(|r| r.span.trace_id)
        .collect();
    assert_eq!(traces, [hex(CLIENT_TRACE)], "only the sampled trace");
    assert!(!traces.contains(&hex(&started[1])));
    assert!(!traces.contains(&hex(unsampled)));
}

#[tokio::test]
async fn an_introspection_call_is_a_child_span_and_carries_the_trace_to_the_authorization_server() {
    let az = MockAs::start().await;
    az.activate("opaque-token-1", "orders:read");
    let up = EchoUpstream::start("orders").await;
    let collector = Collector::start().await;
    let introspection = format!(
        "[introspection]\nendpoint = \"{}\"\nissuer = \"{}\"\nclient_id = \"gateway client\"\n\
         client_secret_env = \"INTROSPECTION_SECRET\"\naudiences = [\"api\"]\n",
        az.endpoint(),
        az.issuer()
    );
    let gw = start(&config(&collector.endpoint(), "", &introspection, up.addr)).await;
    let sent = format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-01");
    assert_eq!(
        get(&gw, "/api/x", "opaque-token-1", Some(&sent)).await,
        200,
        "{}",
        gw.log()
    );
    let calls = az.calls();
    assert_eq!(calls.len(), 1);
    let carried = calls[0]
        .traceparent
        .clone()
        .expect("the call carries the trace");
    let fields: Vec<&str> = carried.split('-').collect();
    assert_eq!(
        (fields[0], fields[1], fields[3]),
        ("00", CLIENT_TRACE, "01")
    );

    let spans = exported(&collector, &hex(CLIENT_TRACE), 2).await;
    let server = spans
        .iter()
        .find(|r| r.span.kind == SERVER)
        .expect("a server span");
    let call = spans
        .iter()
        .find(|r| r.span.kind == CLIENT)
        .expect("a client span");
    assert_eq!(call.span.name, "token introspection");
    assert_eq!(
        call.span.span_id,
        hex(fields[2]),
        "the span the server was told"
    );
    assert_eq!(call.span.parent_span_id, server.span.span_id);
    assert_eq!(
        call.attribute("portcullis.result").as_deref(),
        Some("active")
    );
    assert_eq!(call.attribute("portcullis.issuer"), Some(az.issuer()));

    // The same token again: answered from the cache, so no call and no child span.
    let again = "22222222222222222222222222222222";
    let sent = format!("00-{again}-{CLIENT_PARENT}-01");
    assert_eq!(get(&gw, "/api/x", "opaque-token-1", Some(&sent)).await, 200);
    assert_eq!(az.calls().len(), 1);
    let spans = exported(&collector, &hex(again), 1).await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    assert_eq!(spans[0].span.kind, SERVER);
}

#[tokio::test]
async fn a_collector_that_refuses_or_is_gone_is_counted_and_delays_no_request() {
    let key = DevKey::generate(Algorithm::ES256, "k");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("orders").await;
    let token = key.sign(&claims(&idp, "orders:read"));
    let refusing = Collector::start().await;
    refusing.set_status(503);
    // A key in the URL's query is never logged (red team).
    let gone = format!("http://{}/v1/traces?key=QKEYMARK", common::dead_addr());
    for (endpoint, result) in [(refusing.endpoint(), "bad_status"), (gone, "unreachable")] {
        let gw = start(&config(&endpoint, "", &issuer_section(&idp), up.addr)).await;
        for _ in 0..3 {
            assert_eq!(get(&gw, "/api/x", &token, None).await, 200);
        }
        let m = scrape_until(gw.metrics, |m| {
            m.get("portcullis_trace_exports_total", &[("result", result)]) >= 1.0
        })
        .await;
        let counted = m.get("portcullis_trace_exports_total", &[("result", result)]);
        assert!(counted >= 1.0, "{result}: {}", gw.log());
        assert_eq!(
            m.get("portcullis_trace_exports_total", &[("result", "ok")]),
            0.0
        );
        // Still answering while the export fails.
        assert_eq!(get(&gw, "/api/x", &token, None).await, 200);
        let log = gw.log();
        assert!(!log.contains("QKEYMARK"), "{log}");
        let said = match result {
            "bad_status" => "the collector refused a batch",
            _ => "the collector cannot be reached",
        };
        assert!(log.contains(said), "{log}");
    }
    assert!(refusing.requests() >= 1);
}

#[tokio::test]
async fn tracing_is_kept_across_a_reload_and_the_last_spans_are_exported_at_exit() {
    let key = DevKey::generate(Algorithm::ES256, "k");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("orders").await;
    let collector = Collector::start().await;
    let first = config(&collector.endpoint(), "", &issuer_section(&idp), up.addr)
        .replace("threads = 1", "threads = 1\ndrain_delay = \"0s\"");
    let gw = start(&first).await;
    let token = key.sign(&claims(&idp, "orders:read"));
    // `[tracing]` needs a restart: a reload that changes it is applied otherwise, warned about,
    // and the export goes on as before (a ratio of 0 would sample none of these).
    gw.rewrite_config(&first.replace("service_name", "sample_ratio = 0.0\nservice_name"));
    gw.sighup();
    let m = scrape_until(gw.metrics, |m| {
        m.get("portcullis_config_reloads_total", &[("result", "success")]) >= 1.0
    })
    .await;
    assert_eq!(
        m.get("portcullis_config_reloads_total", &[("result", "success")]),
        1.0,
        "{}",
        gw.log()
    );
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("takes effect only at the next restart") && l.contains("tracing")),
        "{log}"
    );
    assert_eq!(get(&gw, "/api/x", &token, None).await, 200);
    let started = upstream_traceparent(&up);
    assert_eq!(started[3], "03", "still sampled at the running ratio");
    // SIGTERM at once: the span is still in the batch queue (batches leave every 2 s), and is
    // exported before the process ends.
    gw.sigterm();
    assert_eq!(gw.wait().await, Some(0));
    let spans = collector.trace(&hex(&started[1]));
    assert_eq!(spans.len(), 1, "{:?}", collector.spans());
}

#[tokio::test]
async fn at_an_edge_that_ignores_the_clients_flag_no_client_makes_the_gateway_export() {
    let key = DevKey::generate(Algorithm::ES256, "k");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("orders").await;
    let collector = Collector::start().await;
    let gw = start(
        &config(
            &collector.endpoint(),
            "sample_ratio = 0.0\nfollow_client_sampling = false",
            &issuer_section(&idp),
            up.addr,
        )
        .replace("threads = 1", "threads = 1\ndrain_delay = \"0s\""),
    )
    .await;
    let token = key.sign(&claims(&idp, "orders:read"));
    let sent = format!("00-{CLIENT_TRACE}-{CLIENT_PARENT}-01");
    for _ in 0..3 {
        assert_eq!(get(&gw, "/api/x", &token, Some(&sent)).await, 200);
        let upstream = upstream_traceparent(&up);
        // The trace goes on, told that it was not sampled here.
        assert_eq!(
            (upstream[1].as_str(), upstream[3].as_str()),
            (CLIENT_TRACE, "00")
        );
    }
    // Whatever was queued is exported at exit: nothing was.
    gw.sigterm();
    assert_eq!(gw.wait().await, Some(0));
    assert!(collector.spans().is_empty(), "{:?}", collector.spans());
    assert_eq!(collector.requests(), 0);
}
