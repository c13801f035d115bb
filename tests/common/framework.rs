//! How the applications behind a gateway read a request path: the oracle of the path-confusion
//! tests. It does, at once, everything the common frameworks do to a path before routing, so a
//! gateway that is safe against it is safe against each of them.

/// The path an application routes on:
/// - `;` parameters stripped from each segment before decoding (Tomcat, Jetty, Spring);
/// - every percent-escape decoded once (Starlette, WSGI, Go `net/http`, Spring, Express
///   parameters), then `;` parameters stripped again (servlet containers that decode first);
/// - `\` read as `/` (IIS, some Node servers);
/// - whitespace around each segment trimmed (Spring's `AntPathMatcher` with `trimTokens`);
/// - empty segments merged and dot segments resolved (Tomcat's normalisation, Go's
///   `path.Clean`, RFC 3986 §5.2.4).
pub fn app_path(path: &str) -> String {
    let without_params = strip_parameters(path);
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(&without_params).collect();
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let decoded = strip_parameters(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment.trim_matches(|c: char| c.is_whitespace() || c.is_control()) {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("/{}", segments.join("/"))
}

fn strip_parameters(path: &str) -> String {
    path.split('/')
        .map(|s| s.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

/// The scope an application's handler for `app_path` needs, in the routes every
/// path-confusion test uses: `/api/admin` needs `api:admin`, `/api` `api:read`, `GET /orders`
/// `orders:read`, `POST /orders` `orders:write`; everything else is open. The application
/// routes without regard to ASCII case, as Express does by default and ASP.NET Core and IIS
/// do, which is the stricter reading for the gateway.
pub fn needed_scope(method: &str, app_path: &str) -> Option<&'static str> {
    let lower = app_path.to_ascii_lowercase();
    let segments: Vec<&str> = lower.split('/').filter(|s| !s.is_empty()).collect();
    match (method, segments.as_slice()) {
        (_, ["api", "admin", ..]) => Some("api:admin"),
        (_, ["api", ..]) => Some("api:read"),
        ("POST", ["orders", ..]) => Some("orders:write"),
        (_, ["orders", ..]) => Some("orders:read"),
        _ => None,
    }
}
