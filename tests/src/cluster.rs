//! The Kubernetes cluster a test talks to: a fresh devcluster of its own, or, when
//! `FERRY_TEST_KUBECONFIG` names a kubeconfig, that cluster (a real one, or a
//! `ferry-devcluster serve` shared by the whole run).
//!
//! Either way the test gets a namespace of its own, so tests running side by side on one
//! cluster never see each other's objects, and everything it made goes with that namespace
//! when the test ends, passed or failed. This is for tests that need the API server only
//! (objects, status, admission, leases); the tests that run pods from the workspace's own
//! binaries use devcluster's process kubelet directly.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use ferry_devcluster::DevCluster;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Names the kubeconfig of the cluster the API tests run against instead of devcluster.
pub const KUBECONFIG_ENV: &str = "FERRY_TEST_KUBECONFIG";

/// The field manager the tests apply the CRD with.
const MANAGER: &str = "ferry-tests";

pub struct TestCluster {
    client: kube::Client,
    kubeconfig: PathBuf,
    namespace: String,
    /// Kept for its lifetime: dropping it stops the server. `None` on an external cluster.
    devcluster: Option<DevCluster>,
}

impl TestCluster {
    /// The cluster `FERRY_TEST_KUBECONFIG` names, or else a fresh devcluster with its
    /// controllers and no kubelet; with a new namespace for this test in either case.
    pub async fn start() -> Self {
        Self::try_start().await.unwrap_or_else(|e| {
            panic!("no cluster for this test: {e:#}");
        })
    }

    async fn try_start() -> anyhow::Result<Self> {
        let (client, kubeconfig, devcluster) = match external_kubeconfig() {
            Some(path) => (external_client(&path).await?, path, None),
            None => {
                let cluster = DevCluster::builder()
                    .kubelet(false)
                    .start()
                    .await
                    .context("start devcluster")?;
                (
                    cluster.client(),
                    cluster.kubeconfig().to_path_buf(),
                    Some(cluster),
                )
            }
        };
        let namespace = crate::unique_name("ferry-test");
        let object: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {"app.kubernetes.io/created-by": MANAGER}}
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &object)
            .await
            .with_context(|| format!("create the test's namespace {namespace}"))?;
        Ok(Self {
            client,
            kubeconfig,
            namespace,
            devcluster,
        })
    }

    /// True when the tests run against `FERRY_TEST_KUBECONFIG`'s cluster.
    pub fn is_external(&self) -> bool {
        self.devcluster.is_none()
    }

    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// This test's own namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The namespaced API of `K` in this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client(), &self.namespace)
    }

    /// Puts the workspace's QueueConsumer CRD in place (server-side apply, so tests running
    /// side by side, or a cluster that has an older one, all end with this one) and waits
    /// until the API serves it.
    pub async fn install_crd(&self) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client());
        let crd = ferry_crds::crd::crd();
        let name = crd.metadata.name.clone().expect("the CRD has a name");
        crds.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("apply the QueueConsumer CRD: {e}"));
        crate::eventually(
            Duration::from_secs(30),
            "the QueueConsumer CRD to be Established",
            async || {
                let crd = crds.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }

    /// `kubectl` pointed at this cluster.
    pub async fn kubectl(&self, args: &[&str]) -> std::process::Output {
        tokio::process::Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .expect("run kubectl (it must be installed)")
    }
}

impl Drop for TestCluster {
    /// A devcluster goes with everything in it. On an external cluster the namespace is
    /// deleted, after lifting the finalizers of QueueConsumers left in it: the operator the
    /// test ran is gone, and nothing else would ever release them, so the namespace would
    /// stay Terminating. This runs when a test fails too, so it uses blocking `kubectl`.
    fn drop(&mut self) {
        if !self.is_external() {
            return;
        }
        let kubectl = |args: &[&str]| {
            std::process::Command::new("kubectl")
                .env("KUBECONFIG", &self.kubeconfig)
                .args(args)
                .stdin(Stdio::null())
                .output()
        };
        let listed = kubectl(&[
            "get",
            "queueconsumers.ferry.dev",
            "-n",
            &self.namespace,
            "-o",
            "name",
        ]);
        for name in listed
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            let _ = kubectl(&[
                "patch",
                name,
                "-n",
                &self.namespace,
                "--type=merge",
                "-p",
                r#"{"metadata":{"finalizers":null}}"#,
            ]);
        }
        match kubectl(&["delete", "namespace", &self.namespace, "--wait=false"]) {
            Ok(out) if out.status.success() => {}
            other => eprintln!(
                "could not delete the test namespace {} ({other:?}); delete it by hand",
                self.namespace
            ),
        }
    }
}

/// Makes `namespace` enforce the `restricted` Pod Security level (the `PodSecurity`
/// admission plugin's label, which devcluster honours as a real cluster does), so every pod
/// created there afterwards must meet it.
pub async fn enforce_restricted_pods(client: &kube::Client, namespace: &str) -> anyhow::Result<()> {
    let label = serde_json::json!({"metadata": {"labels": {
        ferry_devcluster::pod_security::ENFORCE_LABEL: "restricted"
    }}});
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .with_context(|| format!("enforce the restricted Pod Security level in {namespace}"))?;
    Ok(())
}

/// `FERRY_TEST_KUBECONFIG`, when set and not empty.
pub fn external_kubeconfig() -> Option<PathBuf> {
    std::env::var_os(KUBECONFIG_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

async fn external_client(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("read {KUBECONFIG_ENV}={}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("{KUBECONFIG_ENV}={}", path.display()))?;
    let client = kube::Client::try_from(config)?;
    // Fail here, naming the variable, rather than in the middle of a test.
    if let Err(e) = client.apiserver_version().await {
        bail!(
            "{KUBECONFIG_ENV}={} names a cluster that does not answer: {e}",
            path.display()
        );
    }
    Ok(client)
}
