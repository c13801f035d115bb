//! The real `portcullis` binary as a child process, with its configuration in a temporary file.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// A file under the target directory that is removed when dropped.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn with(text: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("gateway-{}-{n}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `portcullis run --config <file>`, killed when dropped unless [`GatewayProcess::wait`]ed for.
pub struct GatewayProcess {
    child: Option<Child>,
    pub proxy: SocketAddr,
    pub metrics: SocketAddr,
    /// `server.plain_listen`'s address, beside TLS on `proxy`.
    pub plain: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    _config: TempFile,
}

impl GatewayProcess {
    /// Start the binary with `config` and the extra environment `env`; returns once it has logged
    /// the addresses it bound (`... listening proxy=ADDR metrics=ADDR`), which is before its key
    /// sets are loaded: wait for `/readyz` when that matters.
    pub fn start(config: &str, env: &[(&str, &str)]) -> GatewayProcess {
        GatewayProcess::start_in(&[], config, env)
    }

    /// [`GatewayProcess::start`] run by `wrapper` (a command and its arguments, given the
    /// binary and its arguments after them), e.g. `unshare` for a mount namespace of its own.
    pub fn start_in(wrapper: &[&str], config: &str, env: &[(&str, &str)]) -> GatewayProcess {
        let file = TempFile::with(config);
        let mut command = match wrapper.split_first() {
            None => Command::new(BIN),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
        };
        let mut child = command
            .args(["run", "--config"])
            .arg(&file.0)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let (proxy, metrics, plain) = loop {
            let mut line = String::new();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "the gateway exited before listening; it said:\n{seen}"
            );
            seen.push_str(&line);
            // Text (`proxy=ADDR`) or JSON (`"proxy":"ADDR"`, `[log] format = "json"`).
            let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
            let field = |name: &str| -> Option<SocketAddr> {
                if let Some(v) = &json {
                    return v.get(name)?.as_str()?.parse().ok();
                }
                let rest = line.split(&format!("{name}=")).nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            };
            if line.contains("listening") {
                if let (Some(p), Some(m)) = (field("proxy"), field("metrics")) {
                    break (p, m, field("plain"));
                }
            }
        };
        let log = Arc::new(Mutex::new(seen));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
            }
        });
        GatewayProcess {
            child: Some(child),
            proxy,
            metrics,
            plain,
            log,
            _config: file,
        }
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the gateway logged so far (`RUST_LOG` is `info` unless `env` set it).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Send SIGTERM.
    pub fn sigterm(&self) {
        super::sigterm(self.child.as_ref().expect("running"));
    }

    /// Replace the config file's text (a `SIGHUP` then reloads it), atomically by a rename as
    /// Kubernetes swaps a mounted ConfigMap, so a poll never reads half a file.
    pub fn rewrite_config(&self, text: &str) {
        let next = self._config.0.with_extension("next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, &self._config.0).unwrap();
    }

    /// Send SIGHUP: reload the config file.
    pub fn sighup(&self) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(sent.success(), "kill -HUP {pid} failed");
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        let child = self.child.as_mut().expect("not waited for");
        child.try_wait().unwrap().is_none()
    }

    /// Wait for the process to exit; its exit code.
    pub async fn wait(mut self) -> Option<i32> {
        super::exit_code(self.child.take().expect("running")).await
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `portcullis check --offline` on a file holding `text`: the exit code and what it printed.
pub fn check_offline(text: &str) -> (Option<i32>, String) {
    let file = TempFile::with(text);
    let out = Command::new(BIN)
        .args(["check", "--offline", "--config"])
        .arg(&file.0)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
