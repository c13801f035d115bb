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
    routes: Vec<Arc<Route>>,
}

impl Router {
    pub fn new(configs: &[RouteConfig]) -> Router {
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
                    policy: RoutePolicy::new(c.scopes.clone(), c.scopes_any.clone())
                        .with_token_types(c.token_types),
                    forward_token: c.forward_token,
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
        Router { groups, routes }
    }

    /// All routes, in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
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
            // Next shorter prefix on a segment boundary: "/a/b/" -> "/a/b" -> "/a" -> "/".
            candidate = match candidate.rfind('/') {
                Some(0) if candidate.len() > 1 => "/",
                Some(0) | None => return RouteMatch::NotFound,
                Some(i) => &candidate[..i],
            };
        }
    }
}

/// Whether a request path is canonical: no empty segments (`//`), no dot segments (`.`, `..`,
/// also percent-encoded), no encoded `/`, `\\` or NUL, no backslash. Routing decides on the raw
/// path and forwards that same path, so a path that an upstream would normalise into another
/// route's path (`/public/../admin`, `//admin`, `/public/%2e%2e/admin`) is refused rather than
/// matched (RFC 3986 §5.2.4, §6.2.2).
pub fn is_canonical_path(path: &str) -> bool {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') || b.contains(&b'\\') || path.contains("//") {
        return false;
    }
    // It runs on every request, so it allocates nothing: no lower-cased copy, no decoding.
    let encoded_separator_or_nul = b.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'f') | (b'5', b'c') | (b'0', b'0')
            )
    });
    !encoded_separator_or_nul && !path.split('/').any(is_dot_segment)
}

/// `.` or `..`, each dot possibly percent-encoded (`%2e`, `%2E`).
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    matches!(dots, 1 | 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, prefix: &str, methods: Option<&[&str]>) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            path_prefix: prefix.into(),
            methods: methods.map(|ms| ms.iter().map(|m| m.parse().unwrap()).collect()),
            upstreams: vec!["127.0.0.1:1".into()],
            scopes: vec![],
            scopes_any: vec![],
            auth: AuthMode::None,
            token_types: Default::default(),
            forward_token: false,
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

    /// The definition the allocation-free check replaced, kept as its oracle.
    fn canonical_by_decoding(path: &str) -> bool {
        if !path.starts_with('/') || path.contains("//") || path.contains('\\') {
            return false;
        }
        let lower = path.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
            return false;
        }
        lower.split('/').all(|segment| {
            let decoded = segment.replace("%2e", ".");
            decoded != "." && decoded != ".."
        })
    }

    #[test]
    fn the_canonical_check_agrees_with_decoding_on_every_short_path() {
        let alphabet = [
            '/', '.', '%', '2', 'e', 'E', 'f', 'F', '5', 'c', '0', '\\', 'a',
        ];
        let checked = crate::testing::for_every_extension("/", &alphabet, 5, |q| {
            assert_eq!(is_canonical_path(q), canonical_by_decoding(q), "{q:?}");
        });
        assert_eq!(checked, (1..=5).map(|n| 13usize.pow(n)).sum::<usize>());
    }

    #[test]
    fn only_canonical_paths_are_routed() {
        for ok in [
            "/",
            "/orders",
            "/orders/7",
            "/orders/",
            "/a.b/c..d/.e",
            "/%41bc",
            "/x?y=../z",
        ] {
            assert!(is_canonical_path(ok.split('?').next().unwrap()), "{ok}");
        }
        for bad in [
            "/public/../admin",
            "/public/./admin",
            "/..",
            "/.",
            "//admin",
            "/public//admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2e/admin",
            "/public/.%2e/admin",
            "/public%2fadmin",
            "/public%2F..%2Fadmin",
            "/public\\..\\admin",
            "/public%5cadmin",
            "/a%00b",
            "orders",
            "",
        ] {
            assert!(!is_canonical_path(bad), "{bad}");
        }
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
