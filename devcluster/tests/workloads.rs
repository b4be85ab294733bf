//! The process kubelet: real processes per pod, loopback pod IPs, env and downward API,
//! readiness probes, preStop + SIGTERM + SIGKILL on deletion, restartPolicy, unmapped images.

mod common;

use std::time::Duration;

use common::eventually;
use ferry_devcluster::DevCluster;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;

/// A tiny HTTP worker: /healthz (503 while $UNREADY_FILE exists), /env, /prestop (its
/// Authorization header noted); SIGTERM is logged.
const WORKER: &str = r#"
import http.server, json, os, signal, sys
mark = os.environ.get("MARK", "/dev/null")
def note(s):
    with open(mark, "a") as f: f.write(s + "\n")
def term(*_):
    note("term"); sys.exit(0)
signal.signal(signal.SIGTERM, term)
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path == "/healthz":
            code = 503 if os.path.exists(os.environ.get("UNREADY_FILE", "/nonexistent")) else 200
            body = b"ok"
        elif self.path == "/prestop":
            note("prestop " + self.headers.get("Authorization", "-")); code, body = 200, b"bye"
        else:
            code, body = 200, json.dumps(dict(os.environ)).encode()
        self.send_response(code); self.end_headers(); self.wfile.write(body)
print("serving on", os.environ["POD_IP"], flush=True)
http.server.HTTPServer((os.environ["POD_IP"], 8080), H).serve_forever()
"#;

async fn cluster() -> DevCluster {
    DevCluster::builder()
        .image("example.com/worker:*", ["python3", "-u", "-c", WORKER])
        .image("example.com/shell:*", ["sh", "-c"])
        .start()
        .await
        .expect("start")
}

async fn http_get(ip: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((ip, 8080)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn wait_pod(pods: &Api<Pod>, name: &str, what: &str, f: impl Fn(&Pod) -> bool) -> Pod {
    eventually(30, what, || async {
        pods.get(name).await.ok().filter(|p| f(p))
    })
    .await
}

/// Waits up to `seconds` for pod `name` to be gone from the API.
async fn wait_gone(pods: &Api<Pod>, name: &str, seconds: u64, what: &str) {
    eventually(seconds, what, || async {
        pods.get_opt(name)
            .await
            .expect("get")
            .is_none()
            .then_some(())
    })
    .await;
}

/// Waits until the log of pod `name` (its `container`, or its only one) shows `text`.
async fn wait_logged(pods: &Api<Pod>, name: &str, container: Option<&str>, text: &str, what: &str) {
    eventually(10, what, || async {
        let params = kube::api::LogParams {
            container: container.map(str::to_string),
            ..Default::default()
        };
        let logs = pods.logs(name, &params).await.ok()?;
        logs.contains(text).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_as_processes_with_ips_env_probes_and_graceful_deletion() {
    let dc = cluster().await;
    let dir = std::env::temp_dir().join(format!("ferry-dc-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mark = dir.join("mark");
    let unready = dir.join("unready");
    std::fs::write(&unready, "").expect("unready file");
    let pods: Api<Pod> = Api::namespaced(dc.client(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "worker", "labels": {"app": "w"}, "annotations": {"team": "orders"}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "main", "image": "example.com/worker:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {"name": "TEAM", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['team']"}}},
                    {"name": "GREETING", "value": "hello $(POD_NAME) in $(POD_NAMESPACE)"},
                    {"name": "MARK", "value": mark.display().to_string()},
                    {"name": "UNREADY_FILE", "value": unready.display().to_string()}
                ],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
                "lifecycle": {"preStop": {"httpGet": {"path": "/prestop", "port": 8080,
                    "httpHeaders": [{"name": "Authorization", "value": "Bearer t0ken"}]}}}
            }]
        }
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let running = wait_pod(&pods, "worker", "pod running", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            && p.status.as_ref().and_then(|s| s.pod_ip.clone()).is_some()
    })
    .await;
    let ip = running
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod ip");
    assert!(
        ip.starts_with("127.") && !ip.starts_with("127.0."),
        "a pod address of its own in the loopback range, not 127.0/16: {ip}"
    );
    assert_eq!(
        running.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("devcluster")
    );
    let ip2 = ip.clone();
    let (_, body) = eventually(20, "worker answers", || {
        let ip = ip2.clone();
        async move { http_get(&ip, "/env").await }
    })
    .await;
    let env: serde_json::Value = serde_json::from_str(&body).expect("env json");
    assert_eq!(env["POD_NAME"], "worker");
    assert_eq!(env["POD_IP"], ip.as_str());
    assert_eq!(env["APP"], "w");
    assert_eq!(env["TEAM"], "orders");
    assert_eq!(env["GREETING"], "hello worker in default");
    assert_eq!(env["HOSTNAME"], "worker");
    // Not ready while the probe fails; ready once it passes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !ready(&pods.get("worker").await.expect("get")),
        "probe failing keeps the pod unready"
    );
    std::fs::remove_file(&unready).expect("make ready");
    wait_pod(&pods, "worker", "pod ready", ready).await;
    assert!(dc.logs_dir().join("default_worker_main.log").exists());
    let logs = pods
        .logs("worker", &kube::api::LogParams::default())
        .await
        .expect("logs");
    assert!(logs.contains(&format!("serving on {ip}")), "{logs}");
    let out = dc
        .kubectl_output(&["logs", "worker", "--tail=-1"])
        .await
        .expect("kubectl logs");
    assert!(String::from_utf8_lossy(&out.stdout).contains("serving on"));
    let r = common::kubectl(&dc, &["logs", "worker"]).await;
    assert!(
        r.ok && r.stdout.contains("serving on"),
        "{} {}",
        r.stdout,
        r.stderr
    );
    // Deletion: preStop hook, then SIGTERM, then the pod object goes.
    pods.delete("worker", &DeleteParams::default())
        .await
        .expect("delete");
    let terminating = pods.get("worker").await;
    if let Ok(t) = terminating {
        assert!(t.metadata.deletion_timestamp.is_some());
    }
    wait_gone(&pods, "worker", 15, "pod gone").await;
    let notes = std::fs::read_to_string(&mark).unwrap_or_default();
    assert_eq!(
        notes, "prestop Bearer t0ken\nterm\n",
        "the hook's httpHeaders are sent"
    );
    assert!(http_get(&ip, "/env").await.is_none(), "process stopped");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_grace_period_and_restart_policies() {
    let dc = cluster().await;
    let pods: Api<Pod> = Api::namespaced(dc.client(), "default");
    let mk = |name: &str, script: &str, policy: &str, grace: i64| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"restartPolicy": policy, "terminationGracePeriodSeconds": grace,
                     "containers": [{"name": "c", "image": "example.com/shell:1", "args": [script]}]}
        }))
        .expect("pod")
    };
    pods.create(
        &PostParams::default(),
        &mk(
            "stubborn",
            "trap '' TERM; echo trapped; while true; do sleep 0.2; done",
            "Always",
            1,
        ),
    )
    .await
    .expect("create");
    wait_pod(&pods, "stubborn", "running", ready).await;
    // Ready means started, not that the shell has run `trap` yet: a SIGTERM before that
    // ends the script at once, and the grace period would never be tested.
    wait_logged(
        &pods,
        "stubborn",
        None,
        "trapped",
        "the TERM trap installed",
    )
    .await;
    let started = std::time::Instant::now();
    pods.delete("stubborn", &DeleteParams::default())
        .await
        .expect("delete");
    wait_gone(&pods, "stubborn", 10, "killed").await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "waited for the grace period"
    );

    pods.create(&PostParams::default(), &mk("crashy", "exit 3", "Always", 1))
        .await
        .expect("create");
    wait_pod(&pods, "crashy", "restarts counted", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| cs[0].restart_count >= 2)
    })
    .await;
    pods.create(
        &PostParams::default(),
        &mk("once", "exit 0", "OnFailure", 1),
    )
    .await
    .expect("create");
    let done = wait_pod(&pods, "once", "succeeded", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
    })
    .await;
    assert_eq!(
        done.status
            .and_then(|s| s.container_statuses)
            .expect("statuses")[0]
            .restart_count,
        0
    );
    pods.create(&PostParams::default(), &mk("fails", "exit 4", "Never", 1))
        .await
        .expect("create");
    let failed = wait_pod(&pods, "fails", "failed", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
    })
    .await;
    let term = failed
        .status
        .and_then(|s| s.container_statuses)
        .expect("statuses")[0]
        .state
        .clone()
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!(term.exit_code, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmapped_images_say_so_and_never_run() {
    let dc = cluster().await;
    let pods: Api<Pod> = Api::namespaced(dc.client(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "ghost"}, "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}})).expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let p = wait_pod(&pods, "ghost", "waiting status", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|cs| !cs.is_empty())
    })
    .await;
    let st = p.status.expect("status");
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    let waiting = st.container_statuses.expect("cs")[0]
        .state
        .clone()
        .and_then(|s| s.waiting)
        .expect("waiting");
    assert_eq!(waiting.reason.as_deref(), Some("ImageNotMapped"));
    assert!(waiting.message.unwrap_or_default().contains("nginx:1.27"));
    pods.delete("ghost", &DeleteParams::default())
        .await
        .expect("delete");
    // A Deployment whose pods cannot run stops progressing after progressDeadlineSeconds.
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(dc.client(), "default");
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "stuck"},
        "spec": {"progressDeadlineSeconds": 1, "selector": {"matchLabels": {"app": "stuck"}},
                 "template": {"metadata": {"labels": {"app": "stuck"}}, "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}}}
    }))
    .expect("deployment");
    deps.create(&PostParams::default(), &d)
        .await
        .expect("create");
    eventually(20, "ProgressDeadlineExceeded", || async {
        deps.get("stuck").await.ok().filter(|d| {
            d.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.type_.as_deref() == Some("Progressing")
                            && c.status.as_deref() == Some("False")
                            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                    })
                })
        })
    })
    .await;
    wait_gone(&pods, "ghost", 10, "gone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_status_and_deletion_cost_aware_scale_down() {
    let dc = cluster().await;
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(dc.client(), "default");
    let pods: Api<Pod> = Api::namespaced(dc.client(), "default");
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "pool"},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "pool"}},
                 "template": {"metadata": {"labels": {"app": "pool"}},
                              "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "example.com/shell:1", "args": ["sleep 300"]}]}}}
    }))
    .expect("deployment");
    deps.create(&PostParams::default(), &d)
        .await
        .expect("create");
    let done = eventually(30, "deployment available", || async {
        deps.get("pool").await.ok().filter(|d| {
            let s = d.status.clone().unwrap_or_default();
            s.ready_replicas == Some(3)
                && s.available_replicas == Some(3)
                && s.observed_generation == Some(1)
        })
    })
    .await;
    let conds = done.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(conds.iter().any(|c| c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")));
    assert!(
        conds
            .iter()
            .any(|c| c.type_.as_deref() == Some("Progressing")
                && c.reason.as_deref() == Some("NewReplicaSetAvailable"))
    );
    // Give one pod a high deletion cost and one a low one; scaling to 1 keeps the expensive one.
    let names: Vec<String> = pods
        .list(&Default::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names.len(), 3);
    let cost = |n: &str, c: &str| {
        let pods = pods.clone();
        let n = n.to_string();
        let c = c.to_string();
        async move {
            pods.patch(&n, &Default::default(), &kube::api::Patch::Merge(json!({"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": c}}})))
                .await
                .expect("annotate")
        }
    };
    cost(&names[0], "1000").await;
    cost(&names[1], "-1000").await;
    deps.patch_scale(
        "pool",
        &Default::default(),
        &kube::api::Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .expect("scale");
    let keep = names[0].clone();
    eventually(30, "scaled to the expensive pod", || {
        let pods = pods.clone();
        let keep = keep.clone();
        async move {
            let live: Vec<String> = pods
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect();
            (live == [keep]).then_some(())
        }
    })
    .await;
    let d = eventually(30, "status follows", || async {
        deps.get("pool")
            .await
            .ok()
            .filter(|d| d.status.as_ref().and_then(|s| s.replicas) == Some(1))
    })
    .await;
    assert_eq!(d.status.expect("status").observed_generation, Some(2));
    let r = common::kubectl(&dc, &["describe", "deployment", "pool"]).await;
    assert!(
        r.ok && r.stdout.contains("Scaled down replica set"),
        "{}",
        r.stdout
    );
    let r = common::kubectl(
        &dc,
        &[
            "get",
            "events",
            "--field-selector",
            "reason=SuccessfulDelete",
            "-o",
            "name",
        ],
    )
    .await;
    assert_eq!(r.stdout.lines().count(), 2, "{}", r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_every_pod_process_even_under_a_deployment() {
    let dc = cluster().await;
    let deps: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(dc.client(), "default");
    let pods: Api<Pod> = Api::namespaced(dc.client(), "default");
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "bye"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "bye"}},
                 "template": {"metadata": {"labels": {"app": "bye"}},
                              "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "example.com/shell:1", "args": ["sleep 300"]}]}}}
    }))
    .expect("deployment");
    deps.create(&PostParams::default(), &d)
        .await
        .expect("create");
    let pids: Vec<i32> = eventually(30, "two running processes", || async {
        let list = pods.list(&Default::default()).await.ok()?;
        let pids: Vec<i32> = list
            .items
            .iter()
            .filter_map(|p| {
                p.status
                    .as_ref()?
                    .container_statuses
                    .as_ref()?
                    .first()?
                    .container_id
                    .clone()
            })
            .filter_map(|id| id.strip_prefix("devcluster://")?.parse().ok())
            .collect();
        (pids.len() == 2).then_some(pids)
    })
    .await;
    dc.shutdown().await;
    for pid in pids {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        assert!(!alive, "process {pid} outlived the devcluster");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_to_completion_first() {
    let dc = cluster().await;
    let pods: Api<Pod> = Api::namespaced(dc.client(), "default");
    let dir = std::env::temp_dir().join(format!("ferry-dc-init-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let marker = dir.join("initialized");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "inited"},
        "spec": {
            "initContainers": [{"name": "prepare", "image": "example.com/shell:1", "args": [format!("sleep 0.5; touch {}", marker.display())]}],
            "containers": [{"name": "main", "image": "example.com/shell:1", "args": [format!("test -f {} && sleep 300", marker.display())]}]
        }
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let p = wait_pod(&pods, "inited", "main running after init", ready).await;
    let st = p.status.expect("status");
    let init = st.init_container_statuses.expect("init statuses");
    let term = init[0]
        .state
        .clone()
        .and_then(|s| s.terminated)
        .expect("init terminated");
    assert_eq!(term.exit_code, 0);
    assert!(
        st.conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Initialized" && c.status == "True")
    );
    // A failing init container with restartPolicy Never fails the pod; the app never starts.
    let bad: Pod = serde_json::from_value(json!({
        "metadata": {"name": "badinit"},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [{"name": "prepare", "image": "example.com/shell:1", "args": ["exit 7"]}],
            "containers": [{"name": "main", "image": "example.com/shell:1", "args": ["sleep 300"]}]
        }
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &bad)
        .await
        .expect("create");
    let failed = wait_pod(&pods, "badinit", "pod failed", |p| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
    })
    .await;
    let st = failed.status.expect("status");
    assert!(
        st.container_statuses.unwrap_or_default().iter().all(|c| c
            .state
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .is_none())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A sidecar that drains on SIGTERM: /drained answers only once SIGTERM has come, then the
/// process exits.
const DRAINING_SIDECAR: &str = r#"
import http.server, os, signal, threading
mark = os.environ["MARK"]
drained = threading.Event()
def note(s):
    with open(mark, "a") as f: f.write(s + "\n")
def term(*_):
    note("sidecar term"); drained.set()
    threading.Timer(1.0, os._exit, (0,)).start()
signal.signal(signal.SIGTERM, term)
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        if self.path == "/drained":
            drained.wait(); note("sidecar drained")
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
http.server.ThreadingHTTPServer((os.environ["POD_IP"], 8081), H).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_without_a_prestop_hook_gets_sigterm_while_another_hook_runs() {
    // The worker's preStop hook waits for the sidecar to drain, which it does on SIGTERM: the
    // sidecar (no hook) must get SIGTERM at once, not after the worker's hook returns.
    let dc = cluster().await;
    let pods: Api<Pod> = Api::namespaced(dc.client(), "default");
    let dir = std::env::temp_dir().join(format!("ferry-dc-order-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mark = dir.join("mark");
    let _ = std::fs::remove_file(&mark);
    let env = json!([
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MARK", "value": mark.display().to_string()}
    ]);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "drains"},
        "spec": {
            "terminationGracePeriodSeconds": 20,
            "containers": [
                {"name": "worker", "image": "example.com/shell:1", "env": env,
                 "args": ["trap 'echo worker term >> \"$MARK\"; exit 0' TERM; echo trapped; while true; do sleep 0.1; done"],
                 "lifecycle": {"preStop": {"httpGet": {"path": "/drained", "port": 8081}}}},
                {"name": "sidecar", "image": "example.com/shell:1", "env": env,
                 "command": ["python3", "-u", "-c", DRAINING_SIDECAR],
                 "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8081}, "periodSeconds": 1}}
            ]
        }
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    wait_pod(&pods, "drains", "both containers ready", ready).await;
    wait_logged(
        &pods,
        "drains",
        Some("worker"),
        "trapped",
        "the worker's TERM trap installed",
    )
    .await;
    let started = std::time::Instant::now();
    pods.delete("drains", &DeleteParams::default())
        .await
        .expect("delete");
    // Far inside the 20 s grace period: the hook did not wait for the deadline.
    wait_gone(&pods, "drains", 10, "pod gone").await;
    let notes = std::fs::read_to_string(&mark).unwrap_or_default();
    assert_eq!(
        notes,
        "sidecar term\nsidecar drained\nworker term\n",
        "sidecar SIGTERM, the worker's hook answered, then the worker's SIGTERM (after {:?})",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A shell script that logs each named variable as `NAME=value`, or `NAME unset`, then idles.
fn print_env(names: &[&str]) -> String {
    let lines: String = names
        .iter()
        .map(|n| {
            format!(
                "if [ -n \"${{{n}+x}}\" ]; then echo \"{n}=${n}\"; else echo \"{n} unset\"; fi; "
            )
        })
        .collect();
    format!("{lines}echo printed; sleep 300")
}

async fn container_logs(pods: &Api<Pod>, pod: &str, container: &str) -> String {
    let params = kube::api::LogParams {
        container: Some(container.into()),
        ..Default::default()
    };
    eventually(20, "the container's env printed", || async {
        let logs = pods.logs(pod, &params).await.ok()?;
        logs.contains("printed").then_some(logs)
    })
    .await
}

fn waiting(p: &Pod, container: &str) -> Option<(String, String)> {
    let cs = p.status.as_ref()?.container_statuses.as_ref()?;
    let w = cs
        .iter()
        .find(|c| c.name == container)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?;
    Some((
        w.reason.clone().unwrap_or_default(),
        w.message.clone().unwrap_or_default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_env_refs_to_missing_secrets_configmaps_or_keys_leave_variables_unset() {
    use k8s_openapi::api::core::v1::{ConfigMap, Secret};
    let dc = cluster().await;
    let pods: Api<Pod> = Api::namespaced(dc.client(), "default");
    let secrets: Api<Secret> = Api::namespaced(dc.client(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "creds"}, "stringData": {"token": "s3cret", "user": "ferry"}}),
    )
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"mode": "fast"}}))
            .expect("cm");
    cms.create(&PostParams::default(), &cm).await.expect("cm");
    let key_ref = |kind: &str, name: &str, key: &str| json!({"valueFrom": {kind: {"name": name, "key": key, "optional": true}}});
    let mut env = Vec::new();
    for (var, kind, name, key) in [
        ("TOKEN", "secretKeyRef", "creds", "token"),
        ("NO_KEY", "secretKeyRef", "creds", "nope"),
        ("NO_SECRET", "secretKeyRef", "absent", "token"),
        ("MODE", "configMapKeyRef", "settings", "mode"),
        ("NO_CM_KEY", "configMapKeyRef", "settings", "nope"),
        ("NO_CM", "configMapKeyRef", "absent", "mode"),
        // Left unset, an optional ref does not clear what envFrom set.
        ("S_user", "secretKeyRef", "creds", "nope"),
    ] {
        let mut e = key_ref(kind, name, key);
        e["name"] = json!(var);
        env.push(e);
    }
    let vars = [
        "TOKEN",
        "NO_KEY",
        "NO_SECRET",
        "MODE",
        "NO_CM_KEY",
        "NO_CM",
        "S_user",
        "S_token",
        "C_mode",
        "A_x",
    ];
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "optional"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": "example.com/shell:1", "args": [print_env(&vars)],
            "envFrom": [
                {"prefix": "S_", "secretRef": {"name": "creds", "optional": true}},
                {"prefix": "C_", "configMapRef": {"name": "settings"}},
                {"prefix": "A_", "secretRef": {"name": "absent-too", "optional": true}},
                {"prefix": "A_", "configMapRef": {"name": "absent-too", "optional": true}}
            ],
            "env": env
        }]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let logs = container_logs(&pods, "optional", "c").await;
    let printed: Vec<&str> = logs.lines().filter(|l| *l != "printed").collect();
    assert_eq!(
        printed,
        [
            "TOKEN=s3cret",
            "NO_KEY unset",
            "NO_SECRET unset",
            "MODE=fast",
            "NO_CM_KEY unset",
            "NO_CM unset",
            "S_user=ferry",
            "S_token=s3cret",
            "C_mode=fast",
            "A_x unset",
        ]
    );
    // The kubelet reports Ready after the container has started, which may be after its
    // first lines are logged.
    wait_pod(
        &pods,
        "optional",
        "optional refs do not hold the container back: the pod becomes Ready",
        ready,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_env_refs_hold_the_container_until_the_secret_or_configmap_exists() {
    use k8s_openapi::api::core::v1::{ConfigMap, Event, Secret};
    use kube::api::{Patch, PatchParams};
    let dc = cluster().await;
    let pods: Api<Pod> = Api::namespaced(dc.client(), "default");
    let secrets: Api<Secret> = Api::namespaced(dc.client(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(dc.client(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "needs"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "keyed", "image": "example.com/shell:1", "args": [print_env(&["TOKEN"])],
             "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]},
            {"name": "whole", "image": "example.com/shell:1", "args": [print_env(&["C_mode"])],
             "envFrom": [{"prefix": "C_", "configMapRef": {"name": "late-settings"}}]},
            {"name": "free", "image": "example.com/shell:1", "args": ["sleep 300"]}
        ]}
    }))
    .expect("pod");
    pods.create(&PostParams::default(), &pod)
        .await
        .expect("create");
    let config_error = |container: &'static str, message: &'static str| {
        let pods = pods.clone();
        async move {
            wait_pod(&pods, "needs", message, |p| {
                waiting(p, container) == Some(("CreateContainerConfigError".into(), message.into()))
            })
            .await
        }
    };
    config_error("keyed", r#"secret "late" not found"#).await;
    config_error("whole", r#"configmap "late-settings" not found"#).await;
    // A container that needs nothing missing is not held back by the others.
    let free = wait_pod(&pods, "needs", "the free container running", |p| {
        p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == "free"))
            .is_some_and(|c| c.state.as_ref().and_then(|s| s.running.as_ref()).is_some())
    })
    .await;
    assert!(!ready(&free), "the pod is not ready while containers wait");
    // Long enough for a few retries, which must not add events of their own.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let events: Api<Event> = Api::namespaced(dc.client(), "default");
    let failed: Vec<String> = events
        .list(&Default::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("Failed"))
        .filter_map(|e| e.message)
        .collect();
    assert!(
        failed.contains(&r#"Error: secret "late" not found"#.to_string()),
        "{failed:?}"
    );
    assert_eq!(
        failed.len(),
        2,
        "one event per error, not one per retry: {failed:?}"
    );

    // The Secret appears without the key: the message says which key is missing.
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "late"}, "stringData": {"other": "x"}}))
            .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    config_error("keyed", "couldn't find key token in Secret default/late").await;
    secrets
        .patch(
            "late",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"token": "s3cret"}})),
        )
        .await
        .expect("add the key");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "late-settings"}, "data": {"mode": "slow"}}),
    )
    .expect("cm");
    cms.create(&PostParams::default(), &cm).await.expect("cm");
    assert!(
        container_logs(&pods, "needs", "keyed")
            .await
            .contains("TOKEN=s3cret")
    );
    assert!(
        container_logs(&pods, "needs", "whole")
            .await
            .contains("C_mode=slow")
    );
    wait_pod(&pods, "needs", "every container started and ready", ready).await;
}
