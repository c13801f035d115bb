//! The binary's logging: `tracing`'s text formatter on stderr, filtered by `RUST_LOG` (default
//! `info`), and a bridge for the `log` records of the libraries under the gateway.
//!
//! The data-plane library (pingora) writes its own lines through `log`, and they can hold the
//! request line, its query and its headers: "Fail to proxy: ..., GET /pay?card=4111...",
//! "Sending header to upstream ..." with the `Authorization` field. No such text may reach a
//! log, at any level. So every record from a `pingora` module is re-levelled to `debug` under
//! the `portcullis::dataplane` target, with its module and original level kept and its text
//! withheld. What those lines would have said is counted in the metrics (upstream errors,
//! client timeouts, status classes). Records of other libraries (reqwest, rustls) pass on
//! unchanged, as tracing-log's `LogTracer` passes them.

use log::{Log, Metadata, Record};
use tracing_log::{AsLog, LogTracer};

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
    if log::set_boxed_logger(Box::new(Bridge(LogTracer::new()))).is_ok() {
        log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
    }
}

/// Whether a `log` target belongs to the data-plane library, whose text is withheld.
fn withheld(target: &str) -> bool {
    target.starts_with("pingora")
}

struct Bridge(LogTracer);

impl Log for Bridge {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        if withheld(metadata.target()) {
            tracing::enabled!(target: "portcullis::dataplane", tracing::Level::DEBUG)
        } else {
            self.0.enabled(metadata)
        }
    }

    fn log(&self, record: &Record<'_>) {
        if withheld(record.target()) {
            tracing::debug!(
                target: "portcullis::dataplane",
                module = record.target(),
                level = %record.level(),
                "data-plane message withheld: it can hold the request target or headers"
            );
        } else {
            self.0.log(record);
        }
    }

    fn flush(&self) {}
}
