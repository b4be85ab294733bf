//! The process kubelet: binds pods to the one node, runs each container whose image maps to a
//! local executable as a real process group, gives every pod its own loopback address, drives
//! the Ready condition from probes, and on deletion stops each container with its preStop hook,
//! then SIGTERM, and SIGKILLs what is left at the grace deadline.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, broadcast, watch};

use crate::cluster::{Cluster, DeleteOptions, meta_str, now};
use crate::registry::ResourceInfo;

pub const NODE_NAME: &str = "devcluster";

/// Image pattern (with `*` wildcards) → local program and leading arguments: the image's
/// entrypoint. A container's `command` replaces it (and then names a host program), `args` follow.
#[derive(Clone, Debug)]
pub struct ImageMapping {
    pub pattern: String,
    pub program: Vec<String>,
}

impl ImageMapping {
    pub fn new<I, S>(pattern: &str, program: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            pattern: pattern.to_string(),
            program: program.into_iter().map(Into::into).collect(),
        }
    }

    /// Parse `PATTERN=PROGRAM [ARGS...]` (the CLI's `--image` form).
    pub fn parse(spec: &str) -> Option<Self> {
        let (p, cmd) = spec.split_once('=')?;
        Some(Self::new(p, cmd.split_whitespace()))
    }

    pub fn matches(&self, image: &str) -> bool {
        glob(&self.pattern, image)
    }
}

fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, tail)) => {
            let Some(rest) = s.strip_prefix(head) else {
                return false;
            };
            (0..=rest.len()).any(|i| rest.is_char_boundary(i) && glob(tail, &rest[i..]))
        }
    }
}

#[derive(Clone, Debug, Default)]
struct ContainerState {
    name: String,
    image: String,
    running_since: Option<String>,
    ready: bool,
    restarts: i64,
    pid: Option<u32>,
    last_terminated: Option<Value>,
    terminated: Option<Value>,
    waiting: Option<(String, String)>,
}

/// Init containers of one pod and whether they all completed.
#[derive(Default)]
struct InitStatus {
    states: Mutex<Vec<ContainerState>>,
    done: std::sync::atomic::AtomicBool,
}

struct PodRun {
    stop: watch::Sender<bool>,
    pgids: Arc<Mutex<HashMap<String, u32>>>,
}

pub struct Kubelet {
    cluster: Arc<Cluster>,
    images: Vec<ImageMapping>,
    logs_dir: PathBuf,
    pods: Mutex<HashMap<String, PodRun>>,
    ips: Mutex<HashSet<u32>>,
    /// The loopback network this kubelet's pods live in (127.N.0.0/16), held for its lifetime.
    network: PodNetwork,
    pod_info: ResourceInfo,
    /// Set on shutdown: no new pod starts, so stopping cannot race with a controller.
    stopping: std::sync::atomic::AtomicBool,
}

/// A /16 of the loopback range for one kubelet's pods. Pods listen on fixed ports (8080,
/// 9090) of their own address, so two devclusters on one machine (tests run in parallel, in
/// one process or several) must not hand out the same addresses. A kubelet claims 127.N/16
/// by listening on its last address, which the kernel grants to one socket only, and keeps
/// that listener until it is dropped.
struct PodNetwork {
    second_octet: u8,
    _claim: std::net::TcpListener,
}

/// The port of the claim listener on 127.N.255.254; no pod gets that address.
const CLAIM_PORT: u16 = 47_999;

impl PodNetwork {
    fn claim() -> Self {
        // Start from a different network per process so parallel processes rarely collide
        // even before the claim; 127.0/16 is left to services bound on 127.0.0.1.
        let start = (std::process::id() % 254) as u8;
        for i in 0..254u16 {
            let second_octet = ((u16::from(start) + i) % 254 + 1) as u8;
            let addr = std::net::SocketAddr::from(([127, second_octet, 255, 254], CLAIM_PORT));
            if let Ok(listener) = std::net::TcpListener::bind(addr) {
                return Self {
                    second_octet,
                    _claim: listener,
                };
            }
        }
        panic!("devcluster: every loopback network 127.1-254/16 is claimed by another kubelet");
    }

    /// The n-th pod address: 127.N.(n / 250).(n % 250 + 2).
    fn address(&self, n: u32) -> String {
        format!("127.{}.{}.{}", self.second_octet, n / 250, n % 250 + 2)
    }

    fn index_of(&self, ip: &str) -> Option<u32> {
        let parts: Vec<u32> = ip.split('.').filter_map(|p| p.parse().ok()).collect();
        match parts.as_slice() {
            [127, second, a, b] if *second == u32::from(self.second_octet) && *b >= 2 => {
                Some(a * 250 + b - 2)
            }
            _ => None,
        }
    }
}

fn pod_key(pod: &Value) -> String {
    format!(
        "{}/{}/{}",
        meta_str(pod, "namespace").unwrap_or(""),
        meta_str(pod, "name").unwrap_or(""),
        meta_str(pod, "uid").unwrap_or("")
    )
}

impl Kubelet {
    pub fn new(cluster: Arc<Cluster>, images: Vec<ImageMapping>, logs_dir: PathBuf) -> Self {
        let pod_info = cluster
            .resource("", "v1", "pods")
            .expect("pods are built in");
        Self {
            cluster,
            images,
            logs_dir,
            pods: Mutex::new(HashMap::new()),
            ips: Mutex::new(HashSet::new()),
            network: PodNetwork::claim(),
            pod_info,
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock_pods(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodRun>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn run(self: Arc<Self>) {
        let _ = std::fs::create_dir_all(&self.logs_dir);
        let mut rx = self.cluster.store.subscribe();
        self.resync();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) if ev.gr == self.pod_info.gr() => {
                        if ev.kind == crate::store::EventType::Deleted {
                            self.forget(&ev.object);
                        } else {
                            self.observe(&ev.object);
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync(),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => self.resync(),
            }
        }
    }

    fn resync(self: &Arc<Self>) {
        for p in self.cluster.store.list(&self.pod_info.gr(), None).items {
            self.observe(&p);
        }
    }

    fn observe(self: &Arc<Self>, pod: &Value) {
        let ns = meta_str(pod, "namespace").unwrap_or("").to_string();
        let name = meta_str(pod, "name").unwrap_or("").to_string();
        let deleting = pod.pointer("/metadata/deletionTimestamp").is_some();
        let node = pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .unwrap_or("");
        let key = pod_key(pod);
        if node.is_empty() {
            if !deleting {
                let bound =
                    self.cluster
                        .modify(&self.pod_info, &ns, &name, "default-scheduler", |cur| {
                            let mut new = cur.clone();
                            new["spec"]["nodeName"] = json!(NODE_NAME);
                            Some(new)
                        });
                if let Ok(p) = bound {
                    self.cluster.record_event(
                        &p,
                        "Normal",
                        "Scheduled",
                        &format!("Successfully assigned {ns}/{name} to {NODE_NAME}"),
                        "default-scheduler",
                    );
                }
            }
            return;
        }
        if node != NODE_NAME {
            return;
        }
        let mut pods = self.lock_pods();
        match pods.get(&key) {
            Some(run) if deleting => {
                let _ = run.stop.send(true);
            }
            Some(_) => {}
            None if deleting => {
                drop(pods);
                let _ = self.cluster.delete(
                    &self.pod_info,
                    &ns,
                    &name,
                    &DeleteOptions {
                        grace_seconds: Some(0),
                        ..Default::default()
                    },
                );
            }
            None => {
                if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let phase = pod
                    .pointer("/status/phase")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if phase == "Succeeded" || phase == "Failed" {
                    return;
                }
                let (stop, stop_rx) = watch::channel(false);
                let pgids = Arc::new(Mutex::new(HashMap::new()));
                pods.insert(
                    key.clone(),
                    PodRun {
                        stop,
                        pgids: pgids.clone(),
                    },
                );
                drop(pods);
                let me = self.clone();
                let pod = pod.clone();
                tokio::spawn(async move {
                    me.run_pod(pod, stop_rx, pgids).await;
                    me.lock_pods().remove(&key);
                });
            }
        }
    }

    /// The pod object is gone: make sure nothing of it keeps running.
    fn forget(&self, pod: &Value) {
        if let Some(run) = self.lock_pods().get(&pod_key(pod)) {
            let _ = run.stop.send(true);
            for pg in run.pgids.lock().unwrap_or_else(|e| e.into_inner()).values() {
                let _ = killpg(Pid::from_raw(*pg as i32), Signal::SIGKILL);
            }
        }
    }

    /// SIGKILL every pod process (used on drop).
    pub fn kill_all(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for run in self.lock_pods().values() {
            let _ = run.stop.send(true);
            for pg in run.pgids.lock().unwrap_or_else(|e| e.into_inner()).values() {
                let _ = killpg(Pid::from_raw(*pg as i32), Signal::SIGKILL);
            }
        }
    }

    /// Delete every pod gracefully and wait (bounded) for their processes to stop.
    pub async fn stop_all(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for p in self.cluster.store.list(&self.pod_info.gr(), None).items {
            let _ = self.cluster.delete(
                &self.pod_info,
                meta_str(&p, "namespace").unwrap_or(""),
                meta_str(&p, "name").unwrap_or(""),
                &DeleteOptions::default(),
            );
        }
        for _ in 0..100 {
            if self.lock_pods().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill_all();
    }

    fn allocate_ip(&self) -> String {
        let mut ips = self.ips.lock().unwrap_or_else(|e| e.into_inner());
        let n = (0u32..).find(|n| !ips.contains(n)).unwrap_or(0);
        ips.insert(n);
        self.network.address(n)
    }

    fn release_ip(&self, ip: &str) {
        if let Some(n) = self.network.index_of(ip) {
            self.ips
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&n);
        }
    }

    fn mapping(&self, image: &str) -> Option<&ImageMapping> {
        self.images.iter().find(|m| m.matches(image))
    }

    async fn run_pod(
        self: &Arc<Self>,
        pod: Value,
        mut stop: watch::Receiver<bool>,
        pgids: Arc<Mutex<HashMap<String, u32>>>,
    ) {
        let ns = meta_str(&pod, "namespace").unwrap_or("").to_string();
        let name = meta_str(&pod, "name").unwrap_or("").to_string();
        let containers: Vec<Value> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let ip = self.allocate_ip();
        let started = now();
        let states: Arc<Mutex<Vec<ContainerState>>> = Arc::new(Mutex::new(
            containers
                .iter()
                .map(|c| ContainerState {
                    name: c.get("name").and_then(Value::as_str).unwrap_or("").into(),
                    image: c.get("image").and_then(Value::as_str).unwrap_or("").into(),
                    ..Default::default()
                })
                .collect(),
        ));
        let init_containers: Vec<Value> = pod
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let init = Arc::new(InitStatus {
            states: Mutex::new(
                init_containers
                    .iter()
                    .map(|c| ContainerState {
                        name: c.get("name").and_then(Value::as_str).unwrap_or("").into(),
                        image: c.get("image").and_then(Value::as_str).unwrap_or("").into(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            done: std::sync::atomic::AtomicBool::new(init_containers.is_empty()),
        });
        let changed = Arc::new(Notify::new());
        let unmapped: Vec<String> = containers
            .iter()
            .chain(init_containers.iter())
            .filter_map(|c| c.get("image").and_then(Value::as_str))
            .filter(|i| self.mapping(i).is_none())
            .map(str::to_string)
            .collect();
        if !unmapped.is_empty() {
            {
                let mut st = states.lock().unwrap_or_else(|e| e.into_inner());
                for s in st.iter_mut() {
                    let msg = if unmapped.contains(&s.image) {
                        format!(
                            "devcluster has no local command mapped to image {:?}; nothing runs for this container",
                            s.image
                        )
                    } else {
                        "another container of this pod has no image mapping".to_string()
                    };
                    s.waiting = Some(("ImageNotMapped".into(), msg));
                }
                let mut ist = init.states.lock().unwrap_or_else(|e| e.into_inner());
                for s in ist.iter_mut() {
                    s.waiting = Some((
                        "ImageNotMapped".into(),
                        format!("no local command is mapped to image {:?}", s.image),
                    ));
                }
            }
            self.write_pod_status(&ns, &name, &ip, &started, &states, &init, "Pending");
            self.cluster.record_event(
                &pod,
                "Warning",
                "ImageNotMapped",
                &format!(
                    "no local command is mapped to image(s) {}; nothing runs",
                    unmapped.join(", ")
                ),
                "kubelet",
            );
            let _ = stop.wait_for(|s| *s).await;
            self.finish_pod(&ns, &name, &ip);
            return;
        }
        let restart_policy = pod
            .pointer("/spec/restartPolicy")
            .and_then(Value::as_str)
            .unwrap_or("Always")
            .to_string();
        // Init containers run one at a time, each to success, before any app container starts.
        for (idx, c) in init_containers.iter().enumerate() {
            if c.get("restartPolicy").and_then(Value::as_str) == Some("Always") {
                // Native sidecars are not run: say so instead of pretending.
                {
                    let mut ist = init.states.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(s) = ist.get_mut(idx) {
                        s.waiting = Some((
                            "Unsupported".into(),
                            "devcluster does not run restartable init containers (native sidecars)"
                                .into(),
                        ));
                    }
                }
                self.write_pod_status(&ns, &name, &ip, &started, &states, &init, "Pending");
                let _ = stop.wait_for(|s| *s).await;
                self.finish_pod(&ns, &name, &ip);
                return;
            }
            let mapping = self
                .mapping(c.get("image").and_then(Value::as_str).unwrap_or(""))
                .cloned()
                .expect("checked above");
            let log = self.logs_dir.join(format!(
                "{ns}_{name}_{}.log",
                c.get("name").and_then(Value::as_str).unwrap_or("")
            ));
            let init_states = Arc::new(Mutex::new(
                init.states
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            ));
            let runner = ContainerRunner {
                idx,
                spec: c.clone(),
                mapping,
                cluster: self.cluster.clone(),
                pod: pod.clone(),
                log,
                restart_policy: if restart_policy == "Never" {
                    "Never".into()
                } else {
                    "OnFailure".into()
                },
                states: init_states.clone(),
                changed: changed.clone(),
                pgids: pgids.clone(),
                ip: ip.clone(),
                stop: stop.clone(),
            };
            let mut task = tokio::spawn(runner.run());
            let sync = |init: &InitStatus| {
                let st = init_states.lock().unwrap_or_else(|e| e.into_inner());
                let mut ist = init.states.lock().unwrap_or_else(|e| e.into_inner());
                if let (Some(dst), Some(src)) = (ist.get_mut(idx), st.get(idx)) {
                    *dst = src.clone();
                    dst.ready = false;
                }
            };
            let stopped = loop {
                sync(&init);
                self.write_pod_status(&ns, &name, &ip, &started, &states, &init, "Pending");
                tokio::select! {
                    _ = changed.notified() => {}
                    _ = stop.wait_for(|s| *s) => break true,
                    _ = &mut task => break false,
                }
            };
            sync(&init);
            if stopped {
                self.kill_groups(&pgids, Signal::SIGKILL);
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
                self.finish_pod(&ns, &name, &ip);
                return;
            }
            let failed = init
                .states
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(idx)
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.get("exitCode"))
                .and_then(Value::as_i64)
                .unwrap_or(1)
                != 0;
            if failed {
                self.write_pod_status(&ns, &name, &ip, &started, &states, &init, "Failed");
                let _ = stop.wait_for(|s| *s).await;
                self.finish_pod(&ns, &name, &ip);
                return;
            }
        }
        init.done.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut tasks = Vec::new();
        for (idx, c) in containers.iter().enumerate() {
            let mapping = self
                .mapping(c.get("image").and_then(Value::as_str).unwrap_or(""))
                .cloned()
                .expect("checked above");
            let log = self.logs_dir.join(format!(
                "{ns}_{name}_{}.log",
                c.get("name").and_then(Value::as_str).unwrap_or("")
            ));
            let runner = ContainerRunner {
                idx,
                spec: c.clone(),
                mapping,
                cluster: self.cluster.clone(),
                pod: pod.clone(),
                log,
                restart_policy: restart_policy.clone(),
                states: states.clone(),
                changed: changed.clone(),
                pgids: pgids.clone(),
                ip: ip.clone(),
                stop: stop.clone(),
            };
            tasks.push(tokio::spawn(runner.run()));
        }
        // Status writer: runs until every container finished for good or the pod is stopping.
        let mut all_done = Box::pin(futures::future::join_all(tasks));
        let final_phase = loop {
            // Running once a container has started; until then the pod is still Pending.
            let phase = {
                let st = states.lock().unwrap_or_else(|e| e.into_inner());
                if st
                    .iter()
                    .any(|s| s.running_since.is_some() || s.restarts > 0)
                {
                    "Running"
                } else {
                    "Pending"
                }
            };
            self.write_pod_status(&ns, &name, &ip, &started, &states, &init, phase);
            tokio::select! {
                _ = changed.notified() => {}
                _ = stop.wait_for(|s| *s) => break None,
                results = &mut all_done => {
                    let st = states.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let failed = st.iter().any(|s| s.terminated.as_ref().and_then(|t| t.get("exitCode")).and_then(Value::as_i64).unwrap_or(0) != 0);
                    let _ = results;
                    break Some(if failed { "Failed" } else { "Succeeded" });
                }
            }
        };
        if let Some(phase) = final_phase {
            {
                let mut st = states.lock().unwrap_or_else(|e| e.into_inner());
                for s in st.iter_mut() {
                    s.ready = false;
                }
            }
            self.write_pod_status(&ns, &name, &ip, &started, &states, &init, phase);
            let _ = stop.wait_for(|s| *s).await;
            self.finish_pod(&ns, &name, &ip);
            return;
        }
        // Graceful termination: preStop hooks, SIGTERM, SIGKILL at the grace deadline.
        let current = self.cluster.try_get(&self.pod_info, &ns, &name);
        let grace = current
            .as_ref()
            .and_then(|p| {
                p.pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .or_else(|| {
                pod.pointer("/spec/terminationGracePeriodSeconds")
                    .and_then(Value::as_i64)
            })
            .unwrap_or(30)
            .max(0) as u64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(grace);
        for c in &containers {
            let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
            self.cluster.record_event(
                &pod,
                "Normal",
                "Killing",
                &format!("Stopping container {cname}"),
                "kubelet",
            );
        }
        // Each container stops on its own: its preStop hook, then SIGTERM to its process group
        // as soon as that hook returns (at once without a hook). A hook may wait for another
        // container to drain, which that container only does on its own SIGTERM.
        let stops = containers.iter().map(|c| {
            let cname = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let hook = c
                .pointer("/lifecycle/preStop/httpGet")
                .cloned()
                .map(|h| http_get(h, c.clone(), ip.clone(), Duration::from_secs(grace.max(1))));
            let pgids = pgids.clone();
            async move {
                if let Some(hook) = hook {
                    let _ = tokio::time::timeout_at(deadline, hook).await;
                }
                let pg = pgids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&cname)
                    .copied();
                if let Some(pg) = pg {
                    let _ = killpg(Pid::from_raw(pg as i32), Signal::SIGTERM);
                }
            }
        });
        futures::future::join_all(stops).await;
        if tokio::time::timeout_at(deadline, &mut all_done)
            .await
            .is_err()
        {
            let groups: Vec<u32> = pgids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .copied()
                .collect();
            for pg in &groups {
                let _ = killpg(Pid::from_raw(*pg as i32), Signal::SIGKILL);
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut all_done).await;
        }
        self.finish_pod(&ns, &name, &ip);
    }

    fn kill_groups(&self, pgids: &Arc<Mutex<HashMap<String, u32>>>, sig: Signal) {
        for pg in pgids.lock().unwrap_or_else(|e| e.into_inner()).values() {
            let _ = killpg(Pid::from_raw(*pg as i32), sig);
        }
    }

    /// The pod's processes are gone: release its address and let the object go.
    fn finish_pod(&self, ns: &str, name: &str, ip: &str) {
        self.release_ip(ip);
        let _ = self.cluster.delete(
            &self.pod_info,
            ns,
            name,
            &DeleteOptions {
                grace_seconds: Some(0),
                ..Default::default()
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn write_pod_status(
        &self,
        ns: &str,
        name: &str,
        ip: &str,
        started: &str,
        states: &Arc<Mutex<Vec<ContainerState>>>,
        init: &InitStatus,
        phase: &str,
    ) {
        let st = states.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let init_st = init
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let initialized = init.done.load(std::sync::atomic::Ordering::SeqCst);
        let Some(cur) = self.cluster.try_get(&self.pod_info, ns, name) else {
            return;
        };
        let existing = cur
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let all_ready = !st.is_empty() && st.iter().all(|s| s.ready);
        let cond = |t: &str, ok: bool, reason: Option<&str>| {
            let status = if ok { "True" } else { "False" };
            let prev = existing
                .iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(t));
            let ltt = match prev {
                Some(p) if p.get("status").and_then(Value::as_str) == Some(status) => {
                    p.get("lastTransitionTime").cloned().unwrap_or(json!(now()))
                }
                _ => json!(now()),
            };
            let mut c = json!({"type": t, "status": status, "lastProbeTime": null, "lastTransitionTime": ltt});
            if let Some(r) = reason {
                c["reason"] = json!(r);
            }
            c
        };
        let not_ready_reason = if all_ready {
            None
        } else if phase == "Succeeded" || phase == "Failed" {
            Some("PodCompleted")
        } else {
            Some("ContainersNotReady")
        };
        let statuses: Vec<Value> = st.iter().map(container_status).collect();
        let init_statuses: Vec<Value> = init_st.iter().map(container_status).collect();
        let status = json!({
            "phase": phase,
            "conditions": [
                cond("PodReadyToStartContainers", true, None),
                cond("Initialized", initialized, (!initialized).then_some("ContainersNotInitialized")),
                cond("Ready", all_ready, not_ready_reason),
                cond("ContainersReady", all_ready, not_ready_reason),
                cond("PodScheduled", true, None),
            ],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "startTime": started,
            "containerStatuses": statuses,
            "initContainerStatuses": init_statuses,
            "qosClass": cur.pointer("/status/qosClass").cloned().unwrap_or(json!("BestEffort")),
        });
        if cur.get("status") == Some(&status) {
            return;
        }
        let _ = self
            .cluster
            .write_status(&self.pod_info, ns, name, status, "kubelet");
    }
}

fn container_status(s: &ContainerState) -> Value {
    let state = if let Some(t) = &s.terminated {
        json!({"terminated": t})
    } else if let Some(since) = &s.running_since {
        json!({"running": {"startedAt": since}})
    } else if let Some((reason, msg)) = &s.waiting {
        json!({"waiting": {"reason": reason, "message": msg}})
    } else {
        json!({"waiting": {"reason": "ContainerCreating"}})
    };
    let mut v = json!({
        "name": s.name, "image": s.image, "imageID": format!("devcluster://{}", s.image),
        "ready": s.ready, "restartCount": s.restarts, "started": s.running_since.is_some(),
        "state": state, "lastState": s.last_terminated.as_ref().map(|t| json!({"terminated": t})).unwrap_or(json!({})),
    });
    if let Some(pid) = s.pid {
        v["containerID"] = json!(format!("devcluster://{pid}"));
    }
    v
}

/// Resolves env values: literals with `$(VAR)` expansion, fieldRef, configMap/secret refs.
struct EnvContext {
    pod: Value,
    ip: String,
    namespace: String,
    /// The ConfigMaps and Secrets the container refers to that exist, by name.
    configmaps: HashMap<String, Value>,
    secrets: HashMap<String, Value>,
}

/// Names of the objects a container's `envFrom` (under `from`) and `env` (under `key_ref`)
/// refer to.
fn referenced_names(c: &Value, from: &str, key_ref: &str) -> HashSet<String> {
    let env_from = c
        .get("envFrom")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.get(from)?.get("name"));
    let env = c
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("valueFrom")?.get(key_ref)?.get("name"));
    env_from
        .chain(env)
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

fn is_optional(r: &Value) -> bool {
    r.get("optional").and_then(Value::as_bool) == Some(true)
}

impl EnvContext {
    /// Reads the ConfigMaps and Secrets container `c` refers to from the store, as they are now.
    fn new(cluster: &Cluster, pod: &Value, ip: &str, c: &Value) -> Self {
        let ns = meta_str(pod, "namespace").unwrap_or("");
        let mut configmaps = HashMap::new();
        let mut secrets = HashMap::new();
        if let Ok(info) = cluster.resource("", "v1", "configmaps") {
            for n in referenced_names(c, "configMapRef", "configMapKeyRef") {
                if let Some(cm) = cluster.try_get(&info, ns, &n) {
                    configmaps.insert(n, cm.get("data").cloned().unwrap_or(json!({})));
                }
            }
        }
        if let Ok(info) = cluster.resource("", "v1", "secrets") {
            for n in referenced_names(c, "secretRef", "secretKeyRef") {
                let Some(s) = cluster.try_get(&info, ns, &n) else {
                    continue;
                };
                let mut data = serde_json::Map::new();
                if let Some(d) = s.get("data").and_then(Value::as_object) {
                    for (k, v) in d {
                        let decoded = v
                            .as_str()
                            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                            .map(|b| String::from_utf8_lossy(&b).into_owned())
                            .unwrap_or_default();
                        data.insert(k.clone(), json!(decoded));
                    }
                }
                if let Some(d) = s.get("stringData").and_then(Value::as_object) {
                    for (k, v) in d {
                        data.insert(k.clone(), v.clone());
                    }
                }
                secrets.insert(n, Value::Object(data));
            }
        }
        Self {
            pod: pod.clone(),
            ip: ip.to_string(),
            namespace: ns.to_string(),
            configmaps,
            secrets,
        }
    }

    /// The value of a `configMapKeyRef` or `secretKeyRef`: `Ok(None)` when an optional object or
    /// key is missing (the variable is left unset), `Err` with the kubelet's message when a
    /// required one is.
    fn key_ref(&self, r: &Value, secret: bool) -> Result<Option<String>, String> {
        let name = r.get("name").and_then(Value::as_str).unwrap_or("");
        let key = r.get("key").and_then(Value::as_str).unwrap_or("");
        let (objects, kind, noun) = if secret {
            (&self.secrets, "Secret", "secret")
        } else {
            (&self.configmaps, "ConfigMap", "configmap")
        };
        let Some(data) = objects.get(name) else {
            return if is_optional(r) {
                Ok(None)
            } else {
                Err(format!("{noun} {name:?} not found"))
            };
        };
        match data.get(key).and_then(Value::as_str) {
            Some(v) => Ok(Some(v.to_string())),
            None if is_optional(r) => Ok(None),
            None => Err(format!(
                "couldn't find key {key} in {kind} {}/{name}",
                self.namespace
            )),
        }
    }

    fn field(&self, path: &str) -> String {
        let s = |p: &str| {
            self.pod
                .pointer(p)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        match path {
            "metadata.name" => s("/metadata/name"),
            "metadata.namespace" => s("/metadata/namespace"),
            "metadata.uid" => s("/metadata/uid"),
            "spec.nodeName" => NODE_NAME.into(),
            "spec.serviceAccountName" => s("/spec/serviceAccountName"),
            "status.podIP" => self.ip.clone(),
            "status.hostIP" => "127.0.0.1".into(),
            other => {
                // metadata.labels['k'] and metadata.annotations['k'].
                for map in ["labels", "annotations"] {
                    if let Some(k) = other
                        .strip_prefix(&format!("metadata.{map}['"))
                        .and_then(|r| r.strip_suffix("']"))
                    {
                        return self
                            .pod
                            .pointer(&format!("/metadata/{map}"))
                            .and_then(|l| l.get(k))
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into();
                    }
                }
                String::new()
            }
        }
    }

    /// The container's environment, or why it cannot start: a required Secret, ConfigMap or
    /// key is missing.
    fn env_for(&self, c: &Value) -> Result<Vec<(String, String)>, String> {
        // Containers see their pod's hostname, as in a real pod.
        let host = self
            .pod
            .pointer("/spec/hostname")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| self.field("metadata.name"));
        let mut out: Vec<(String, String)> = vec![("HOSTNAME".into(), host)];
        if let Some(from) = c.get("envFrom").and_then(Value::as_array) {
            for f in from {
                let prefix = f.get("prefix").and_then(Value::as_str).unwrap_or("");
                let (r, objects, noun) = if let Some(r) = f.get("configMapRef") {
                    (r, &self.configmaps, "configmap")
                } else if let Some(r) = f.get("secretRef") {
                    (r, &self.secrets, "secret")
                } else {
                    continue;
                };
                let name = r.get("name").and_then(Value::as_str).unwrap_or("");
                match objects.get(name).and_then(Value::as_object) {
                    Some(m) => {
                        for (k, v) in m {
                            out.push((
                                format!("{prefix}{k}"),
                                v.as_str().unwrap_or("").to_string(),
                            ));
                        }
                    }
                    None if is_optional(r) => {}
                    None => return Err(format!("{noun} {name:?} not found")),
                }
            }
        }
        if let Some(env) = c.get("env").and_then(Value::as_array) {
            for e in env {
                let name = e
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let value = if let Some(v) = e.get("value").and_then(Value::as_str) {
                    expand(v, &out)
                } else if let Some(p) = e
                    .pointer("/valueFrom/fieldRef/fieldPath")
                    .and_then(Value::as_str)
                {
                    self.field(p)
                } else if let Some(r) = e.pointer("/valueFrom/configMapKeyRef") {
                    match self.key_ref(r, false)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
                    match self.key_ref(r, true)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else {
                    String::new()
                };
                out.retain(|(k, _)| *k != name);
                out.push((name, value));
            }
        }
        Ok(out)
    }
}

/// Kubernetes `$(VAR)` expansion: known variables are substituted, `$$` escapes, unknown stay.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('(')
            && let Some(end) = r.find(')')
        {
            let var = &r[..end];
            match env.iter().rev().find(|(k, _)| k == var) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(var);
                    out.push(')');
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn build_argv(mapping: &ImageMapping, c: &Value, env: &[(String, String)]) -> Vec<String> {
    let list = |k: &str| -> Vec<String> {
        c.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| expand(s, env))
                    .collect()
            })
            .unwrap_or_default()
    };
    // As with a real image: `command` replaces the entrypoint (the mapped program), `args` follow.
    let command = list("command");
    let mut argv = if command.is_empty() {
        mapping.program.clone()
    } else {
        command
    };
    argv.extend(list("args"));
    argv
}

/// How soon a container waiting for a missing Secret or ConfigMap looks again.
const CONFIG_RETRY: Duration = Duration::from_secs(1);

struct ContainerRunner {
    idx: usize,
    spec: Value,
    mapping: ImageMapping,
    cluster: Arc<Cluster>,
    pod: Value,
    log: PathBuf,
    restart_policy: String,
    states: Arc<Mutex<Vec<ContainerState>>>,
    changed: Arc<Notify>,
    pgids: Arc<Mutex<HashMap<String, u32>>>,
    ip: String,
    stop: watch::Receiver<bool>,
}

impl ContainerRunner {
    fn update(&self, f: impl FnOnce(&mut ContainerState)) {
        {
            let mut st = self.states.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = st.get_mut(self.idx) {
                f(s);
            }
        }
        self.changed.notify_one();
    }

    async fn run(self) {
        let name = self
            .spec
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut backoff = Duration::from_millis(500);
        let mut reported_config_error = None;
        loop {
            if *self.stop.borrow() {
                return;
            }
            // Env is resolved at every start, from the Secrets and ConfigMaps as they are now: a
            // container whose required one is missing waits, and starts once it appears.
            let env = match EnvContext::new(&self.cluster, &self.pod, &self.ip, &self.spec)
                .env_for(&self.spec)
            {
                Ok(env) => env,
                Err(msg) => {
                    // One event per distinct error, not one per retry.
                    if reported_config_error.as_ref() != Some(&msg) {
                        self.cluster.record_event(
                            &self.pod,
                            "Warning",
                            "Failed",
                            &format!("Error: {msg}"),
                            "kubelet",
                        );
                    }
                    self.update(|s| {
                        s.waiting = Some(("CreateContainerConfigError".into(), msg.clone()));
                        s.running_since = None;
                    });
                    reported_config_error = Some(msg);
                    let mut stop = self.stop.clone();
                    tokio::select! { _ = tokio::time::sleep(CONFIG_RETRY) => {}, _ = stop.wait_for(|s| *s) => return }
                    continue;
                }
            };
            reported_config_error = None;
            let argv = build_argv(&self.mapping, &self.spec, &env);
            let Some((program, args)) = argv.split_first() else {
                self.update(|s| {
                    s.waiting = Some((
                        "InvalidCommand".into(),
                        "the mapped program and the container's command are both empty".into(),
                    ))
                });
                return;
            };
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log);
            let (out, err) = match log.and_then(|f| Ok((f.try_clone()?, f))) {
                Ok((a, b)) => (std::process::Stdio::from(a), std::process::Stdio::from(b)),
                Err(_) => (std::process::Stdio::null(), std::process::Stdio::null()),
            };
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args)
                .env_clear()
                .stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .kill_on_drop(true);
            for k in ["PATH", "HOME", "TMPDIR", "LANG"] {
                if let Ok(v) = std::env::var(k) {
                    cmd.env(k, v);
                }
            }
            for (k, v) in &env {
                cmd.env(k, v);
            }
            if let Some(wd) = self.spec.get("workingDir").and_then(Value::as_str) {
                cmd.current_dir(wd);
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let msg = format!("starting {program:?}: {e}");
                    self.update(|s| {
                        s.waiting = Some(("RunContainerError".into(), msg));
                        s.running_since = None;
                    });
                    if self.restart_policy == "Never" {
                        self.update(|s| s.terminated = Some(json!({"exitCode": 128, "reason": "StartError", "finishedAt": now()})));
                        return;
                    }
                    let mut stop = self.stop.clone();
                    tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = stop.wait_for(|s| *s) => return }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            let pid = child.id().unwrap_or(0);
            self.pgids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), pid);
            let since = now();
            self.update(|s| {
                s.pid = Some(pid);
                s.running_since = Some(since.clone());
                s.waiting = None;
                s.terminated = None;
                s.ready = false;
            });
            let probes = tokio::spawn(probe_loop(
                self.spec.clone(),
                self.ip.clone(),
                self.states.clone(),
                self.changed.clone(),
                self.idx,
                pid,
            ));
            let status = child.wait().await;
            probes.abort();
            self.pgids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&name);
            let code = status.as_ref().ok().and_then(|s| s.code()).unwrap_or(137);
            let signal = status
                .as_ref()
                .ok()
                .and_then(std::os::unix::process::ExitStatusExt::signal);
            let term = json!({
                "exitCode": signal.map(|s| 128 + s).unwrap_or(code),
                "reason": if signal.is_none() && code == 0 { "Completed" } else { "Error" },
                "startedAt": since, "finishedAt": now(),
                "containerID": format!("devcluster://{pid}"),
            });
            let failed = signal.is_some() || code != 0;
            let restart = !*self.stop.borrow()
                && (self.restart_policy == "Always"
                    || (self.restart_policy == "OnFailure" && failed));
            if !restart {
                self.update(|s| {
                    s.running_since = None;
                    s.ready = false;
                    s.terminated = Some(term);
                });
                return;
            }
            self.update(|s| {
                s.running_since = None;
                s.ready = false;
                s.last_terminated = Some(term);
                s.restarts += 1;
                s.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off {}ms restarting failed container",
                        backoff.as_millis()
                    ),
                ));
            });
            let mut stop = self.stop.clone();
            tokio::select! { _ = tokio::time::sleep(backoff) => {}, _ = stop.wait_for(|s| *s) => return }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

fn port_of(c: &Value, port: &Value) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().map(|p| p as u16),
        Value::String(s) => s.parse().ok().or_else(|| {
            c.get("ports")?
                .as_array()?
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(s))
                .and_then(|p| p.get("containerPort").and_then(Value::as_u64))
                .map(|p| p as u16)
        }),
        _ => None,
    }
}

/// One HTTP GET over a plain TCP connection; success is a 2xx/3xx status.
async fn http_get(h: Value, c: Value, ip: String, timeout: Duration) -> bool {
    let Some(port) = h.get("port").and_then(|p| port_of(&c, p)) else {
        return false;
    };
    let host = h
        .get("host")
        .and_then(Value::as_str)
        .unwrap_or(&ip)
        .to_string();
    let path = h
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_string();
    // `httpHeaders`, sent as given, after the kubelet's own (as the real prober does).
    let headers: String = h
        .get("httpHeaders")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|header| {
            let name = header.get("name")?.as_str()?;
            let value = header.get("value")?.as_str().unwrap_or("");
            Some(format!("{name}: {value}\r\n"))
        })
        .collect();
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.32\r\n{headers}Connection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        // Read the whole (bounded) response, as the real prober does, so servers never see a
        // connection reset mid-write.
        let mut buf = Vec::new();
        let _ = (&mut s).take(64 * 1024).read_to_end(&mut buf).await;
        let line = String::from_utf8_lossy(&buf).to_string();
        let code: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((200..400).contains(&code))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

async fn run_probe(p: &Value, c: &Value, ip: &str) -> bool {
    let timeout = Duration::from_secs(
        p.get("timeoutSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1),
    );
    if let Some(h) = p.get("httpGet") {
        return http_get(h.clone(), c.clone(), ip.to_string(), timeout).await;
    }
    if let Some(t) = p.get("tcpSocket") {
        let Some(port) = t.get("port").and_then(|x| port_of(c, x)) else {
            return false;
        };
        let host = t
            .get("host")
            .and_then(Value::as_str)
            .unwrap_or(ip)
            .to_string();
        return tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
    }
    if let Some(cmd) = p.pointer("/exec/command").and_then(Value::as_array) {
        let argv: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
        let Some((prog, args)) = argv.split_first() else {
            return false;
        };
        let run = tokio::process::Command::new(prog)
            .args(args)
            .kill_on_drop(true)
            .status();
        return tokio::time::timeout(timeout, run)
            .await
            .is_ok_and(|r| r.is_ok_and(|s| s.success()));
    }
    false
}

/// Readiness drives the Ready condition; liveness failures kill the process (restartPolicy decides).
async fn probe_loop(
    c: Value,
    ip: String,
    states: Arc<Mutex<Vec<ContainerState>>>,
    changed: Arc<Notify>,
    idx: usize,
    pgid: u32,
) {
    let readiness = c.get("readinessProbe").cloned();
    let liveness = c.get("livenessProbe").cloned();
    let set_ready = |r: bool| {
        let mut st = states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = st.get_mut(idx)
            && s.ready != r
        {
            s.ready = r;
            changed.notify_one();
        }
    };
    if readiness.is_none() {
        set_ready(true);
    }
    let secs = |p: &Option<Value>, k: &str, d: u64| {
        p.as_ref()
            .and_then(|p| p.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(d)
    };
    // Readiness is probed at least once a second (not only every periodSeconds) so pods turn
    // Ready promptly in tests; liveness keeps its own period.
    let tick = Duration::from_millis(200);
    let readiness_every = Duration::from_secs(1);
    let start = tokio::time::Instant::now();
    let (mut r_ok, mut r_fail, mut l_fail) = (0u64, 0u64, 0u64);
    let mut last_r = tokio::time::Instant::now() - Duration::from_secs(3600);
    let mut last_l = last_r;
    loop {
        let elapsed = start.elapsed().as_secs();
        if let Some(p) = &readiness
            && elapsed >= secs(&readiness, "initialDelaySeconds", 0)
            && last_r.elapsed() >= readiness_every
        {
            last_r = tokio::time::Instant::now();
            if run_probe(p, &c, &ip).await {
                r_ok += 1;
                r_fail = 0;
                if r_ok >= secs(&readiness, "successThreshold", 1) {
                    set_ready(true);
                }
            } else {
                r_fail += 1;
                r_ok = 0;
                if r_fail >= secs(&readiness, "failureThreshold", 3) {
                    set_ready(false);
                }
            }
        }
        if let Some(p) = &liveness
            && elapsed >= secs(&liveness, "initialDelaySeconds", 0)
            && last_l.elapsed() >= Duration::from_secs(secs(&liveness, "periodSeconds", 10))
        {
            last_l = tokio::time::Instant::now();
            if run_probe(p, &c, &ip).await {
                l_fail = 0;
            } else {
                l_fail += 1;
                if l_fail >= secs(&liveness, "failureThreshold", 3) {
                    let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
                    return;
                }
            }
        }
        tokio::time::sleep(tick).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_kubelets_get_different_pod_networks() {
        let a = PodNetwork::claim();
        let b = PodNetwork::claim();
        assert_ne!(a.second_octet, b.second_octet);
        for n in [0, 1, 249, 250, 1000] {
            assert_eq!(a.index_of(&a.address(n)), Some(n));
            assert_eq!(b.index_of(&a.address(n)), None, "not b's address");
        }
        assert_eq!(a.address(0), format!("127.{}.0.2", a.second_octet));
    }

    #[test]
    fn image_patterns_use_wildcards() {
        let m = ImageMapping::new("ghcr.io/ferry/*:v*", ["/bin/true"]);
        assert!(m.matches("ghcr.io/ferry/consumer:v1.2"));
        assert!(!m.matches("ghcr.io/other/consumer:v1"));
        assert!(ImageMapping::new("*", Vec::<String>::new()).matches("anything"));
    }

    fn env_context(configmaps: Value, secrets: Value) -> EnvContext {
        let map = |v: Value| -> HashMap<String, Value> {
            serde_json::from_value(v).expect("name → data")
        };
        EnvContext {
            pod: json!({"metadata": {"name": "p", "namespace": "ns"}}),
            ip: "127.1.0.2".into(),
            namespace: "ns".into(),
            configmaps: map(configmaps),
            secrets: map(secrets),
        }
    }

    #[test]
    fn optional_refs_to_missing_objects_or_keys_leave_the_variable_unset() {
        let ctx = env_context(json!({"cm": {"a": "1"}}), json!({"s": {"b": "2"}}));
        let c = json!({
            "envFrom": [{"secretRef": {"name": "gone", "optional": true}},
                        {"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
            "env": [
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "b", "optional": true}}},
                {"name": "NO_KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "x", "optional": true}}},
                {"name": "NO_CM", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "a", "optional": true}}},
                {"name": "CM_a", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "x", "optional": true}}}
            ]
        });
        let env = ctx.env_for(&c).expect("optional refs never fail");
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["HOSTNAME", "CM_a", "B"]);
        assert_eq!(
            env[1].1, "1",
            "an unset optional ref keeps what envFrom set"
        );
        assert_eq!(env[2].1, "2");
    }

    #[test]
    fn required_refs_to_missing_objects_or_keys_say_what_is_missing() {
        let ctx = env_context(json!({"cm": {"a": "1"}}), json!({"s": {"b": "2"}}));
        let err = |env: Value| ctx.env_for(&json!({"env": [env]})).expect_err("missing");
        assert_eq!(
            err(json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "b"}}})),
            r#"secret "gone" not found"#
        );
        assert_eq!(
            err(
                json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "x", "optional": false}}})
            ),
            "couldn't find key x in Secret ns/s"
        );
        assert_eq!(
            err(
                json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "a"}}})
            ),
            r#"configmap "gone" not found"#
        );
        assert_eq!(
            err(json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "x"}}})),
            "couldn't find key x in ConfigMap ns/cm"
        );
        let from = ctx.env_for(&json!({"envFrom": [{"secretRef": {"name": "gone"}}]}));
        assert_eq!(from.expect_err("missing"), r#"secret "gone" not found"#);
    }

    #[test]
    fn only_the_objects_a_container_refers_to_are_read() {
        let c = json!({
            "envFrom": [{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "b"}}],
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
                    {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "d", "key": "k"}}},
                    {"name": "Z", "value": "e"}]
        });
        let names = |from, key_ref| {
            let mut v: Vec<String> = referenced_names(&c, from, key_ref).into_iter().collect();
            v.sort();
            v
        };
        assert_eq!(names("configMapRef", "configMapKeyRef"), ["a", "c"]);
        assert_eq!(names("secretRef", "secretKeyRef"), ["b", "d"]);
    }

    #[test]
    fn dollar_expansion_follows_kubernetes_rules() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)-$$(A)", &env), "x-$(B)-$(A)");
    }
}
