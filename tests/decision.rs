//! The forward-auth decision endpoint: each header convention, against the real gateway and a
//! mock identity provider; and end to end behind a real nginx `auth_request`.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::idp::{challenge, claims, setup_with, Setup};
use common::{client, dead_addr, eventually, free_addr};
use serde_json::json;

async fn setup(convention: &str) -> Setup {
    setup_with(
        &format!("[decision]\nlisten = \"127.0.0.1:0\"\nconvention = \"{convention}\"\n"),
        "",
    )
    .await
}

/// Ask the decision endpoint about `method path` carried the way `convention` carries it.
async fn ask(
    s: &Setup,
    convention: &str,
    method: &str,
    uri: &str,
    token: Option<&str>,
) -> reqwest::Response {
    let decision = s.gw.decision_addr.expect("decision listener");
    let c = client();
    let req = match convention {
        "nginx" => c
            .get(format!("http://{decision}/auth"))
            .header("x-original-method", method)
            .header("x-original-uri", uri),
        "traefik" => c
            .get(format!("http://{decision}/"))
            .header("x-forwarded-method", method)
            .header("x-forwarded-uri", uri),
        // Every header the Kubernetes ingress-nginx controller sets on its `auth-url` check
        // request (its nginx.tmpl), beside the client's own, which it passes on.
        "ingress-nginx" => c
            .get(format!("http://{decision}/"))
            .header("x-original-url", format!("https://api.example.com{uri}"))
            .header("x-original-method", method)
            .header("x-sent-from", "nginx-ingress-controller")
            .header("x-real-ip", "10.1.2.3")
            .header("x-forwarded-for", "10.1.2.3")
            .header("x-forwarded-proto", "")
            .header("x-request-id", "2c0a4a0a0b7c4bd6a7e4b0c34b4b8e1f")
            .header("x-auth-request-redirect", uri),
        _ => c.request(method.parse().unwrap(), format!("http://{decision}{uri}")),
    };
    let req = match token {
        Some(t) => req.bearer_auth(t),
        None => req,
    };
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_convention_gets_the_gateways_decisions() {
    for convention in ["nginx", "ingress-nginx", "traefik", "envoy"] {
        let s = setup(convention).await;
        let reader = s.ec.sign(&claims(&s.idp, "orders:read"));

        let resp = ask(&s, convention, "GET", "/orders/7?page=2", Some(&reader)).await;
        assert_eq!(resp.status(), 200, "{convention}");
        assert_eq!(resp.headers()["x-auth-subject"], "user-7", "{convention}");
        assert_eq!(
            resp.headers()["x-auth-scopes"],
            "orders:read",
            "{convention}"
        );
        assert_eq!(resp.headers()["x-auth-client-id"], "app", "{convention}");

        let resp = ask(&s, convention, "GET", "/orders/7", None).await;
        assert_eq!(resp.status(), 401, "{convention}");
        assert_eq!(challenge(&resp), "Bearer realm=\"api\"", "{convention}");

        let resp = ask(&s, convention, "POST", "/orders", Some(&reader)).await;
        assert_eq!(resp.status(), 403, "{convention}");
        assert!(
            challenge(&resp).contains("scope=\"orders:write\""),
            "{convention}"
        );
        assert!(!resp.headers().contains_key("x-auth-subject"));

        let resp = ask(&s, convention, "GET", "/orders/7", Some("not-a-token")).await;
        assert_eq!(resp.status(), 401, "{convention}");
        assert!(challenge(&resp).contains("error=\"invalid_token\""));

        let resp = ask(&s, convention, "GET", "/nowhere", Some(&reader)).await;
        assert_eq!(resp.status(), 403, "{convention}: a path no route claims");

        if convention != "envoy" {
            // The HTTP client would normalise these; header values are sent as they are.
            for tricky in ["/public/../orders/7", "/orders/%2e%2e/admin", "//orders"] {
                let resp = ask(&s, convention, "GET", tricky, Some(&reader)).await;
                assert_eq!(resp.status(), 400, "{convention} {tricky}");
            }
        }
        assert_eq!(s.up.hits(), 0, "the decision endpoint forwards nothing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_or_doubled_original_request_headers_are_400_and_the_proxy_never_trusts_them() {
    let s = setup("nginx").await;
    let decision = s.gw.decision_addr.unwrap();
    let reader = s.ec.sign(&claims(&s.idp, "orders:read"));
    let resp = client()
        .get(format!("http://{decision}/auth"))
        .bearer_auth(&reader)
        .header("x-original-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    // On the proxy listener the headers mean nothing: the request's own path decides.
    let resp = client()
        .post(s.url("/orders"))
        .bearer_auth(&reader)
        .header("x-original-method", "GET")
        .header("x-original-uri", "/orders/1")
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/orders/1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(s.up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_identity_provider_is_503_at_the_decision_endpoint() {
    let s = setup("traefik").await;
    s.idp.set_failing(true);
    // A kid the gateway has never seen forces a refetch, which fails.
    let stranger =
        portcullis::devkeys::DevKey::generate(portcullis::config::Algorithm::ES256, "new-kid");
    let token = stranger.sign(&claims(&s.idp, "orders:read"));
    let resp = ask(&s, "traefik", "GET", "/orders/1", Some(&token)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5");
}

/// nginx, started on loopback from a config written for the test; killed on drop.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nginx_binary() -> String {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(str::to_owned)
        .or_else(|| {
            let out = Command::new("sh").args(["-c", "command -v nginx"]).output().ok()?;
            let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
            (!path.is_empty()).then_some(path)
        })
        .expect("nginx is not installed: run `scripts/setup.sh test` (or `make test`), which installs nginx-light")
}

/// The check location of our README's nginx example.
const NGINX_CHECK: &str = "proxy_pass http://{decision}/auth;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URI $request_uri;";

/// The check location the Kubernetes ingress-nginx controller writes for an `auth-url`
/// annotation (its nginx.tmpl), header for header.
const INGRESS_NGINX_CHECK: &str = "proxy_pass http://{decision}/;
            proxy_set_header X-Forwarded-Proto \"\";
            proxy_set_header X-Request-ID $request_id;
            proxy_set_header X-Original-URL $scheme://$http_host$request_uri;
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Sent-From \"nginx-ingress-controller\";
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Auth-Request-Redirect $request_uri;
            proxy_pass_request_headers on;";

async fn start_nginx(decision: SocketAddr, upstream: SocketAddr, check: &str) -> Nginx {
    let check = check.replace("{decision}", &decision.to_string());
    let dir = std::env::temp_dir().join(format!(
        "portcullis-nginx-{}-{}",
        std::process::id(),
        decision.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let addr = free_addr();
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {addr};
        location / {{
            auth_request /_portcullis;
            auth_request_set $auth_subject $upstream_http_x_auth_subject;
            auth_request_set $auth_scopes $upstream_http_x_auth_scopes;
            auth_request_set $auth_challenge $upstream_http_www_authenticate;
            add_header WWW-Authenticate $auth_challenge always;
            proxy_set_header X-Auth-Subject $auth_subject;
            proxy_set_header X-Auth-Scopes $auth_scopes;
            proxy_pass http://{upstream};
        }}
        location = /_portcullis {{
            internal;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            {check}
        }}
    }}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(nginx_binary())
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx starts");
    let nginx = Nginx {
        child,
        addr,
        _dir: TempDir(dir),
    };
    let up = eventually(Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    assert!(up, "nginx did not start listening on {addr}");
    nginx
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_auth_request_in_front_of_the_decision_endpoint() {
    for (convention, check) in [
        ("nginx", NGINX_CHECK),
        ("ingress-nginx", INGRESS_NGINX_CHECK),
    ] {
        nginx_in_front(convention, check).await;
    }
}

async fn nginx_in_front(convention: &str, check: &str) {
    let s = setup(convention).await;
    let nginx = start_nginx(s.gw.decision_addr.unwrap(), s.up.addr, check).await;
    let url = format!("http://{}/orders/1", nginx.addr);
    let reader = s.ec.sign(&claims(&s.idp, "orders:read"));

    let resp = client()
        .get(&url)
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = s.up.seen().pop().expect("nginx forwarded the request");
    assert_eq!(seen.headers["x-auth-subject"], "user-7");
    assert_eq!(seen.headers["x-auth-scopes"], "orders:read");

    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(challenge(&resp), "Bearer realm=\"api\"");

    let expired = s
        .ec
        .sign(&json!({ "iss": s.idp.issuer(), "aud": "api", "exp": 1000, "scope": "orders:read" }));
    let resp = client()
        .get(&url)
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        challenge(&resp).contains("error=\"invalid_token\""),
        "{}",
        challenge(&resp)
    );

    let resp = client()
        .post(format!("http://{}/orders", nginx.addr))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        s.up.hits(),
        1,
        "only the allowed request reached the upstream"
    );
}

/// Red team: nginx accepts `Host: api.example.com?`, and ingress-nginx builds `X-Original-URL`
/// from it (`$scheme://$http_host$request_uri`), so the real path would land in the query and
/// the decision would be the `/` route's. Such a URL, or one without a path, is 400 (nginx
/// makes that a 500): never the decision for another path.
#[tokio::test(flavor = "multi_thread")]
async fn ingress_nginx_urls_must_have_their_path_right_after_the_host() {
    let s = setup_with(
        &format!(
            "[decision]\nlisten = \"127.0.0.1:0\"\nconvention = \"ingress-nginx\"\n\
             [[routes]]\nname = \"root\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            dead_addr()
        ),
        "",
    )
    .await;
    let decision = s.gw.decision_addr.unwrap();
    let ask_with = |method: &str, url: &str| {
        client()
            .get(format!("http://{decision}/"))
            .header("x-original-method", method)
            .header("x-original-url", url)
            .send()
    };
    let ask = |url: &str| ask_with("DELETE", url);
    for url in [
        "http://api.example.com?/orders/7",
        "http://api.example.com:443?/orders/7",
        "https://api.example.com#/orders/7",
        "http://api.example.com",
        "/orders/7",
        "ftp://api.example.com/orders/7",
    ] {
        let r = ask(url).await.unwrap();
        assert_eq!(r.status(), 400, "{url}");
    }
    // The same path properly placed is the orders route's: a token is needed.
    let r = ask_with("GET", "http://api.example.com/orders/7")
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(ask("http://api.example.com/").await.unwrap().status(), 200);

    // Through a real nginx with the controller's check location, as a client would try it.
    let nginx = start_nginx(decision, s.up.addr, INGRESS_NGINX_CHECK).await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for host in ["api.example.com?", "api.example.com:80?x", "[::1]?"] {
        let mut c = tokio::net::TcpStream::connect(nginx.addr).await.unwrap();
        let req = format!("DELETE /orders/7 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).await.unwrap();
        let head = String::from_utf8_lossy(&answer);
        let status = head.split(' ').nth(1).unwrap_or_default().to_owned();
        assert!(status != "200" && !status.is_empty(), "Host {host}: {head}");
    }
    assert_eq!(s.up.hits(), 0, "nothing reached the upstream");
}

/// Headers through which applications take their path, path base or method, which the asking
/// proxy would hand them as the client sent them (red team): refused, except from the
/// proxy whose convention sets them.
#[tokio::test(flavor = "multi_thread")]
async fn path_and_method_headers_of_other_conventions_are_refused_at_the_decision_endpoint() {
    for convention in ["nginx", "ingress-nginx", "traefik"] {
        let s = setup(convention).await;
        let reader = s.ec.sign(&claims(&s.idp, "orders:read"));
        for (name, value, refused) in [
            ("x-forwarded-uri", "/admin", convention != "traefik"),
            ("x-forwarded-method", "DELETE", convention != "traefik"),
            ("x-forwarded-prefix", "/admin", convention != "traefik"),
            ("x-forwarded-path", "/admin", true),
            ("x-forwarded-url", "http://api.example.com/admin", true),
            ("x-original-request-uri", "/admin", true),
            ("x-request-uri", "/admin", true),
            ("x_request_uri", "/admin", true),
        ] {
            let decision = s.gw.decision_addr.unwrap();
            let c = client();
            let req = match convention {
                "nginx" => c
                    .get(format!("http://{decision}/auth"))
                    .header("x-original-method", "GET")
                    .header("x-original-uri", "/orders/7"),
                "ingress-nginx" => c
                    .get(format!("http://{decision}/"))
                    .header("x-original-method", "GET")
                    .header("x-original-url", "http://api.example.com/orders/7"),
                _ => c
                    .get(format!("http://{decision}/"))
                    .header("x-forwarded-method", "GET")
                    .header("x-forwarded-uri", "/orders/7"),
            };
            let req = match (convention, name) {
                // Traefik's own two are already set above.
                ("traefik", "x-forwarded-uri" | "x-forwarded-method") => req,
                _ => req.header(name, value),
            };
            let r = req.bearer_auth(&reader).send().await.unwrap();
            let want = if refused { 403 } else { 200 };
            assert_eq!(r.status(), want, "{convention}: {name}");
        }
    }
}
