//! A real Prometheus (Debian's `prometheus` package) for the monitoring suite: started on
//! 127.0.0.1 with a scrape configuration and rule file a test writes, and queried through its
//! HTTP API the way Grafana and Alertmanager see it.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::emulators::Service;
use crate::{free_port, log_dir, unique_name};

/// `prometheus` from the PATH (scripts/install-test-deps.sh installs Debian's package), or
/// `FERRY_PROMETHEUS`.
fn binary(name: &str, variable: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!("{name} is needed: run scripts/install-test-deps.sh (it installs Debian's prometheus package), or set {variable}")
        })
}

pub struct Prometheus {
    service: Service,
    pub dir: PathBuf,
    http: reqwest::Client,
}

impl Prometheus {
    /// Checks `rules` with promtool, then starts Prometheus with `config` (YAML; it may
    /// refer to `rules.yaml` and to files the test writes into [`Prometheus::dir`]).
    pub fn start(config: &str, rules: &str) -> Self {
        let dir = log_dir().join(unique_name("prometheus"));
        std::fs::create_dir_all(dir.join("data")).expect("create the Prometheus directory");
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        std::fs::write(dir.join("rules.yaml"), rules).expect("write rules.yaml");
        let check = std::process::Command::new(binary("promtool", "FERRY_PROMTOOL"))
            .args(["check", "rules"])
            .arg(dir.join("rules.yaml"))
            .output()
            .expect("run promtool");
        assert!(
            check.status.success(),
            "promtool check rules refused the rules:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let port = free_port();
        let service = Service::start(
            "prometheus",
            &binary("prometheus", "FERRY_PROMETHEUS"),
            &[
                format!("--config.file={}", dir.join("prometheus.yml").display()),
                format!("--storage.tsdb.path={}", dir.join("data").display()),
                format!("--web.listen-address=127.0.0.1:{port}"),
                "--log.level=warn".into(),
            ],
            &[],
            port,
            "/-/ready",
            Duration::from_secs(60),
        );
        Self {
            service,
            dir,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self) -> String {
        self.service.url()
    }

    async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<Value, String> {
        let response = self
            .http
            .get(format!("{}{path}", self.url()))
            .query(params)
            .send()
            .await
            .map_err(|e| format!("{path}: {e}"))?;
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("{path}: not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{path} {params:?}: {body}"));
        }
        Ok(body["data"].clone())
    }

    /// `/api/v1/query_range` over the last `window`, one point a second, as a Grafana panel
    /// asks: the series that have at least one value.
    pub async fn query_range(&self, expr: &str, window: Duration) -> Result<Vec<Value>, String> {
        let end = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let data = self
            .get(
                "/api/v1/query_range",
                &[
                    ("query", expr.to_string()),
                    ("start", format!("{:.3}", end - window.as_secs_f64())),
                    ("end", format!("{end:.3}")),
                    ("step", "1".into()),
                ],
            )
            .await?;
        Ok(data["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|series| {
                series["values"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|p| p[1] != "NaN"))
            })
            .collect())
    }

    /// `/api/v1/query` now.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self
            .get("/api/v1/query", &[("query", expr.to_string())])
            .await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The alerts that are firing now (`/api/v1/alerts`), by name.
    pub async fn firing(&self) -> Vec<Value> {
        self.get("/api/v1/alerts", &[])
            .await
            .map(|data| {
                data["alerts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|a| a["state"] == "firing")
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `/api/v1/targets`: the active targets with their labels and health.
    pub async fn targets(&self) -> Vec<Value> {
        self.get("/api/v1/targets", &[])
            .await
            .map(|data| {
                data["activeTargets"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }
}
