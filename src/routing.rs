//! Route matching: the request path (never the query, never a header) picks a route.
//!
//! Rules:
//! - The longest `path_prefix` that matches wins. Prefixes match on segment boundaries:
//!   `/orders` matches `/orders` and `/orders/7`, not `/ordersX`.
//! - Among routes with that prefix, the one whose `methods` include the request method.
//!   When none does, the answer is 405 with `Allow`, never a shorter prefix: a request that a
//!   scoped route's path claims must not fall through to a less protected catch-all.
//!
//! Matching costs one hash lookup per path segment, whatever the number of routes.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;

use crate::auth::RoutePolicy;
use crate::config::{AuthMode, RouteConfig};

/// A route, as the data plane uses it.
#[derive(Debug)]
pub struct Route {
    /// Position in the config; indexes per-route state such as upstream pools.
    pub index: usize,
    pub name: String,
    pub path_prefix: String,
    pub methods: Option<Vec<Method>>,
    pub auth: AuthMode,
    pub policy: RoutePolicy,
    /// Keep `Authorization` on the forwarded request.
    pub forward_token: bool,
    /// `upstream_protocol`: HTTP/1.1 or HTTP/2 to the upstreams.
    pub upstream_protocol: crate::config::UpstreamProtocol,
    /// `allow_path_parameters`: `;` parameters in the path are accepted.
    pub path_parameters: bool,
    /// `allow_method_override`: method-override headers are forwarded.
    pub method_override: bool,
    /// `allow_options_asterisk`: `OPTIONS *` is routed here.
    pub options_asterisk: bool,
    /// `cors_preflight = "forward"`: a CORS preflight passes without a token.
    pub cors_preflight: bool,
    /// The URL of the route's RFC 9728 document, for its challenges' `resource_metadata`.
    pub resource_metadata: Option<String>,
    /// `[routes.rate_limit]`: this instance's counters, kept across a reload when the route's
    /// name and limit stay (a reload is no way around a limit).
    pub limiter: Option<Arc<crate::gate::limit::Limiter>>,
}

/// The outcome of matching one request.
#[derive(Debug)]
pub enum RouteMatch<'a> {
    Found(&'a Arc<Route>),
    /// The path belongs to routes that do not allow this method; the `Allow` header value.
    MethodNotAllowed {
        allow: &'a str,
    },
    NotFound,
}

/// The routes sharing one prefix.
#[derive(Debug)]
struct Group {
    routes: Vec<Arc<Route>>,
    /// `Allow` value for a 405: the union of the group's methods, sorted.
    allow: String,
}

/// Every configured route, indexed by prefix.
#[derive(Debug)]
pub struct Router {
    groups: HashMap<String, Group>,
    /// Each prefix with its ASCII letters in lower case -> the prefix as configured (config
    /// validation refuses two prefixes that differ only by case).
    folded: HashMap<String, String>,
    /// Some prefix has an upper-case ASCII letter: a path in lower case may fold onto it.
    capital_prefixes: bool,
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// How many routes there are; each route's [`Route::index`] is below this.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// No routes at all (config validation requires one).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn new(configs: &[RouteConfig]) -> Router {
        Router::renewed(configs, None)
    }

    /// [`Router::new`] for a reloaded config: a route with the same name as one of `previous`
    /// keeps its limiter when the limit is the same, and its counts when what is counted and
    /// the window are ([`Limiter::renewed`](crate::gate::limit::Limiter::renewed)).
    pub fn renewed(configs: &[RouteConfig], previous: Option<&Router>) -> Router {
        use crate::gate::limit::Limiter;
        let limiter = |c: &RouteConfig| {
            let settings = c.rate_limit.clone()?;
            let old = previous
                .and_then(|p| p.routes.iter().find(|r| r.name == c.name))
                .and_then(|r| r.limiter.clone());
            Some(match old {
                Some(l) if *l.settings() == settings => l,
                old => Arc::new(Limiter::renewed(settings, old.as_deref())),
            })
        };
        let routes: Vec<Arc<Route>> = configs
            .iter()
            .enumerate()
            .map(|(index, c)| {
                Arc::new(Route {
                    index,
                    name: c.name.clone(),
                    path_prefix: c.path_prefix.clone(),
                    methods: c.methods.clone(),
                    auth: c.auth,
                    policy: c.policy.clone(),
                    forward_token: c.forward_token,
                    upstream_protocol: c.upstream_protocol,
                    path_parameters: c.allow_path_parameters,
                    method_override: c.allow_method_override,
                    options_asterisk: c.allow_options_asterisk,
                    cors_preflight: c.cors_preflight,
                    resource_metadata: c
                        .resource
                        .as_deref()
                        .map(crate::gate::metadata::document_url),
                    limiter: limiter(c),
                })
            })
            .collect();
        let mut groups: HashMap<String, Group> = HashMap::new();
        for route in &routes {
            groups
                .entry(route.path_prefix.clone())
                .or_insert_with(|| Group {
                    routes: Vec::new(),
                    allow: String::new(),
                })
                .routes
                .push(route.clone());
        }
        for group in groups.values_mut() {
            let mut methods: Vec<&str> = group
                .routes
                .iter()
                .flat_map(|r| r.methods.iter().flatten().map(Method::as_str))
                .collect();
            methods.sort_unstable();
            methods.dedup();
            group.allow = methods.join(", ");
        }
        let folded = groups
            .keys()
            .map(|prefix| (prefix.to_ascii_lowercase(), prefix.clone()))
            .collect();
        let capital_prefixes = groups
            .keys()
            .any(|p| p.bytes().any(|b| b.is_ascii_uppercase()));
        Router {
            groups,
            folded,
            capital_prefixes,
            routes,
        }
    }

    /// All routes, in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Whether some `path_prefix` holds an upper-case ASCII letter.
    pub fn has_capital_prefixes(&self) -> bool {
        self.capital_prefixes
    }

    /// The configured prefix that an application matching without regard to ASCII case would
    /// give `lower_path` (a path already in lower case): the longest folded prefix, on segment
    /// boundaries.
    pub fn folded_prefix(&self, lower_path: &str) -> Option<&str> {
        let mut candidate = lower_path;
        loop {
            if let Some(prefix) = self.folded.get(candidate) {
                return Some(prefix);
            }
            candidate = shorter(candidate)?;
        }
    }

    /// Match a request. `path` is the request target's path (no query).
    pub fn find(&self, method: &Method, path: &str) -> RouteMatch<'_> {
        let mut candidate = path;
        loop {
            if let Some(group) = self.groups.get(candidate) {
                return group
                    .routes
                    .iter()
                    .find(|r| r.methods.as_ref().is_none_or(|ms| ms.contains(method)))
                    .map_or(
                        RouteMatch::MethodNotAllowed {
                            allow: &group.allow,
                        },
                        RouteMatch::Found,
                    );
            }
            let Some(next) = shorter(candidate) else {
                return RouteMatch::NotFound;
            };
            candidate = next;
        }
    }
}

/// The next shorter prefix on a segment boundary: "/a/b/" -> "/a/b" -> "/a" -> "/" -> none.
fn shorter(candidate: &str) -> Option<&str> {
    match candidate.rfind('/') {
        Some(0) if candidate.len() > 1 => Some("/"),
        Some(0) | None => None,
        Some(i) => Some(&candidate[..i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, prefix: &str, methods: Option<&[&str]>) -> RouteConfig {
        RouteConfig {
            methods: methods.map(|ms| ms.iter().map(|m| m.parse().unwrap()).collect()),
            ..crate::testing::route(name, prefix)
        }
    }

    fn name(m: RouteMatch<'_>) -> String {
        match m {
            RouteMatch::Found(r) => r.name.clone(),
            RouteMatch::MethodNotAllowed { allow } => format!("405 {allow}"),
            RouteMatch::NotFound => "404".into(),
        }
    }

    #[test]
    fn longest_prefix_on_segment_boundaries_then_method() {
        let router = Router::new(&[
            route("root", "/", Some(&["GET"])),
            route("orders-read", "/orders", Some(&["GET", "HEAD"])),
            route("orders-write", "/orders", Some(&["POST", "DELETE"])),
            route("order-items", "/orders/items", None),
            route("api", "/api/v1", None),
        ]);
        let cases = [
            ("GET", "/", "root"),
            ("GET", "/orders", "orders-read"),
            ("GET", "/orders/", "orders-read"),
            ("HEAD", "/orders/7", "orders-read"),
            ("POST", "/orders/7", "orders-write"),
            ("PUT", "/orders/7", "405 DELETE, GET, HEAD, POST"),
            ("GET", "/ordersX", "root"),
            ("PUT", "/ordersX", "405 GET"),
            ("PATCH", "/orders/items/3", "order-items"),
            ("GET", "/orders/itemsX", "orders-read"),
            ("GET", "/api/v1/x", "api"),
            ("GET", "/api/v2", "root"),
            ("GET", "/api", "root"),
        ];
        for (method, path, want) in cases {
            let got = name(router.find(&method.parse().unwrap(), path));
            assert_eq!(got, want, "{method} {path}");
        }
    }

    #[test]
    fn folded_prefixes_match_without_regard_to_case() {
        let router = Router::new(&[
            route("root", "/", None),
            route("api", "/api", None),
            route("docs", "/api/Docs", None),
        ]);
        for (lower, want) in [
            ("/api/admin", Some("/api")),
            ("/api/docs/x", Some("/api/Docs")),
            ("/other", Some("/")),
        ] {
            assert_eq!(router.folded_prefix(lower), want, "{lower}");
        }
        let no_root = Router::new(&[route("api", "/api", None)]);
        assert_eq!(no_root.folded_prefix("/x"), None);
    }

    #[test]
    fn no_root_route_means_not_found() {
        let router = Router::new(&[route("orders", "/orders", None)]);
        for path in ["/", "/order", "/ordersX", "/other/orders", "", "orders"] {
            assert_eq!(name(router.find(&Method::GET, path)), "404", "{path:?}");
        }
        assert_eq!(name(router.find(&Method::GET, "/orders//x")), "orders");
    }
}
