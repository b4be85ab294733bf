//! devcluster: an in-process Kubernetes API server, built-in Deployment/ReplicaSet controllers and
//! a process kubelet. A development and test tool, not a production component (see README.md).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let dc = ferry_devcluster::DevCluster::builder()
//!     .image("example.com/worker:*", ["/usr/local/bin/worker"])
//!     .start()
//!     .await?;
//! let client: kube::Client = dc.client();
//! let status = dc.kubectl().args(["get", "pods", "-A"]).status()?;
//! # let _ = (client, status); Ok(()) }
//! ```

pub mod apply;
pub mod cluster;
pub mod controllers;
pub mod defaults;
pub mod discovery;
pub mod error;
pub mod gc;
pub mod kubelet;
pub mod openapi;
pub mod patch;
pub mod pod_security;
pub mod protobuf;
pub mod registry;
pub mod requests;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod store;
pub mod subresources;
pub mod table;
pub mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;

pub use cluster::Cluster;
pub use kubelet::ImageMapping;

/// How to start a devcluster. Defaults: a free port on 127.0.0.1, a kubeconfig in a fresh
/// temporary directory, controllers and the process kubelet on, 10-second watch bookmarks.
#[derive(Clone, Debug)]
pub struct DevClusterBuilder {
    listen: SocketAddr,
    kubeconfig: Option<PathBuf>,
    history_limit: usize,
    bookmark_interval: Duration,
    controllers: bool,
    kubelet: bool,
    images: Vec<ImageMapping>,
    work_dir: Option<PathBuf>,
}

impl Default for DevClusterBuilder {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            kubeconfig: None,
            history_limit: 100_000,
            bookmark_interval: Duration::from_secs(10),
            controllers: true,
            kubelet: true,
            images: Vec::new(),
            work_dir: None,
        }
    }
}

impl DevClusterBuilder {
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Where to write the kubeconfig (default: `<work dir>/kubeconfig`).
    pub fn kubeconfig(mut self, path: impl Into<PathBuf>) -> Self {
        self.kubeconfig = Some(path.into());
        self
    }

    /// How many change events are kept for watch resumption; older versions get 410 Gone.
    pub fn history_limit(mut self, n: usize) -> Self {
        self.history_limit = n.max(1);
        self
    }

    pub fn bookmark_interval(mut self, d: Duration) -> Self {
        self.bookmark_interval = d;
        self
    }

    /// Run the Deployment and ReplicaSet controllers (default on).
    pub fn controllers(mut self, on: bool) -> Self {
        self.controllers = on;
        self
    }

    /// Run the process kubelet (default on). Pods stay Pending without it.
    pub fn kubelet(mut self, on: bool) -> Self {
        self.kubelet = on;
        self
    }

    /// Map container images matching `pattern` (`*` matches any run of characters) to a local
    /// program and leading arguments, which play the image's entrypoint: the container's `args`
    /// are appended; a container `command` replaces the program (and must name a host program).
    pub fn image<I, S>(mut self, pattern: &str, program: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.images.push(ImageMapping::new(pattern, program));
        self
    }

    /// Directory for the kubeconfig and pod logs (default: a new temporary directory).
    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    pub async fn start(self) -> anyhow::Result<DevCluster> {
        DevCluster::start_with(self).await
    }
}

/// A running devcluster. Dropping it stops the server, the controllers and every pod process.
pub struct DevCluster {
    url: String,
    addr: SocketAddr,
    kubeconfig: PathBuf,
    work_dir: PathBuf,
    owns_work_dir: bool,
    cluster: Arc<Cluster>,
    requests: Arc<requests::RequestCounter>,
    kubelet: Option<Arc<kubelet::Kubelet>>,
    controllers: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl DevCluster {
    /// Start with defaults on a free loopback port.
    pub async fn start() -> anyhow::Result<DevCluster> {
        DevClusterBuilder::default().start().await
    }

    pub fn builder() -> DevClusterBuilder {
        DevClusterBuilder::default()
    }

    async fn start_with(b: DevClusterBuilder) -> anyhow::Result<DevCluster> {
        let (work_dir, owns_work_dir) = match &b.work_dir {
            Some(d) => (d.clone(), false),
            None => {
                let d = std::env::temp_dir().join(format!(
                    "ferry-devcluster-{}-{}",
                    std::process::id(),
                    cluster::random_suffix(8)
                ));
                (d, true)
            }
        };
        std::fs::create_dir_all(&work_dir)?;
        let cluster = Arc::new(Cluster::new(b.history_limit));
        bootstrap(&cluster);
        let listener = tokio::net::TcpListener::bind(b.listen).await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let kubeconfig = b
            .kubeconfig
            .clone()
            .unwrap_or_else(|| work_dir.join("kubeconfig"));
        write_kubeconfig(&kubeconfig, &url)?;
        let mut tasks = Vec::new();
        let requests = Arc::new(requests::RequestCounter::default());
        let app = server::router(server::AppState {
            cluster: cluster.clone(),
            bookmark_interval: b.bookmark_interval,
            logs_dir: b.kubelet.then(|| work_dir.join("logs")),
            requests: requests.clone(),
        });
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "devcluster server stopped");
            }
        }));
        tasks.push(tokio::spawn(gc::run(cluster.clone())));
        let mut controllers_task = None;
        if b.controllers {
            controllers_task = Some(tokio::spawn(controllers::run(cluster.clone())));
        }
        let kubelet = if b.kubelet {
            let k = Arc::new(kubelet::Kubelet::new(
                cluster.clone(),
                b.images.clone(),
                work_dir.join("logs"),
            ));
            let kk = k.clone();
            tasks.push(tokio::spawn(async move { kk.run().await }));
            Some(k)
        } else {
            None
        };
        Ok(DevCluster {
            url,
            addr,
            kubeconfig,
            work_dir,
            owns_work_dir,
            cluster,
            requests,
            kubelet,
            controllers: controllers_task,
            tasks,
        })
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client for the server (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("devcluster URL is a valid URI"));
        kube::Client::try_from(config).expect("a plain-HTTP kube client always builds")
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Where pod logs go: `<logs dir>/<namespace>_<pod>_<container>.log`.
    pub fn logs_dir(&self) -> PathBuf {
        self.work_dir.join("logs")
    }

    /// A blocking `kubectl` command already pointed at this cluster (from async tests prefer
    /// [`DevCluster::kubectl_output`]).
    pub fn kubectl(&self) -> std::process::Command {
        let mut c = std::process::Command::new("kubectl");
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// Run kubectl against this cluster without blocking the runtime the server lives on.
    pub async fn kubectl_output(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        tokio::process::Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
    }

    /// The API requests served so far, by client (User-Agent), verb and resource; subtract
    /// two snapshots ([`requests::RequestCounts::since`]) to count a window.
    pub fn requests(&self) -> requests::RequestCounts {
        self.requests.snapshot()
    }

    /// The in-process state, for tests that inspect the store directly.
    pub fn state(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Stop serving and stop every pod process (gracefully, within each pod's grace period).
    pub async fn shutdown(mut self) {
        // Controllers first, or they would replace the pods being stopped.
        if let Some(c) = self.controllers.take() {
            c.abort();
        }
        if let Some(k) = self.kubelet.take() {
            k.stop_all().await;
            k.kill_all();
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if let Some(c) = &self.controllers {
            c.abort();
        }
        if let Some(k) = &self.kubelet {
            k.kill_all();
        }
        for t in &self.tasks {
            t.abort();
        }
        if self.owns_work_dir {
            let _ = std::fs::remove_dir_all(&self.work_dir);
        }
    }
}

fn bootstrap(cluster: &Cluster) {
    let opts = cluster::WriteOptions {
        field_manager: Some("devcluster".into()),
        ..Default::default()
    };
    if let Ok(ns) = cluster.resource("", "v1", "namespaces") {
        for n in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let _ = cluster.create(&ns, "", json!({"metadata": {"name": n}}), &opts);
        }
    }
    if let Ok(svc) = cluster.resource("", "v1", "services") {
        let kubernetes = json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
        });
        let _ = cluster.create(&svc, "default", kubernetes, &opts);
    }
    if let Ok(nodes) = cluster.resource("", "v1", "nodes") {
        let _ = cluster.create(&nodes, "", json!({"metadata": {"name": kubelet::NODE_NAME, "labels": {"kubernetes.io/hostname": kubelet::NODE_NAME}}}), &opts);
        let now = cluster::now();
        let _ = cluster.write_status(
            &nodes,
            "",
            kubelet::NODE_NAME,
            json!({"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "process kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
                   "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": kubelet::NODE_NAME}],
                   "nodeInfo": {"kubeletVersion": "v1.32.0-devcluster", "operatingSystem": "linux", "architecture": std::env::consts::ARCH}}),
            "devcluster",
        );
    }
}

/// Write a kubeconfig (JSON, which kubectl and kube-rs read as YAML) pointing at `url`.
pub fn write_kubeconfig(path: &Path, url: &str) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let cfg = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": {"server": url}}],
        "users": [{"name": "devcluster", "user": {}}],
        "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": "devcluster", "namespace": "default"}}],
        "current-context": "devcluster",
        "preferences": {},
    });
    std::fs::write(path, serde_json::to_vec_pretty(&cfg).unwrap_or_default())
}
