//! The `portcullis` binary: `check`, `--version`, configuration errors, and a graceful SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::binary::{GatewayProcess, TempFile, BIN};
use common::{client, EchoUpstream};
use portcullis::config::Config;

const ROUTE: &str =
    "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\n";

const INTROSPECTION: &str = "[introspection]\nendpoint = \"https://id/introspect\"\nclient_id = \"gw\"\nclient_secret_env = \"GW_SECRET\"\naudiences = [\"api\"]\n";

/// One issuer, for routes that check tokens.
const ISSUER: &str = "[[issuers]]\nissuer = \"https://id\"\njwks_uri = \"https://id/jwks\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\n";

/// `[introspection]` without `audiences`.
const INTROSPECTION_ANY: &str = "[introspection]\nendpoint = \"https://id/introspect\"\nclient_id = \"gw\"\nclient_secret_env = \"GW_SECRET\"\n";

/// The problems `Config::parse` reports for `text`, one string each.
fn problems(text: &str) -> Vec<String> {
    match Config::parse(text) {
        Ok(_) => vec![],
        Err(e) => e.lines(),
    }
}

#[test]
fn the_shipped_config_passes_check() {
    let out = Command::new(BIN)
        .args(["check", "--offline", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("ok (2 routes, 1 issuers, introspection off)"));
}

/// The configs the Kubernetes manifests ship validate; the edge's one secret and its TLS
/// certificate are files that only the pod has (mounted Secrets), and they are the only files
/// they name.
#[test]
fn the_deployment_configs_validate() {
    for (file, secrets, tls) in [
        ("deploy/sidecar.toml", vec![], vec![]),
        (
            "deploy/edge.toml",
            vec!["introspection.client_secret_file"],
            vec!["server.tls_cert"],
        ),
    ] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        let unreadable: Vec<String> = config
            .unreadable_secrets()
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(unreadable, secrets, "{file}");
        let tls_problems: Vec<String> = config
            .server
            .tls
            .iter()
            .flat_map(portcullis::dataplane::tls::problems)
            .map(|p| p.key)
            .collect();
        assert_eq!(tls_problems, tls, "{file}");
    }
}

/// The audience escape hatch is accepted, and `portcullis check` warns about it.
#[test]
fn check_warns_about_allow_any_audience() {
    let file = TempFile::with(&format!(
        "{ROUTE}{INTROSPECTION_ANY}allow_any_audience = true\n"
    ));
    let out = Command::new(BIN)
        .args(["check", "--offline", "--config"])
        .arg(&file.0)
        .env("GW_SECRET", "s")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.starts_with("warning: introspection.allow_any_audience: "),
        "{stderr}"
    );
}

#[test]
fn version_and_help() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("portcullis {}", env!("CARGO_PKG_VERSION"))
    );
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("run") && help.contains("check") && help.contains("--config"),
        "{help}"
    );
}

#[test]
fn check_prints_one_line_per_problem_and_exits_1() {
    let file = TempFile::with(
        "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\nupstreams = []\n\
         [[routes]]\nname = \"a\"\npath_prefix = \"/b\"\nupstreams = [\"127.0.0.1:1\"]\nauth = \"none\"\nscopes = [\"x\"]\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        [
            "routes[0].upstreams: must list at least one host:port",
            "routes[1].scopes: a route with auth = \"none\" checks no token, so it cannot require scopes; remove scopes or set auth = \"required\"",
        ],
        "routes[1] is dropped before the duplicate-name check because it is invalid itself"
    );
}

#[test]
fn every_config_rule_names_its_key_and_fix() {
    let cases: &[(&str, &str)] = &[
        // Unknown keys: the typo that would leave a route open.
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\nscope = [\"admin\"]\n",
            "routes[0].scope: unknown field `scope`, expected one of `name`, `path_prefix`, `methods`, `upstreams`, `upstream_protocol`, `upstream_tls`, `upstream_server_name`, `upstream_ca_file`, `upstream_client_cert`, `upstream_client_key`, `scopes`, `scopes_any`, `auth`, `token_types`, `forward_token`, `allow_path_parameters`, `allow_method_override`, `allow_options_asterisk`, `issuers`, `audiences`, `claims_match`, `acr_values`, `max_age`, `cors_preflight`, `claims_header`, `claim_headers`, `claims`, `resource`, `rate_limit`, `dpop`, `require_certificate_bound` (<config> line 5)",
        ),
        ("[server]\nlisten_addr = \"x\"\n", "server.listen_addr: unknown field `listen_addr`"),
        ("[server]\nthreads = \"two\"\n", "server.threads: invalid type"),
        ("[server]\nmax_uri_bytes = 0\n", "server.max_uri_bytes: must be a whole number from 1 to 1048576"),
        ("[server]\nmax_header_bytes = 2000000\n", "server.max_header_bytes: must be a whole number from 1 to 1048576"),
        ("[server]\nclient_header_timeout = \"0s\"\n", "server.client_header_timeout: must be from 100ms to 1h"),
        ("[server]\nsend_timeout = \"2h\"\n", "server.send_timeout: must be from 100ms to 1h"),
        ("[server]\nclient_body_timeout = \"soon\"\n", "server.client_body_timeout: must be a duration"),
        ("[server\n", "(syntax): "),
        ("", "routes: must list at least one [[routes]] entry"),
        (
            &format!("{ROUTE}[[routes]]\nname = \"r\"\npath_prefix = \"/x\"\nupstreams = [\"127.0.0.1:9\"]\n"),
            "routes[1].name: \"r\" is already the name of routes[0]; route names must be unique",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"nohostport\"]\n",
            "routes[0].upstreams[0]: \"nohostport\" must be host:port",
        ),
        (
            &format!("{ROUTE}[[issuers]]\nissuer = \"https://id\"\njwks_uri = \"https://id/jwks\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\", \"XS999\"]\n"),
            "issuers[0].algorithms[1]: unknown algorithm \"XS999\"; use one of RS256",
        ),
        (
            &format!("{ROUTE}[[issuers]]\nissuer = \"https://id\"\njwks_uri = \"https://id/jwks\"\naudiences = [\"a\"]\nalgorithms = [\"none\"]\n"),
            "issuers[0].algorithms[0]: \"none\" is never allowed",
        ),
        (
            &format!("{ROUTE}[[issuers]]\nissuer = \"https://id\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\n"),
            "issuers[0].jwks_uri: is required: set jwks_uri = \"https://...\" or discovery = true",
        ),
        (
            &format!("{ROUTE}[[issuers]]\nissuer = \"https://id\"\ndiscovery = true\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\nleeway = \"soon\"\n"),
            "issuers[0].leeway: must be a duration",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"none\"\nscopes = [\"a\"]\n",
            "routes[0].scopes: a route with auth = \"none\" checks no token, so it cannot require scopes",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"optional\"\n",
            "routes[0].auth: \"optional\" is not a mode; use \"required\" or \"none\"",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\nmethods = [\"get\"]\n",
            "routes[0].methods[0]: methods are case-sensitive; write \"GET\"",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"orders\"\nupstreams = [\"127.0.0.1:9\"]\n",
            "routes[0].path_prefix: must be an absolute path",
        ),
        (
            &format!("{ROUTE}[[routes]]\nname = \"s\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\nmethods = [\"GET\"]\n"),
            "routes[1].methods: overlaps route \"r\" on path_prefix \"/\"",
        ),
        (&format!("[server]\nlisten = \"8080\"\n{ROUTE}"), "server.listen: must be an IP address and port"),
        (&format!("[upstream]\nread_timeout = \"0s\"\n{ROUTE}"), "upstream.read_timeout: must be longer than zero"),
        (
            &format!("{ROUTE}[introspection]\nendpoint = \"https://id/introspect\"\nclient_id = \"gw\"\nclient_secret = \"hunter2\"\n"),
            "introspection.client_secret: unknown field `client_secret`",
        ),
        (
            &format!("{ROUTE}[introspection]\nendpoint = \"https://id/introspect\"\nclient_id = \"gw\"\nclient_secret_env = \"not a name\"\n"),
            "introspection.client_secret_env: must name the environment variable",
        ),
        (
            &format!("{ROUTE}[[issuers]]\nissuer = \"https://id\"\nhmac_secret_env = \"S\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\", \"RS256\"]\n"),
            "issuers[0].algorithms: HS256/384/512 cannot be mixed with public-key algorithms",
        ),
        (
            &format!("{ROUTE}[[issuers]]\nissuer = \"https://id\"\njwks_uri = \"https://id/jwks\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\n"),
            "issuers[0].hmac_secret_env: HS256/384/512 need hmac_secret_env",
        ),
        (
            &format!("{ROUTE}[[issuers]]\nissuer = \"https://id\"\njwks_uri = \"http://id.example/jwks\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\n"),
            "issuers[0].jwks_uri: must be https://",
        ),
        (
            &format!("{ROUTE}[[issuers]]\nissuer = \"http://id.example\"\ndiscovery = true\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\n"),
            "issuers[0].issuer: with discovery = true, must be https://",
        ),
        (
            &format!("{ROUTE}[[issuers]]\nissuer = \"https://id\"\ndiscovery = true\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\nscope_claim = \"roles\"\n"),
            "issuers[0].scope_claim: must be \"scope\"",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"none\"\nscopes_any = [\"a\"]\n",
            "routes[0].scopes: a route with auth = \"none\" checks no token",
        ),
        (&format!("[tokens]\nmax_size = 10\n{ROUTE}"), "tokens.max_size: must be at least 256 bytes"),
        (ROUTE, "routes[0].auth: this route requires a token that nothing can validate"),
        (
            &format!("{ROUTE}{INTROSPECTION}[decision]\nlisten = \"127.0.0.1:9191\"\nconvention = \"haproxy\"\n"),
            "decision.convention: must be \"nginx\"",
        ),
        (
            &format!("{ROUTE}{INTROSPECTION}[decision]\nconvention = \"nginx\"\n"),
            "decision.listen: is required",
        ),
        (
            &format!("{ROUTE}{INTROSPECTION}[decision]\nlisten = \"127.0.0.1:9191\"\nconvention = \"nginx\"\ntrust = true\n"),
            "decision.trust: unknown field `trust`",
        ),
        (
            &format!("{ROUTE}token_types = [\"opaque\"]\n[[issuers]]\nissuer = \"https://id\"\njwks_uri = \"https://id/jwks\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\n"),
            "routes[0].auth: this route requires a token that nothing can validate: it accepts only opaque tokens but [introspection] is not configured",
        ),
        (
            &format!("{ROUTE}token_types = [\"jwt\"]\n{INTROSPECTION}"),
            "routes[0].auth: this route requires a token that nothing can validate: it accepts only JWTs",
        ),
        (&format!("{ROUTE}token_types = [\"JWT\"]\n{INTROSPECTION}"), "routes[0].token_types[0]: \"JWT\" is not a token type"),
        (&format!("{ROUTE}token_types = []\n{INTROSPECTION}"), "routes[0].token_types: must not be empty"),
        (
            &format!("{ROUTE}{INTROSPECTION}auth_method = \"private_key_jwt\"\n"),
            "introspection.auth_method: \"private_key_jwt\" is not supported",
        ),
        (&format!("{ROUTE}{INTROSPECTION}max_in_flight = 0\n"), "introspection.max_in_flight: must be a whole number from 1"),
        (&format!("{ROUTE}{INTROSPECTION}cache_ttl = \"0s\"\n"), "introspection.cache_ttl: must be longer than zero"),
        (&format!("{ROUTE}{INTROSPECTION}cache_capacity = -1\n"), "introspection.cache_capacity: must be from 0"),
        (
            &format!("{ROUTE}[introspection]\nendpoint = \"http://as.example/introspect\"\nclient_id = \"gw\"\nclient_secret_env = \"S\"\n"),
            "introspection.endpoint: must be https://",
        ),
        (
            &format!("{ROUTE}[introspection]\nclient_id = \"gw\"\nclient_secret_env = \"S\"\n"),
            "introspection.endpoint: is required (the RFC 7662 introspection URL), unless `issuer` is set",
        ),
        (
            &format!("{ROUTE}{INTROSPECTION}cache_tll = \"1m\"\n"),
            "introspection.cache_tll: unknown field `cache_tll`",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/%61pi/X%2fy\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"none\"\n",
            "routes[0].path_prefix: must be an absolute path",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/%61pi/caf%c3%a9\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"none\"\n",
            "routes[0].path_prefix: request paths are matched in normal form (RFC 3986 §6.2.2); write \"/api/caf%C3%A9\"",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/api;v=1\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"none\"\n",
            "routes[0].path_prefix: must not hold ; parameters",
        ),
        (
            "[[routes]]\nname = \"a\"\npath_prefix = \"/api\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"none\"\n[[routes]]\nname = \"b\"\npath_prefix = \"/API\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"none\"\n",
            "routes[1].path_prefix: \"/API\" differs from \"/api\" only by letter case",
        ),
        (
            "[[routes]]\nname = \"r\"\npath_prefix = \"/api\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"none\"\nallow_options_asterisk = true\n",
            "routes[0].allow_options_asterisk: OPTIONS * is routed to the route on path_prefix \"/\"",
        ),
        // Policy beyond scopes: each key named with its fix.
        (
            &format!("{ROUTE}issuers = [\"https://other\"]\n{ISSUER}"),
            "routes[0].issuers[0]: \"https://other\" is not a configured issuer",
        ),
        (&format!("{ROUTE}audiences = []\n{ISSUER}"), "routes[0].audiences: must list non-empty audiences"),
        (&format!("{ROUTE}claims_match = \"most\"\n[[routes.claims]]\nclaim = \"g\"\npresent = true\n{ISSUER}"), "routes[0].claims_match: \"most\" is not a combination"),
        (&format!("{ROUTE}[[routes.claims]]\nclaim = \"g\"\n{ISSUER}"), "routes[0].claims[0]: needs exactly one matcher"),
        (&format!("{ROUTE}[[routes.claims]]\nclaim = \"g\"\nequals = \"a\"\ncontains = \"b\"\n{ISSUER}"), "routes[0].claims[0]: needs exactly one matcher"),
        (&format!("{ROUTE}[[routes.claims]]\nequals = \"a\"\n{ISSUER}"), "routes[0].claims[0].claim: is required"),
        (&format!("{ROUTE}[[routes.claims]]\nclaim = \"org..id\"\nequals = \"a\"\n{ISSUER}"), "routes[0].claims[0].claim: \"org..id\" is not a claim path"),
        (&format!("{ROUTE}[[routes.claims]]\nclaim = \"g\"\nequals = [\"a\"]\n{ISSUER}"), "routes[0].claims[0].equals: must be a string, a number or a boolean"),
        (&format!("{ROUTE}[[routes.claims]]\nclaim = \"g\"\nequals = \"a\"\nregex = \".*\"\n{ISSUER}"), "routes[0].claims[0].regex: unknown field `regex`"),
        (&format!("{ROUTE}acr_values = [\"a b\"]\n{ISSUER}"), "routes[0].acr_values[0]: must be printable ASCII without spaces"),
        (&format!("{ROUTE}max_age = \"0s\"\n{ISSUER}"), "routes[0].max_age: must be longer than zero"),
        (&format!("{ROUTE}cors_preflight = \"allow\"\n{ISSUER}"), "routes[0].cors_preflight: \"allow\" is not a mode"),
        (&format!("{ROUTE}methods = [\"GET\"]\ncors_preflight = \"forward\"\n{ISSUER}"), "routes[0].cors_preflight: the route's methods leave out OPTIONS"),
        (&format!("{ROUTE}allow_method_override = true\ncors_preflight = \"forward\"\n{ISSUER}"), "routes[0].cors_preflight: cannot be combined with allow_method_override"),
        (&format!("{ROUTE}auth = \"none\"\n[[routes.claims]]\nclaim = \"g\"\npresent = true\n"), "routes[0].claims: a route with auth = \"none\" checks no token"),
        (&format!("{ROUTE}[routes.claim_headers]\n\"X Bad\" = \"sub\"\n{ISSUER}"), "routes[0].claim_headers.X Bad: \"X Bad\" is not a header name"),
        (&format!("[identity.claim_headers]\nHost = \"sub\"\n{ROUTE}{ISSUER}"), "identity.claim_headers.Host: Host carries framing"),
        (&format!("[identity.claim_headers]\nX-Real-IP = \"sub\"\n{ROUTE}{ISSUER}"), "identity.claim_headers.X-Real-IP: X-Real-IP carries framing"),
        (&format!("[identity.claim_headers]\nX-Auth-Subject = \"sub\"\n{ROUTE}{ISSUER}"), "identity.claim_headers.X-Auth-Subject: X-Auth-Subject is set by [identity] auth_headers"),
        (&format!("[identity.claim_headers]\nX-Org = \".id\"\n{ROUTE}{ISSUER}"), "identity.claim_headers.X-Org: \".id\" is not a claim path"),
        (&format!("[identity]\nclaims_header = \"Authorization\"\n{ROUTE}{ISSUER}"), "identity.claims_header: Authorization carries framing"),
        (&format!("[identity]\nstrip_headers = [\"x user\"]\n{ROUTE}{ISSUER}"), "identity.strip_headers[0]: \"x user\" is not a header name"),
        (&format!("[identity]\nclaim_header = \"X\"\n{ROUTE}{ISSUER}"), "identity.claim_header: unknown field `claim_header`"),
        (&format!("[resource_metadata]\nresource_name = \"x\"\n{ROUTE}{ISSUER}"), "resource_metadata.resource: is required"),
        (&format!("[resource_metadata]\nresource = \"http://api.example\"\n{ROUTE}{ISSUER}"), "resource_metadata.resource: \"http://api.example\" must be an https URL"),
        (&format!("[resource_metadata]\nresource = \"https://api.example/#x\"\n{ROUTE}{ISSUER}"), "resource_metadata.resource: \"https://api.example/#x\" must be an https URL without query or fragment"),
        (&format!("{ROUTE}resource = \"https://api.example/r\"\n{ISSUER}"), "routes[0].resource: needs a [resource_metadata] section"),
        (&format!("{ROUTE}upstream_server_name = \"api.internal\"\n{ISSUER}"), "routes[0].upstream_server_name: goes with upstream_tls = true"),
        (&format!("{ROUTE}upstream_tls = true\nupstream_client_key = \"/k.pem\"\n{ISSUER}"), "routes[0].upstream_client_key: goes with upstream_client_cert"),
        (&format!("{ROUTE}upstream_tls = true\nupstream_ca_file = \"\"\n{ISSUER}"), "routes[0].upstream_ca_file: is empty"),
        (&format!("{ROUTE}upstream_protocol = \"h2\"\n{ISSUER}"), "routes[0].upstream_protocol: must be \"http1\" (the default) or \"http2\""),
        (&format!("{ROUTE}[routes.rate_limit]\nkey = \"ip\"\nrequests = 5\n{ISSUER}"), "routes[0].rate_limit.key: Some(\"ip\"): use \"client_address\", \"sub\" or \"client_id\""),
        (&format!("{ROUTE}[routes.rate_limit]\nkey = \"sub\"\n{ISSUER}"), "routes[0].rate_limit.requests: is required"),
        (&format!("{ROUTE}auth = \"none\"\n[routes.rate_limit]\nkey = \"sub\"\nrequests = 5\n"), "routes[0].rate_limit.key: a route with auth = \"none\" checks no token, so it can count only by \"client_address\""),
        (&format!("{ROUTE}[routes.rate_limit]\nkey = \"sub\"\nrequests = 10\nper = \"1s\"\nburst = 5\n{ISSUER}"), "routes[0].rate_limit: counts over burst / rate, which must be from 1s to 24h"),
        // A window too long for a duration is an error, not a panic (red team).
        (&format!("{ROUTE}[routes.rate_limit]\nkey = \"sub\"\nrequests = 1\nper = \"600y\"\nburst = 1000000000\n{ISSUER}"), "routes[0].rate_limit: counts over burst / rate, which must be from 1s to 24h"),
        (&format!("{ROUTE}[routes.rate_limit]\nkey = \"sub\"\nrequests = 10\nrate = 5\n{ISSUER}"), "routes[0].rate_limit.rate: unknown field `rate`"),
        (&format!("[log]\nformat = \"yaml\"\n{ROUTE}{ISSUER}"), "log.format: \"yaml\" is not a format; use \"text\" or \"json\""),
        (&format!("[log]\nlevel = \"debug\"\n{ROUTE}{ISSUER}"), "log.level: unknown field `level`"),
        (&format!("[tracing]\nservice_name = \"gw\"\n{ROUTE}{ISSUER}"), "tracing.otlp_endpoint: is required in [tracing]"),
        (&format!("[server]\ntls_cert = \"/c.pem\"\n{ROUTE}{ISSUER}"), "server.tls_key: is required with the certificate"),
        (&format!("[server]\ntls_key = \"/k.pem\"\n{ROUTE}{ISSUER}"), "server.tls_cert: is required with the key"),
        (&format!("[server]\nplain_listen = \"127.0.0.1:8081\"\n{ROUTE}{ISSUER}"), "server.plain_listen: goes with tls_cert and tls_key"),
        (&format!("[server]\nlisten = \"0.0.0.0:8443\"\ntls_cert = \"/c\"\ntls_key = \"/k\"\nplain_listen = \"127.0.0.1:8443\"\n{ROUTE}{ISSUER}"), "server.plain_listen: must not overlap server.listen"),
        (&format!("[server]\n[[server.tls_certificates]]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n{ROUTE}{ISSUER}"), "server.tls_certificates: goes with tls_cert and tls_key"),
        (&format!("[server]\ntls_cert = \"/c\"\ntls_key = \"/k\"\n[[server.tls_certificates]]\ncert = \"/c2\"\n{ROUTE}{ISSUER}"), "server.tls_certificates[0].key: is required with the certificate"),
        (&format!("[server]\ntls_cert = \"/c\"\ntls_key = \"/k\"\ntls_reload_interval = \"0s\"\n{ROUTE}{ISSUER}"), "server.tls_reload_interval: must be from 1s to 1h"),
        (&format!("[server.http2]\nmax_streams = 10\n{ROUTE}{ISSUER}"), "server.http2.max_streams: unknown field `max_streams`"),
        (&format!("[server.http2]\nmax_concurrent_streams = 0\n{ROUTE}{ISSUER}"), "server.http2.max_concurrent_streams: must be a whole number from 1 to 10000"),
        (&format!("[upstream]\nhttp2_max_streams_per_connection = 8001\n{ROUTE}{ISSUER}"), "upstream.http2_max_streams_per_connection: must be a whole number from 1 to 8000"),
        (&format!("[upstream]\nhttp2_keepalive_interval = \"0s\"\n{ROUTE}{ISSUER}"), "upstream.http2_keepalive_interval: must be from 100ms to 1h"),
        (&format!("[server.http2]\ninitial_stream_window_size = 1024\n{ROUTE}{ISSUER}"), "server.http2.initial_stream_window_size: must be a whole number from 65535 to 2147483647"),
        (&format!("[server.http2]\ninitial_connection_window_size = 2147483648\n{ROUTE}{ISSUER}"), "server.http2.initial_connection_window_size: must be a whole number from 65535"),
        (&format!("[server.http2]\nping_interval = \"10ms\"\n{ROUTE}{ISSUER}"), "server.http2.ping_interval: must be from 1s to 1h, or 0s for no pings"),
        (&format!("[server.http2]\nping_timeout = \"2h\"\n{ROUTE}{ISSUER}"), "server.http2.ping_timeout: must be from 100ms to 1h"),
        (&format!("[server.http2]\nmax_header_list_size = 0\n{ROUTE}{ISSUER}"), "server.http2.max_header_list_size: must be a whole number from 1 to 4194304"),
        (&format!("[server.http2]\ncleartext = \"yes\"\n{ROUTE}{ISSUER}"), "server.http2.cleartext: invalid type"),
        (&format!("[tracing]\notlp_endpoint = \"collector:4318\"\n{ROUTE}{ISSUER}"), "tracing.otlp_endpoint: must be an absolute http:// or https:// URL"),
        (&format!("[tracing]\notlp_endpoint = \"http://c:4318/v1/traces\"\nsample_ratio = 1.5\n{ROUTE}{ISSUER}"), "tracing.sample_ratio: must be between 0.0"),
        (&format!("[tracing]\notlp_endpoint = \"http://c:4318/v1/traces\"\nexport_timeout = \"0s\"\n{ROUTE}{ISSUER}"), "tracing.export_timeout: must be from 100ms to 60s"),
        (&format!("[tracing]\notlp_endpoint = \"http://c:4318/v1/traces\"\nexport_timeout = \"100d\"\n{ROUTE}{ISSUER}"), "tracing.export_timeout: must be from 100ms to 60s"),
        (&format!("[tracing]\notlp_endpoint = \"http://u:pw@c:4318/v1/traces\"\n{ROUTE}{ISSUER}"), "tracing.otlp_endpoint: must not hold credentials"),
        (&format!("[tracing]\notlp_endpoint = \"ftp://c/v1/traces\"\n{ROUTE}{ISSUER}"), "tracing.otlp_endpoint: must be an absolute http:// or https:// URL"),
        (&format!("[tracing]\notlp_endpoint = \"http://c:4318/v1/traces\"\nservice_name = \" \"\n{ROUTE}{ISSUER}"), "tracing.service_name: must not be empty"),
        (&format!("[tracing]\notlp_endpoint = \"http://c:4318/v1/traces\"\nservice_name = \"a\\nb\"\n{ROUTE}{ISSUER}"), "tracing.service_name: must not be empty nor hold control characters"),
        (&format!("[tracing]\notlp_endpoint = \"http://c:4318/v1/traces\"\nprotocol = \"grpc\"\n{ROUTE}{ISSUER}"), "tracing.protocol: unknown field `protocol`"),
        // Refresh tokens introspect as active without `aud`: the audience check is required.
        (
            &format!("{ROUTE}{INTROSPECTION_ANY}"),
            "introspection.audiences: is required: list the audiences (`aud`) of the APIs behind this gateway",
        ),
        (
            &format!("{ROUTE}{INTROSPECTION}allow_any_audience = true\n"),
            "introspection.allow_any_audience: contradicts `audiences`",
        ),
        // DPoP (RFC 9449).
        (&format!("{ROUTE}dpop = \"yes\"\n{ISSUER}"), "routes[0].dpop: \"yes\" is not a mode"),
        (&format!("{ROUTE}auth = \"none\"\ndpop = \"required\"\n{ISSUER}"), "routes[0].dpop: a route with auth = \"none\" checks no token"),
        (&format!("[dpop]\nalgorithms = [\"HS256\"]\n{ROUTE}{ISSUER}"), "dpop.algorithms[0]: HS256 is symmetric"),
        (&format!("[dpop]\nalgorithms = [\"none\"]\n{ROUTE}{ISSUER}"), "dpop.algorithms[0]: unknown algorithm \"none\""),
        (&format!("[dpop]\nalgorithms = []\n{ROUTE}{ISSUER}"), "dpop.algorithms: must list at least one algorithm"),
        (&format!("[dpop]\nproof_max_age = \"2h\"\n{ROUTE}{ISSUER}"), "dpop.proof_max_age: must be between 1s and 10m"),
        (&format!("[dpop]\nreplay_cache_capacity = 0\n{ROUTE}{ISSUER}"), "dpop.replay_cache_capacity: must be above 0"),
        (&format!("[dpop]\nreplay_store = \"http://redis:6379\"\n{ROUTE}{ISSUER}"), "dpop.replay_store: is not a Redis URL"),
        (&format!("[dpop]\nreplay_store_timeout = \"1s\"\n{ROUTE}{ISSUER}"), "dpop.replay_store_timeout: goes with replay_store"),
        (&format!("[dpop]\nnonce = true\n{ROUTE}{ISSUER}"), "dpop.nonce_secret_env: nonce = true needs exactly one of nonce_secret_env or nonce_secret_file"),
        (&format!("[dpop]\nnonce = true\nnonce_secret_env = \"PORTCULLIS_TEST_UNSET_NONCE\"\n{ROUTE}{ISSUER}"), "dpop.nonce_secret_env: the environment variable PORTCULLIS_TEST_UNSET_NONCE is not set"),
        (&format!("[dpop]\nnonce = true\nnonce_secret_file = \"/nonexistent/secret\"\n{ROUTE}{ISSUER}"), "dpop.nonce_secret_file: cannot be read"),
        (&format!("[dpop]\nnonce_lifetime = \"1m\"\n{ROUTE}{ISSUER}"), "dpop.nonce_lifetime: goes with nonce = true"),
        (&format!("[dpop]\nnonces = true\n{ROUTE}{ISSUER}"), "dpop.nonces: unknown field `nonces`"),
        // Secrets from variables or files, exactly one.
        (&format!("{ROUTE}{INTROSPECTION}client_secret_file = \"/run/secrets/s\"\n"), "introspection.client_secret_file: set either introspection.client_secret_env or introspection.client_secret_file, not both"),
        (&format!("{ROUTE}[introspection]\nendpoint = \"https://id/introspect\"\nclient_id = \"gw\"\naudiences = [\"a\"]\n"), "introspection.client_secret_env: is required"),
        (&format!("{ROUTE}[introspection]\nendpoint = \"https://id/introspect\"\nclient_id = \"gw\"\naudiences = [\"a\"]\nclient_secret_file = \"\"\n"), "introspection.client_secret_file: must be the path of a file"),
        (&format!("{ROUTE}[[issuers]]\nissuer = \"https://id\"\nhmac_secret_file = \"/s\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\n"), "issuers[0].hmac_secret_env: hmac_secret_env only goes with HS256/384/512"),
        (&format!("{ROUTE}[[issuers]]\nissuer = \"https://id\"\nhmac_secret_env = \"S\"\nhmac_secret_file = \"/s\"\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\n"), "issuers[0].hmac_secret_file: set either"),
    ];
    for (text, want) in cases {
        let got = problems(text);
        assert!(
            got.iter().any(|p| p.contains(want)),
            "config:\n{text}\nwanted a problem containing {want:?}, got {got:?}"
        );
    }
}

#[test]
fn defaults_fill_what_the_file_leaves_out() {
    let config = Config::parse(&format!("{ROUTE}{INTROSPECTION}")).unwrap();
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(config.metrics.listen.to_string(), "127.0.0.1:9090");
    assert_eq!(config.server.realm, "portcullis");
    assert_eq!(config.upstream.read_timeout, Duration::from_secs(30));
    assert_eq!(
        config.routes[0].auth,
        portcullis::config::AuthMode::Required
    );
    assert!(config.routes[0].methods.is_none());
    let tt = config.routes[0].policy.token_types;
    assert!(tt.jwt && tt.opaque, "both token types by default");
    let i = config.introspection.unwrap();
    assert_eq!(i.auth_method, portcullis::config::ClientAuth::Basic);
    assert_eq!(i.timeout, Duration::from_secs(2));
    assert_eq!(i.cache_ttl, Duration::from_secs(300));
    assert_eq!(i.negative_cache_ttl, Duration::from_secs(10));
    assert_eq!(i.cache_capacity, 100_000);
    assert_eq!(i.max_in_flight, 64);
    assert!(i.audiences == ["api"] && !i.allow_any_audience && i.issuer.is_none());
}

/// SIGTERM while a request is in flight: the request completes, the process exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let up = EchoUpstream::start("a").await;
    let gateway = GatewayProcess::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.addr
        ),
        &[],
    );
    let proxy_addr = gateway.proxy;
    let arrived = up.arrived();
    let in_flight = tokio::spawn(client().get(format!("http://{proxy_addr}/gate")).send());
    arrived.await;
    gateway.sigterm();
    up.release();
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "released");

    assert_eq!(gateway.wait().await, Some(0));
}

/// With nothing in flight, SIGTERM exits at once, however long `shutdown_grace` is: an idle
/// kept-alive connection is closed, not waited for. (pingora always slept the whole grace.)
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_as_soon_as_nothing_is_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = EchoUpstream::start("a").await;
    let gateway = GatewayProcess::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"60s\"\ndrain_delay = \"0s\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.addr
        ),
        &[],
    );
    // A kept-alive connection that has had its answer and sits idle.
    let mut idle = tokio::net::TcpStream::connect(gateway.proxy).await.unwrap();
    idle.write_all(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let started = std::time::Instant::now();
    gateway.sigterm();
    assert_eq!(gateway.wait().await, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "waited {:?} of the 60 s grace with nothing in flight",
        started.elapsed()
    );
    // The idle connection was closed by the gateway.
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}

/// SIGTERM with a `drain_delay`: `/readyz` turns 503 at once, while a client that keeps opening
/// connections is still served, every request answered, until the listener closes after the
/// delay; then the process exits 0.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_keeps_accepting_for_the_drain_delay_while_not_ready() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = EchoUpstream::start("a").await;
    let gateway = GatewayProcess::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\ndrain_delay = \"2s\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.addr
        ),
        &[],
    );
    let readyz = format!("http://{}/readyz", gateway.metrics);
    assert!(common::became_ready(&gateway.metrics.to_string(), Duration::from_secs(15)).await);
    let sent = std::time::Instant::now();
    gateway.sigterm();
    let not_ready = common::eventually(Duration::from_secs(5), || {
        let readyz = readyz.clone();
        async move {
            client()
                .get(&readyz)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok()
                == Some(503)
        }
    })
    .await;
    assert!(not_ready, "/readyz did not turn 503 after SIGTERM");
    let mut served_while_not_ready = 0;
    // The one connection whose handshake races the listener's close may be reset (the kernel
    // resets a closing listener's backlog); after it, connections must be refused. One worker:
    // with several, each closes its own listener, and one closing a moment after another
    // still accepts.
    let mut raced = None;
    let refused_at = loop {
        let mut stream = match tokio::net::TcpStream::connect(gateway.proxy).await {
            Ok(s) => s,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
                break sent.elapsed();
            }
        };
        assert!(raced.is_none(), "served again after a reset: {raced:?}");
        let mut answer = Vec::new();
        let exchanged = match stream
            .write_all(b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
        {
            Ok(()) => stream.read_to_end(&mut answer).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if exchanged.is_err() || answer.is_empty() {
            raced = Some((sent.elapsed(), exchanged));
            continue;
        }
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "answer during the drain delay: {:?}",
            String::from_utf8_lossy(&answer)
        );
        served_while_not_ready += 1;
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "the listener never closed"
        );
    };
    if let Some((at, _)) = &raced {
        assert!(
            *at >= Duration::from_secs(2),
            "reset {at:?} after SIGTERM, inside the drain delay"
        );
    }
    assert!(served_while_not_ready > 0);
    assert!(
        refused_at >= Duration::from_secs(2),
        "the listener closed {refused_at:?} after SIGTERM, before the 2 s drain_delay"
    );
    assert_eq!(gateway.wait().await, Some(0));
}

/// `portcullis dev` does what its printed instructions say: token, then 200, 401 and 403.
#[tokio::test(flavor = "multi_thread")]
async fn dev_mode_shows_a_200_a_401_and_a_403() {
    let mut child = Command::new(BIN)
        .args([
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut gateway, mut issuer, mut metrics) = (None, None, None);
    while gateway.is_none() || issuer.is_none() || metrics.is_none() {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "dev mode exited before printing its addresses"
        );
        let url = line.split_whitespace().nth(1).map(str::to_owned);
        match line.split_whitespace().next() {
            Some("gateway") => gateway = url,
            Some("issuer") => issuer = url,
            Some("metrics") => metrics = url.map(|u| u.replace("/metrics", "")),
            _ => {}
        }
    }
    let (gateway, issuer, metrics) = (gateway.unwrap(), issuer.unwrap(), metrics.unwrap());
    let c = client();
    let ready = common::became_ready(
        metrics.trim_start_matches("http://"),
        Duration::from_secs(20),
    )
    .await;
    assert!(ready, "dev mode never became ready");

    let token: serde_json::Value = c
        .post(format!("{issuer}/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "demo"),
            ("client_secret", "demo-secret"),
            ("scope", "orders:read"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().expect("a token").to_owned();

    let ok = c
        .get(format!("{gateway}/orders/1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let echoed: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(echoed["x-auth-client-id"], "demo");
    assert_eq!(echoed["x-auth-scopes"], "orders:read");
    assert_eq!(
        c.get(format!("{gateway}/orders/1"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.post(format!("{gateway}/orders"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let bad_client = c
        .post(format!("{issuer}/token"))
        .basic_auth("demo", Some("wrong"))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_client.status(), 401);

    common::sigterm(&child);
    assert_eq!(common::exit_code(child).await, Some(0));
}

/// Before any request, `/metrics` has the process series, the build info, and every labelled
/// series the configuration can produce at 0, so dashboards and alerts read 0, not no data.
#[tokio::test(flavor = "multi_thread")]
async fn metrics_exist_before_their_first_event() {
    let up = EchoUpstream::start("a").await;
    let gateway = GatewayProcess::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[issuers]]\nissuer = \"https://id.example\"\njwks_uri = \"http://{}/jwks\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\n\
             [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{}\"]\n\
             [routes.rate_limit]\nkey = \"sub\"\nrequests = 10\n\
             [[routes]]\nname = \"grpc\"\npath_prefix = \"/grpc\"\nupstreams = [\"{}\"]\nauth = \"none\"\nupstream_protocol = \"http2\"\n\
             [[routes]]\nname = \"open\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            common::dead_addr(),
            up.addr,
            up.addr,
            up.addr
        ),
        &[],
    );
    let m = common::scrape(gateway.metrics).await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(m.get("portcullis_build_info", &[("version", version)]), 1.0);
    assert!(m.get("process_resident_memory_bytes", &[]) > 0.0);
    assert!(m.get("process_start_time_seconds", &[]) > 0.0);
    assert!(m.get("process_open_fds", &[]) > 0.0);
    for (name, labels) in [
        (
            "portcullis_auth_decisions_total",
            &[("route", "api"), ("outcome", "expired")][..],
        ),
        (
            "portcullis_auth_decisions_total",
            &[("route", "api"), ("outcome", "claims_not_satisfied")],
        ),
        (
            "portcullis_requests_total",
            &[("route", "open"), ("status", "5xx")],
        ),
        (
            "portcullis_requests_total",
            &[("route", "(none)"), ("status", "4xx")],
        ),
        (
            "portcullis_upstream_errors_total",
            &[("route", "api"), ("kind", "timeout")],
        ),
        ("portcullis_rate_limited_total", &[("route", "api")]),
        (
            "portcullis_jwks_fetch_total",
            &[("issuer", "https://id.example"), ("result", "bad_jwks")],
        ),
        ("portcullis_client_timeouts_total", &[("phase", "header")]),
        (
            "portcullis_upstream_resends_total",
            &[("route", "grpc"), ("reason", "refused_stream")],
        ),
        (
            "portcullis_upstream_resends_total",
            &[("route", "grpc"), ("reason", "goaway")],
        ),
    ] {
        assert!(m.has(name, labels), "{name} {labels:?} is absent");
        assert_eq!(m.get(name, labels), 0.0, "{name} {labels:?}");
    }
    // A route that checks no token has no decisions to count, and one on HTTP/1.1 to its
    // upstreams no resends.
    assert!(!m.has("portcullis_auth_decisions_total", &[("route", "open")]));
    assert!(!m.has("portcullis_upstream_resends_total", &[("route", "api")]));
}

/// A connection accepted just before the drain whose request arrives as the drain begins is
/// answered, not closed as idle (red team: a few such requests were lost at every drain).
#[tokio::test(flavor = "multi_thread")]
async fn a_request_arriving_as_the_drain_begins_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = EchoUpstream::start("a").await;
    let gateway = GatewayProcess::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\ndrain_delay = \"0s\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.addr
        ),
        &[],
    );
    // Accepted (a request on another connection is answered after it), nothing sent yet.
    let mut fresh = tokio::net::TcpStream::connect(gateway.proxy).await.unwrap();
    let answered = common::raw_request(
        gateway.proxy,
        b"GET /first HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    gateway.sigterm();
    // The drain has begun once the listener refuses connections.
    let closed = common::eventually(Duration::from_secs(5), || async {
        tokio::net::TcpStream::connect(gateway.proxy).await.is_err()
    })
    .await;
    assert!(closed, "the listener never closed");
    fresh
        .write_all(b"GET /late HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = fresh.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "the late request got {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(gateway.wait().await, Some(0));
}

/// `[log] format = "json"`: every line is one JSON object; the access line carries the request
/// id, route, status, auth outcome, client address and `client_id`, and `sub` only with
/// `log_subject = true`; never the path, the query or the token.
#[tokio::test(flavor = "multi_thread")]
async fn json_access_lines_carry_the_request_id_outcome_and_client() {
    use portcullis::devkeys::DevKey;
    let key = DevKey::generate(portcullis::config::Algorithm::ES256, "k1");
    let idp = common::idp::MockIdp::start(&[&key]).await;
    let up = EchoUpstream::start("a").await;
    for log_subject in [false, true] {
        let gateway = GatewayProcess::start(
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nthreads = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
                 [log]\nformat = \"json\"\nlog_subject = {log_subject}\n\
                 [[issuers]]\nissuer = \"{}\"\ndiscovery = true\naudiences = [\"api\"]\nalgorithms = [\"ES256\"]\n\
                 [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstreams = [\"{}\"]\n\
                 [[routes]]\nname = \"open\"\npath_prefix = \"/open\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
                idp.issuer(),
                up.addr,
                up.addr
            ),
            &[],
        );
        assert!(common::became_ready(&gateway.metrics.to_string(), Duration::from_secs(15)).await);
        let token = key.sign(&common::idp::claims(&idp, "read"));
        let base = format!("http://{}", gateway.proxy);
        let sent = [
            client()
                .get(format!("{base}/api/SECRETPATH?q=SECRETQUERY"))
                .bearer_auth(&token)
                .header("X-Request-Id", "req-123")
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .send()
                .await
                .unwrap()
                .status(),
            client()
                .get(format!("{base}/open/x"))
                .send()
                .await
                .unwrap()
                .status(),
            client()
                .get(format!("{base}/api/x"))
                .bearer_auth("not.a.jwt")
                .send()
                .await
                .unwrap()
                .status(),
        ];
        assert_eq!(sent.map(|s| s.as_u16()), [200, 200, 401]);
        let logged = common::eventually(Duration::from_secs(10), || {
            let log = gateway.log();
            async move { log.matches("portcullis::access").count() >= 3 }
        })
        .await;
        let log = gateway.log();
        assert!(logged, "{log}");
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        let access: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["target"] == "portcullis::access")
            .collect();
        let ok = access
            .iter()
            .find(|l| l["request_id"] == "req-123")
            .expect("the id is logged");
        assert_eq!(ok["route"], "api");
        assert_eq!(ok["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ok["status"], 200);
        assert_eq!(ok["outcome"], "allowed");
        assert_eq!(ok["client"], "127.0.0.1");
        assert_eq!(ok["client_id"], "app");
        assert_eq!(
            ok.get("sub").and_then(|s| s.as_str()),
            log_subject.then_some("user-7")
        );
        let open = access.iter().find(|l| l["route"] == "open").unwrap();
        assert_eq!(open["outcome"], "none");
        assert_eq!(
            open["request_id"].as_str().map(str::len),
            Some(36),
            "a UUID is made"
        );
        let refused = access.iter().find(|l| l["status"] == 401).unwrap();
        assert_eq!(refused["outcome"], "malformed");
        for secret in ["SECRETPATH", "SECRETQUERY", token.as_str(), "not.a.jwt"] {
            assert!(!log.contains(secret), "{secret} is in the log");
        }
    }
}

/// `check` reads every secret the file names, as start-up would, and names the key of each one
/// that cannot be read; a secret file's trailing newline is not part of the secret.
#[test]
fn check_reports_unreadable_secrets_by_key() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let short = dir.join(format!("hmac-short-{}", std::process::id()));
    std::fs::write(&short, "too short\n").unwrap();
    let n = std::cell::Cell::new(0);
    let issuer = |source: &str| {
        n.set(n.get() + 1);
        let i = n.get();
        format!("[[issuers]]\nissuer = \"https://id{i}\"\n{source}\naudiences = [\"a\"]\nalgorithms = [\"HS256\"]\n")
    };
    let text = format!(
        "{ROUTE}{}{}{}{INTROSPECTION}",
        issuer(&format!(
            "hmac_secret_file = {:?}",
            short.display().to_string()
        )),
        issuer("hmac_secret_file = \"/nonexistent/portcullis-secret\""),
        issuer("hmac_secret_env = \"PORTCULLIS_TEST_UNSET_HMAC\""),
    );
    let file = TempFile::with(&text);
    let out = Command::new(BIN)
        .args(["check", "--offline", "--config"])
        .arg(&file.0)
        .env_remove("GW_SECRET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 4, "{stderr}");
    assert!(
        lines[0].starts_with("issuers[0].hmac_secret_file: the secret in "),
        "{stderr}"
    );
    assert!(lines[0].contains("is shorter than 32 bytes"), "{stderr}");
    assert!(lines[1].starts_with("issuers[1].hmac_secret_file: the file /nonexistent/portcullis-secret cannot be read (entity not found)"), "{stderr}");
    assert_eq!(lines[2], "issuers[2].hmac_secret_env: the variable PORTCULLIS_TEST_UNSET_HMAC must hold a secret of at least 32 bytes");
    assert_eq!(lines[3], "introspection.client_secret_env: the variable GW_SECRET is unset or empty; set it to the secret");
    // The same file passes once every secret is there; a file's trailing newline is trimmed,
    // so a 32-byte secret written by `echo` counts 32.
    std::fs::write(&short, format!("{}\n", "k".repeat(32))).unwrap();
    let text = format!(
        "{ROUTE}{}{INTROSPECTION}",
        issuer(&format!(
            "hmac_secret_file = {:?}",
            short.display().to_string()
        )),
    );
    let file = TempFile::with(&text);
    let out = Command::new(BIN)
        .args(["check", "--offline", "--config"])
        .arg(&file.0)
        .env("GW_SECRET", "s")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&short);
}

/// `check` resolves every host name the file names, as start-up and the identity provider
/// fetches would, and names the key of each that does not resolve; `--offline` skips that.
#[test]
fn check_reports_host_names_that_do_not_resolve_unless_offline() {
    let file = TempFile::with(
        "[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\", \"no-such-host.invalid:80\"]\n\
         [[issuers]]\nissuer = \"https://id.invalid\"\njwks_uri = \"https://keys.invalid/jwks\"\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\n\
         [[issuers]]\nissuer = \"http://127.0.0.1:1\"\ndiscovery = true\naudiences = [\"a\"]\nalgorithms = [\"RS256\"]\n",
    );
    let run = |offline: bool| {
        let mut command = Command::new(BIN);
        command.arg("check");
        if offline {
            command.arg("--offline");
        }
        command.arg("--config").arg(&file.0).output().unwrap()
    };
    let out = run(false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let keys: Vec<&str> = stderr
        .lines()
        .map(|l| l.split(':').next().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["routes[0].upstreams[1]", "issuers[0].jwks_uri"],
        "{stderr}"
    );
    assert!(
        stderr.contains("\"no-such-host.invalid\" does not resolve"),
        "{stderr}"
    );
    let out = run(true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A file that fails validation but asks for JSON logs gets its problems as JSON lines, so a
/// log pipeline parses them (red team: they came as text).
#[test]
fn config_problems_are_json_when_the_file_asks_for_json() {
    let file = TempFile::with("[log]\nformat = \"json\"\n[server]\nlisten = \"x\"\n");
    let out = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&file.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("server.listen:"))),
        "{stderr}"
    );
}

/// `portcullis healthcheck` at `address` (or the config's `metrics.listen`): its exit code and
/// what it printed.
fn healthcheck(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .arg("healthcheck")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `healthcheck` exits 0 only when `/readyz` answers 200: not while an issuer's keys are
/// missing, not when nothing listens; and without `--address` it asks the config's
/// `metrics.listen` (on loopback when that is `0.0.0.0`).
#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_exits_zero_only_when_ready() {
    let up = EchoUpstream::start("a").await;
    let gateway = GatewayProcess::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_delay = \"0s\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[issuers]]\nissuer = \"http://127.0.0.1:1\"\njwks_uri = \"http://{dead}/jwks\"\naudiences = [\"a\"]\nalgorithms = [\"ES256\"]\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{up}\"]\n",
            dead = common::dead_addr(),
            up = up.addr
        ),
        &[],
    );
    let admin = gateway.metrics.to_string();
    let (code, said) = healthcheck(&["--address", &admin]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("503"), "{said}");
    let (code, said) = healthcheck(&[
        "--address",
        &common::dead_addr().to_string(),
        "--timeout",
        "1s",
    ]);
    assert_eq!(code, Some(1));
    assert!(said.contains("cannot connect"), "{said}");
    drop(gateway);

    // A ready admin listener, found through the config file's metrics.listen.
    let ready = GatewayProcess::start(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_delay = \"0s\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
            up.addr
        ),
        &[],
    );
    let addr = ready.metrics;
    let became = common::eventually(Duration::from_secs(10), || async {
        healthcheck(&["--address", &addr.to_string()]).0 == Some(0)
    })
    .await;
    assert!(became, "healthcheck never passed");
    let config = TempFile::with(&format!(
        "[metrics]\nlisten = \"0.0.0.0:{}\"\n[[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"{}\"]\nauth = \"none\"\n",
        addr.port(),
        up.addr
    ));
    let (code, said) = healthcheck(&["--config", config.0.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{said}");
}

/// A collector that does not resolve is a warning, not a failure: start-up needs no collector
/// (red team: `check` refused a file that `run` serves with).
#[test]
fn check_warns_about_an_unresolvable_collector_and_passes() {
    let file = TempFile::with(
        "[tracing]\notlp_endpoint = \"http://no-such-collector.invalid:4318/v1/traces\"\n\
         [[routes]]\nname = \"r\"\npath_prefix = \"/\"\nupstreams = [\"127.0.0.1:9\"]\nauth = \"none\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "warning: tracing.otlp_endpoint: \"no-such-collector.invalid\" does not resolve"
        ),
        "{stderr}"
    );
}
