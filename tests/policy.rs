//! Authorization beyond scopes, through the real gateway and its decision endpoint: other
//! gateways' identity headers, claim headers, claim rules, step-up (RFC 9470), per-route
//! issuers and audiences, and CORS preflights.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::idp::{challenge, now, MockIdp};
use common::{became_ready, client, scrape_until, EchoUpstream};
use portcullis::app::RunningApp;
use portcullis::config::Algorithm;
use portcullis::devkeys::DevKey;
use serde_json::{json, Value};

/// Two identity providers, an upstream, and a gateway trusting both providers (audience `api`,
/// ES256), with `routes` (TOML; `{up}` is the upstream) and `top` before the issuers.
struct World {
    gw: RunningApp,
    up: EchoUpstream,
    one: (MockIdp, DevKey),
    two: (MockIdp, DevKey),
}

impl World {
    async fn start(top: &str, routes: &str) -> World {
        World::start_with("", top, routes).await
    }

    /// [`World::start`] with more `[server]` keys.
    async fn start_with(server: &str, top: &str, routes: &str) -> World {
        let k1 = DevKey::generate(Algorithm::ES256, "one");
        let k2 = DevKey::generate(Algorithm::ES256, "two");
        let one = MockIdp::start(&[&k1]).await;
        let two = MockIdp::start(&[&k2]).await;
        let up = EchoUpstream::start("app").await;
        let routes = routes
            .replace("{up}", &up.addr.to_string())
            .replace("{one}", &one.issuer())
            .replace("{two}", &two.issuer());
        let gw = common::start_gateway_with_server(server, &format!(
            "{top}\n[[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"api\", \"billing\"]\nalgorithms = [\"ES256\"]\n\
             [[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n{routes}",
            one.issuer(),
            two.issuer(),
        ));
        assert!(became_ready(&gw.metrics_addr.to_string(), Duration::from_secs(15)).await);
        World {
            gw,
            up,
            one: (one, k1),
            two: (two, k2),
        }
    }

    /// A token from the first provider with these claims over the usual ones.
    fn token(&self, extra: Value) -> String {
        sign(&self.one, extra)
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = client().request(
            method.parse().unwrap(),
            format!("http://{}{path}", self.gw.proxy_addr),
        );
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.send("GET", path, Some(token), &[]).await
    }

    /// The headers of the last request the upstream saw.
    fn last_seen(&self) -> http::HeaderMap {
        self.up
            .seen()
            .pop()
            .expect("the upstream saw a request")
            .headers
    }
}

fn sign((idp, key): &(MockIdp, DevKey), extra: Value) -> String {
    let mut claims = json!({
        "iss": idp.issuer(), "sub": "user-7", "client_id": "app", "aud": "api",
        "scope": "read", "iat": now(), "exp": now() + 3600,
    });
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    key.sign(&claims)
}

/// Every header an application behind oauth2-proxy, Kong, Apache or a cloud load balancer
/// reads as the caller's identity.
const FOREIGN: [&str; 12] = [
    "X-Forwarded-User",
    "X-Remote-User",
    "X-User",
    "X-User-Id",
    "X-Authenticated-Userid",
    "Remote-User",
    "X-Forwarded-Email",
    "X-Forwarded-Groups",
    "X-Auth-Request-User",
    "X-Userinfo",
    "X-Id-Token",
    "X-Access-Token",
];

/// Client-sent identity headers of other gateways never reach the upstream, on protected and
/// open routes, whether or not a proxy in front is trusted for the client-address headers.
#[tokio::test(flavor = "multi_thread")]
async fn other_gateways_identity_headers_never_reach_the_upstream() {
    for trusted in [false, true] {
        let w = World::start_with(
            if trusted { "trust_forwarded_headers = true" } else { "" },
            "",
            "[[routes]]\nname = \"open\"\npath_prefix = \"/open\"\nupstreams = [\"{up}\"]\nauth = \"none\"\n\
             [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{up}\"]\nscopes = [\"read\"]\n",
        )
        .await;
        let gw = &w.gw;
        let token = w.token(json!({}));
        for (path, token) in [("/open/x", None), ("/api/x", Some(token.as_str()))] {
            let mut req = client().get(format!("http://{}{path}", gw.proxy_addr));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            for name in FOREIGN {
                req = req.header(name, "admin");
            }
            // The underscore spelling CGI-style servers read as the same name.
            req = req.header("X_Forwarded_User", "admin");
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path} trusted={trusted}");
            let seen = w.last_seen();
            for name in FOREIGN.iter().chain(&["x_forwarded_user"]) {
                assert!(
                    !seen.contains_key(name.to_ascii_lowercase().as_str()),
                    "{name} reached the upstream on {path} (trusted={trusted})"
                );
            }
        }
    }
}

/// The claim mapping: global, overridden per route, nested claims, arrays, the whole claim
/// set; every mapped name is removed from client requests, on open routes too.
#[tokio::test(flavor = "multi_thread")]
async fn claims_reach_the_upstream_as_mapped_headers() {
    let w = World::start(
        "[identity]\nclaims_header = \"X-Claims\"\n[identity.claim_headers]\nX-User-Id = \"sub\"\nX-Tenant = \"org.id\"\nX-Groups = \"groups\"\n",
        "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{up}\"]\n\
         [[routes]]\nname = \"own\"\npath_prefix = \"/own\"\nupstreams = [\"{up}\"]\n\
         [routes.claim_headers]\nX-Unit = \"org.unit\"\n\
         [[routes]]\nname = \"open\"\npath_prefix = \"/open\"\nupstreams = [\"{up}\"]\nauth = \"none\"\n",
    )
    .await;
    let token = w.token(json!({
        "org": {"id": "acme", "unit": "eng"}, "groups": ["admins", "eng"],
        "https://example.com/roles": ["x"],
    }));
    let resp = w
        .send(
            "GET",
            "/api/x",
            Some(&token),
            &[("X-Tenant", "evil"), ("X-Claims", "e30")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let seen = w.last_seen();
    assert_eq!(seen["x-user-id"], "user-7");
    assert_eq!(seen["x-tenant"], "acme");
    assert_eq!(seen["x-groups"], "admins,eng");
    assert_eq!(seen.get_all("x-tenant").iter().count(), 1);
    assert_eq!(
        seen["x-auth-subject"], "user-7",
        "the X-Auth-* headers stay"
    );
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seen["x-claims"].as_bytes()).unwrap())
            .unwrap();
    assert_eq!(claims["org"]["id"], "acme");
    assert_eq!(claims["sub"], "user-7");

    // A route's own mapping replaces the global one.
    assert_eq!(w.get("/own/x", &token).await.status(), 200);
    let seen = w.last_seen();
    assert_eq!(seen["x-unit"], "eng");
    assert!(!seen.contains_key("x-user-id") && !seen.contains_key("x-claims"));

    // Every mapped name, from any route, is the gateway's to set: removed on an open route.
    let resp = w
        .send(
            "GET",
            "/open/x",
            None,
            &[
                ("X-Unit", "evil"),
                ("X-User-Id", "evil"),
                ("X-Claims", "e30"),
            ],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let seen = w.last_seen();
    for name in ["x-unit", "x-user-id", "x-claims"] {
        assert!(!seen.contains_key(name), "{name} reached the open route");
    }

    // A claim the upstream could read otherwise refuses the token, whatever the route.
    for bad in [
        json!({"org": {"id": "acme\r\nX-Admin: 1"}}),
        json!({"groups": ["eng,admins"]}),
        json!({"org": {"id": " acme"}}),
        // Nested values would reach the header as JSON text, past every check (red team).
        json!({"groups": [{"k": "x,admins,y"}]}),
        json!({"org": {"id": {"a": "x", "b": "y"}}}),
    ] {
        let resp = w.get("/api/x", &w.token(bad.clone())).await;
        assert_eq!(resp.status(), 401, "{bad}");
        assert!(
            challenge(&resp).contains("error=\"invalid_token\""),
            "{bad}"
        );
    }
}

/// Claim rules: every matcher through the gateway, `all` and `any`, a failed rule answered
/// 403 `insufficient_scope` without a `scope` attribute and counted as its own outcome, and
/// checked per route for one cached token.
#[tokio::test(flavor = "multi_thread")]
async fn claim_rules_decide_per_route_on_every_request() {
    let w = World::start(
        "",
        "[[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nupstreams = [\"{up}\"]\n\
         [[routes.claims]]\nclaim = \"groups\"\ncontains = \"admins\"\n\
         [[routes.claims]]\nclaim = \"email_verified\"\nequals = true\n\
         [[routes.claims]]\nclaim = \"org.id\"\none_of = [\"acme\", \"globex\"]\n\
         [[routes]]\nname = \"either\"\npath_prefix = \"/either\"\nupstreams = [\"{up}\"]\nclaims_match = \"any\"\n\
         [[routes.claims]]\nclaim = \"groups\"\nall_of = [\"eng\", \"oncall\"]\n\
         [[routes.claims]]\nclaim = \"contractor\"\npresent = false\n\
         [[routes]]\nname = \"open\"\npath_prefix = \"/plain\"\nupstreams = [\"{up}\"]\n",
    )
    .await;
    let admin = w
        .token(json!({"groups": ["eng", "admins"], "email_verified": true, "org": {"id": "acme"}}));
    let unverified =
        w.token(json!({"groups": ["admins"], "email_verified": false, "org": {"id": "acme"}}));
    let contractor = w.token(json!({"groups": ["eng"], "contractor": true}));
    let oncall_contractor = w.token(json!({"groups": ["eng", "oncall"], "contractor": true}));
    for (path, token, want) in [
        ("/admin", &admin, 200),
        ("/admin", &unverified, 403),
        ("/admin", &contractor, 403),
        ("/either", &admin, 200),
        ("/either", &contractor, 403),
        ("/either", &oncall_contractor, 200),
        ("/plain", &contractor, 200),
        // The same cached token, back on the route that refuses it.
        ("/admin", &contractor, 403),
        ("/admin", &admin, 200),
    ] {
        let resp = w.get(path, token).await;
        assert_eq!(resp.status(), want, "{path}");
        if want == 403 {
            assert_eq!(
                challenge(&resp),
                "Bearer realm=\"api\", error=\"insufficient_scope\", error_description=\"The token does not satisfy the claim rules of this resource.\""
            );
        }
    }
    assert_eq!(w.up.hits(), 5);
    let m = scrape_until(w.gw.metrics_addr, |m| {
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "claims_not_satisfied")],
        ) >= 4.0
    })
    .await;
    assert_eq!(
        m.get(
            "portcullis_auth_decisions_total",
            &[("route", "admin"), ("outcome", "claims_not_satisfied")]
        ),
        3.0
    );
}

/// Step-up (RFC 9470): a token whose `acr` or `auth_time` falls short gets 401
/// `insufficient_user_authentication` naming what the route needs.
#[tokio::test(flavor = "multi_thread")]
async fn step_up_asks_for_a_stronger_or_fresher_sign_in() {
    let w = World::start(
        "",
        "[[routes]]\nname = \"pay\"\npath_prefix = \"/pay\"\nupstreams = [\"{up}\"]\nacr_values = [\"urn:mfa\", \"phr\"]\nmax_age = \"5m\"\n\
         [[routes]]\nname = \"acr\"\npath_prefix = \"/acr\"\nupstreams = [\"{up}\"]\nacr_values = [\"urn:mfa\"]\n\
         [[routes]]\nname = \"fresh\"\npath_prefix = \"/fresh\"\nupstreams = [\"{up}\"]\nmax_age = \"60s\"\n",
    )
    .await;
    let both = "Bearer realm=\"api\", error=\"insufficient_user_authentication\", error_description=\"A different or more recent user authentication is required.\", acr_values=\"urn:mfa phr\", max_age=\"300\"";
    for (path, claims, want) in [
        ("/pay", json!({"acr": "urn:mfa", "auth_time": now() - 10}), None),
        ("/pay", json!({"acr": "phr", "auth_time": now() - 299}), None),
        ("/pay", json!({"acr": "pwd", "auth_time": now()}), Some(both)),
        ("/pay", json!({"acr": "urn:mfa", "auth_time": now() - 400}), Some(both)),
        ("/pay", json!({"acr": "urn:mfa"}), Some(both)),
        ("/pay", json!({}), Some(both)),
        ("/acr", json!({"acr": "urn:mfa"}), None),
        (
            "/acr",
            json!({"acr": 2}),
            Some("Bearer realm=\"api\", error=\"insufficient_user_authentication\", error_description=\"A different or more recent user authentication is required.\", acr_values=\"urn:mfa\""),
        ),
        ("/fresh", json!({"auth_time": now() - 30}), None),
        (
            "/fresh",
            json!({"auth_time": now() - 90}),
            Some("Bearer realm=\"api\", error=\"insufficient_user_authentication\", error_description=\"A different or more recent user authentication is required.\", max_age=\"60\""),
        ),
    ] {
        let resp = w.get(path, &w.token(claims.clone())).await;
        match want {
            None => assert_eq!(resp.status(), 200, "{path} {claims}"),
            Some(c) => {
                assert_eq!(resp.status(), 401, "{path} {claims}");
                assert_eq!(challenge(&resp), c, "{path} {claims}");
            }
        }
    }
    let m = scrape_until(w.gw.metrics_addr, |m| {
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "insufficient_user_authentication")],
        ) >= 6.0
    })
    .await;
    assert_eq!(
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "insufficient_user_authentication")]
        ),
        6.0
    );
}

/// A route may accept only some issuers and audiences; the verified-token cache never carries
/// a token past one route's restriction because another route accepted it.
#[tokio::test(flavor = "multi_thread")]
async fn routes_restrict_issuers_and_audiences() {
    let w = World::start(
        "",
        "[[routes]]\nname = \"one\"\npath_prefix = \"/one\"\nupstreams = [\"{up}\"]\nissuers = [\"{one}\"]\n\
         [[routes]]\nname = \"billing\"\npath_prefix = \"/billing\"\nupstreams = [\"{up}\"]\naudiences = [\"billing\"]\n\
         [[routes]]\nname = \"any\"\npath_prefix = \"/any\"\nupstreams = [\"{up}\"]\n",
    )
    .await;
    let from_one = w.token(json!({}));
    let from_two = sign(&w.two, json!({}));
    let for_billing = w.token(json!({"aud": ["billing"]}));
    for (path, token, want, why) in [
        ("/any", &from_two, 200, ""),
        (
            "/one",
            &from_two,
            401,
            "The access token comes from an untrusted issuer.",
        ),
        ("/one", &from_one, 200, ""),
        (
            "/billing",
            &from_one,
            401,
            "The access token is not meant for this resource.",
        ),
        ("/billing", &for_billing, 200, ""),
        ("/any", &for_billing, 200, ""),
        (
            "/one",
            &from_two,
            401,
            "The access token comes from an untrusted issuer.",
        ),
    ] {
        let resp = w.get(path, token).await;
        assert_eq!(resp.status(), want, "{path}");
        if want == 401 {
            assert!(challenge(&resp).contains("error=\"invalid_token\""));
            assert!(challenge(&resp).contains(why), "{}", challenge(&resp));
        }
    }
}

/// `cors_preflight = "forward"`: exactly a CORS preflight passes without a token; every other
/// request on the route still needs one, and routes without the setting refuse preflights.
#[tokio::test(flavor = "multi_thread")]
async fn cors_preflights_pass_only_where_forwarded() {
    let w = World::start(
        "",
        "[[routes]]\nname = \"cors\"\npath_prefix = \"/cors\"\nupstreams = [\"{up}\"]\ncors_preflight = \"forward\"\nscopes = [\"write\"]\n\
         [[routes]]\nname = \"plain\"\npath_prefix = \"/plain\"\nupstreams = [\"{up}\"]\n",
    )
    .await;
    let preflight = [
        ("Origin", "https://app.example"),
        ("Access-Control-Request-Method", "DELETE"),
    ];
    let resp = w.send("OPTIONS", "/cors/x", None, &preflight).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(w.up.hits(), 1);
    let seen = w.last_seen();
    assert!(!seen.contains_key("x-auth-subject"));
    for (method, headers) in [
        ("OPTIONS", &[("Origin", "https://app.example")][..]),
        (
            "OPTIONS",
            &[("Access-Control-Request-Method", "DELETE")][..],
        ),
        ("DELETE", &preflight[..]),
        ("GET", &[][..]),
    ] {
        let resp = w.send(method, "/cors/x", None, headers).await;
        assert_eq!(resp.status(), 401, "{method} {headers:?}");
    }
    let resp = w.send("OPTIONS", "/plain/x", None, &preflight).await;
    assert_eq!(resp.status(), 401);
    // What browsers never put on a preflight makes it an ordinary request, which needs a
    // token (red team: a preflight-shaped WebSocket handshake became an unchecked tunnel).
    let origin = ("Origin", "https://app.example");
    let acrm = ("Access-Control-Request-Method", "GET");
    for extra in [
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ][..],
        &[("Authorization", "Bearer garbage")][..],
        &[("Cookie", "session=1")][..],
    ] {
        let mut headers = vec![origin, acrm];
        headers.extend_from_slice(extra);
        let resp = w.send("OPTIONS", "/cors/x", None, &headers).await;
        assert_eq!(resp.status(), 401, "{extra:?}");
    }
    for headers in [
        &[("Origin", ""), acrm][..],
        &[origin, ("Access-Control-Request-Method", "")][..],
        &[origin, ("Access-Control-Request-Method", "G E T")][..],
        &[origin, origin, acrm][..],
    ] {
        let resp = w.send("OPTIONS", "/cors/x", None, headers).await;
        assert_eq!(resp.status(), 401, "{headers:?}");
    }
    // A token on the forwarded route still gets its policy.
    let reader = w.token(json!({}));
    let resp = w.send("DELETE", "/cors/x", Some(&reader), &preflight).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(w.up.hits(), 1);
}

/// The decision endpoint makes the same decisions: claim rules and step-up, claim headers in
/// its answer, and other gateways' identity headers refused (it cannot remove them); CORS
/// preflights are never forwarded unchecked there.
#[tokio::test(flavor = "multi_thread")]
async fn the_decision_endpoint_applies_the_same_policy() {
    let w = World::start(
        "[decision]\nlisten = \"127.0.0.1:0\"\nconvention = \"envoy\"\n[identity.claim_headers]\nX-Tenant = \"org.id\"\n",
        "[[routes]]\nname = \"admin\"\npath_prefix = \"/admin\"\nupstreams = [\"{up}\"]\n\
         [[routes.claims]]\nclaim = \"groups\"\ncontains = \"admins\"\n\
         [[routes]]\nname = \"pay\"\npath_prefix = \"/pay\"\nupstreams = [\"{up}\"]\nacr_values = [\"urn:mfa\"]\n\
         [[routes]]\nname = \"cors\"\npath_prefix = \"/cors\"\nupstreams = [\"{up}\"]\ncors_preflight = \"forward\"\n",
    )
    .await;
    let decision = w.gw.decision_addr.expect("decision listener");
    // Even a real-looking preflight needs a token here: the asking proxy drops Upgrade and the
    // body from its check request, so this endpoint cannot tell a preflight from a WebSocket
    // handshake or a request with a body (red team: an unchecked tunnel behind nginx).
    let preflight = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("http://{decision}/cors/x"),
        )
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "PUT")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 401);
    let get = client()
        .get(format!("http://{decision}/cors/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 401);
    let ask = |path: &str, token: String, extra: Option<(&'static str, &'static str)>| {
        let mut req = client()
            .get(format!("http://{decision}{path}"))
            .bearer_auth(token);
        if let Some((k, v)) = extra {
            req = req.header(k, v);
        }
        req.send()
    };
    let admin = w.token(json!({"groups": ["admins"], "org": {"id": "acme"}}));
    let resp = ask("/admin", admin.clone(), None).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-tenant"], "acme");
    assert_eq!(resp.headers()["x-auth-subject"], "user-7");
    let resp = ask("/admin", w.token(json!({"groups": ["eng"]})), None)
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let resp = ask("/pay", admin.clone(), None).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(challenge(&resp).contains("insufficient_user_authentication"));
    for header in [("X-Forwarded-User", "root"), ("X-Tenant", "evil")] {
        let resp = ask("/admin", admin.clone(), Some(header)).await.unwrap();
        assert_eq!(resp.status(), 403, "{header:?}");
    }
}

/// RFC 9728: a client that knows only the API's URL gets a 401, follows the challenge's
/// `resource_metadata` to the document, and from its `authorization_servers` reaches the
/// provider's discovery metadata and key set. No Rust client library implements RFC 9728
/// discovery, so the client's steps are written out here.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_discovers_the_authorization_server_from_a_401() {
    let w = World::start(
        "[resource_metadata]\nresource = \"https://api.example.com\"\nresource_name = \"Orders API\"\n",
        "[[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\nupstreams = [\"{up}\"]\nscopes = [\"orders:read\"]\nissuers = [\"{one}\"]\n\
         [[routes]]\nname = \"billing\"\npath_prefix = \"/billing\"\nupstreams = [\"{up}\"]\nscopes = [\"billing\"]\nresource = \"https://api.example.com/billing\"\n\
         [[routes]]\nname = \"rest\"\npath_prefix = \"/\"\nupstreams = [\"{up}\"]\nscopes = [\"read\"]\n",
    )
    .await;
    // 1. The request without a token.
    let resp = w.send("GET", "/orders/7", None, &[]).await;
    assert_eq!(resp.status(), 401);
    let header = challenge(&resp);
    let url = header
        .split("resource_metadata=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no resource_metadata in {header}"));
    assert_eq!(
        url,
        "https://api.example.com/.well-known/oauth-protected-resource"
    );
    // 2. The document, from the resource's origin (here: the gateway that serves it).
    let path = &url["https://api.example.com".len()..];
    let resp = w.send("GET", path, None, &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let doc: Value = resp.json().await.unwrap();
    // RFC 9728 §3.3: the document must be about the resource the client asked for.
    assert_eq!(doc["resource"], "https://api.example.com");
    assert_eq!(doc["resource_name"], "Orders API");
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    assert_eq!(doc["scopes_supported"], json!(["orders:read", "read"]));
    let servers: Vec<String> =
        serde_json::from_value(doc["authorization_servers"].clone()).unwrap();
    assert_eq!(servers, [w.one.0.issuer(), w.two.0.issuer()]);
    // 3. The authorization server's own metadata (OpenID Connect Discovery), then its keys.
    let discovery: Value = client()
        .get(format!("{}/.well-known/openid-configuration", servers[0]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], servers[0].as_str());
    let jwks = discovery["jwks_uri"].as_str().unwrap();
    assert!(client()
        .get(jwks)
        .send()
        .await
        .unwrap()
        .status()
        .is_success());

    // A route with its own resource is described at the path-suffixed document (§3.1).
    let resp = w.send("GET", "/billing", Some("not-a-jwt"), &[]).await;
    assert_eq!(resp.status(), 401);
    assert!(challenge(&resp).ends_with(
        ", resource_metadata=\"https://api.example.com/.well-known/oauth-protected-resource/billing\""
    ));
    let doc: Value = w
        .send(
            "GET",
            "/.well-known/oauth-protected-resource/billing",
            None,
            &[],
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(doc["resource"], "https://api.example.com/billing");
    assert_eq!(doc["scopes_supported"], json!(["billing"]));
    // The documents are the gateway's: never forwarded, and only to read.
    let hits = w.up.hits();
    let resp = w
        .send("POST", "/.well-known/oauth-protected-resource", None, &[])
        .await;
    assert_eq!(resp.status(), 405);
    assert_eq!(w.up.hits(), hits);
}

/// Rate limits: by client address before the token is checked (bad tokens count), by subject
/// after it; 429 with `Retry-After` and the draft RateLimit fields; counted per route.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_answer_429_per_key() {
    let w = World::start_with(
        "trust_forwarded_headers = true",
        "[decision]\nlisten = \"127.0.0.1:0\"\nconvention = \"envoy\"\n",
        "[[routes]]\nname = \"by_address\"\npath_prefix = \"/addr\"\nupstreams = [\"{up}\"]\n\
         [routes.rate_limit]\nkey = \"client_address\"\nrequests = 3\nper = \"1m\"\n\
         [[routes]]\nname = \"by_sub\"\npath_prefix = \"/sub\"\nupstreams = [\"{up}\"]\n\
         [routes.rate_limit]\nkey = \"sub\"\nrequests = 2\nper = \"1m\"\n",
    )
    .await;
    let token = w.token(json!({}));
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];
    // Two good requests and one with a bad token use up 192.0.2.1's three.
    for (t, want) in [
        (token.as_str(), 200),
        ("bad-token", 401),
        (token.as_str(), 200),
    ] {
        let resp = w.send("GET", "/addr/x", Some(t), &from("192.0.2.1")).await;
        assert_eq!(resp.status(), want);
    }
    let resp = w
        .send("GET", "/addr/x", Some(&token), &from("192.0.2.1"))
        .await;
    assert_eq!(resp.status(), 429);
    let h = resp.headers();
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(h["ratelimit-policy"], "\"route\";q=3;w=60");
    assert_eq!(
        h["ratelimit"].to_str().unwrap(),
        format!("\"route\";r=0;t={retry}")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    // Another address has its own count; a spoofed earlier entry does not change whose it is.
    let resp = w
        .send(
            "GET",
            "/addr/x",
            Some(&token),
            &from("203.0.113.5, 192.0.2.9"),
        )
        .await;
    assert_eq!(resp.status(), 200);

    // By subject: user-7 has two, user-8 its own two, wherever they come from.
    let other = w.token(json!({"sub": "user-8"}));
    for (t, ip, want) in [
        (&token, "192.0.2.20", 200),
        (&token, "192.0.2.21", 200),
        (&token, "192.0.2.22", 429),
        (&other, "192.0.2.22", 200),
        // The same `sub` from another issuer is another key.
        (&sign(&w.two, json!({})), "192.0.2.23", 200),
    ] {
        let resp = w.send("GET", "/sub/x", Some(t), &from(ip)).await;
        assert_eq!(resp.status(), want, "{ip}");
    }
    // The decision endpoint counts the same way, on the same counters.
    let decision = w.gw.decision_addr.unwrap();
    let resp = client()
        .get(format!("http://{decision}/sub/x"))
        .bearer_auth(&other)
        .header("X-Forwarded-For", "192.0.2.30")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .get(format!("http://{decision}/sub/x"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let upstream_hits = 2 + 1 + 2 + 1 + 1;
    assert_eq!(w.up.hits(), upstream_hits);
    let m = scrape_until(w.gw.metrics_addr, |m| {
        m.get("portcullis_rate_limited_total", &[("route", "by_sub")]) >= 2.0
    })
    .await;
    assert_eq!(
        m.get("portcullis_rate_limited_total", &[("route", "by_address")]),
        1.0
    );
    assert_eq!(
        m.get("portcullis_rate_limited_total", &[("route", "by_sub")]),
        2.0
    );
    assert_eq!(
        m.get(
            "portcullis_requests_total",
            &[("route", "by_sub"), ("status", "4xx")]
        ),
        1.0
    );
}

/// A preflight with a body is an ordinary request: it needs a token (raw bytes, so the body
/// really is there).
#[tokio::test(flavor = "multi_thread")]
async fn a_preflight_with_a_body_needs_a_token() {
    let w = World::start(
        "",
        "[[routes]]\nname = \"cors\"\npath_prefix = \"/cors\"\nupstreams = [\"{up}\"]\ncors_preflight = \"forward\"\n",
    )
    .await;
    for framing in [
        "Content-Length: 5\r\n\r\nhello",
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let request = format!(
            "OPTIONS /cors/x HTTP/1.1\r\nHost: h\r\nOrigin: https://app.example\r\n\
             Access-Control-Request-Method: GET\r\nConnection: close\r\n{framing}"
        );
        let answer = common::raw_request(w.gw.proxy_addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{framing:?}: {answer}");
    }
    assert_eq!(w.up.hits(), 0);
}

/// With claims read whole (claim rules or claim headers configured), a claim set that cannot be
/// read as one (a member name repeated at any depth, a lone surrogate escape) refuses the
/// token: the rule passed on the last `id` while `X-Claims` carried both, and a first-wins
/// parser upstream read the other (red team).
#[tokio::test(flavor = "multi_thread")]
async fn claim_sets_with_repeated_members_are_refused_where_claims_are_read() {
    let w = World::start(
        "[identity]\nclaims_header = \"X-Claims\"\n",
        "[[routes]]\nname = \"rules\"\npath_prefix = \"/rules\"\nupstreams = [\"{up}\"]\n\
         [[routes.claims]]\nclaim = \"org.id\"\nequals = \"acme\"\n",
    )
    .await;
    let (idp, key) = &w.one;
    let header = r#"{"alg":"ES256","kid":"one","typ":"at+jwt"}"#;
    let claims = |extra: &str| {
        format!(
            r#"{{"iss":"{}","sub":"user-7","aud":"api","scope":"read","iat":{},"exp":{}{extra}}}"#,
            idp.issuer(),
            now(),
            now() + 600
        )
    };
    let good = key.sign_text(header, &claims(r#","org":{"id":"acme"}"#));
    assert_eq!(w.get("/rules/x", &good).await.status(), 200);
    for extra in [
        r#","org":{"id":"evil","id":"acme"}"#,
        r#","org":{"id":"acme"},"role":"user","role":"admin""#,
        r#","org":{"id":"acme"},"name":"x\ud800""#,
    ] {
        let token = key.sign_text(header, &claims(extra));
        let resp = w.get("/rules/x", &token).await;
        assert_eq!(resp.status(), 401, "{extra}");
        assert!(
            challenge(&resp).contains("error=\"invalid_token\""),
            "{extra}"
        );
    }
    assert_eq!(w.up.hits(), 1);
}

/// A JWT bound to a key or certificate (`cnf`, RFC 7800) is valid only with a proof of
/// possession: refused as a bearer token (RFC 9449 §7.1, RFC 8705 §3), counted as
/// `sender_constrained` (red team: it passed), or, bound to a client certificate that this
/// plain-HTTP connection did not present, as `certificate_mismatch` (tests/tls.rs has it pass
/// with its certificate).
#[tokio::test(flavor = "multi_thread")]
async fn sender_constrained_jwts_are_not_bearer_tokens() {
    let w = World::start(
        "",
        "[[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{up}\"]\n",
    )
    .await;
    for (cnf, said) in [
        (
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
            "bound to a key or certificate",
        ),
        (
            json!({"x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}),
            "bound to a client certificate that this connection did not present",
        ),
        (
            json!({"jwk": {"kty": "EC"}}),
            "bound to a key or certificate",
        ),
        // Two bindings at once cannot both be checked.
        (
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I", "x5t#S256": "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}),
            "bound to a key or certificate",
        ),
    ] {
        let resp = w.get("/api/x", &w.token(json!({ "cnf": cnf }))).await;
        assert_eq!(resp.status(), 401, "{cnf}");
        assert!(challenge(&resp).contains("error=\"invalid_token\""));
        assert!(challenge(&resp).contains(said), "{}", challenge(&resp));
    }
    assert_eq!(
        w.get("/api/x", &w.token(json!({ "cnf": null })))
            .await
            .status(),
        200
    );
    let m = scrape_until(w.gw.metrics_addr, |m| {
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "sender_constrained")],
        ) >= 3.0
    })
    .await;
    assert_eq!(
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "sender_constrained")]
        ),
        3.0
    );
    assert_eq!(
        m.get(
            "portcullis_auth_decisions_total",
            &[("outcome", "certificate_mismatch")]
        ),
        1.0
    );
}
