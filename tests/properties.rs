//! Properties of the token decision, checked against an independent oracle on generated tokens:
//! a token is accepted exactly when it was signed by a configured key, its header names that
//! key's algorithm (and its kid, if any), and its claims are valid (RFC 7519 §4.1, RFC 8725).

mod common;

use std::time::Duration;

use common::idp::{now, MockIdp};
use http::{HeaderMap, HeaderValue};
use portcullis::auth::{Authenticator, RequestInfo, RequestUri, RoutePolicy};
use portcullis::config::{Algorithm, AuthConfig};
use portcullis::devkeys::DevKey;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const LEEWAY: i64 = 30;

/// Who signs: the issuer's two keys, and keys it never published.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Signer {
    IssuerRsa,
    IssuerEc,
    /// An RSA key the issuer never published, claiming the issuer's RSA kid.
    ForeignRsa,
    /// An EdDSA key: an algorithm the issuer is not allowed.
    ForeignEd,
    /// HS256 with the issuer's RSA public key as the secret (algorithm confusion).
    HmacWithPublicKey,
}

/// What the header says.
#[derive(Debug, Clone, Copy)]
enum HeaderAlg {
    /// The signer's own algorithm.
    Honest,
    /// Another algorithm name.
    Lie(&'static str),
}

#[derive(Debug, Clone, Copy)]
enum Kid {
    Signers,
    Absent,
    Other,
}

#[derive(Debug, Clone)]
struct Case {
    signer: Signer,
    alg: HeaderAlg,
    kid: Kid,
    /// Offsets from now, in seconds; `None`: claim absent.
    exp: Option<i64>,
    nbf: Option<i64>,
    iat: Option<i64>,
    aud: Option<Value>,
    right_issuer: bool,
}

/// Offsets that stay at least 3 s from every leeway boundary, so the clock's tick between
/// signing and checking cannot change the outcome.
fn offset() -> impl Strategy<Value = i64> {
    (-200i64..200).prop_filter("near a boundary", |o| {
        (o.abs() - LEEWAY).abs() >= 3 && o.abs() >= 3
    })
}

fn case() -> impl Strategy<Value = Case> {
    let signer = prop_oneof![
        Just(Signer::IssuerRsa),
        Just(Signer::IssuerEc),
        Just(Signer::ForeignRsa),
        Just(Signer::ForeignEd),
        Just(Signer::HmacWithPublicKey),
    ];
    let alg = prop_oneof![
        3 => Just(HeaderAlg::Honest),
        1 => prop_oneof![Just("RS256"), Just("ES256"), Just("PS256"), Just("HS256"), Just("none"), Just("EdDSA")]
            .prop_map(HeaderAlg::Lie),
    ];
    let kid = prop_oneof![Just(Kid::Signers), Just(Kid::Absent), Just(Kid::Other)];
    let aud = proptest::option::of(prop_oneof![
        Just(json!("api")),
        Just(json!("other")),
        Just(json!(["x", "api"])),
        Just(json!([])),
    ]);
    (
        signer,
        alg,
        kid,
        proptest::option::weighted(0.9, offset()),
        proptest::option::of(offset()),
        proptest::option::of(offset()),
        aud,
        proptest::bool::weighted(0.9),
    )
        .prop_map(
            |(signer, alg, kid, exp, nbf, iat, aud, right_issuer)| Case {
                signer,
                alg,
                kid,
                exp,
                nbf,
                iat,
                aud,
                right_issuer,
            },
        )
}

/// The oracle: what RFC 7519 / RFC 8725 and the configuration say, written without the
/// gateway's code.
fn should_accept(c: &Case) -> bool {
    let signer_alg = match c.signer {
        Signer::IssuerRsa => "RS256",
        Signer::IssuerEc => "ES256",
        _ => return false,
    };
    let alg_ok = match c.alg {
        HeaderAlg::Honest => true,
        HeaderAlg::Lie(a) => a == signer_alg,
    };
    let kid_ok = !matches!(c.kid, Kid::Other);
    let exp_ok = c.exp.is_some_and(|e| e + LEEWAY > 0);
    let nbf_ok = c.nbf.is_none_or(|n| n <= LEEWAY);
    let iat_ok = c.iat.is_none_or(|i| i <= LEEWAY);
    let aud_ok = match &c.aud {
        Some(Value::String(s)) => s == "api",
        Some(Value::Array(a)) => a.iter().any(|v| v == "api"),
        _ => false,
    };
    alg_ok && kid_ok && exp_ok && nbf_ok && iat_ok && aud_ok && c.right_issuer
}

struct Keys {
    rsa: DevKey,
    ec: DevKey,
    foreign_rsa: DevKey,
    foreign_ed: DevKey,
    confusion: DevKey,
}

fn token(keys: &Keys, issuer: &str, c: &Case) -> String {
    let key = match c.signer {
        Signer::IssuerRsa => &keys.rsa,
        Signer::IssuerEc => &keys.ec,
        Signer::ForeignRsa => &keys.foreign_rsa,
        Signer::ForeignEd => &keys.foreign_ed,
        Signer::HmacWithPublicKey => &keys.confusion,
    };
    let alg = match c.alg {
        HeaderAlg::Honest => key.alg.name(),
        HeaderAlg::Lie(a) => a,
    };
    let mut header = json!({ "alg": alg });
    match c.kid {
        Kid::Signers => header["kid"] = json!(key.kid),
        Kid::Absent => {}
        Kid::Other => header["kid"] = json!("someone-else"),
    }
    let t = now();
    let mut claims = Map::new();
    claims.insert("sub".into(), json!("user"));
    let iss = if c.right_issuer {
        issuer.to_owned()
    } else {
        format!("{issuer}.evil")
    };
    claims.insert("iss".into(), json!(iss));
    for (name, offset) in [("exp", c.exp), ("nbf", c.nbf), ("iat", c.iat)] {
        if let Some(o) = offset {
            claims.insert(name.into(), json!(t + o));
        }
    }
    if let Some(aud) = &c.aud {
        claims.insert("aud".into(), aud.clone());
    }
    key.sign_raw(&header, &Value::Object(claims))
}

#[test]
fn a_token_is_accepted_exactly_when_the_oracle_says_so() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rsa = DevKey::generate(Algorithm::RS256, "rsa-1");
    let ec = DevKey::generate(Algorithm::ES256, "ec-1");
    let keys = Keys {
        foreign_rsa: DevKey::generate(Algorithm::RS256, "rsa-1"),
        foreign_ed: DevKey::generate(Algorithm::EdDSA, "ed-1"),
        confusion: DevKey::hmac(Algorithm::HS256, "rsa-1", &rsa.public_key_bytes()),
        rsa,
        ec,
    };
    let idp = rt.block_on(MockIdp::start(&[&keys.rsa, &keys.ec]));
    let issuer = idp.issuer();
    let config = AuthConfig::parse(&format!(
        "[tokens]\ncache_capacity = 0\n[[issuers]]\nissuer = \"{issuer}\"\ndiscovery = true\n\
         audiences = [\"api\"]\nalgorithms = [\"RS256\", \"ES256\"]\nleeway = \"{LEEWAY}s\"\n"
    ))
    .unwrap();
    let metrics = portcullis::metrics::Metrics::new(prometheus::Registry::new()).unwrap();
    let auth = Authenticator::new(&config, metrics);
    for task in auth.refresh_tasks() {
        rt.spawn(task);
    }
    let loaded = rt.block_on(common::eventually(Duration::from_secs(15), || async {
        auth.issuers_without_keys().is_empty()
    }));
    assert!(loaded, "the issuer's keys never loaded");
    let policy = RoutePolicy::new(vec![], vec![]);

    let config = ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(c in case())| {
        let jwt = token(&keys, &issuer, &c);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(&format!("Bearer {jwt}")).unwrap());
        let info = RequestInfo {
            headers: &headers,
            query: None,
            route: "p",
            policy: &policy,
            method: "GET",
            uri: RequestUri::exact("/", None),
            calls: None,
            client_cert: None,
            token_key: None,
        };
        let outcome = rt.block_on(auth.authorize(&info));
        prop_assert_eq!(
            outcome.is_ok(),
            should_accept(&c),
            "{:?} -> {:?}",
            c,
            outcome.map(|p| p.principal.subject.clone())
        );
    });
}

/// Pieces of path segments: the routes' own words whole and in parts, unreserved characters and
/// their encodings in both cases, other encodings, dots, parameters, spaces and stray bytes.
fn piece() -> impl Strategy<Value = &'static str> {
    let words = prop::sample::select(vec![
        "api", "admin", "orders", "public", "legacy", "..", "API", "Admin", "ORDERS", "docs",
        "Docs",
    ]);
    let others = prop::sample::select(vec![
        "", "a", "A", "%61", "%41", "dmin", "%64min", "pi", "%70i", "%6f", "%6F", "rders", "%2e",
        "%2E", ".", ";", ";x=1", "%3b", "%3B", "%2f", "%2F", "%5c", "\\", "%20", "%09", "%25",
        "%2561", "%00", "%c3%a9", "%C3%A9", "%c0%ae", "%ff", "~", "%7e", "-", ":", "@", "*", "?",
        "#", " ", "+", "%",
    ]);
    prop_oneof![2 => words, 3 => others]
}

fn target() -> impl Strategy<Value = String> {
    let lead = prop::sample::select(vec![
        "/",
        "/",
        "/",
        "/",
        "/",
        "/",
        "",
        "%2f",
        "*",
        "http://h/",
        "HTTPS://h:8443/",
        "a/",
        " /",
    ]);
    let segment = prop::collection::vec(piece(), 1..3).prop_map(|p| p.concat());
    (lead, prop::collection::vec(segment, 0..6))
        .prop_map(|(lead, segments)| format!("{lead}{}", segments.join("/")))
}

/// For generated targets, either the gateway refuses the request, or the route it chooses is
/// the route an application would choose for the path it forwards, read the way frameworks
/// read paths (percent-decoded, `;` parameters stripped, dot segments resolved, segments
/// trimmed; `common::framework`), with or without regard to letter case, and that path means
/// what the raw target meant.
#[test]
fn a_target_is_refused_or_routed_where_the_application_routes_it() {
    use portcullis::gate;
    use portcullis::routing::{RouteMatch, Router};
    let route = |name: &str, prefix: &str, extra: &str| {
        format!(
            "[[routes]]\nname = \"{name}\"\npath_prefix = \"{prefix}\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"none\"\n{extra}"
        )
    };
    let text = [
        route("root", "/", "allow_options_asterisk = true\n"),
        route("public", "/public", ""),
        route("orders-read", "/orders", "methods = [\"GET\"]\n"),
        route("orders-write", "/orders", "methods = [\"POST\"]\n"),
        route("api", "/api", ""),
        route("api-admin", "/api/admin", ""),
        route("legacy", "/legacy", "allow_path_parameters = true\n"),
        route("docs", "/public/Docs", ""),
    ]
    .concat();
    let config = portcullis::config::Config::parse(&text).unwrap();
    let router = Router::new(&config.routes);
    let name = |m: RouteMatch<'_>| match m {
        RouteMatch::Found(r) => r.name.clone(),
        _ => "-".to_owned(),
    };
    let routed = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 100_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(raw in target(), post in any::<bool>())| {
        let method = if post { http::Method::POST } else { http::Method::GET };
        let Ok(r) = gate::route(&router, &method, raw.as_bytes()) else { return Ok(()); };
        routed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if r.target.is_asterisk() {
            return Ok(());
        }
        let forwarded = r.target.path();
        let app = common::framework::app_path(forwarded);
        prop_assert_eq!(
            name(router.find(&method, &app)),
            r.route.name.clone(),
            "{} {:?} was routed to {} and forwarded as {:?}, which an application reads as {:?}",
            method, raw, r.route.name, forwarded, app
        );
        // Nor does an application that routes without regard to case choose another prefix.
        prop_assert_eq!(
            router.folded_prefix(&app.to_ascii_lowercase()),
            Some(r.route.path_prefix.as_str()),
            "{} {:?}: a case-insensitive application reads {:?}",
            method, raw, app
        );
        // Normalising changed no byte an application decodes.
        let raw_path = match raw.split_once("://") {
            Some((_, rest)) if !raw.starts_with('/') => {
                &rest[rest.find(['/', '?']).unwrap_or(rest.len())..]
            }
            _ => raw.as_str(),
        };
        let raw_path = raw_path.split('?').next().unwrap();
        let raw_path = if raw_path.is_empty() { "/" } else { raw_path };
        prop_assert_eq!(common::framework::app_path(raw_path), app);
    });
    let routed = routed.into_inner();
    assert!(
        routed > 10_000,
        "only {routed} of the generated targets were routed"
    );
}
