//! An axum service that checks bearer tokens in-process with Portcullis's auth core.
//!
//! `GET /orders` needs `orders:read`, `POST /orders` needs `orders:write`; `/health` is open.
//! The handlers read the caller from the `Principal` the layer put in the request's extensions.
//!
//! ```text
//! cargo run --example axum_service -- examples/auth.toml 127.0.0.1:3000
//! ```
//!
//! The config file holds only the auth sections (`realm`, `[tokens]`, `[[issuers]]`,
//! `[introspection]`), the same keys as `gateway.toml`; see `examples/auth.toml`.

use axum::routing::get;
use axum::{Extension, Json, Router};
use portcullis::auth::{Authenticator, Principal};
use portcullis::config::AuthConfig;
use portcullis::metrics::Metrics;
use portcullis::tower_layer::AuthLayer;
use serde_json::{json, Value};

async fn list_orders(Extension(caller): Extension<Principal>) -> Json<Value> {
    Json(json!({ "orders": [], "for": caller.subject }))
}

async fn create_order(Extension(caller): Extension<Principal>) -> Json<Value> {
    Json(json!({ "created": true, "by": caller.client_id }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), listen) = (args.next(), args.next()) else {
        eprintln!("usage: axum_service AUTH_CONFIG.toml [LISTEN_ADDR]");
        std::process::exit(2);
    };
    let config = AuthConfig::parse(&std::fs::read_to_string(&path)?)?;
    let metrics = Metrics::new(prometheus::Registry::new())?;
    // One authenticator (keys, caches, background refresh) shared by both policies.
    let auth = AuthLayer::new(Authenticator::new(&config, metrics));
    let read = auth
        .clone()
        .require_scopes(["orders:read"])
        .route_name("orders-read");
    let write = auth
        .require_scopes(["orders:write"])
        .route_name("orders-write");

    let app = Router::new()
        .route(
            "/orders",
            get(list_orders)
                .route_layer(read)
                .merge(axum::routing::post(create_order).route_layer(write)),
        )
        .route("/health", get(|| async { "ok" }));
    let listen = listen.unwrap_or_else(|| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
