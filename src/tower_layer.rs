//! The auth core as tower middleware, for axum and hyper services: [`AuthLayer`] wraps a
//! service in [`Auth`], which authorizes every request with the same [`Authenticator`] the
//! gateway uses (same challenges, caches and metrics).
//!
//! - On success the [`Principal`] goes into the request's extensions (axum: `Extension<Principal>`).
//! - On failure the answer is the RFC 6750 challenge (400 / 401 / 403) or 503, returned as
//!   `Ok(response)`: a refusal is a response, not an error, so the inner service's error type is
//!   kept (as tower-http's `AsyncRequireAuthorization` does).
//!   A gRPC request (`content-type: application/grpc…`) gets the same refusal trailers-only,
//!   with `grpc-status` ([`Synthetic::render_for`](crate::response::Synthetic::render_for)).
//! - [`AuthLayer::new`] spawns the key refresh (and introspection endpoint discovery) on the
//!   current tokio runtime; the tasks stop when the last layer or service clone is dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::{
    Authenticator, DpopMode, Principal, RequestInfo, RequestUri, RoutePolicy, TokenTypes,
};
use crate::response::Synthetic;

/// The authenticator and its background tasks, shared by every layer and service cloned from
/// one [`AuthLayer::new`].
struct Shared {
    auth: Authenticator,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Applies [`Auth`] to a service: a policy (scopes, token types) over a shared authenticator.
///
/// ```no_run
/// use portcullis::auth::{Authenticator, Principal};
/// use portcullis::config::AuthConfig;
/// use portcullis::metrics::Metrics;
/// use portcullis::tower_layer::AuthLayer;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let config = AuthConfig::parse(r#"
///     realm = "orders"
///     [[issuers]]
///     issuer = "https://id.example.com"
///     discovery = true
///     audiences = ["orders-api"]
///     algorithms = ["RS256"]
/// "#)?;
/// let metrics = Metrics::new(prometheus::Registry::new())?;
/// let auth = AuthLayer::new(Authenticator::new(&config, metrics));
/// let read = auth.clone().require_scopes(["orders:read"]);
/// let write = auth.require_scopes(["orders:write"]).route_name("orders-write");
///
/// // Any tower service of `http::Request` works; here a plain function.
/// let service = read.layer(tower::service_fn(|req: http::Request<String>| async move {
///     let who = req.extensions().get::<Principal>().and_then(|p| p.subject.clone());
///     Ok::<_, std::convert::Infallible>(http::Response::new(format!("hello {who:?}")))
/// }));
/// # let _ = (service, write);
/// # Ok(())
/// # }
/// # use tower_layer::Layer as _;
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    shared: Arc<Shared>,
    policy: Arc<RoutePolicy>,
    route: Arc<str>,
    trust_forwarded_headers: bool,
}

impl AuthLayer {
    /// Wrap an authenticator and spawn its background work on the current tokio runtime.
    /// The policy starts empty: any valid token passes. Panics outside a tokio runtime.
    pub fn new(auth: Authenticator) -> AuthLayer {
        let tasks = auth.refresh_tasks().into_iter().map(tokio::spawn).collect();
        AuthLayer {
            shared: Arc::new(Shared { auth, tasks }),
            policy: Arc::new(RoutePolicy::default()),
            route: Arc::from("tower"),
            trust_forwarded_headers: false,
        }
    }

    /// Require every one of these scopes (added to those already required).
    pub fn require_scopes<I, S>(mut self, scopes: I) -> AuthLayer
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Arc::make_mut(&mut self.policy)
            .all
            .extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Require at least one of these scopes.
    pub fn require_any_scope<I, S>(mut self, scopes: I) -> AuthLayer
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Arc::make_mut(&mut self.policy)
            .any
            .extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Accept only these kinds of token (default: JWTs and opaque tokens).
    pub fn token_types(mut self, token_types: TokenTypes) -> AuthLayer {
        Arc::make_mut(&mut self.policy).token_types = token_types;
        self
    }

    /// Take DPoP-bound tokens (RFC 9449): `Optional` also takes bearer tokens, `Required`
    /// only DPoP-bound ones. The authenticator's config needs a `[dpop]` section.
    pub fn dpop(mut self, mode: DpopMode) -> AuthLayer {
        Arc::make_mut(&mut self.policy).dpop = mode;
        self
    }

    /// A proxy in front sets `X-Forwarded-Proto` and `X-Forwarded-Host`: a DPoP proof names
    /// the URI they give (default: the request's own URI and `Host`).
    pub fn trust_forwarded_headers(mut self, trust: bool) -> AuthLayer {
        self.trust_forwarded_headers = trust;
        self
    }

    /// The `route` label of the decision metrics (default `tower`). Keep it a fixed name.
    pub fn route_name(mut self, name: &str) -> AuthLayer {
        self.route = Arc::from(name);
        self
    }

    /// The shared authenticator.
    pub fn authenticator(&self) -> &Authenticator {
        &self.shared.auth
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            layer: self.clone(),
        }
    }
}

/// Authorizes each request before the inner service sees it.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S> Auth<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Auth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The clone is not ready; the driven-ready original goes into the future.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let auth = &layer.shared.auth;
                let decision = auth
                    .authorize(&RequestInfo {
                        headers: req.headers(),
                        query: req.uri().query(),
                        route: &layer.route,
                        policy: &layer.policy,
                        method: req.method().as_str(),
                        uri: RequestUri {
                            path: req.uri().path(),
                            authority: req.uri().authority().map(|a| a.as_str()),
                            scheme: req.uri().scheme_str().map_or("http", |s| match s {
                                "https" => "https",
                                _ => "http",
                            }),
                            forwarded: layer.trust_forwarded_headers,
                            normalise: crate::gate::target::normalise_proof_path,
                        },
                        calls: None,
                        client_cert: None,
                        token_key: None,
                    })
                    .await;
                match decision {
                    Ok(grant) => {
                        let principal = Arc::unwrap_or_clone(grant.principal);
                        req.extensions_mut().insert::<Principal>(principal);
                        inner.call(req).await
                    }
                    // A gRPC caller gets the challenge trailers-only (`grpc-status`).
                    Err(error) => {
                        let challenge = auth.challenge(&error, &layer.policy, req.headers());
                        Ok(Synthetic::from(challenge).render_text_for(req.headers()))
                    }
                }
            }),
        }
    }
}

/// The response future of [`Auth`].
pub struct ResponseFuture<B, E> {
    inner: BoxFuture<'static, Result<Response<B>, E>>,
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<B>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
