//! Path confusion: the route the gateway chooses is the route the application runs. Every
//! target is sent with raw sockets, through the proxy listener and the decision endpoint, with
//! every token; whenever the application's handler is reached, the token holds the scope that
//! handler needs, judged by an independent oracle of how frameworks read paths
//! (`common::framework`).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::framework::{app_path, needed_scope};
use common::idp::{claims, MockIdp};
use common::{became_ready, orders_routes, raw_request, start_gateway_with_server, EchoUpstream};
use portcullis::app::RunningApp;
use portcullis::config::Algorithm;
use portcullis::devkeys::DevKey;

struct World {
    gw: RunningApp,
    up: EchoUpstream,
    /// (scope, token); the first has no token at all.
    tokens: Vec<(&'static str, Option<String>)>,
}

/// `/` and `/public` open, `/orders` (GET `orders:read`, POST `orders:write`), `/api`
/// (`api:read`), `/api/admin` (`api:admin`), and an nginx-convention decision listener.
async fn world(server: &str) -> World {
    let key = DevKey::generate(Algorithm::RS256, "rsa-1");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("app").await;
    let u = up.addr;
    let gw = start_gateway_with_server(
        server,
        &format!(
            r#"[decision]
listen = "127.0.0.1:0"
convention = "nginx"
[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["api"]
algorithms = ["RS256"]
[[routes]]
name = "root"
path_prefix = "/"
upstreams = ["{u}"]
auth = "none"
[[routes]]
name = "public"
path_prefix = "/public"
upstreams = ["{u}"]
auth = "none"
{orders}
[[routes]]
name = "api"
path_prefix = "/api"
upstreams = ["{u}"]
scopes = ["api:read"]
[[routes]]
name = "api-admin"
path_prefix = "/api/admin"
upstreams = ["{u}"]
scopes = ["api:admin"]
"#,
            issuer = idp.issuer(),
            orders = orders_routes(u),
        ),
    );
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
    let mut tokens = vec![("", None)];
    for scope in ["api:read", "orders:read", "api:admin"] {
        tokens.push((scope, Some(key.sign(&claims(&idp, scope)))));
    }
    World { gw, up, tokens }
}

/// The targets of every class: percent-encoded unreserved characters, targets that do not
/// start with `/`, path parameters, dot segments in every spelling, encoded separators and
/// spaces, double and overlong encodings.
const TARGETS: &[&str] = &[
    "/api/%61dmin/users",
    "/api/adm%69n",
    "/API/admin/users",
    "/Api/Admin",
    "/api/ADMIN;x/users",
    "/%41PI/admin",
    "/ORDERS/1",
    "/Public/../ORDERS/1",
    "/%61pi/admin/users",
    "/%6frders/1",
    "/%6Frders/1?x=1",
    "%2forders/1",
    "%2Fapi/admin",
    "orders/1",
    "a/../orders/1",
    "*/orders",
    "*",
    "foo:bar://h/orders/1",
    "http://h/orders/1",
    "http://h/api/%61dmin/users",
    "HTTP://h/public/../orders/1",
    "/public/..;/orders/1",
    "/public/..;x=y/api/admin",
    "/public/.;/../orders/1",
    "/api/admin;/users",
    "/api;x/admin/users",
    "/api/admin%3B/users",
    "/api/admin%3bx/users",
    "/public/%2e%2e;/orders",
    "/public/../orders/1",
    "/public/./../orders/1",
    "/public/%2e%2e/orders/1",
    "/public/%2E./api/admin",
    "/public/.%2e/api/admin",
    "//orders/1",
    "/public//../orders",
    "/public%2f..%2forders/1",
    "/public%5c..%5corders/1",
    "/public\\..\\orders/1",
    "/api/admin%20/users",
    "/api/%20admin/users",
    "/api/admin%09/users",
    "/api/admin%0a/users",
    "/api/%2561dmin/users",
    "/public/%252e%252e/orders/1",
    "/public/%c0%ae%c0%ae/orders/1",
    "/public/%c0%af../orders/1",
    "/orders%2f1",
    "/orders%00/1",
    "/api%23/admin",
];

/// The oracle itself, on the cases the issue found.
#[test]
fn the_oracle_reads_paths_as_frameworks_do() {
    for (raw, want) in [
        ("/api/%61dmin/users", "/api/admin/users"),
        ("/public/..;/orders/1", "/orders/1"),
        ("/api/admin;/users", "/api/admin/users"),
        ("/api/admin%3B/users", "/api/admin/users"),
        ("/public/%2e%2e/orders", "/orders"),
        ("/public%2f..%2forders", "/orders"),
        ("/public\\..\\orders", "/orders"),
        ("/api/admin%20/users", "/api/admin/users"),
        ("//orders", "/orders"),
        ("%2forders/1", "/orders/1"),
        ("/caf%C3%A9", "/caf\u{e9}"),
    ] {
        assert_eq!(app_path(raw), want, "{raw}");
    }
    assert_eq!(needed_scope("GET", "/api/admin/x"), Some("api:admin"));
    assert_eq!(needed_scope("POST", "/orders"), Some("orders:write"));
    assert_eq!(needed_scope("GET", "/public/x"), None);
}

/// What came back: the status, and the path the application routed on if it was reached.
fn read_answer(answer: &str) -> (u16, Option<String>) {
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let app = answer.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("x-app-path")
            .then(|| value.trim().to_owned())
    });
    (status, app)
}

async fn send(addr: SocketAddr, request_line: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!("{request_line}\r\nHost: h\r\n{auth}Connection: close\r\n\r\n");
    raw_request(addr, request.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn no_target_reaches_a_handler_its_token_may_not_use() {
    let w = world("").await;
    let mut reached = 0;
    for &target in TARGETS {
        for method in ["GET", "POST"] {
            for (scope, token) in &w.tokens {
                let answer = send(
                    w.gw.proxy_addr,
                    &format!("{method} {target} HTTP/1.1"),
                    token.as_deref(),
                )
                .await;
                let (status, app) = read_answer(&answer);
                let Some(app) = app else {
                    assert!(
                        (400..600).contains(&status),
                        "{method} {target}: {status} without reaching the app"
                    );
                    continue;
                };
                reached += 1;
                if let Some(needed) = needed_scope(method, &app) {
                    assert_eq!(
                        *scope, needed,
                        "{method} {target} with {scope:?} reached the handler of {app}, which needs {needed}"
                    );
                }
            }
        }
    }
    // The properly scoped tokens do get through the encodings that mean the same path.
    assert!(reached > 0);
    let (_, admin) = &w.tokens[3];
    let answer = send(
        w.gw.proxy_addr,
        "GET /api/%61dmin/users HTTP/1.1",
        admin.as_deref(),
    )
    .await;
    assert_eq!(read_answer(&answer), (200, Some("/api/admin/users".into())));
    let seen = w.up.seen();
    assert_eq!(
        seen.last().unwrap().uri,
        "/api/admin/users",
        "forwarded as routed"
    );
}

/// Each raw request head (without its final empty line) is answered 400 by the gateway itself,
/// and the application sees none of them.
async fn all_refused(w: &World, heads: &[String]) {
    for head in heads {
        let request = format!("{head}Connection: close\r\n\r\n");
        let answer = raw_request(w.gw.proxy_addr, request.as_bytes()).await;
        let (status, app) = read_answer(&answer);
        assert!(app.is_none(), "{head:?} reached {app:?}");
        assert_eq!(status, 400, "{head:?}: {answer}");
    }
    assert_eq!(w.up.hits(), 0);
}

/// A request line with two spaces, or a space or control byte inside the target, is refused
/// (RFC 9112 §3.2), not corrected: the data plane percent-encodes such bytes before its parser
/// runs again, and the gateway tells that from the line as it arrived; on a kept-alive
/// connection too.
#[tokio::test(flavor = "multi_thread")]
async fn spaces_in_the_request_line_are_refused_not_corrected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world("").await;
    let lines = [
        "GET  /orders/1 HTTP/1.1",
        "GET  /api/admin HTTP/1.1",
        "GET /api/admin /users HTTP/1.1",
        "GET /api/admin\t/users HTTP/1.1",
        "GET /orders/1  HTTP/1.1",
        "GET /public/a b HTTP/1.1",
        "GET /public/a\x01b HTTP/1.1",
        "GET /public#/../api/admin HTTP/1.1",
        "GET /public?x=1#frag HTTP/1.1",
    ];
    all_refused(&w, &lines.map(|l| format!("{l}\r\nHost: h\r\n"))).await;
    // The second request of a connection.
    let mut s = tokio::net::TcpStream::connect(w.gw.proxy_addr)
        .await
        .unwrap();
    s.write_all(b"GET /public/ok HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = s.read(&mut first).await.unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&first[..n])
    );
    s.write_all(b"GET /public/a b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut second = Vec::new();
    let _ = s.read_to_end(&mut second).await;
    let second = String::from_utf8_lossy(&second);
    assert!(second.contains("HTTP/1.1 400"), "{second}");
    assert_eq!(w.up.hits(), 1, "only the first request was forwarded");
}

/// An absolute-form target is reduced to origin-form; the route is chosen on its path, and its
/// authority is what `Host` and `X-Forwarded-Host` say (pingora already requires the two to
/// agree).
#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_is_forwarded_in_origin_form_with_its_authority_as_host() {
    let w = world("").await;
    // (The data plane itself refuses an absolute-form authority that disagrees with Host.)
    let request = "GET http://api.example:8080/public/%7Ex?q=%61 HTTP/1.1\r\n\
                   Host: api.example:8080\r\nConnection: close\r\n\r\n";
    let answer = raw_request(w.gw.proxy_addr, request.as_bytes()).await;
    assert_eq!(read_answer(&answer).0, 200, "{answer}");
    let seen = w.up.seen();
    let seen = seen.last().unwrap();
    assert_eq!(seen.uri, "/public/~x?q=%61");
    assert_eq!(seen.headers["host"], "api.example:8080");
    assert_eq!(seen.headers["x-forwarded-host"], "api.example:8080");
    let answer = send(w.gw.proxy_addr, "GET http://h/orders/1 HTTP/1.1", None).await;
    assert_eq!(read_answer(&answer), (401, None));
}

/// The decision endpoint decides on the same canonical target: whenever it says 200, the
/// token may use the handler that the original target reaches in the application.
#[tokio::test(flavor = "multi_thread")]
async fn the_decision_endpoint_allows_no_target_its_token_may_not_use() {
    let w = world("").await;
    let decision = w.gw.decision_addr.unwrap();
    for &target in TARGETS {
        for method in ["GET", "POST"] {
            for (scope, token) in &w.tokens {
                let auth = token
                    .as_deref()
                    .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
                let request = format!(
                    "GET /auth HTTP/1.1\r\nHost: h\r\nX-Original-Method: {method}\r\n\
                     X-Original-URI: {target}\r\n{auth}Connection: close\r\n\r\n"
                );
                let answer = raw_request(decision, request.as_bytes()).await;
                let status = read_answer(&answer).0;
                assert_ne!(status, 0, "{target}: {answer}");
                if status != 200 {
                    continue;
                }
                // What nginx would forward: the original target's path.
                let path = target.split_once("://").map_or(target, |(_, rest)| {
                    &rest[rest.find('/').unwrap_or(rest.len())..]
                });
                let path = path.split('?').next().unwrap();
                if let Some(needed) = needed_scope(method, &app_path(path)) {
                    assert_eq!(
                        *scope, needed,
                        "the decision endpoint allowed {method} {target} with {scope:?}"
                    );
                }
            }
        }
    }
    let long = format!("/public/{}", "a".repeat(9000));
    let request = format!(
        "GET /auth HTTP/1.1\r\nHost: h\r\nX-Original-Method: GET\r\nX-Original-URI: {long}\r\n\
         Connection: close\r\n\r\n"
    );
    let answer = raw_request(decision, request.as_bytes()).await;
    assert_eq!(
        read_answer(&answer).0,
        414,
        "the proxy listener's limit holds here too"
    );
    let (_, admin) = &w.tokens[3];
    let request = format!(
        "GET /auth HTTP/1.1\r\nHost: h\r\nX-Original-Method: GET\r\nX-Original-URI: /api/%61dmin\r\n\
         Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
        admin.as_deref().unwrap()
    );
    let answer = raw_request(decision, request.as_bytes()).await;
    assert_eq!(read_answer(&answer).0, 200, "{answer}");
    assert_eq!(w.up.hits(), 0, "the decision endpoint forwards nothing");
}

/// The asking proxy forwards the client's headers to the application as they are, so a check
/// request carrying one that would choose the identity, path or method is refused (403, which
/// nginx passes on), while client-address headers are the asking proxy's to judge.
#[tokio::test(flavor = "multi_thread")]
async fn the_decision_endpoint_refuses_headers_that_choose_identity_path_or_method() {
    let w = world("").await;
    let decision = w.gw.decision_addr.unwrap();
    let (_, token) = &w.tokens[2];
    let ask = |extra: &str| {
        format!(
            "GET /auth HTTP/1.1\r\nHost: h\r\nX-Original-Method: GET\r\nX-Original-URI: /orders/1\r\n\
             Authorization: Bearer {}\r\n{extra}Connection: close\r\n\r\n",
            token.as_deref().unwrap()
        )
    };
    for (extra, status) in [
        ("", 200),
        ("X-Real-IP: 6.6.6.6\r\n", 200),
        ("X-Forwarded-For: 6.6.6.6\r\n", 200),
        ("X-HTTP-Method-Override: DELETE\r\n", 403),
        ("X_HTTP_Method_Override: DELETE\r\n", 403),
        ("X-Original-URL: /api/admin\r\n", 403),
        ("X-Middleware-Subrequest: middleware\r\n", 403),
        ("X-Auth-Client-Id: admin-app\r\n", 403),
    ] {
        let answer = raw_request(decision, ask(extra).as_bytes()).await;
        assert_eq!(read_answer(&answer).0, status, "{extra:?}: {answer}");
    }
}

/// Refusals of the target are 400 `invalid_request` with a fixed description, before routing,
/// and never reach the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_target_is_a_json_400_that_names_the_rule() {
    let w = world("").await;
    for (target, description) in [
        (
            "/api/admin;/users",
            "This route does not accept ; parameters in the path.",
        ),
        (
            "/public/..;/orders/1",
            "The request path holds a . or .. segment.",
        ),
        (
            "/api/admin%20/users",
            "A request path segment starts or ends with a space.",
        ),
        (
            "/api/%2561dmin",
            "The request path holds a double percent-encoding.",
        ),
        (
            "/api/admin./users",
            "A request path segment ends with a dot.",
        ),
        (
            "/api/adm\"in",
            "The request target holds a byte that must be percent-encoded, or a fragment.",
        ),
        (
            "/orders/1?_method=POST",
            "This route does not accept a _method query parameter.",
        ),
        (
            "/orders/1?_method%00=POST",
            "This route does not accept a _method query parameter.",
        ),
    ] {
        let answer = send(w.gw.proxy_addr, &format!("GET {target} HTTP/1.1"), None).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{target}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"], "invalid_request", "{target}");
        assert_eq!(body["error_description"], description, "{target}");
    }
    // A target that is not a URI at all is refused by the HTTP parser, before the gate: a 400
    // without a body. (The gate refuses it too: gate::target's unit tests, the decision test.)
    let answer = send(w.gw.proxy_addr, "GET %2forders/1 HTTP/1.1", None).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(w.up.hits(), 0);
}

// Headers the client must not choose.

/// Send `GET path` with these extra header lines; the headers the upstream saw.
async fn headers_seen(w: &World, path: &str, lines: &[(&str, &str)]) -> http::HeaderMap {
    let extra: String = lines.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let request = format!("GET {path} HTTP/1.1\r\nHost: h\r\n{extra}Connection: close\r\n\r\n");
    let before = w.up.hits();
    let answer = raw_request(w.gw.proxy_addr, request.as_bytes()).await;
    assert_eq!(read_answer(&answer).0, 200, "{answer}");
    assert_eq!(w.up.hits(), before + 1);
    w.up.seen().last().unwrap().headers.clone()
}

/// Behind a trusted proxy that appends its own `X-Forwarded-For` line after a client's spoofed
/// one, the upstream sees one list: the spoofed address first, then the real client, then the
/// trusted proxy (RFC 9110 §5.3).
#[tokio::test(flavor = "multi_thread")]
async fn several_forwarded_for_lines_are_one_list() {
    for (server, want) in [
        (
            "trust_forwarded_headers = true",
            "6.6.6.6, 203.0.113.9, 127.0.0.1",
        ),
        // Untrusted: the client's lines are replaced.
        ("", "127.0.0.1"),
    ] {
        let w = world(server).await;
        let lines = [
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-For", "203.0.113.9"),
        ];
        let seen = headers_seen(&w, "/public/x", &lines).await;
        let all: Vec<_> = seen.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, [want], "{server:?}");
    }
}

const CLIENT_CHOSEN: &[(&str, &str)] = &[
    ("Forwarded", "for=6.6.6.6;host=evil"),
    ("X-Real-IP", "6.6.6.6"),
    ("True-Client-IP", "6.6.6.6"),
    ("X-Client-IP", "6.6.6.6"),
    ("CF-Connecting-IP", "6.6.6.6"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("X-Forwarded_Host", "evil"),
    ("X-Forwarded-Port", "1"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Original-URL", "/api/admin"),
    ("X-Rewrite-URL", "/api/admin"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X_HTTP_Method_Override", "DELETE"),
    ("X-Original-URI", "/api/admin"),
    ("X-Script-Name", "/api/admin"),
    ("X-Original-Method", "DELETE"),
    ("X_Anything", "underscored"),
    ("X-Envoy-Original-Path", "/api/admin"),
    ("X-Middleware-Subrequest", "middleware"),
    ("X-Auth-Subject", "admin"),
    // Scheme carriers that frameworks and platforms read (red team: they passed).
    ("X-Url-Scheme", "https"),
    ("X-Scheme", "https"),
    ("CloudFront-Forwarded-Proto", "https"),
    ("X-Arr-Ssl", "1"),
    ("Cf-Visitor", "{\"scheme\":\"https\"}"),
    ("X-Appengine-Https", "on"),
    ("Authorization", "Bearer not-checked-on-an-open-route"),
];

/// Untrusted (the default): no carrier of client address, host, path or method reaches the
/// upstream but the gateway's own; `Authorization` is removed on an `auth = "none"` route.
/// Trusted: the standard spellings of the forwarding headers stay; the path and method
/// overrides, `_` spellings and `X-Auth-*` never do.
#[tokio::test(flavor = "multi_thread")]
async fn headers_that_choose_identity_path_or_method_never_reach_the_upstream() {
    let w = world("").await;
    let seen = headers_seen(&w, "/public/x", CLIENT_CHOSEN).await;
    for (name, _) in CLIENT_CHOSEN {
        assert!(!seen.contains_key(*name), "{name} reached the upstream");
    }
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], "h");
    assert_eq!(seen["x-forwarded-proto"], "http");

    let w = world("trust_forwarded_headers = true").await;
    let seen = headers_seen(&w, "/public/x", CLIENT_CHOSEN).await;
    // The proxy in front's client-address headers stay, in their standard spelling only.
    let trusted_kept = [
        "Forwarded",
        "X-Real-IP",
        "True-Client-IP",
        "X-Client-IP",
        "CF-Connecting-IP",
        "X-Forwarded-Port",
        "X-Forwarded-Prefix",
        "X-Url-Scheme",
        "X-Scheme",
        "CloudFront-Forwarded-Proto",
        "X-Arr-Ssl",
        "Cf-Visitor",
        "X-Appengine-Https",
    ];
    for (name, _) in CLIENT_CHOSEN {
        let kept = trusted_kept.contains(name);
        assert_eq!(seen.contains_key(*name), kept, "trusted: {name}");
    }
}

/// `allow_method_override` keeps the override headers for a route that wants them.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_may_allow_method_overrides() {
    let up = EchoUpstream::start("app").await;
    let gw = common::start_gateway(&format!(
        "[[routes]]\nname = \"legacy\"\npath_prefix = \"/legacy\"\nupstreams = [\"{}\"]\n\
         auth = \"none\"\nallow_method_override = true\n\
         [[routes]]\nname = \"other\"\npath_prefix = \"/other\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
        up.addr, up.addr
    ));
    for (path, status) in [("/legacy/x", "200"), ("/other/x", "400")] {
        let request = format!(
            "POST {path}?_method=PUT HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let answer = raw_request(gw.proxy_addr, request.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {answer}"
        );
    }
    for (path, kept) in [("/legacy/x", true), ("/other/x", false)] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: h\r\nX-HTTP-Method-Override: PUT\r\nConnection: close\r\n\r\n"
        );
        let answer = raw_request(gw.proxy_addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = up.seen().last().unwrap().headers.clone();
        assert_eq!(seen.contains_key("x-http-method-override"), kept, "{path}");
    }
}

/// A `Host` that is not `host[:port]`, or two of them, is 400: never routed, never copied into
/// `X-Forwarded-Host`.
#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_host_is_400() {
    let w = world("").await;
    let hosts = [
        "Host: h/api/admin\r\n",
        "Host: h h\r\n",
        "Host: h:70000\r\n",
        "Host: u@h\r\n",
        "Host: \r\n",
        "Host: h\r\nHost: evil\r\n",
    ];
    all_refused(&w, &hosts.map(|h| format!("GET /public/x HTTP/1.1\r\n{h}"))).await;
}

/// A token in the header and an `access_token` query parameter in any spelling a framework
/// decodes to that name is `invalid_request`.
#[tokio::test(flavor = "multi_thread")]
async fn an_encoded_access_token_parameter_is_the_same_parameter() {
    let w = world("").await;
    let (_, token) = &w.tokens[2];
    for query in [
        "access_token=x",
        "access%5Ftoken=x",
        "%61ccess_token=x",
        "a=1;access_token=x",
        // PHP reads these keys as access_token; ASP.NET compares keys without case.
        "access.token=x",
        "access+token=x",
        "access%20token=x",
        "access[token=x",
        "access_token[]=x",
        "ACCESS_TOKEN=x",
        // PHP cuts a key at NUL; Rack 2 and qs drop brackets around it.
        "access_token%00=x",
        "[access_token]=x",
        "access_token]=x",
    ] {
        let answer = send(
            w.gw.proxy_addr,
            &format!("GET /orders/1?{query} HTTP/1.1"),
            token.as_deref(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{query}: {answer}");
        assert!(
            answer.contains(r#"error="invalid_request""#),
            "{query}: {answer}"
        );
    }
    assert_eq!(w.up.hits(), 0);
}

/// Claims bound for identity headers: a control character or an oversized value refuses the
/// token (401 `invalid_token`); other UTF-8 passes as its bytes.
#[tokio::test(flavor = "multi_thread")]
async fn claims_that_cannot_be_identity_headers_refuse_the_token() {
    let key = DevKey::generate(Algorithm::RS256, "rsa-1");
    let idp = MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("app").await;
    let gw = common::start_gateway(&format!(
        "[[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"api\"]\nalgorithms = [\"RS256\"]\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\n",
        idp.issuer(),
        up.addr
    ));
    assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
    let with = |k: &str, v: serde_json::Value| {
        let mut c = claims(&idp, "orders:read");
        c[k] = v;
        key.sign(&c)
    };
    for (what, token) in [
        (
            "CR LF in sub",
            with("sub", "u\r\nX-Auth-Scopes: admin".into()),
        ),
        ("NUL in sub", with("sub", "u\u{0}".into())),
        ("tab in client_id", with("client_id", "a\tb".into())),
        ("DEL in scope", with("scope", "orders:read\u{7f}".into())),
        // A no-break space is no separator to the gateway but is one to some header readers.
        (
            "NBSP in scope",
            with("scope", "x\u{a0}orders:admin orders:read".into()),
        ),
        ("a quote in scope", with("scope", "orders:read a\"b".into())),
        ("spaces around sub", with("sub", " admin ".into())),
        (
            "a no-break space after sub",
            with("sub", "admin\u{a0}".into()),
        ),
        (
            "a line separator in sub",
            with("sub", "ad\u{2028}min".into()),
        ),
        ("NEL in client_id", with("client_id", "a\u{85}b".into())),
        // 4,200 bytes: over the identity-header bound, inside the default token size limit.
        (
            "a 4 KB scope",
            with("scope", format!("orders:read {}", "x".repeat(4_200)).into()),
        ),
    ] {
        let resp = common::client()
            .get(format!("http://{}/x", gw.proxy_addr))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        let challenge = common::idp::challenge(&resp);
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{what}: {challenge}"
        );
    }
    assert_eq!(up.hits(), 0);
    let token = with("sub", "Jos\u{e9}".into());
    let resp = common::client()
        .get(format!("http://{}/x", gw.proxy_addr))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = up.seen().last().unwrap().headers.clone();
    assert_eq!(seen["x-auth-subject"].as_bytes(), "Jos\u{e9}".as_bytes());
}

/// The real binary at `RUST_LOG=debug`: a client that disconnects in the middle of a body, odd
/// `Connection` values, an unreachable upstream, a refused target, a request line the data
/// plane has to escape, all with a query and a token. No log line holds the path, the query or
/// the token.
#[tokio::test(flavor = "multi_thread")]
async fn no_log_line_holds_a_path_a_query_or_a_token() {
    use tokio::io::AsyncWriteExt;
    let up = EchoUpstream::start("app").await;
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n\
         [[routes]]\nname = \"dead\"\npath_prefix = \"/dead\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
        up.addr,
        common::dead_addr()
    );
    let gw = common::binary::GatewayProcess::start(&config, &[("RUST_LOG", "debug")]);
    const PATH: &str = "SECRETPATHSEGMENT";
    const QUERY: &str = "card=4111111111111111";
    const TOKEN: &str = "SECRETTOKENVALUE";
    const METHOD: &str = "CARD4111111111111111";
    let head = |method: &str, path: &str, extra: &str| {
        format!(
            "{method} /{path}/{PATH}?{QUERY} HTTP/1.1\r\nHost: h\r\n\
             Authorization: Bearer {TOKEN}\r\n{extra}"
        )
    };
    // A body cut off in the middle.
    let mut s = tokio::net::TcpStream::connect(gw.proxy).await.unwrap();
    let cut = head("POST", "a", "Content-Length: 1000\r\n\r\n0123456789");
    s.write_all(cut.as_bytes()).await.unwrap();
    // The upstream has the request once the gateway forwards it; then the client goes away.
    assert!(
        common::eventually(Duration::from_secs(10), || {
            let hits = up.hits();
            async move { hits >= 1 }
        })
        .await
    );
    drop(s);
    // The cut-off POST above has its access line too.
    let mut sent = 1;
    for request in [
        head("GET", "b", "Connection: close, te, x-foo\r\n\r\n"),
        head("GET", "c", "Connection: keep-alive, Upgrade\r\nUpgrade: h2c\r\n\r\n"),
        head("GET", "d", "Connection: Upgrade\r\nUpgrade: websocket\r\nContent-Length: 5\r\n\r\nhello"),
        head("GET", "dead", "Connection: close\r\n\r\n"),
        head("GET", "x/..", "Connection: close\r\n\r\n"),
        head("GET", "e%00", "Connection: close\r\n\r\n"),
        head(METHOD, "m", "Connection: close\r\n\r\n"),
        head(&"M".repeat(200_000), "m", "Connection: close\r\n\r\n"),
        format!("GET /f/{PATH} x?{QUERY} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
        format!("GET /g/{PATH}?{QUERY} HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {TOKEN}\r\nBad Header: x\r\nConnection: close\r\n\r\n"),
    ] {
        // Some keep the connection open: their answer is all that matters.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            raw_request(gw.proxy, request.as_bytes()),
        )
        .await;
        sent += 1;
    }
    // Each request's access line is written after its answer: wait for all of them.
    let logged = common::eventually(Duration::from_secs(10), || {
        let log = gw.log();
        async move { log.matches("portcullis::access").count() >= sent }
    })
    .await;
    let log = gw.log();
    assert!(logged, "the access log never showed the requests:\n{log}");
    // The heads the HTTP parser refused (the long method, the raw space, the bad header name)
    // are logged too, without a method, beside the gate's own refusals (`..`, `%00`).
    assert!(
        log.matches("method=\"-\" route=\"(none)\"").count() >= 3,
        "{log}"
    );
    assert!(log.matches("status=400").count() >= 4, "{log}");
    let long_method = "M".repeat(100);
    for (what, needle) in [
        ("the path", PATH),
        ("the query", QUERY),
        ("the token", TOKEN),
        ("the method", METHOD),
        ("the long method", long_method.as_str()),
    ] {
        assert!(!log.contains(needle), "{what} is in the log:\n{log}");
    }
}

/// `OPTIONS *` reaches the `/` route only when it opts in, and is forwarded as `*`.
#[tokio::test(flavor = "multi_thread")]
async fn options_asterisk_needs_the_root_routes_opt_in() {
    let up = EchoUpstream::start("app").await;
    let route = |extra: &str| {
        format!(
            "[[routes]]\nname = \"root\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n{extra}",
            up.addr
        )
    };
    let request = b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let closed = common::start_gateway(&route(""));
    let answer = raw_request(closed.proxy_addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(up.hits(), 0);
    let open = common::start_gateway(&route("allow_options_asterisk = true\n"));
    let answer = raw_request(open.proxy_addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(up.seen().last().unwrap().uri, "*");
    let answer = raw_request(
        open.proxy_addr,
        b"GET * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "GET *: {answer}");
}

/// A request answered before its body was read closes its connection: the body's bytes are
/// never taken for the next request's head, so a raw space in the next request line cannot
/// slip past the kept request line. Both ways: the body sent with the head, and after the
/// answer. (pingora 0.9.1 closes these connections too; the gateway asks for it itself, so the
/// kept request line does not depend on that.)
#[tokio::test(flavor = "multi_thread")]
async fn an_early_answer_to_a_request_with_a_body_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world("").await;
    const HEAD: &[u8] = b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n";
    const NEXT: &[u8] = b"GET /public/a b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    for body_with_head in [true, false] {
        let mut s = tokio::net::TcpStream::connect(w.gw.proxy_addr)
            .await
            .unwrap();
        let first = if body_with_head {
            [HEAD, b"hello world\n"].concat()
        } else {
            HEAD.to_vec()
        };
        s.write_all(&first).await.unwrap();
        let mut head = vec![0u8; 4096];
        let n = s.read(&mut head).await.unwrap();
        let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 401"), "{head}");
        assert!(
            head.contains("connection: close"),
            "{body_with_head}: {head}"
        );
        // Whatever the client sends next is never served.
        if !body_with_head {
            let _ = s.write_all(b"hello world\n").await;
        }
        let _ = s.write_all(NEXT).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        let rest = String::from_utf8_lossy(&rest);
        assert!(!rest.contains("200"), "{body_with_head}: {rest}");
    }
    assert_eq!(w.up.hits(), 0);
}

/// With the Traefik convention, nginx's original-request headers are the client's choice like
/// any other routing or method header.
#[tokio::test(flavor = "multi_thread")]
async fn the_decision_endpoint_exempts_only_its_own_conventions_headers() {
    let up = EchoUpstream::start("app").await;
    let gw = common::start_gateway(&format!(
        "[decision]\nlisten = \"127.0.0.1:0\"\nconvention = \"traefik\"\n\
         [[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
        up.addr
    ));
    let decision = gw.decision_addr.unwrap();
    for (extra, status) in [
        ("", 200),
        ("X-Original-URI: /api/admin\r\n", 403),
        ("X-Original-Method: DELETE\r\n", 403),
    ] {
        let request = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Uri: /x\r\n\
             {extra}Connection: close\r\n\r\n"
        );
        let answer = raw_request(decision, request.as_bytes()).await;
        assert_eq!(read_answer(&answer).0, status, "{extra:?}: {answer}");
    }
}
