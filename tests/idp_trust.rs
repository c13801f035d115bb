//! Identity providers behind a private CA: key sets (and introspection) fetched over https are
//! trusted through the system store (here `SSL_CERT_FILE`, which the system store honours) or a
//! `ca_file`; without either the fetch fails closed, `/readyz` stays 503, and the log line names
//! the cause. `portcullis check` names an unusable `ca_file` by key.

mod common;

use std::time::Duration;

use common::authz::MockAs;
use common::binary::{GatewayProcess, TempFile};
use common::idp::{claims, MockIdp};
use common::tls::{Ca, TlsFront};
use common::{became_ready, client, eventually, EchoUpstream};
use portcullis::config::Algorithm;
use portcullis::devkeys::DevKey;

/// A gateway whose one issuer's keys are at `jwks_uri`, with `more` in its `[[issuers]]`.
fn config(idp: &MockIdp, jwks_uri: &str, more: &str, up: std::net::SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[issuers]]\nissuer = \"{iss}\"\njwks_uri = \"{jwks_uri}\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n{more}\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{up}\"]\nscopes = [\"orders:read\"]\n",
        iss = idp.issuer()
    )
}

struct Provider {
    key: DevKey,
    idp: MockIdp,
    front: TlsFront,
    ca: Ca,
    up: EchoUpstream,
}

impl Provider {
    /// A mock identity provider whose key set is served over https by a private CA's
    /// certificate for 127.0.0.1.
    async fn start() -> Provider {
        let key = DevKey::generate(Algorithm::ES256, "k1");
        let idp = MockIdp::start(&[&key]).await;
        let ca = Ca::new("Portcullis test private CA");
        let front = TlsFront::start(&ca.server(&["127.0.0.1", "localhost"]), idp.addr).await;
        let up = EchoUpstream::start("orders").await;
        Provider {
            key,
            idp,
            front,
            ca,
            up,
        }
    }

    fn jwks_uri(&self) -> String {
        format!("https://127.0.0.1:{}/jwks", self.front.addr.port())
    }

    async fn status(&self, gw: &GatewayProcess) -> u16 {
        let token = self.key.sign(&claims(&self.idp, "orders:read"));
        let url = format!("http://{}/api/x", gw.proxy);
        let resp = client().get(url).bearer_auth(token).send().await.unwrap();
        resp.status().as_u16()
    }
}

#[tokio::test]
async fn a_key_set_behind_a_private_ca_is_trusted_through_ca_file() {
    let p = Provider::start().await;
    let ca = TempFile::with(&p.ca.pem());
    let more = format!("ca_file = \"{}\"", ca.0.display());
    let gw = GatewayProcess::start(&config(&p.idp, &p.jwks_uri(), &more, p.up.addr), &[]);
    assert!(
        became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await,
        "{}",
        gw.log()
    );
    assert_eq!(p.status(&gw).await, 200);
    assert!(p.front.handshakes() >= 1, "fetched over TLS");
}

#[tokio::test]
async fn the_system_trust_store_is_used() {
    let p = Provider::start().await;
    let store = TempFile::with(&p.ca.pem());
    let path = store.0.display().to_string();
    let gw = GatewayProcess::start(
        &config(&p.idp, &p.jwks_uri(), "", p.up.addr),
        &[("SSL_CERT_FILE", &path)],
    );
    assert!(
        became_ready(&gw.metrics.to_string(), Duration::from_secs(15)).await,
        "{}",
        gw.log()
    );
    assert_eq!(p.status(&gw).await, 200);
}

#[tokio::test]
async fn an_untrusted_key_set_fails_closed_and_the_log_names_the_cause() {
    let p = Provider::start().await;
    // The CA is neither in the (empty) system store nor in a ca_file.
    let empty = TempFile::with("");
    let path = empty.0.display().to_string();
    let gw = GatewayProcess::start(
        &config(&p.idp, &p.jwks_uri(), "", p.up.addr),
        &[("SSL_CERT_FILE", &path)],
    );
    let failed = eventually(Duration::from_secs(15), || async {
        gw.log().contains("key fetch failed")
    })
    .await;
    let log = gw.log();
    assert!(failed, "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("key fetch failed"))
        .unwrap();
    assert!(
        line.contains("UnknownIssuer") || line.contains("unknown issuer"),
        "the cause is kept: {line}"
    );
    let ready = client()
        .get(format!("http://{}/readyz", gw.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(p.status(&gw).await, 503);
    assert_eq!(p.up.hits(), 0);
    assert_eq!(p.idp.hits("/jwks"), 0, "no key set was served");
}

#[tokio::test]
async fn introspection_behind_a_private_ca_is_trusted_through_its_ca_file() {
    let az = MockAs::start().await;
    az.activate("opaque-1", "orders:read");
    let ca = Ca::new("Portcullis test private CA");
    let front = TlsFront::start(&ca.server(&["127.0.0.1"]), az.addr).await;
    let up = EchoUpstream::start("orders").await;
    let ca_pem = TempFile::with(&ca.pem());
    let empty = TempFile::with("");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [introspection]\nendpoint = \"https://127.0.0.1:{port}/introspect\"\nclient_id = \"gateway client\"\n\
         client_secret_env = \"AZ_SECRET\"\naudiences = [\"api\"]\nca_file = \"{ca}\"\n\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{up}\"]\nscopes = [\"orders:read\"]\n",
        port = front.addr.port(),
        ca = ca_pem.0.display(),
        up = up.addr,
    );
    let env = [
        ("AZ_SECRET", common::authz::CLIENT_SECRET),
        ("SSL_CERT_FILE", &empty.0.display().to_string()),
    ];
    let gw = GatewayProcess::start(&text, &env);
    let url = format!("http://{}/api/x", gw.proxy);
    let resp = client()
        .get(&url)
        .bearer_auth("opaque-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", gw.log());
    assert_eq!(az.call_count(), 1);
    assert!(front.handshakes() >= 1);
    // The same endpoint without the ca_file: refused with 503, and the cause is logged.
    let without = text.replace(&format!("ca_file = \"{}\"\n", ca_pem.0.display()), "");
    let gw = GatewayProcess::start(&without, &env);
    let url = format!("http://{}/api/x", gw.proxy);
    let resp = client()
        .get(&url)
        .bearer_auth("opaque-2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("introspection failed") && l.contains("UnknownIssuer")),
        "{log}"
    );
}

#[test]
fn check_names_an_unusable_ca_file_by_key() {
    let not_pem = TempFile::with("just text\n");
    let cases = [
        (
            "/nonexistent/ca.pem".to_owned(),
            "issuers[0].ca_file: cannot read /nonexistent/ca.pem",
        ),
        (not_pem.0.display().to_string(), "holds no PEM certificate"),
    ];
    for (ca_file, expected) in cases {
        let text = format!(
            "[[issuers]]\nissuer = \"https://idp.example\"\njwks_uri = \"https://idp.example/jwks\"\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\nca_file = \"{ca_file}\"\n\
             [[routes]]\nname = \"api\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\n"
        );
        let (code, stderr) = common::binary::check_offline(&text);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains("issuers[0].ca_file: "), "{stderr}");
    }
}
