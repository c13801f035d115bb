//! Interop: the real `portcullis` binary in front of an echo upstream, trusting node-oidc-provider
//! (`tests/interop/provider.mjs`), with tokens from the grants real clients use.
//!
//! Each test starts its own provider and gateway, so one scenario's rotation or revocation never
//! meets another's. A failure names the step that broke.

mod common;

use std::time::Duration;

use common::binary::GatewayProcess;
use common::oidc::{
    kid, OidcProvider, Tokens, CLI_CLIENT, GATEWAY_CLIENT, JWT_RESOURCE, OPAQUE_RESOURCE,
    SERVICE_CLIENT, SHORT_RESOURCE,
};
use common::{became_ready, client, scrape, scrape_until, EchoUpstream};

/// Portcullis set up for the provider the way README's "Tested with" section describes.
/// `extra_audience` and `require_typ` vary only for the ID-token scenario.
fn config(op: &OidcProvider, up: &EchoUpstream, require_typ: bool, extra_audience: &str) -> String {
    let issuer = &op.issuer;
    let (up, orders) = (up.addr, common::orders_routes(up.addr));
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
realm = "orders"
threads = 1
[metrics]
listen = "127.0.0.1:0"

[[issuers]]
issuer = "{issuer}"
discovery = true
audiences = ["{JWT_RESOURCE}", "{SHORT_RESOURCE}"{extra_audience}]
algorithms = ["ES256", "RS256"]
leeway = "0s"
require_typ = {require_typ}

[introspection]
issuer = "{issuer}"
client_id = "{GATEWAY_CLIENT}"
client_secret_env = "INTEROP_GATEWAY_SECRET"
audiences = ["{OPAQUE_RESOURCE}"]
cache_ttl = "2s"

{orders}
[[routes]]
name = "profile"
path_prefix = "/profile"
upstreams = ["{up}"]
[[routes]]
name = "fresh"
path_prefix = "/fresh"
upstreams = ["{up}"]
max_age = "10m"
[[routes]]
name = "mfa"
path_prefix = "/mfa"
upstreams = ["{up}"]
acr_values = ["urn:example:mfa"]
[[routes]]
name = "dpop"
path_prefix = "/dpop"
upstreams = ["{up}"]
dpop = "required"
"#
    )
}

struct World {
    op: OidcProvider,
    up: EchoUpstream,
    gateway: GatewayProcess,
}

impl World {
    async fn start() -> World {
        let op = OidcProvider::start().await;
        let up = EchoUpstream::start("orders").await;
        let gateway = start_gateway(&op, &up, true, "").await;
        World { op, up, gateway }
    }
}

/// The binary, ready (the provider's discovery document and keys loaded).
async fn start_gateway(
    op: &OidcProvider,
    up: &EchoUpstream,
    require_typ: bool,
    extra_audience: &str,
) -> GatewayProcess {
    let gateway = GatewayProcess::start(
        &config(op, up, require_typ, extra_audience),
        &[("INTEROP_GATEWAY_SECRET", op.gateway_secret.as_str())],
    );
    let ready = became_ready(&gateway.metrics.to_string(), Duration::from_secs(30)).await;
    assert!(ready, "step `gateway start` broke: /readyz never said 200");
    gateway
}

/// What the gateway answered to one request.
struct Answer {
    status: u16,
    challenge: String,
}

async fn call(gateway: &GatewayProcess, method: &str, path: &str, token: &str) -> Answer {
    let url = format!("http://{}{path}", gateway.proxy);
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = client()
        .request(method, url)
        .bearer_auth(token)
        .send()
        .await
        .expect("the gateway answers");
    Answer {
        status: response.status().as_u16(),
        challenge: response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
    }
}

/// Send the request and check the status; the panic names the step.
async fn expect(
    world: &World,
    step: &str,
    method: &str,
    path: &str,
    token: &str,
    status: u16,
) -> Answer {
    let answer = call(&world.gateway, method, path, token).await;
    assert_eq!(
        answer.status, status,
        "step `{step}` broke: {method} {path} answered {} (WWW-Authenticate: {:?})",
        answer.status, answer.challenge
    );
    answer
}

/// The identity headers the upstream saw on its last request.
fn last_identity(world: &World, step: &str) -> [Option<String>; 4] {
    let seen = world.up.seen();
    let last = seen
        .last()
        .unwrap_or_else(|| panic!("step `{step}` broke: nothing reached the upstream"));
    [
        "x-auth-subject",
        "x-auth-client-id",
        "x-auth-scopes",
        "x-auth-issuer",
    ]
    .map(|h| last.headers.get(h).map(|v| v.to_str().unwrap().to_owned()))
}

fn identity(
    subject: Option<&str>,
    client_id: &str,
    scopes: &str,
    issuer: &str,
) -> [Option<String>; 4] {
    [subject, Some(client_id), Some(scopes), Some(issuer)].map(|v| v.map(str::to_owned))
}

/// Client credentials: the token reaches the upstream as `orders-service`; a token without the
/// write scope gets 403 naming it; a token asked for with that scope then passes.
#[tokio::test(flavor = "multi_thread")]
async fn client_credentials_token_passes_and_scope_is_enforced() {
    let world = World::start().await;
    let read = world
        .op
        .client_credentials("orders:read", JWT_RESOURCE)
        .await;
    expect(
        &world,
        "read with a client credentials token",
        "GET",
        "/orders/7",
        &read.access_token,
        200,
    )
    .await;
    assert_eq!(
        last_identity(&world, "identity headers"),
        identity(
            Some(SERVICE_CLIENT.0),
            SERVICE_CLIENT.0,
            "orders:read",
            &world.op.issuer
        ),
        "step `identity headers of the client credentials token` broke"
    );

    let denied = expect(
        &world,
        "write with a read-only token",
        "POST",
        "/orders",
        &read.access_token,
        403,
    )
    .await;
    assert!(
        denied.challenge.contains(r#"error="insufficient_scope""#)
            && denied.challenge.contains(r#"scope="orders:write""#),
        "step `403 names the missing scope` broke: {:?}",
        denied.challenge
    );

    let write = world
        .op
        .client_credentials("orders:write", JWT_RESOURCE)
        .await;
    expect(
        &world,
        "write with an orders:write token",
        "POST",
        "/orders",
        &write.access_token,
        200,
    )
    .await;
    assert_eq!(
        last_identity(&world, "identity headers")[2].as_deref(),
        Some("orders:write"),
        "step `scopes of the orders:write token` broke"
    );
}

/// Authorization code with PKCE, then the refresh flow: the short-lived access token expires,
/// the gateway answers 401 `invalid_token`, the client refreshes at the provider and retries.
#[tokio::test(flavor = "multi_thread")]
async fn authorization_code_then_refresh_after_expiry() {
    let world = World::start().await;
    let tokens = world
        .op
        .authorization_code("alice", "openid orders:read", SHORT_RESOURCE)
        .await;
    let refresh = tokens
        .refresh_token
        .clone()
        .expect("step `authorization code grant yields a refresh token` broke");
    expect(
        &world,
        "read with the authorization code token",
        "GET",
        "/orders/7",
        &tokens.access_token,
        200,
    )
    .await;
    assert_eq!(
        last_identity(&world, "identity headers"),
        identity(Some("alice"), CLI_CLIENT, "orders:read", &world.op.issuer),
        "step `identity headers of alice's token` broke"
    );

    // The provider issues this resource's tokens for a few seconds; wait for the gateway to
    // refuse it (a clock condition, polled), with a deadline well past the token's lifetime.
    let expired = common::eventually(Duration::from_secs(15), || async {
        call(&world.gateway, "GET", "/orders/7", &tokens.access_token)
            .await
            .status
            == 401
    })
    .await;
    assert!(
        expired,
        "step `the access token expires at the gateway` broke: still accepted after 15 s"
    );
    let answer = call(&world.gateway, "GET", "/orders/7", &tokens.access_token).await;
    assert!(
        answer.challenge.contains(r#"error="invalid_token""#)
            && answer.challenge.contains("expired"),
        "step `expired token gets invalid_token` broke: {:?}",
        answer.challenge
    );

    let renewed = world.op.refresh(&refresh).await;
    assert_ne!(
        renewed.access_token, tokens.access_token,
        "step `refresh issues a new token` broke"
    );
    expect(
        &world,
        "retry with the refreshed token",
        "GET",
        "/orders/7",
        &renewed.access_token,
        200,
    )
    .await;
    assert_eq!(
        last_identity(&world, "identity headers")[0].as_deref(),
        Some("alice"),
        "step `the refreshed token is still alice's` broke"
    );
}

/// The device authorization grant: the user code approved on the provider's pages as bob; the
/// device's token passes, and so does the one its refresh token gets.
#[tokio::test(flavor = "multi_thread")]
async fn device_grant_token_passes_and_refreshes() {
    let world = World::start().await;
    let tokens = world
        .op
        .device("bob", "orders:read orders:write", JWT_RESOURCE)
        .await;
    expect(
        &world,
        "write with the device token",
        "POST",
        "/orders",
        &tokens.access_token,
        200,
    )
    .await;
    assert_eq!(
        last_identity(&world, "identity headers"),
        identity(
            Some("bob"),
            CLI_CLIENT,
            "orders:read orders:write",
            &world.op.issuer
        ),
        "step `identity headers of bob's device token` broke"
    );
    let refresh = tokens
        .refresh_token
        .expect("step `device grant yields a refresh token` broke");
    let renewed = world.op.refresh(&refresh).await;
    expect(
        &world,
        "read with the refreshed device token",
        "GET",
        "/orders/7",
        &renewed.access_token,
        200,
    )
    .await;
}

/// An opaque token checked by the provider's introspection endpoint; after revocation at the
/// provider the cached answer still serves until `cache_ttl` (2 s here), then the token is refused.
#[tokio::test(flavor = "multi_thread")]
async fn opaque_token_by_introspection_then_revoked() {
    let world = World::start().await;
    let Tokens { access_token, .. } = world
        .op
        .client_credentials("orders:read", OPAQUE_RESOURCE)
        .await;
    assert!(
        !access_token.contains('.'),
        "step `opaque token` broke: got a JWT"
    );
    expect(
        &world,
        "read with the opaque token",
        "GET",
        "/orders/7",
        &access_token,
        200,
    )
    .await;
    assert_eq!(
        last_identity(&world, "identity headers"),
        identity(None, SERVICE_CLIENT.0, "orders:read", &world.op.issuer),
        "step `identity headers from the introspection answer` broke"
    );
    expect(
        &world,
        "read again, from the cache",
        "GET",
        "/orders/8",
        &access_token,
        200,
    )
    .await;
    let m = scrape_until(world.gateway.metrics, |m| {
        m.get(
            "portcullis_introspection_requests_total",
            &[("result", "active")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        m.get(
            "portcullis_introspection_requests_total",
            &[("result", "active")]
        ),
        1.0,
        "step `one introspection call for two requests` broke"
    );

    world.op.revoke(&access_token).await;
    assert_eq!(
        world.op.introspect(&access_token).await["active"],
        false,
        "step `the provider says the revoked token is inactive` broke"
    );
    let refused = common::eventually(Duration::from_secs(10), || async {
        call(&world.gateway, "GET", "/orders/7", &access_token)
            .await
            .status
            == 401
    })
    .await;
    assert!(
        refused,
        "step `revoked token refused once the cache entry expires` broke"
    );
    let answer = call(&world.gateway, "GET", "/orders/7", &access_token).await;
    assert!(
        answer.challenge.contains(r#"error="invalid_token""#),
        "step `revoked token gets invalid_token` broke: {:?}",
        answer.challenge
    );
    let m = scrape(world.gateway.metrics).await;
    assert!(
        m.get(
            "portcullis_introspection_requests_total",
            &[("result", "inactive")]
        ) >= 1.0,
        "step `the gateway asked the provider again` broke"
    );
}

/// The provider rotates its signing key; tokens signed with the new key pass without restarting
/// the gateway (an unknown kid triggers one refetch), and tokens signed before still pass.
#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_at_the_provider_needs_no_restart() {
    let world = World::start().await;
    let before = world
        .op
        .client_credentials("orders:read", JWT_RESOURCE)
        .await;
    expect(
        &world,
        "read with a token from the first key",
        "GET",
        "/orders/7",
        &before.access_token,
        200,
    )
    .await;
    let fetches = |m: &common::Metrics| m.get("portcullis_jwks_fetch_total", &[("result", "ok")]);
    let fetched_before = fetches(&scrape(world.gateway.metrics).await);

    let kids = world.op.rotate_signing_key().await;
    assert_eq!(
        kids[1],
        kid(&before.access_token),
        "step `rotation keeps the old key` broke"
    );
    let after = world
        .op
        .client_credentials("orders:read", JWT_RESOURCE)
        .await;
    assert_eq!(
        kid(&after.access_token),
        kids[0],
        "step `the new key signs` broke"
    );

    expect(
        &world,
        "read with a token from the new key",
        "GET",
        "/orders/7",
        &after.access_token,
        200,
    )
    .await;
    expect(
        &world,
        "read with a token from the old key",
        "GET",
        "/orders/7",
        &before.access_token,
        200,
    )
    .await;
    let m = scrape(world.gateway.metrics).await;
    assert_eq!(
        fetches(&m),
        fetched_before + 1.0,
        "step `exactly one key set refetch for the new kid` broke"
    );
}

/// An ID token is a JWT from the same issuer with the same keys; with `require_typ` it is refused
/// as an access token. The same token passes a gateway without `require_typ` that lists the
/// client as an audience, so `typ` is what stops it.
#[tokio::test(flavor = "multi_thread")]
async fn id_token_is_refused_as_an_access_token_with_require_typ() {
    let op = OidcProvider::start().await;
    let up = EchoUpstream::start("orders").await;
    let client_audience = format!(", \"{CLI_CLIENT}\"");
    let tokens = op
        .authorization_code("carol", "openid orders:read", JWT_RESOURCE)
        .await;
    let id_token = tokens
        .id_token
        .expect("step `authorization code grant with openid yields an ID token` broke");

    let strict = World {
        gateway: start_gateway(&op, &up, true, &client_audience).await,
        op,
        up,
    };
    let answer = expect(
        &strict,
        "ID token with require_typ on",
        "GET",
        "/profile",
        &id_token,
        401,
    )
    .await;
    assert!(
        answer.challenge.contains(r#"error="invalid_token""#)
            && answer.challenge.contains("not an access token"),
        "step `the refusal names the token type` broke: {:?}",
        answer.challenge
    );
    expect(
        &strict,
        "the access token of the same grant",
        "GET",
        "/profile",
        &tokens.access_token,
        200,
    )
    .await;

    let lax = World {
        gateway: start_gateway(&strict.op, &strict.up, false, &client_audience).await,
        ..strict
    };
    expect(
        &lax,
        "ID token with require_typ off",
        "GET",
        "/profile",
        &id_token,
        200,
    )
    .await;
    assert_eq!(
        last_identity(&lax, "identity headers")[0].as_deref(),
        Some("carol"),
        "step `the ID token's subject` broke"
    );
}

/// Step-up (RFC 9470) with the provider's own `auth_time` and `acr`: alice signed in moments ago
/// (her token passes `max_age`), but not with the route's `acr` (401
/// `insufficient_user_authentication`); a client-credentials token has no sign-in at all.
/// And the refresh token, which the provider introspects as active without an audience, opens
/// no route.
#[tokio::test(flavor = "multi_thread")]
async fn step_up_and_refresh_tokens_against_the_provider() {
    let world = World::start().await;
    let tokens = world
        .op
        .authorization_code("alice", "openid orders:read", JWT_RESOURCE)
        .await;
    expect(
        &world,
        "a fresh sign-in meets max_age",
        "GET",
        "/fresh/x",
        &tokens.access_token,
        200,
    )
    .await;
    let answer = expect(
        &world,
        "a sign-in without the acr",
        "GET",
        "/mfa/x",
        &tokens.access_token,
        401,
    )
    .await;
    assert!(
        answer
            .challenge
            .contains(r#"error="insufficient_user_authentication""#)
            && answer.challenge.contains(r#"acr_values="urn:example:mfa""#),
        "step `step-up challenge` broke: {:?}",
        answer.challenge
    );
    let service = world
        .op
        .client_credentials("orders:read", JWT_RESOURCE)
        .await;
    let answer = expect(
        &world,
        "no sign-in, no auth_time",
        "GET",
        "/fresh/x",
        &service.access_token,
        401,
    )
    .await;
    assert!(
        answer.challenge.contains(r#"max_age="600""#),
        "step `max_age challenge` broke: {:?}",
        answer.challenge
    );

    let refresh = tokens
        .refresh_token
        .expect("step `authorization code grant yields a refresh token` broke");
    let introspected = world.op.introspect(&refresh).await;
    assert_eq!(
        (introspected["active"].as_bool(), introspected.get("aud")),
        (Some(true), None),
        "step `the provider calls the refresh token active, without aud` broke: {introspected}"
    );
    let hits = world.up.hits();
    let answer = expect(
        &world,
        "the refresh token as an access token",
        "GET",
        "/orders/7",
        &refresh,
        401,
    )
    .await;
    assert!(
        answer.challenge.contains(r#"error="invalid_token""#),
        "step `refresh token gets invalid_token` broke: {:?}",
        answer.challenge
    );
    assert_eq!(
        world.up.hits(),
        hits,
        "step `nothing reached the upstream` broke"
    );
}

/// DPoP (RFC 9449): the provider binds a JWT and an opaque token to the client's key; each
/// passes with the `DPoP` scheme and a fresh proof by that key, and is refused as a bearer
/// token, with a replayed proof, and with a proof by another key.
#[tokio::test(flavor = "multi_thread")]
async fn dpop_bound_tokens_from_the_provider_pass_with_their_proofs_only() {
    use portcullis::config::Algorithm;
    use portcullis::devkeys::DevKey;
    let world = World::start().await;
    let key = DevKey::generate(Algorithm::ES256, "client");
    let stranger = DevKey::generate(Algorithm::ES256, "stranger");
    for resource in [JWT_RESOURCE, OPAQUE_RESOURCE] {
        let (tokens, token_type) = world
            .op
            .client_credentials_dpop("orders:read", resource, &key)
            .await;
        assert_eq!(
            token_type, "DPoP",
            "step `a DPoP-bound token for {resource}` broke"
        );
        let token = tokens.access_token;
        let url = format!("http://{}/dpop/orders", world.gateway.proxy);
        let send = |proof: Option<String>, scheme: &str| {
            let mut req = client()
                .get(&url)
                .header("authorization", format!("{scheme} {token}"));
            if let Some(p) = proof {
                req = req.header("dpop", p);
            }
            async move { req.send().await.expect("the gateway answers") }
        };
        let hits = world.up.hits();
        let proof = key.dpop_proof("GET", &url, &token, &serde_json::json!({}));
        let r = send(Some(proof.clone()), "DPoP").await;
        assert_eq!(
            r.status(),
            200,
            "step `{resource} with its proof` broke: {:?}",
            r.headers().get("www-authenticate")
        );
        assert_eq!(world.up.hits(), hits + 1);
        assert_eq!(
            last_identity(&world, "DPoP identity")[1].as_deref(),
            Some(SERVICE_CLIENT.0)
        );
        for (step, proof, scheme) in [
            ("replayed proof", Some(proof), "DPoP"),
            ("as a bearer token", None, "Bearer"),
            (
                "a proof by another key",
                Some(stranger.dpop_proof("GET", &url, &token, &serde_json::json!({}))),
                "DPoP",
            ),
        ] {
            let r = send(proof, scheme).await;
            assert_eq!(r.status(), 401, "step `{resource}: {step}` broke");
        }
        assert_eq!(
            world.up.hits(),
            hits + 1,
            "nothing refused reached the upstream"
        );
    }
}
