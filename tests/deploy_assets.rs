//! The shipped deployment assets against the real gateway: every metric the Grafana dashboard
//! (`deploy/grafana/portcullis.json`) and the alert rules (`deploy/prometheus/alerts.yml`) name
//! is one a running gateway exports, from its first scrape on. (`promtool check rules` and
//! `promtool test rules` run in `.ci/run`, through `scripts/check-deploy.sh`.)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::authz::MockAs;
use common::idp::MockIdp;
use common::{became_ready, EchoUpstream};
use portcullis::config::Algorithm;
use portcullis::devkeys::DevKey;

/// Every `portcullis_*` and `process_*` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        let starts = rest.starts_with("portcullis_") || rest.starts_with("process_");
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && boundary {
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(rest[..end].to_owned());
            i += end;
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    names
}

/// What a gateway with every feature the assets watch (issuers, introspection, DPoP, a rate
/// limit, upstream health checks, TLS) exports before any traffic.
async fn exported() -> BTreeSet<String> {
    let key = DevKey::generate(Algorithm::ES256, "k");
    let idp = MockIdp::start(&[&key]).await;
    let az = MockAs::start().await;
    let up = EchoUpstream::start("app").await;
    std::env::set_var("PORTCULLIS_TEST_ASSETS_SECRET", "s");
    let leaf = common::tls::Ca::new("assets CA").server(&["localhost"]);
    let (cert, tls_key) = (
        common::binary::TempFile::with(&leaf.cert_pem),
        common::binary::TempFile::with(&leaf.key_pem),
    );
    let server = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
        cert.0.display(),
        tls_key.0.display()
    );
    let gw = common::start_gateway_with_server(
        &server,
        &format!(
            r#"[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["api"]
algorithms = ["ES256"]
[introspection]
endpoint = "{endpoint}"
client_id = "gw"
client_secret_env = "PORTCULLIS_TEST_ASSETS_SECRET"
audiences = ["api"]
[[routes]]
name = "api"
path_prefix = "/"
upstreams = ["{up}"]
dpop = "optional"
[routes.rate_limit]
key = "sub"
requests = 100
"#,
            issuer = idp.issuer(),
            endpoint = az.endpoint(),
            up = up.addr
        ),
    );
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
    let text = common::scrape_text(gw.metrics_addr).await;
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_the_alerts_name_only_metrics_the_gateway_exports() {
    let exported = exported().await;
    for file in [
        "deploy/grafana/portcullis.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(file).unwrap();
        let named = metric_names(&text);
        assert!(
            named.len() >= 5,
            "{file} names hardly any metric: {named:?}"
        );
        let missing: Vec<_> = named.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics the gateway does not export: {missing:?}\nexported: {exported:?}"
        );
    }
    // The dashboard covers what the README promises it shows.
    let dashboard =
        metric_names(&std::fs::read_to_string("deploy/grafana/portcullis.json").unwrap());
    for wanted in [
        "portcullis_requests_total",
        "portcullis_request_duration_seconds_bucket",
        "portcullis_auth_decisions_total",
        "portcullis_jwks_age_seconds",
        "portcullis_jwks_fetch_total",
        "portcullis_jwks_keys",
        "portcullis_introspection_requests_total",
        "portcullis_introspection_duration_seconds_bucket",
        "portcullis_introspection_cache_requests_total",
        "portcullis_introspection_in_flight",
        "portcullis_upstream_healthy",
        "portcullis_upstream_errors_total",
        "portcullis_client_timeouts_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(dashboard.contains(wanted), "the dashboard lacks {wanted}");
    }
}

#[test]
fn metric_names_are_found_whole() {
    let names = metric_names(
        r#"rate(portcullis_requests_total{a="b"}[5m]) / xportcullis_no process_open_fds"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["portcullis_requests_total", "process_open_fds"]
    );
}
