//! TLS on the proxy listener, with the real binary: certificates chosen by SNI, a plain
//! listener beside, ALPN, TLS 1.2 and 1.3, `X-Forwarded-Proto: https`, handshake
//! counters; certificates reloaded when their files change, without dropping open connections,
//! and a bad new pair that keeps the old one; `check` naming bad files by key.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::binary::{GatewayProcess, TempFile};
use common::tls::{Ca, Leaf};
use common::{became_ready, counted, eventually, scrape, scrape_until, EchoUpstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A certificate and key written to files the test can rewrite in place.
struct PairFiles {
    cert: TempFile,
    key: TempFile,
}

impl PairFiles {
    fn new(leaf: &Leaf) -> PairFiles {
        PairFiles {
            cert: TempFile::with(&leaf.cert_pem),
            key: TempFile::with(&leaf.key_pem),
        }
    }

    /// Replace both files, each atomically (as Kubernetes and certbot do).
    fn replace(&self, cert_pem: &str, key_pem: &str) {
        for (file, text) in [(&self.key, key_pem), (&self.cert, cert_pem)] {
            let next = file.0.with_extension("next");
            std::fs::write(&next, text).unwrap();
            std::fs::rename(&next, &file.0).unwrap();
        }
    }
}

fn config(default: &PairFiles, more: &[&PairFiles], extra: &str, up: SocketAddr) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\nplain_listen = \"127.0.0.1:0\"\n\
         tls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}\n",
        default.cert.0.display(),
        default.key.0.display()
    );
    for pair in more {
        text += &format!(
            "[[server.tls_certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            pair.cert.0.display(),
            pair.key.0.display()
        );
    }
    text + &format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstreams = [\"{up}\"]\nauth = \"none\"\n"
    )
}

fn roots(cas: &[&Ca]) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        let der = rustls::pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes());
        roots.add(der.unwrap()).unwrap();
    }
    roots
}

use rustls::pki_types::pem::PemObject;

/// A TLS client trusting `cas`, offering `alpn`, with only `versions`.
fn connector(
    cas: &[&Ca],
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots(cas))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Every handshake a full one: a resumed session shows no certificate.
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// One TLS session to `addr` naming `sni`, or the handshake's error.
async fn handshake(
    connector: &TlsConnector,
    addr: SocketAddr,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// `GET path` on an open stream; the response head and body as text.
async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: api.example.test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    common::read_response(stream).await
}

async fn start(text: &str) -> GatewayProcess {
    let gw = GatewayProcess::start(text, &[]);
    assert!(
        became_ready(&gw.metrics.to_string(), Duration::from_secs(10)).await,
        "{}",
        gw.log()
    );
    gw
}

#[tokio::test]
async fn tls_with_certificates_chosen_by_sni_and_a_plain_listener_beside() {
    let ca = Ca::new("Portcullis test CA");
    let default = PairFiles::new(&ca.server(&["localhost", "127.0.0.1"]));
    let api = PairFiles::new(&ca.server(&["api.example.test", "*.apps.example.test"]));
    let up = EchoUpstream::start("app").await;
    let gw = start(&config(&default, &[&api], "", up.addr)).await;
    let tls = connector(&[&ca], &[b"http/1.1"], BOTH);

    // The default certificate, for an IP or a name no other certificate has.
    let mut s = handshake(&tls, gw.proxy, "localhost").await.unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let answer = get(&mut s, "/x").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = up.seen();
    let proto = seen
        .last()
        .unwrap()
        .headers
        .get("x-forwarded-proto")
        .unwrap();
    assert_eq!(proto, "https");
    // By SNI: the client checks the name, so each handshake proves which certificate came.
    for name in [
        "api.example.test",
        "API.Example.Test",
        "one.apps.example.test",
    ] {
        let mut s = handshake(&tls, gw.proxy, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(get(&mut s, "/x").await.starts_with("HTTP/1.1 200"));
    }
    // A name no certificate has gets the default one, which the client refuses.
    for name in ["other.example.test", "a.b.apps.example.test"] {
        let refused = handshake(&tls, gw.proxy, name).await;
        assert!(
            refused.is_err(),
            "{name}: the default certificate does not name it"
        );
    }
    // TLS 1.2 only, and 1.3 only.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let only = connector(&[&ca], &[b"http/1.1"], &[version]);
        let mut s = handshake(&only, gw.proxy, "localhost").await.unwrap();
        assert!(get(&mut s, "/x").await.starts_with("HTTP/1.1 200"));
    }
    // Sessions resume with the gateway's tickets (one ticket key for every worker).
    let resuming = {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(BOTH)
            .unwrap()
            .with_root_certificates(roots(&[&ca]))
            .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    };
    let mut first = handshake(&resuming, gw.proxy, "localhost").await.unwrap();
    assert!(get(&mut first, "/x").await.starts_with("HTTP/1.1 200"));
    let mut again = handshake(&resuming, gw.proxy, "localhost").await.unwrap();
    assert!(get(&mut again, "/x").await.starts_with("HTTP/1.1 200"));
    assert_eq!(
        again.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    // A client that speaks only protocols the gateway does not is refused (RFC 7301 §3.2);
    // one without ALPN is served HTTP/1.1 (HTTP/2 by ALPN: tests/http2.rs).
    let other = connector(&[&ca], &[b"h3", b"spdy/3.1"], BOTH);
    assert!(handshake(&other, gw.proxy, "localhost").await.is_err());
    let none = connector(&[&ca], &[], BOTH);
    let mut s = handshake(&none, gw.proxy, "localhost").await.unwrap();
    assert!(get(&mut s, "/x").await.starts_with("HTTP/1.1 200"));
    // Plain HTTP on the TLS port is a failed handshake; the plain listener serves it.
    let mut raw = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    raw.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    let plain = gw.plain.expect("a plain listener");
    let mut p = tokio::net::TcpStream::connect(plain).await.unwrap();
    assert!(get(&mut p, "/plain").await.starts_with("HTTP/1.1 200"));
    let seen = up.seen();
    assert_eq!(
        seen.last()
            .unwrap()
            .headers
            .get("x-forwarded-proto")
            .unwrap(),
        "http"
    );

    let m = scrape_until(gw.metrics, |m| {
        m.get("portcullis_tls_handshakes_total", &[("result", "failed")]) >= 4.0
    })
    .await;
    assert!(m.get("portcullis_tls_handshakes_total", &[("result", "ok")]) >= 6.0);
    // Two refused names, the h2-only client and the plain request.
    assert!(m.get("portcullis_tls_handshakes_total", &[("result", "failed")]) >= 4.0);
}

#[tokio::test]
async fn certificates_reload_when_their_files_change_and_a_bad_pair_keeps_the_old_one() {
    let (old_ca, new_ca) = (Ca::new("old CA"), Ca::new("new CA"));
    let files = PairFiles::new(&old_ca.server(&["localhost"]));
    let up = EchoUpstream::start("app").await;
    let gw = start(&config(
        &files,
        &[],
        "tls_reload_interval = \"1s\"",
        up.addr,
    ))
    .await;
    let (trusts_old, trusts_new) = (
        connector(&[&old_ca], &[b"http/1.1"], BOTH),
        connector(&[&new_ca], &[b"http/1.1"], BOTH),
    );
    let mut open = handshake(&trusts_old, gw.proxy, "localhost").await.unwrap();
    assert!(get(&mut open, "/before").await.starts_with("HTTP/1.1 200"));
    assert!(handshake(&trusts_new, gw.proxy, "localhost").await.is_err());

    // A renewal: new handshakes get the new certificate; the open connection goes on.
    let renewed = new_ca.server(&["localhost"]);
    files.replace(&renewed.cert_pem, &renewed.key_pem);
    let swapped = eventually(Duration::from_secs(15), || async {
        handshake(&trusts_new, gw.proxy, "localhost").await.is_ok()
    })
    .await;
    assert!(swapped, "{}", gw.log());
    assert!(handshake(&trusts_old, gw.proxy, "localhost").await.is_err());
    assert!(get(&mut open, "/after").await.starts_with("HTTP/1.1 200"));
    let m = scrape(gw.metrics).await;
    assert_eq!(
        m.get(
            "portcullis_tls_certificate_reloads_total",
            &[("result", "success")]
        ),
        1.0
    );

    // A key that is not the certificate's: refused, counted, logged; the renewed one stays.
    let (other, stranger) = (new_ca.server(&["localhost"]), new_ca.server(&["localhost"]));
    files.replace(&other.cert_pem, &stranger.key_pem);
    let failure = [("result", "failure")];
    counted(
        gw.metrics,
        "portcullis_tls_certificate_reloads_total",
        &failure,
        1.0,
    )
    .await;
    let log = gw.log();
    assert!(
        log.contains("TLS certificates not reloaded") && log.contains("server.tls_key"),
        "{log}"
    );
    let mut s = handshake(&trusts_new, gw.proxy, "localhost").await.unwrap();
    assert!(get(&mut s, "/still").await.starts_with("HTTP/1.1 200"));
    // The served certificate is still the renewed one: its chain is the one written first.
    let served = s.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(served, renewed.cert);
    // Its expiry is published (rcgen's default notAfter: 4096-01-01).
    let m = scrape(gw.metrics).await;
    let expiry = ("certificate", "server.tls_cert");
    assert_eq!(
        m.get(
            "portcullis_tls_certificate_expiry_timestamp_seconds",
            &[expiry]
        ),
        67_090_118_400.0
    );

    // A FIFO at the certificate's path: refused without blocking (red team: reload and
    // shutdown hung on the read), and the gateway still drains and exits on SIGTERM.
    std::fs::remove_file(&files.cert.0).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&files.cert.0)
        .status()
        .unwrap();
    assert!(made.success());
    let failure = [("result", "failure")];
    counted(
        gw.metrics,
        "portcullis_tls_certificate_reloads_total",
        &failure,
        2.0,
    )
    .await;
    assert!(gw.log().contains("not a regular file"), "{}", gw.log());
    let mut s = handshake(&trusts_new, gw.proxy, "localhost").await.unwrap();
    assert!(get(&mut s, "/fifo").await.starts_with("HTTP/1.1 200"));
    drop((s, open));
    gw.sigterm();
    let exited = tokio::time::timeout(Duration::from_secs(15), gw.wait()).await;
    assert_eq!(exited.expect("exits on SIGTERM"), Some(0));
}

#[test]
fn check_names_bad_certificate_files_by_key() {
    let ca = Ca::new("CA");
    let (a, b) = (ca.server(&["localhost"]), ca.server(&["localhost"]));
    let cert = TempFile::with(&a.cert_pem);
    let wrong_key = TempFile::with(&b.key_pem);
    let expired = ca.expired_server(&["localhost"]);
    let (expired_cert, expired_key) = (
        TempFile::with(&expired.cert_pem),
        TempFile::with(&expired.key_pem),
    );
    let cases = [
        (
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                expired_cert.0.display(),
                expired_key.0.display()
            ),
            "the certificate expired on 2021-01-01T00:00:00Z",
        ),
        // Not regular files: a read would block (a FIFO) or never end (red team).
        (
            format!(
                "tls_cert = \"{}\"\ntls_key = \"/dev/zero\"\n",
                cert.0.display()
            ),
            "server.tls_key: cannot read /dev/zero: not a regular file",
        ),
        (
            format!(
                "tls_cert = \"/nonexistent/tls.crt\"\ntls_key = \"{}\"\n",
                wrong_key.0.display()
            ),
            "server.tls_cert: cannot read /nonexistent/tls.crt",
        ),
        (
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.0.display(),
                wrong_key.0.display()
            ),
            "is not the key of the certificate",
        ),
        (
            format!(
                "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
                cert.0.display(),
                cert.0.display()
            ),
            "server.tls_key: ",
        ),
    ];
    for (tls, expected) in cases {
        let text = format!(
            "[server]\n{tls}[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"none\"\n"
        );
        let (code, stderr) = common::binary::check_offline(&text);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}

/// Over TLS, a DPoP proof names `https://` (RFC 9449 §4.3: the request's URI as served).
#[tokio::test]
async fn a_dpop_proof_over_tls_names_https() {
    use common::idp::{now, MockIdp};
    use portcullis::config::Algorithm;
    use portcullis::devkeys::DevKey;
    let ca = Ca::new("CA");
    let files = PairFiles::new(&ca.server(&["localhost"]));
    let up = EchoUpstream::start("app").await;
    let signing = DevKey::generate(Algorithm::ES256, "idp");
    let idp = MockIdp::start(&[&signing]).await;
    let auth = format!(
        "[[issuers]]\nissuer = \"{iss}\"\njwks_uri = \"{iss}/jwks\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n\
         [[routes]]\nname = \"bound\"\npath_prefix = \"/bound\"\nupstreams = [\"{up}\"]\ndpop = \"required\"\n",
        iss = idp.issuer(),
        up = up.addr
    );
    let key = DevKey::generate(Algorithm::ES256, "client");
    let claims = serde_json::json!({ "iss": idp.issuer(), "sub": "u", "aud": "api", "iat": now(),
        "exp": now() + 600, "cnf": { "jkt": key.thumbprint() } });
    let token = signing.sign(&claims);
    // Also behind a trusted proxy that sent no X-Forwarded-Proto: the listener's scheme stands
    // (review: it fell back to http).
    for server in ["", "trust_forwarded_headers = true"] {
        let text =
            config(&files, &[], server, up.addr).replace("[metrics]", &format!("{auth}[metrics]"));
        let gw = start(&text).await;
        let https = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .resolve("localhost", gw.proxy)
            .build()
            .unwrap();
        let url = format!("https://localhost:{}/bound/x", gw.proxy.port());
        let send = |htu: String| {
            let proof = key.dpop_proof("GET", &htu, &token, &serde_json::json!({}));
            https
                .get(&url)
                .header("authorization", format!("DPoP {token}"))
                .header("dpop", proof)
                .send()
        };
        assert_eq!(send(url.clone()).await.unwrap().status(), 200, "{server}");
        let plain = url.replace("https://", "http://");
        let status = send(plain).await.unwrap().status();
        assert_eq!(
            status, 401,
            "{server}: a proof for http:// is for another URI"
        );
    }
}

/// A TLS client trusting `ca`, presenting `leaf` as its client certificate (none: `None`).
fn client_with(ca: &Ca, leaf: Option<&Leaf>) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(BOTH)
        .unwrap()
        .with_root_certificates(roots(&[ca]));
    let mut config = match leaf {
        None => builder.with_no_client_auth(),
        Some(l) => builder
            .with_client_auth_cert(
                vec![l.cert.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(l.key.clone_key()),
            )
            .unwrap(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// Whether the gateway refuses this client's handshake. In TLS 1.3 the client's side of the
/// handshake ends before the server has checked its certificate: the refusal comes at the
/// first read.
async fn refused(connector: &TlsConnector, addr: SocketAddr) -> bool {
    let answered = async {
        let mut s = handshake(connector, addr, "localhost").await?;
        s.write_all(b"GET /api/x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        let mut buf = [0u8; 64];
        match s.read(&mut buf).await? {
            0 => Err(std::io::Error::other("closed")),
            _ => Ok(()),
        }
    };
    answered.await.is_err()
}

/// `GET path` with a bearer token on an open stream: the status, and the answer.
async fn status_with<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    path: &str,
    token: &str,
) -> (u16, String) {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let text = common::read_response(stream).await;
    let status = text.get(9..12).and_then(|s| s.parse().ok());
    (
        status.unwrap_or_else(|| panic!("no status line: {text:?}")),
        text,
    )
}

/// Certificate-bound access tokens (RFC 8705 §3): a token with `cnf.x5t#S256` passes only on a
/// connection that presented that certificate; a route with `require_certificate_bound` takes
/// only such tokens; `client_auth = "required"` refuses a handshake without a valid one.
#[tokio::test]
async fn certificate_bound_tokens_pass_only_with_their_certificate() {
    use common::idp::{now, MockIdp};
    use portcullis::config::Algorithm;
    use portcullis::devkeys::DevKey;
    let (server_ca, client_ca, other_ca) = (
        Ca::new("server CA"),
        Ca::new("client CA"),
        Ca::new("other CA"),
    );
    let files = PairFiles::new(&server_ca.server(&["localhost"]));
    let client_ca_file = TempFile::with(&client_ca.pem());
    let (alice, bob, mallory) = (
        client_ca.client("alice"),
        client_ca.client("bob"),
        other_ca.client("mallory"),
    );
    let up = EchoUpstream::start("app").await;
    let signing = DevKey::generate(Algorithm::ES256, "idp");
    let idp = MockIdp::start(&[&signing]).await;
    let auth = |mode: &str| {
        format!(
            "[[issuers]]\nissuer = \"{iss}\"\njwks_uri = \"{iss}/jwks\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n\
             [[routes]]\nname = \"bound\"\npath_prefix = \"/bound\"\nupstreams = [\"{up}\"]\nrequire_certificate_bound = true\n\
             [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{up}\"]\n",
            iss = idp.issuer(),
            up = up.addr
        ) + mode
    };
    let server_keys =
        |mode: &str| format!("client_ca = \"{}\"\n{mode}", client_ca_file.0.display());
    let text = config(&files, &[], &server_keys(""), up.addr)
        .replace("[metrics]", &format!("{}[metrics]", auth("")));
    let gw = start(&text).await;
    let token = |cnf: Option<&Leaf>| {
        let mut claims = serde_json::json!({ "iss": idp.issuer(), "sub": "u", "aud": "api",
            "iat": now(), "exp": now() + 600 });
        if let Some(leaf) = cnf {
            let thumbprint = portcullis::dataplane::tls::thumbprint(&leaf.cert);
            claims["cnf"] = serde_json::json!({ "x5t#S256": &*thumbprint });
        }
        signing.sign(&claims)
    };
    let (bound, bearer) = (token(Some(&alice)), token(None));

    let mut as_alice = handshake(
        &client_with(&server_ca, Some(&alice)),
        gw.proxy,
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(status_with(&mut as_alice, "/bound/x", &bound).await.0, 200);
    assert_eq!(status_with(&mut as_alice, "/api/x", &bound).await.0, 200);
    // The same token again (a cache hit) is held to the same certificate.
    assert_eq!(status_with(&mut as_alice, "/api/y", &bound).await.0, 200);
    let mut as_bob = handshake(&client_with(&server_ca, Some(&bob)), gw.proxy, "localhost")
        .await
        .unwrap();
    let (status, answer) = status_with(&mut as_bob, "/api/x", &bound).await;
    assert_eq!(status, 401);
    assert!(answer.contains("error=\"invalid_token\""), "{answer}");
    let mut anonymous = handshake(&client_with(&server_ca, None), gw.proxy, "localhost")
        .await
        .unwrap();
    assert_eq!(status_with(&mut anonymous, "/api/x", &bound).await.0, 401);
    let mut plain = tokio::net::TcpStream::connect(gw.plain.unwrap())
        .await
        .unwrap();
    assert_eq!(
        status_with(&mut plain, "/api/x", &bound).await.0,
        401,
        "no certificate on plain HTTP"
    );
    // A bearer token passes where binding is not required, and not where it is.
    assert_eq!(status_with(&mut anonymous, "/api/x", &bearer).await.0, 200);
    assert_eq!(status_with(&mut as_alice, "/bound/x", &bearer).await.0, 401);
    // A certificate from a CA the gateway does not trust is refused at the handshake.
    assert!(refused(&client_with(&server_ca, Some(&mallory)), gw.proxy).await);
    let m = scrape(gw.metrics).await;
    for (route, outcome, n) in [
        // Bob's certificate, none, and plain HTTP.
        ("api", "certificate_mismatch", 3.0),
        ("bound", "certificate_unbound_token", 1.0),
        ("bound", "allowed", 1.0),
    ] {
        assert_eq!(
            m.get(
                "portcullis_auth_decisions_total",
                &[("route", route), ("outcome", outcome)]
            ),
            n,
            "{route} {outcome}"
        );
    }
    let hits = up.hits();
    assert_eq!(hits, 4, "only the passed requests reach the upstream");

    // `client_auth = "required"`: no certificate, no handshake.
    let required = config(
        &files,
        &[],
        &server_keys("client_auth = \"required\"\n"),
        up.addr,
    )
    .replace("[metrics]", &format!("{}[metrics]", auth("")));
    let gw = start(&required).await;
    assert!(refused(&client_with(&server_ca, None), gw.proxy).await);
    let mut as_alice = handshake(
        &client_with(&server_ca, Some(&alice)),
        gw.proxy,
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(status_with(&mut as_alice, "/bound/x", &bound).await.0, 200);
}

/// A reload refused for its certificate files leaves the watch on the files in use: fixing the
/// refused files later does not put them live beside the old configuration (review).
#[tokio::test]
async fn a_refused_reload_leaves_the_watch_on_the_certificates_in_use() {
    let (in_use_ca, refused_ca, renewed_ca) =
        (Ca::new("in use"), Ca::new("refused"), Ca::new("renewed"));
    let files = PairFiles::new(&in_use_ca.server(&["localhost"]));
    let up = EchoUpstream::start("app").await;
    let text = config(&files, &[], "tls_reload_interval = \"1s\"", up.addr);
    let gw = start(&text).await;
    // A reload naming other files, whose key is not their certificate's: refused.
    let (a, b) = (
        refused_ca.server(&["localhost"]),
        refused_ca.server(&["localhost"]),
    );
    let other = PairFiles::new(&a);
    other.replace(&a.cert_pem, &b.key_pem);
    let next = text
        .replace(
            &files.cert.0.display().to_string(),
            &other.cert.0.display().to_string(),
        )
        .replace(
            &files.key.0.display().to_string(),
            &other.key.0.display().to_string(),
        );
    gw.rewrite_config(&next);
    gw.sighup();
    let refused = scrape_until(gw.metrics, |m| {
        m.get("portcullis_config_reloads_total", &[("result", "failure")]) >= 1.0
    })
    .await;
    assert_eq!(
        refused.get("portcullis_config_reloads_total", &[("result", "failure")]),
        1.0,
        "{}",
        gw.log()
    );
    // The refused files mended, and the files in use renewed: the renewal goes live.
    other.replace(&a.cert_pem, &a.key_pem);
    let renewed = renewed_ca.server(&["localhost"]);
    files.replace(&renewed.cert_pem, &renewed.key_pem);
    let trusts_renewed = connector(&[&renewed_ca], &[b"http/1.1"], BOTH);
    let live = eventually(Duration::from_secs(15), || async {
        handshake(&trusts_renewed, gw.proxy, "localhost")
            .await
            .is_ok()
    })
    .await;
    assert!(live, "the files in use were not followed: {}", gw.log());
    let trusts_refused = connector(&[&refused_ca], &[b"http/1.1"], BOTH);
    assert!(handshake(&trusts_refused, gw.proxy, "localhost")
        .await
        .is_err());
}
