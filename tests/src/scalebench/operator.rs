//! The real `ferry-operator` binary as its own process, configured the way the benchmark
//! needs: the Pub/Sub emulator, Cloud Monitoring (the stand-in) for consumers at zero, and
//! leader election on, as the Helm chart runs it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{emulators, free_port, workspace_binary};

pub struct OperatorProcess {
    child: tokio::process::Child,
    pub pid: u32,
    pub listen: String,
    pub log: PathBuf,
    http: reqwest::Client,
}

/// The glibc arena cap the chart sets on the operator container (`MALLOC_ARENA_MAX`), so that
/// the benchmark measures the memory the chart's operator uses; the chart test checks the two
/// agree.
pub const CHART_MALLOC_ARENA_MAX: &str = "2";

pub struct OperatorEndpoints<'a> {
    pub kubeconfig: &'a Path,
    pub pubsub_emulator: &'a str,
    pub monitoring: &'a str,
    pub poll_interval_seconds: f64,
}

impl OperatorProcess {
    pub async fn start(endpoints: OperatorEndpoints<'_>, log: PathBuf) -> anyhow::Result<Self> {
        let listen = format!("127.0.0.1:{}", free_port());
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut child = tokio::process::Command::new(workspace_binary("ferry-operator"))
            .env("KUBECONFIG", endpoints.kubeconfig)
            .env("PUBSUB_EMULATOR_HOST", endpoints.pubsub_emulator)
            .env("FERRY_PUBSUB_PROJECT", emulators::PUBSUB_PROJECT)
            .env("FERRY_PUBSUB_MONITORING", "true")
            .env("FERRY_MONITORING_ENDPOINT", endpoints.monitoring)
            .env(
                "FERRY_SCALING_POLL_INTERVAL",
                endpoints.poll_interval_seconds.to_string(),
            )
            .env(
                "FERRY_SIDECAR_IMAGE",
                "ghcr.io/ferry-dev/consumer:scalebench",
            )
            .env("FERRY_LISTEN_ADDR", &listen)
            .env("FERRY_CLUSTER_NAME", "scalebench")
            .env("POD_NAMESPACE", "ferry-system")
            // As the chart runs it.
            .env("FERRY_CONTROL_KEY_SECRET", "ferry-operator-control-key")
            .env("MALLOC_ARENA_MAX", CHART_MALLOC_ARENA_MAX)
            .env("POD_NAME", "ferry-operator-0")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .context("start ferry-operator")?;
        let pid = child.id().context("ferry-operator has a pid")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .no_proxy()
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = http
                .get(format!("http://{listen}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "ferry-operator exited with {status} before it was ready; see {}",
                    log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "ferry-operator did not lead within 60 s; see {}",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(Self {
            child,
            pid,
            listen,
            log,
            http,
        })
    }

    pub async fn metrics(&self) -> anyhow::Result<String> {
        let response = self
            .http
            .get(format!("http://{}/metrics", self.listen))
            .send()
            .await
            .context("scrape the operator's /metrics")?;
        Ok(response.error_for_status()?.text().await?)
    }

    /// Fails when the operator has died, so no figure is taken from a dead process.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "ferry-operator exited with {status}; see {}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// SIGTERM, as Kubernetes stops a pod; SIGKILL after 10 s.
    pub async fn stop(mut self) {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
