//! Helpers shared by the unit tests.

/// Calls `check` with `start` followed by every string of 1 to `max_extra` characters from
/// `alphabet`, shortest first; returns how many strings it checked. For checks compared with
/// their definition exhaustively over the bytes that matter.
pub fn for_every_extension(
    start: &str,
    alphabet: &[char],
    max_extra: usize,
    mut check: impl FnMut(&str),
) -> usize {
    let mut level = vec![start.to_owned()];
    let mut checked = 0;
    for _ in 0..max_extra {
        let mut longer = Vec::with_capacity(level.len() * alphabet.len());
        for s in &level {
            for &c in alphabet {
                let t = format!("{s}{c}");
                check(&t);
                checked += 1;
                longer.push(t);
            }
        }
        level = longer;
    }
    checked
}

/// An open route (`auth = "none"`, every method, every option off) for routing tests.
pub fn route(name: &str, prefix: &str) -> crate::config::RouteConfig {
    crate::config::RouteConfig {
        name: name.into(),
        path_prefix: prefix.into(),
        methods: None,
        upstreams: vec!["127.0.0.1:1".into()],
        upstream_protocol: Default::default(),
        upstream_tls: None,
        policy: Default::default(),
        auth: crate::config::AuthMode::None,
        forward_token: false,
        allow_path_parameters: false,
        allow_method_override: false,
        allow_options_asterisk: false,
        cors_preflight: false,
        resource: None,
        rate_limit: None,
    }
}
