//! The binary's logging: `tracing`'s text formatter on stderr, filtered by `RUST_LOG` (default
//! `info`), and `log` records of the libraries under the gateway (reqwest, rustls) passed on
//! through tracing-log's `LogTracer`.
//!
//! The data plane logs nothing of a request but its method label, route, status, duration and
//! upstream (the access line, target `portcullis::access`); hyper's own diagnostics are not
//! compiled in (its `tracing` feature is off), so no library line can carry a request target
//! or a header.

/// Install the subscriber and the `log` bridge. Call once, first thing in `main`.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .finish();
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        return; // already installed (a second call)
    }
    let _ = tracing_log::LogTracer::init();
}
