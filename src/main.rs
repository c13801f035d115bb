//! The `portcullis` command: CLI, logging, config, then hand over to [`portcullis::app`].
//!
//! Exit codes: 0 success, 1 invalid configuration, 2 start-up failure (a port in use, an
//! upstream host that does not resolve).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis::app::App;
use portcullis::config::Config;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An OAuth 2.0 resource-server gateway: validates bearer tokens before forwarding requests.
#[derive(Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The configuration file.
    #[arg(long, short, global = true, default_value = "gateway.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate a configuration file and exit; one line per problem. Secrets are read, and
    /// host names resolved, as start-up would.
    Check {
        /// Do not resolve host names (a machine without the deployment's DNS).
        #[arg(long)]
        offline: bool,
    },
    /// Ask the running gateway's `/readyz` (for container HEALTHCHECKs): exit 0 when ready,
    /// 1 otherwise. The address is `metrics.listen` of the configuration, unless given.
    Healthcheck {
        /// The admin listener, e.g. `127.0.0.1:9090`.
        #[arg(long)]
        address: Option<std::net::SocketAddr>,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// DEVELOPMENT ONLY: the gateway with a throwaway issuer and a demo upstream, on loopback.
    Dev {
        /// The gateway's address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The metrics address.
        #[arg(long, default_value = "127.0.0.1:9090")]
        metrics_listen: std::net::SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check { offline } => check(&cli.config, offline),
        Command::Healthcheck { address, timeout } => healthcheck(&cli.config, address, timeout),
        Command::Run => run(&cli.config),
        Command::Dev {
            listen,
            metrics_listen,
        } => dev(listen, metrics_listen),
    }
}

fn dev(listen: std::net::SocketAddr, metrics_listen: std::net::SocketAddr) -> ExitCode {
    portcullis::logging::init(false);
    match portcullis::dev::run(listen, metrics_listen) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(2)
        }
    }
}

fn check(path: &std::path::Path, offline: bool) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            for warning in config.warnings() {
                eprintln!("warning: {warning}");
            }
            let mut problems = config.unreadable_secrets();
            if let Some(tls) = &config.server.tls {
                problems.extend(portcullis::dataplane::tls::problems(tls));
            }
            problems.extend(portcullis::dataplane::upstream_tls::problems(&config));
            if !offline {
                problems.extend(config.unresolvable_hosts());
                if let Some(warning) = config.unresolvable_collector() {
                    eprintln!("warning: {warning}");
                }
            }
            if !problems.is_empty() {
                for problem in problems {
                    eprintln!("{problem}");
                }
                return ExitCode::from(1);
            }
            println!(
                "{}: ok ({} routes, {} issuers, introspection {})",
                path.display(),
                config.routes.len(),
                config.issuers.len(),
                if config.introspection.is_some() {
                    "on"
                } else {
                    "off"
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            ExitCode::from(1)
        }
    }
}

fn healthcheck(
    path: &std::path::Path,
    address: Option<std::net::SocketAddr>,
    timeout: std::time::Duration,
) -> ExitCode {
    let addr = match address {
        Some(addr) => addr,
        None => match Config::load(path) {
            Ok(config) => portcullis::admin::local_admin_addr(config.metrics.listen),
            Err(e) => {
                for line in e.lines() {
                    eprintln!("{line}");
                }
                return ExitCode::from(1);
            }
        },
    };
    match portcullis::admin::healthcheck(addr, timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("{why}");
            ExitCode::from(1)
        }
    }
}

/// Whether a file that failed validation still says `[log] format = "json"`, so that its
/// problems reach a log pipeline in the format it parses.
fn asks_for_json(path: &std::path::Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let Ok(value) = text.parse::<toml::Table>() else {
        return false;
    };
    value
        .get("log")
        .and_then(|l| l.get("format"))
        .and_then(|f| f.as_str())
        == Some("json")
}

fn run(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => {
            portcullis::logging::init(config.log.json);
            config
        }
        Err(e) => {
            portcullis::logging::init(asks_for_json(path));
            for line in e.lines() {
                tracing::error!("{line}");
            }
            return ExitCode::from(1);
        }
    };
    for warning in config.warnings() {
        tracing::warn!(key = %warning.key, "{}", warning.message);
    }
    let app = match App::build(&config, prometheus::default_registry().clone()) {
        Ok(app) => app.reloading_from(path),
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let text =
        |a: Option<std::net::SocketAddr>| a.map_or_else(|| "-".to_owned(), |a| a.to_string());
    tracing::info!(
        proxy = %app.proxy_addr(),
        metrics = %app.metrics_addr(),
        decision = %text(app.decision_addr()),
        plain = %text(app.plain_addr()),
        tls = config.server.tls.is_some(),
        "listening"
    );
    if let Err(e) = app.run_until_signal() {
        tracing::error!("{e}");
        return ExitCode::from(2);
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}
