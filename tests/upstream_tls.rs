//! TLS to upstreams (`upstream_tls = true`): a real TLS server (rustls, a private CA's
//! certificate) in front of the echo upstream. The certificate is verified against
//! `upstream_ca_file` for the entry's host or `upstream_server_name`, sent by SNI; an untrusted
//! or misnamed certificate gets 502 and `kind="tls"`, and no request reaches the upstream; a
//! client certificate is presented to an upstream that requires one; HTTP/2 is chosen by ALPN;
//! `portcullis check` names an unusable file by its key.

mod common;

use common::binary::{check_offline, TempFile};
use common::tls::{Ca, FrontOptions, Hello, TlsFront};
use common::{client, scrape, start_gateway, EchoUpstream};
use portcullis::app::RunningApp;

/// The gateway with one `auth = "none"` route `/api` to `upstream` (a `host:port` entry) over
/// TLS, with `more` route keys.
fn gateway(upstream: &str, more: &str) -> RunningApp {
    start_gateway(&format!(
        "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{upstream}\"]\n\
         auth = \"none\"\nupstream_tls = true\n{more}\n"
    ))
}

async fn get(gw: &RunningApp, path: &str) -> (u16, String) {
    let resp = client()
        .get(format!("http://{}{path}", gw.proxy_addr))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

async fn tls_errors(gw: &RunningApp) -> f64 {
    let m = scrape(gw.metrics_addr).await;
    m.get(TLS_ERRORS, &[("route", "api"), ("kind", "tls")])
}

const TLS_ERRORS: &str = "portcullis_upstream_errors_total";

/// Wait until `kind="tls"` reaches `n` (a request is counted as its answer ends); it must not
/// be above.
async fn tls_errors_reach(gw: &RunningApp, n: f64) {
    common::counted(
        gw.metrics_addr,
        TLS_ERRORS,
        &[("route", "api"), ("kind", "tls")],
        n,
    )
    .await;
}

fn ca_file(ca: &Ca) -> (TempFile, String) {
    let file = TempFile::with(&ca.pem());
    let key = format!("upstream_ca_file = \"{}\"", file.0.display());
    (file, key)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_is_verified_for_its_host_and_connections_are_kept() {
    let ca = Ca::new("Upstream private CA");
    let up = EchoUpstream::start("app").await;
    let front = TlsFront::start(&ca.server(&["localhost"]), up.addr).await;
    let (_file, trust) = ca_file(&ca);
    let gw = gateway(&format!("localhost:{}", front.addr.port()), &trust);
    for _ in 0..5 {
        let (status, body) = get(&gw, "/api/orders").await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(up.hits(), 5);
    let hellos = front.hellos();
    assert!(!hellos.is_empty());
    for hello in &hellos {
        assert_eq!(hello.sni.as_deref(), Some("localhost"), "{hello:?}");
        assert_eq!(hello.alpn.as_deref(), None, "the front offers no ALPN");
    }
    // Two workers may each hold a connection; sequential requests reuse them.
    assert!(front.handshakes() <= 2, "{} handshakes", front.handshakes());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ip_address_entry_is_verified_against_the_certificate_s_addresses_without_sni() {
    let ca = Ca::new("Upstream private CA");
    let up = EchoUpstream::start("app").await;
    let front = TlsFront::start(&ca.server(&["127.0.0.1"]), up.addr).await;
    let (_file, trust) = ca_file(&ca);
    let gw = gateway(&front.addr.to_string(), &trust);
    assert_eq!(get(&gw, "/api/x").await.0, 200);
    let hellos: Vec<Hello> = front.hellos();
    assert_eq!(hellos[0].sni, None, "an IP address is not sent by SNI");
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_misnamed_and_expired_certificates_are_refused_before_any_request() {
    let ca = Ca::new("Upstream private CA");
    let other = Ca::new("Some other CA");
    let up = EchoUpstream::start("app").await;
    let (_file, trust) = ca_file(&ca);
    let cases = [
        ("another CA's certificate", other.server(&["localhost"])),
        (
            "a certificate for another name",
            ca.server(&["other.internal"]),
        ),
        ("an expired certificate", ca.expired_server(&["localhost"])),
    ];
    for (what, leaf) in cases {
        let front = TlsFront::start(&leaf, up.addr).await;
        let gw = gateway(&format!("localhost:{}", front.addr.port()), &trust);
        let (status, _) = get(&gw, "/api/x").await;
        assert_eq!(status, 502, "{what}");
        assert!(
            tls_errors(&gw).await >= 1.0,
            "{what}: counted as kind=\"tls\""
        );
        assert_eq!(front.handshakes(), 0, "{what}: no handshake completed");
    }
    assert_eq!(up.hits(), 0, "no request reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_system_trust_store_does_not_hold_a_private_ca() {
    // No upstream_ca_file: the system store (whatever this machine holds) verifies, and it
    // does not hold a CA made in this test.
    let ca = Ca::new("Upstream private CA");
    let up = EchoUpstream::start("app").await;
    let front = TlsFront::start(&ca.server(&["localhost"]), up.addr).await;
    if rustls_native_certs::load_native_certs().certs.is_empty() {
        // Without a system store the gateway refuses to start; `check` says so by key.
        let text = format!(
            "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"localhost:{}\"]\nauth = \"none\"\nupstream_tls = true\n",
            front.addr.port()
        );
        let (code, stderr) = check_offline(&text);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains("routes[0].upstream_tls: "), "{stderr}");
        return;
    }
    let gw = gateway(&format!("localhost:{}", front.addr.port()), "");
    assert_eq!(get(&gw, "/api/x").await.0, 502);
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_server_name_is_sent_and_verified_instead_of_the_host() {
    let ca = Ca::new("Upstream private CA");
    let up = EchoUpstream::start("app").await;
    let front = TlsFront::start(&ca.server(&["orders.mesh.internal"]), up.addr).await;
    let (_file, trust) = ca_file(&ca);
    let more = format!("{trust}\nupstream_server_name = \"orders.mesh.internal\"");
    let gw = gateway(&front.addr.to_string(), &more);
    assert_eq!(get(&gw, "/api/x").await.0, 200);
    assert_eq!(
        front.hellos()[0].sni.as_deref(),
        Some("orders.mesh.internal")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_certificate_is_presented_to_an_upstream_that_requires_one() {
    let ca = Ca::new("Upstream private CA");
    let clients = Ca::new("Mesh client CA");
    let up = EchoUpstream::start("app").await;
    let options = FrontOptions {
        client_ca: Some(&clients),
        ..FrontOptions::default()
    };
    let front = TlsFront::start_with(&ca.server(&["localhost"]), up.addr, options).await;
    let (_file, trust) = ca_file(&ca);
    let entry = format!("localhost:{}", front.addr.port());

    // Without one, the upstream refuses the handshake: 502, nothing reaches it. Over TLS 1.3
    // the refusal comes after the gateway's side of the handshake, as the answer is read: a
    // TLS failure still (kind="tls"), not a protocol error.
    let gw = gateway(&entry, &trust);
    assert_eq!(get(&gw, "/api/x").await.0, 502);
    assert_eq!(up.hits(), 0);
    tls_errors_reach(&gw, 1.0).await;
    drop(gw);

    let leaf = clients.client("gateway");
    let (cert, key) = (
        TempFile::with(&leaf.cert_pem),
        TempFile::with(&leaf.key_pem),
    );
    let more = format!(
        "{trust}\nupstream_client_cert = \"{}\"\nupstream_client_key = \"{}\"",
        cert.0.display(),
        key.0.display()
    );
    let gw = gateway(&entry, &more);
    assert_eq!(get(&gw, "/api/x").await.0, 200);
    assert_eq!(up.hits(), 1);
    let presented = front.hellos().into_iter().find_map(|h| h.client_cert);
    assert_eq!(presented.as_deref(), Some(leaf.cert.as_ref()));
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_over_tls_is_chosen_by_alpn() {
    let ca = Ca::new("Upstream private CA");
    let options = FrontOptions {
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        ..FrontOptions::default()
    };
    let front = TlsFront::start_with(
        &ca.server(&["localhost"]),
        common::h2::target_echo().await,
        options,
    )
    .await;
    let (_file, trust) = ca_file(&ca);
    let more = format!("{trust}\nupstream_protocol = \"http2\"");
    let gw = gateway(&format!("localhost:{}", front.addr.port()), &more);
    let (status, body) = get(&gw, "/api/x").await;
    let expected = format!("HTTP/2.0 https {}", gw.proxy_addr);
    assert_eq!((status, body.as_str()), (200, expected.as_str()));
    assert_eq!(front.hellos()[0].alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_route_needs_the_upstream_to_choose_h2_by_alpn() {
    // A TLS upstream that speaks no ALPN: HTTP/2 over TLS is not agreed (RFC 9113 §3.2), so no
    // connection preface is sent to it; 502, kind="tls".
    let ca = Ca::new("Upstream private CA");
    let up = EchoUpstream::start("app").await;
    let front = TlsFront::start(&ca.server(&["localhost"]), up.addr).await;
    let (_file, trust) = ca_file(&ca);
    let more = format!("{trust}\nupstream_protocol = \"http2\"");
    let gw = gateway(&format!("localhost:{}", front.addr.port()), &more);
    assert_eq!(get(&gw, "/api/x").await.0, 502);
    tls_errors_reach(&gw, 1.0).await;
    assert_eq!(front.hellos()[0].alpn, None);
    assert_eq!(up.hits(), 0);
}

#[test]
fn check_names_unusable_upstream_tls_files_by_key() {
    let ca = Ca::new("Upstream private CA");
    let leaf = ca.client("gateway");
    let other = ca.client("another");
    let (cert, key, other_key, not_pem) = (
        TempFile::with(&leaf.cert_pem),
        TempFile::with(&leaf.key_pem),
        TempFile::with(&other.key_pem),
        TempFile::with("just text\n"),
    );
    let route = "[[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"none\"\n";
    let cases = [
        (
            "upstream_tls = true\nupstream_ca_file = \"/nonexistent/ca.pem\"".to_owned(),
            "routes[0].upstream_ca_file: cannot read /nonexistent/ca.pem",
        ),
        (
            format!("upstream_tls = true\nupstream_ca_file = \"{}\"", not_pem.0.display()),
            "routes[0].upstream_ca_file: ",
        ),
        (
            format!(
                "upstream_tls = true\nupstream_ca_file = \"{}\"\nupstream_client_cert = \"{}\"\nupstream_client_key = \"{}\"",
                cert.0.display(),
                cert.0.display(),
                other_key.0.display()
            ),
            "routes[0].upstream_client_key: ",
        ),
        (
            format!(
                "upstream_tls = true\nupstream_ca_file = \"{}\"\nupstream_client_cert = \"{}\"",
                cert.0.display(),
                cert.0.display()
            ),
            "routes[0].upstream_client_cert: goes with upstream_client_key",
        ),
        (
            format!("upstream_ca_file = \"{}\"", key.0.display()),
            "routes[0].upstream_ca_file: goes with upstream_tls = true",
        ),
        (
            format!(
                "upstream_tls = true\nupstream_ca_file = \"{}\"\nupstream_server_name = \"not a name\"",
                cert.0.display()
            ),
            "routes[0].upstream_server_name: ",
        ),
    ];
    for (keys, expected) in cases {
        let (code, stderr) = check_offline(&format!("{route}{keys}\n"));
        assert_eq!(code, Some(1), "{keys}: {stderr}");
        assert!(stderr.contains(expected), "{keys}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "one problem, said once: {stderr}"
        );
    }
    // An encrypted key (the shape `openssl pkcs8 -topk8` writes with a passphrase) is named
    // as such: rustls cannot read one.
    let encrypted = TempFile::with(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIBvTBXBgkqhkiG9w0BBQ0wSjApBgkq\n-----END ENCRYPTED PRIVATE KEY-----\n",
    );
    let keys = format!(
        "upstream_tls = true\nupstream_ca_file = \"{}\"\nupstream_client_cert = \"{}\"\nupstream_client_key = \"{}\"",
        cert.0.display(),
        cert.0.display(),
        encrypted.0.display()
    );
    let (code, stderr) = check_offline(&format!("{route}{keys}\n"));
    assert_eq!(code, Some(1), "{stderr}");
    let said = "routes[0].upstream_client_key: ";
    assert!(stderr.starts_with(said), "{stderr}");
    assert!(
        stderr.contains("holds an encrypted private key; give it unencrypted"),
        "{stderr}"
    );
    // The good pair passes.
    let good = format!(
        "{route}upstream_tls = true\nupstream_ca_file = \"{}\"\nupstream_client_cert = \"{}\"\nupstream_client_key = \"{}\"\n",
        cert.0.display(),
        cert.0.display(),
        key.0.display()
    );
    let (code, stderr) = check_offline(&good);
    assert_eq!(code, Some(0), "{stderr}");
}

/// A request with a path and query to the gateway process `gw`, answered `status`; the log line
/// holding `wanted` once it is written. Neither the path nor the query is in the log.
async fn answered_and_logged(
    gw: &common::binary::GatewayProcess,
    status: u16,
    wanted: &str,
) -> String {
    let resp = client()
        .get(format!(
            "http://{}/api/secret-path?q=secret-query",
            gw.proxy
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), status);
    let logged = common::eventually(std::time::Duration::from_secs(10), || async {
        gw.log().contains(wanted)
    })
    .await;
    let log = gw.log();
    assert!(logged, "{log}");
    assert!(
        !log.contains("secret-path") && !log.contains("secret-query"),
        "{log}"
    );
    log.lines().find(|l| l.contains(wanted)).unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_handshake_is_logged_with_its_cause_and_never_the_path() {
    let ca = Ca::new("Upstream private CA");
    let other = Ca::new("Some other CA");
    let up = EchoUpstream::start("app").await;
    let front = TlsFront::start(&other.server(&["localhost"]), up.addr).await;
    let (_file, trust) = ca_file(&ca);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"localhost:{}\"]\n\
         auth = \"none\"\nupstream_tls = true\n{trust}\n",
        front.addr.port()
    );
    let gw = common::binary::GatewayProcess::start(&config, &[]);
    let line = answered_and_logged(&gw, 502, "TLS handshake with an upstream failed").await;
    assert!(
        line.contains("UnknownIssuer") || line.contains("unknown issuer"),
        "the cause is kept: {line}"
    );
}

/// An upstream that accepts the connection and never answers the TLS hello: 504 after
/// `connect_timeout`, counted as a timeout, and a log line that says which upstream and why,
/// never the path.
#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_that_never_finishes_is_a_logged_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut kept = Vec::new();
        loop {
            let (stream, _) = silent.accept().await.unwrap();
            kept.push(stream);
        }
    });
    let ca = Ca::new("Upstream private CA");
    let (_file, trust) = ca_file(&ca);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nconnect_timeout = \"300ms\"\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{addr}\"]\n\
         auth = \"none\"\nupstream_tls = true\n{trust}\n"
    );
    let gw = common::binary::GatewayProcess::start(&config, &[]);
    let wanted = "TLS handshake with an upstream did not finish within connect_timeout";
    let line = answered_and_logged(&gw, 504, wanted).await;
    assert!(
        line.contains(&format!("upstream={addr}")),
        "the upstream is named: {line}"
    );
    assert!(
        line.contains("connect_timeout_ms=300"),
        "the timeout is named: {line}"
    );
    let timeouts = [("route", "api"), ("kind", "timeout")];
    common::counted(gw.metrics, TLS_ERRORS, &timeouts, 1.0).await;
    assert_eq!(scrape(gw.metrics).await.get(TLS_ERRORS, &timeouts), 1.0);
    held.abort();
}
