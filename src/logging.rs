//! The binary's logging: `tracing`'s text or JSON formatter on stderr (`[log] format`),
//! filtered by `RUST_LOG` (default `info`), and `log` records of the libraries under the
//! gateway (reqwest, rustls) passed on through tracing-log's `LogTracer`.
//!
//! The data plane logs nothing of a request but the access line (target `portcullis::access`):
//! request id, method label, route, status, auth outcome, duration, upstream, client address,
//! `client_id`, and `sub` only with `[log] log_subject`. Never a path, a query or a header
//! value; hyper's own diagnostics are not compiled in (its `tracing` feature is off), and the
//! h2 crate's are capped at `warn` (its debug lines quote malformed header blocks), so no
//! library line can carry a request target or a header.

/// Install the subscriber and the `log` bridge; `json`: one JSON object per line. Call once,
/// before anything logs.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // h2's debug and trace lines quote malformed header blocks (a `:path` with its query, say):
    // capped at warn whatever `RUST_LOG` asks (red team).
    let filter = match "h2=warn".parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = if json {
        let subscriber = builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
    } else {
        let subscriber = builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish();
        tracing::subscriber::set_global_default(subscriber)
    };
    if installed.is_err() {
        return; // already installed (a second call)
    }
    let _ = tracing_log::LogTracer::init();
}
