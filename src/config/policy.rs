//! `[identity]` and the policy keys of `[[routes]]` beyond the path: issuers, audiences, scopes,
//! claim rules, step-up and claim headers, each validated with its key path.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde_json::Value;

use super::raw::{RawClaimRule, RawIdentity, RawRoute};
use super::validate::Problems;
use crate::auth::claims::{ClaimHeaders, ClaimPath};
use crate::auth::rules::{ClaimRules, Combine, Matcher, Rule, StepUp};
use crate::auth::{RoutePolicy, TokenTypes};
use crate::gate::headers::{self, IdentityNames, DEFAULT_STRIP};

/// `[identity]`, validated.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `auth_headers`, default `true`: the four `X-Auth-*` headers.
    pub auth_headers: bool,
    /// `claim_headers` and `claims_header`: the mapping of routes that set none of their own.
    pub claim_headers: Arc<ClaimHeaders>,
    /// `strip_headers`, default [`DEFAULT_STRIP`].
    pub strip_headers: Vec<String>,
}

/// The four headers of `auth_headers`; a mapping may not name them while they are on.
const AUTH_HEADERS: [&str; 4] = [
    "x-auth-subject",
    "x-auth-client-id",
    "x-auth-scopes",
    "x-auth-issuer",
];

/// Headers a mapping may never set: framing, routing, credentials, and what the gateway sets.
const RESERVED: [&str; 14] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "expect",
    "authorization",
    "cookie",
    "x-request-id",
    "dpop",
    "keep-alive",
];

pub(super) fn identity(p: &mut Problems, raw: &RawIdentity) -> Identity {
    let auth_headers = raw.auth_headers.unwrap_or(true);
    let claim_headers = claim_headers(
        p,
        "identity",
        raw.claim_headers.as_ref(),
        raw.claims_header.as_deref(),
        auth_headers,
    )
    .unwrap_or_default();
    let strip_headers = match &raw.strip_headers {
        None => DEFAULT_STRIP.iter().map(|s| (*s).to_owned()).collect(),
        Some(list) => {
            for (i, name) in list.iter().enumerate() {
                let bare = name.strip_suffix('*').unwrap_or(name);
                if bare.is_empty() || HeaderName::from_bytes(bare.as_bytes()).is_err() {
                    p.push(
                        format!("identity.strip_headers[{i}]"),
                        format!("{name:?} is not a header name (a trailing * matches by prefix, e.g. \"X-Auth-Request-*\")"),
                    );
                }
            }
            list.clone()
        }
    };
    Identity {
        auth_headers,
        claim_headers: Arc::new(claim_headers),
        strip_headers,
    }
}

/// A `claim_headers` table and `claims_header` under `key` (`identity` or `routes[i]`);
/// `None` when neither is set.
fn claim_headers(
    p: &mut Problems,
    key: &str,
    map: Option<&std::collections::BTreeMap<String, String>>,
    whole: Option<&str>,
    auth_headers: bool,
) -> Option<ClaimHeaders> {
    if map.is_none() && whole.is_none() {
        return None;
    }
    let mut out = ClaimHeaders::default();
    let mut seen: Vec<HeaderName> = Vec::new();
    let mut name_of = |p: &mut Problems, k: String, name: &str| -> Option<HeaderName> {
        let header = match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if !name.contains('_') => h,
            _ => {
                p.push(
                    k,
                    format!(
                        "{name:?} is not a header name the gateway can set (letters, digits and -)"
                    ),
                );
                return None;
            }
        };
        let lower = header.as_str();
        if RESERVED.contains(&lower)
            || headers::class(lower).is_some_and(|c| c != headers::Class::Identity)
        {
            p.push(
                k,
                format!("{name} carries framing, credentials, routing or the client's address; choose another name"),
            );
            return None;
        }
        if auth_headers && AUTH_HEADERS.contains(&lower) {
            p.push(
                k,
                format!("{name} is set by [identity] auth_headers; set auth_headers = false to map it yourself"),
            );
            return None;
        }
        if seen.contains(&header) {
            p.push(
                k,
                format!("{name} is mapped twice (names are case-insensitive)"),
            );
            return None;
        }
        seen.push(header.clone());
        Some(header)
    };
    for (name, claim) in map.into_iter().flatten() {
        let k = format!("{key}.claim_headers.{name}");
        let path = ClaimPath::parse(claim);
        if path.is_none() {
            p.push(
                k.clone(),
                format!("{claim:?} is not a claim path: a claim name, or names joined by dots (\"org.id\")"),
            );
        }
        if let (Some(header), Some(path)) = (name_of(p, k, name), path) {
            out.map.push((header, path));
        }
    }
    if let Some(whole) = whole {
        out.whole = name_of(p, format!("{key}.claims_header"), whole);
    }
    Some(out)
}

/// Everything of a route's policy; `issuers_known` are the configured issuers (and the
/// introspection issuer) a route may name.
pub(super) fn route_policy(
    p: &mut Problems,
    key: &str,
    raw: &RawRoute,
    token_types: TokenTypes,
    identity: &Identity,
    issuers_known: &[String],
) -> RoutePolicy {
    let mut policy =
        RoutePolicy::new(raw.scopes.clone(), raw.scopes_any.clone()).with_token_types(token_types);
    policy.auth_headers = identity.auth_headers;
    policy.claim_headers = match claim_headers(
        p,
        key,
        raw.claim_headers.as_ref(),
        raw.claims_header.as_deref(),
        identity.auth_headers,
    ) {
        Some(own) => Arc::new(own),
        None => identity.claim_headers.clone(),
    };
    if let Some(list) = &raw.issuers {
        if list.is_empty() {
            p.push(
                format!("{key}.issuers"),
                "must not be empty; omit the key to accept every configured issuer",
            );
        }
        for (i, issuer) in list.iter().enumerate() {
            if !issuers_known.contains(issuer) {
                p.push(
                    format!("{key}.issuers[{i}]"),
                    format!("{issuer:?} is not a configured issuer; name an [[issuers]] issuer or the [introspection] issuer, exactly: {issuers_known:?}"),
                );
            }
        }
        policy.issuers = list.clone();
    }
    if let Some(list) = &raw.audiences {
        if list.is_empty() || list.iter().any(String::is_empty) {
            p.push(
                format!("{key}.audiences"),
                "must list non-empty audiences; omit the key to accept the issuers' audiences",
            );
        }
        policy.audiences = list.clone();
    }
    policy.claim_rules = claim_rules(p, key, raw);
    policy.step_up = step_up(p, key, raw);
    policy
}

fn claim_rules(p: &mut Problems, key: &str, raw: &RawRoute) -> Option<Arc<ClaimRules>> {
    let combine = match raw.claims_match.as_deref() {
        None | Some("all") => Combine::All,
        Some("any") => Combine::Any,
        Some(other) => {
            p.push(
                format!("{key}.claims_match"),
                format!("{other:?} is not a combination; use \"all\" or \"any\""),
            );
            Combine::All
        }
    };
    let Some(list) = &raw.claims else {
        if raw.claims_match.is_some() {
            p.push(
                format!("{key}.claims_match"),
                "combines [[routes.claims]] rules, and this route has none",
            );
        }
        return None;
    };
    if list.is_empty() {
        p.push(
            format!("{key}.claims"),
            "must hold at least one rule; omit the key for none",
        );
    }
    let rules = list
        .iter()
        .enumerate()
        .filter_map(|(i, r)| rule(p, &format!("{key}.claims[{i}]"), r))
        .collect();
    Some(Arc::new(ClaimRules { combine, rules }))
}

fn rule(p: &mut Problems, key: &str, raw: &RawClaimRule) -> Option<Rule> {
    let claim = match raw.claim.as_deref().map(|c| (c, ClaimPath::parse(c))) {
        Some((_, Some(path))) => Some(path),
        Some((c, None)) => {
            p.push(
                format!("{key}.claim"),
                format!(
                    "{c:?} is not a claim path: a claim name, or names joined by dots (\"org.id\")"
                ),
            );
            None
        }
        None => {
            p.push(
                format!("{key}.claim"),
                "is required: the claim the rule tests, e.g. \"groups\"",
            );
            None
        }
    };
    let mut scalar = |name: &str, v: &Value| {
        if !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            p.push(
                format!("{key}.{name}"),
                "must be a string, a number or a boolean",
            );
        }
    };
    let mut matchers = Vec::new();
    if let Some(v) = &raw.equals {
        scalar("equals", v);
        matchers.push(Matcher::Equals(v.clone()));
    }
    if let Some(list) = &raw.one_of {
        list.iter().for_each(|v| scalar("one_of", v));
        matchers.push(Matcher::OneOf(list.clone()));
    }
    if let Some(v) = &raw.contains {
        scalar("contains", v);
        matchers.push(Matcher::Contains(v.clone()));
    }
    if let Some(list) = &raw.all_of {
        list.iter().for_each(|v| scalar("all_of", v));
        matchers.push(Matcher::AllOf(list.clone()));
    }
    if let Some(b) = raw.present {
        matchers.push(Matcher::Present(b));
    }
    let empty_list =
        matches!(matchers.first(), Some(Matcher::OneOf(l) | Matcher::AllOf(l)) if l.is_empty());
    if matchers.len() != 1 || empty_list {
        p.push(
            key.to_owned(),
            "needs exactly one matcher: equals, one_of, contains, all_of or present (a list must not be empty)",
        );
        return None;
    }
    Some(Rule {
        claim: claim?,
        matcher: matchers.pop()?,
    })
}

fn step_up(p: &mut Problems, key: &str, raw: &RawRoute) -> Option<Arc<StepUp>> {
    if raw.acr_values.is_none() && raw.max_age.is_none() {
        return None;
    }
    let acr_values = raw.acr_values.clone().unwrap_or_default();
    if raw.acr_values.is_some() && acr_values.is_empty() {
        p.push(
            format!("{key}.acr_values"),
            "must not be empty; omit the key to accept any acr",
        );
    }
    for (i, acr) in acr_values.iter().enumerate() {
        // They are sent space-separated in a quoted challenge attribute (RFC 9470 §3).
        if !crate::auth::scope::is_scope_token(acr) {
            p.push(
                format!("{key}.acr_values[{i}]"),
                "must be printable ASCII without spaces, quotes or backslashes",
            );
        }
    }
    let max_age = raw.max_age.as_deref().map(|text| {
        let k = format!("{key}.max_age");
        let d = p.duration(&k, Some(text), Duration::ZERO);
        if d.is_zero() {
            p.push(k, "must be longer than zero, e.g. \"15m\"");
        }
        d
    });
    Some(Arc::new(StepUp {
        acr_values,
        max_age,
    }))
}

/// Every name no client may send: the strip list and every name any route maps claims to.
pub(super) fn identity_names(identity: &Identity, policies: &[&RoutePolicy]) -> IdentityNames {
    let mapped = policies.iter().flat_map(|policy| {
        let h = &policy.claim_headers;
        h.map
            .iter()
            .map(|(name, _)| name.as_str().to_owned())
            .chain(h.whole.iter().map(|n| n.as_str().to_owned()))
    });
    let strip = identity.strip_headers.iter().cloned();
    let global = identity
        .claim_headers
        .map
        .iter()
        .map(|(n, _)| n.as_str().to_owned())
        .chain(
            identity
                .claim_headers
                .whole
                .iter()
                .map(|n| n.as_str().to_owned()),
        );
    IdentityNames::new(strip.chain(global).chain(mapped).collect::<Vec<_>>())
}

/// A resource identifier (RFC 9728 §1.2): an `https` URL (plain http on loopback) without
/// query or fragment.
pub(super) fn resource_id(p: &mut Problems, key: &str, value: &str) -> Option<String> {
    let ok = url::Url::parse(value).ok().filter(|u| {
        super::issuer::secure_enough(u, false)
            && u.host().is_some()
            && u.query().is_none()
            && u.fragment().is_none()
    });
    if ok.is_none() {
        p.push(
            key.to_owned(),
            format!("{value:?} must be an https URL without query or fragment (RFC 9728 §1.2), e.g. \"https://api.example.com/orders\""),
        );
    }
    ok.map(|_| value.to_owned())
}

/// One document per resource the routes name: its authorization servers are the issuers its
/// routes accept (every configured one, unless a route restricts them), its scopes those its
/// routes require.
pub(super) fn resource_metadata(
    p: &mut Problems,
    raw: &super::raw::RawResourceMetadata,
    routes: &[super::RouteConfig],
    issuers_known: &[String],
    dpop_algorithms: &[crate::auth::settings::Algorithm],
) -> crate::gate::metadata::ResourceMetadata {
    use crate::gate::metadata::{Resource, ResourceMetadata};
    let documentation = raw
        .resource_documentation
        .as_deref()
        .and_then(|d| resource_id(p, "resource_metadata.resource_documentation", d));
    if raw
        .resource_name
        .as_deref()
        .is_some_and(|n| n.is_empty() || n.chars().any(char::is_control))
    {
        p.push(
            "resource_metadata.resource_name",
            "must be non-empty text without control characters",
        );
    }
    let mut resources: Vec<Resource> = Vec::new();
    for route in routes {
        let Some(id) = &route.resource else { continue };
        let index = match resources.iter().position(|r| &r.resource == id) {
            Some(i) => i,
            None => {
                resources.push(Resource {
                    resource: id.clone(),
                    authorization_servers: Vec::new(),
                    scopes_supported: Vec::new(),
                    resource_name: raw.resource_name.clone(),
                    resource_documentation: documentation.clone(),
                    dpop_algorithms: Vec::new(),
                    // Until a route that checks tokens says otherwise.
                    dpop_required: true,
                });
                resources.len() - 1
            }
        };
        let r = &mut resources[index];
        if route.auth == super::AuthMode::None {
            continue;
        }
        if route.policy.dpop != crate::auth::DpopMode::Off && r.dpop_algorithms.is_empty() {
            r.dpop_algorithms = dpop_algorithms
                .iter()
                .map(|a| a.name().to_owned())
                .collect();
        }
        r.dpop_required &= route.policy.dpop == crate::auth::DpopMode::Required;
        let issuers = match route.policy.issuers.is_empty() {
            true => issuers_known,
            false => &route.policy.issuers[..],
        };
        let scopes = route.policy.all.iter().chain(&route.policy.any);
        for (list, items) in [
            (
                &mut r.authorization_servers,
                issuers.iter().collect::<Vec<_>>(),
            ),
            (&mut r.scopes_supported, scopes.collect()),
        ] {
            for item in items {
                if !list.contains(item) {
                    list.push(item.clone());
                }
            }
        }
    }
    for r in &mut resources {
        r.scopes_supported.sort();
    }
    let mut paths: Vec<String> = resources.iter().map(Resource::path).collect();
    paths.sort();
    if paths.windows(2).any(|w| w[0] == w[1]) {
        p.push(
            "resource_metadata.resource",
            "two resources are described at the same path; give routes resources with different paths",
        );
    }
    ResourceMetadata::new(&resources)
}

/// `[routes.rate_limit]`: `requests` per `per` on average, at most `burst` at once.
pub(super) fn rate_limit(
    p: &mut Problems,
    key: &str,
    raw: &super::raw::RawRateLimit,
    auth: super::AuthMode,
) -> Option<crate::gate::limit::RateLimit> {
    use crate::gate::limit::{LimitKey, RateLimit};
    let before = p.0.len();
    let limit_key = match raw.key.as_deref() {
        Some("client_address") => LimitKey::ClientAddress,
        Some("sub") => LimitKey::Subject,
        Some("client_id") => LimitKey::ClientId,
        other => {
            p.push(
                format!("{key}.key"),
                format!("{other:?}: use \"client_address\", \"sub\" or \"client_id\""),
            );
            LimitKey::ClientAddress
        }
    };
    if auth == super::AuthMode::None && limit_key != LimitKey::ClientAddress {
        p.push(
            format!("{key}.key"),
            "a route with auth = \"none\" checks no token, so it can count only by \"client_address\"",
        );
    }
    let requests = p.positive(&format!("{key}.requests"), raw.requests, 0, 1_000_000_000);
    if raw.requests.is_none() {
        p.push(
            format!("{key}.requests"),
            "is required: how many requests per `per`, e.g. 100",
        );
    }
    let per = p.duration(
        &format!("{key}.per"),
        raw.per.as_deref(),
        Duration::from_secs(1),
    );
    let burst = match raw.burst {
        None => requests,
        Some(_) => p.positive(&format!("{key}.burst"), raw.burst, requests, 1_000_000_000),
    };
    if p.0.len() > before {
        return None;
    }
    let limit = RateLimit {
        key: limit_key,
        requests: u32::try_from(requests).unwrap_or(u32::MAX),
        per,
        burst: u32::try_from(burst).unwrap_or(u32::MAX),
    };
    let fits = |w: Duration| (Duration::from_secs(1)..=crate::gate::limit::MAX_WINDOW).contains(&w);
    if !limit.window().is_some_and(fits) {
        p.push(
            key.to_owned(),
            "counts over burst / rate, which must be from 1s to 24h (e.g. requests = 100, per = \"1s\", or a larger burst)",
        );
        return None;
    }
    Some(limit)
}
