//! The `ferry-consumer` process under test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, log_dir};

pub struct Sidecar {
    child: Child,
    pub metrics_port: u16,
    pub log: PathBuf,
}

/// Environment for a sidecar: the contract's variables, set by a test.
#[derive(Clone, Debug, Default)]
pub struct SidecarEnv(pub BTreeMap<String, String>);

impl SidecarEnv {
    pub fn set(mut self, name: &str, value: impl ToString) -> Self {
        self.0.insert(name.to_string(), value.to_string());
        self
    }
}

impl Sidecar {
    /// Starts the binary at `binary` (tests pass `env!("CARGO_BIN_EXE_ferry-consumer")`).
    pub fn start(binary: &Path, env: &SidecarEnv) -> Self {
        let metrics_port = free_port();
        let log = log_dir().join(format!(
            "ferry-consumer-{}-{metrics_port}.log",
            std::process::id()
        ));
        let log_file = std::fs::File::create(&log).expect("create sidecar log");
        let child = Command::new(binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", "info,ferry_consumer=debug")
            // No test may reach a cloud metadata service.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("FERRY_LISTEN_ADDR", format!("127.0.0.1:{metrics_port}"))
            .envs(&env.0)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .expect("start ferry-consumer");
        Self {
            child,
            metrics_port,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Waits for the process to exit, or panics after `timeout` with its log.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "ferry-consumer did not exit within {timeout:?}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::get(format!("http://127.0.0.1:{}{path}", self.metrics_port))
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// `ferry_messages_completed_total{outcome}`: how many deliveries ended that way.
    pub async fn completed(&self, outcome: &str) -> Option<f64> {
        self.metric(&format!(
            "ferry_messages_completed_total{{outcome=\"{outcome}\""
        ))
        .await
    }

    /// The value of one series in `/metrics`, e.g. `ferry_messages_completed_total{outcome="succeeded"`
    /// (the label set may be a prefix of the exposed one).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").await?;
        metric_value(&text, series)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Finds `name{labels...} value` where every `key="value"` in `series` appears on the line.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    let (name, wanted) = match series.split_once('{') {
        Some((name, labels)) => (
            name,
            labels
                .trim_end_matches('}')
                .split(',')
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>(),
        ),
        None => (series, Vec::new()),
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let (line_name, labels) = head.split_once('{').map_or((head, ""), |(n, l)| (n, l));
            if line_name != name || !wanted.iter().all(|w| labels.contains(w)) {
                return None;
            }
            value.parse().ok()
        })
}
