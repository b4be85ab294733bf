//! The operator at scale (`ferry-scalebench`, `scripts/bench-scale.sh`): N QueueConsumers
//! applied at once against devcluster, Google's Pub/Sub emulator, the Cloud Monitoring
//! stand-in and the real `ferry-operator` process. It measures the time until every one is
//! Ready, the operator's peak RSS, and at steady state the Kubernetes and queue API calls per
//! object and minute. See docs/performance.md.

pub mod consumers;
pub mod figures;
pub mod operator;
pub mod procfs;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_crds::QueueConsumer;
use ferry_devcluster::DevCluster;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde::Serialize;

use crate::emulators;
use crate::monitoring::FakeMonitoring;
use figures::{growth, per_object_per_minute, quantile, queue_api_requests};
use operator::{OperatorEndpoints, OperatorProcess};

/// The operator's requests carry this User-Agent (see `ferry-operator`'s `kube_client`).
pub const OPERATOR_USER_AGENT: &str = "ferry-operator/";
const UNDELIVERED: &str = "pubsub.googleapis.com/subscription/num_undelivered_messages";

#[derive(Clone, Debug)]
pub struct ScaleBenchConfig {
    pub count: usize,
    pub namespaces: usize,
    pub in_flight: usize,
    pub poll_interval_seconds: f64,
    pub ready_timeout: Duration,
    pub settle: Duration,
    pub window: Duration,
    pub work_dir: PathBuf,
}

#[derive(Debug, Serialize)]
pub struct SteadyState {
    pub window_seconds: f64,
    pub polls_in_window: f64,
    pub k8s_requests: u64,
    pub k8s_requests_per_object_per_minute: f64,
    /// Per object per minute, by verb.
    pub k8s_by_verb: BTreeMap<String, f64>,
    /// Raw counts in the window, by `verb resource`.
    pub k8s_by_verb_and_resource: BTreeMap<String, u64>,
    pub queue_calls: u64,
    pub queue_calls_per_object_per_minute: f64,
    pub queue_calls_per_object_per_poll: f64,
    /// Raw counts in the window, by `provider operation` (the operator's own counter).
    pub queue_calls_by_operation: BTreeMap<String, u64>,
    /// `timeSeries.list` calls the Monitoring stand-in answered in the window.
    pub monitoring_calls_seen: usize,
    pub operator_cpu_percent: f64,
    pub operator_rss_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub count: usize,
    pub namespaces: usize,
    pub in_flight: usize,
    pub poll_interval_seconds: f64,
    /// From the first create until every create was answered.
    pub create_seconds: f64,
    /// From the first create until the last consumer showed QueueReady=True.
    pub all_queue_ready_seconds: f64,
    /// From the first create until the last consumer showed Ready=True.
    pub all_ready_seconds: f64,
    /// Per consumer, from its create to its Ready=True.
    pub ready_latency_p50_seconds: f64,
    pub ready_latency_p99_seconds: f64,
    pub operator_peak_rss_mib: f64,
    pub operator_rss_at_all_ready_mib: f64,
    pub operator_cpu_seconds_to_all_ready: f64,
    /// Operator requests from start until all Ready, by `verb resource`.
    pub k8s_requests_to_all_ready: BTreeMap<String, u64>,
    /// Operator queue calls from start until all Ready, by `provider operation`.
    pub queue_calls_to_all_ready: BTreeMap<String, u64>,
    pub steady: SteadyState,
    pub targets: BTreeMap<String, bool>,
    pub loadavg_before: String,
    pub loadavg_at_all_ready: String,
    pub loadavg_after: String,
    pub machine: serde_json::Value,
    pub operator_log: PathBuf,
}

struct Services {
    cluster: DevCluster,
    monitoring: FakeMonitoring,
    pubsub: String,
}

async fn start_services(config: &ScaleBenchConfig) -> anyhow::Result<Services> {
    let pubsub = tokio::task::spawn_blocking(|| emulators::pubsub().host_port())
        .await
        .context("start the Pub/Sub emulator")?;
    let monitoring = FakeMonitoring::start().await;
    // No kubelet: at zero replicas there are no pods to run, and a thousand workers at one
    // replica would measure this machine, not the operator.
    let cluster = DevCluster::builder()
        .kubelet(false)
        .controllers(true)
        .work_dir(config.work_dir.join("cluster"))
        .kubeconfig(config.work_dir.join("kubeconfig"))
        .start()
        .await
        .context("start devcluster")?;
    let client = cluster.client();
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &ferry_crds::crd::crd())
        .await
        .context("install the QueueConsumer CRD")?;
    let namespaces = std::iter::once("ferry-system".to_string())
        .chain((0..config.namespaces).map(|i| consumers::placement(i, config.namespaces).0));
    for name in namespaces {
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("create namespace {name}"))?;
    }
    // Monitoring knows every subscription as empty: the steady state of idle consumers.
    for index in 0..config.count {
        let (namespace, name) = consumers::placement(index, config.namespaces);
        monitoring.set(
            UNDELIVERED,
            &consumers::subscription_id(&namespace, &name),
            0,
        );
    }
    Ok(Services {
        cluster,
        monitoring,
        pubsub,
    })
}

fn seconds_between(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

pub async fn run(config: &ScaleBenchConfig) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&config.work_dir)?;
    let loadavg_before = procfs::loadavg();
    let services = start_services(config).await?;
    let mut operator = OperatorProcess::start(
        OperatorEndpoints {
            kubeconfig: services.cluster.kubeconfig(),
            pubsub_emulator: &services.pubsub,
            monitoring: &services.monitoring.url(),
            poll_interval_seconds: config.poll_interval_seconds,
        },
        config.work_dir.join("operator.log"),
    )
    .await?;
    eprintln!(
        "operator {} leads; creating {} QueueConsumers in {} namespaces, {} at a time",
        operator.pid, config.count, config.namespaces, config.in_flight
    );
    let client = services.cluster.client();
    let milestones = consumers::watch_milestones(Api::<QueueConsumer>::all(client.clone()));
    let k8s_at_start = services.cluster.requests();
    let queue_at_start = queue_api_requests(&operator.metrics().await?);

    let started = Instant::now();
    let created =
        consumers::create_all(&client, config.count, config.namespaces, config.in_flight).await?;
    let create_seconds = seconds_between(started, Instant::now());
    eprintln!("all created after {create_seconds:.1} s; waiting for Ready");

    let deadline = started + config.ready_timeout;
    let mut last_print = Instant::now();
    loop {
        operator.check_alive()?;
        let (queue_ready, ready) = {
            let seen = milestones.lock().expect("milestones lock");
            (seen.queue_ready.len(), seen.ready.len())
        };
        if ready >= config.count {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {ready} of {} QueueConsumers Ready ({queue_ready} with their queue) after {:?}; see {}",
                config.count,
                config.ready_timeout,
                operator.log.display()
            );
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!(
                "  {:>5.1} s: {queue_ready} with their queue, {ready} Ready; operator RSS {:.1} MiB",
                started.elapsed().as_secs_f64(),
                procfs::memory_mib(operator.pid).map_or(0.0, |m| m.1)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (all_queue_ready, all_ready, latencies) = {
        let seen = milestones.lock().expect("milestones lock");
        let last = |m: &std::collections::HashMap<(String, String), Instant>| {
            m.values()
                .max()
                .map_or(0.0, |t| seconds_between(started, *t))
        };
        let mut latencies: Vec<f64> = seen
            .ready
            .iter()
            .filter_map(|(key, at)| Some(seconds_between(*created.get(key)?, *at)))
            .collect();
        latencies.sort_by(f64::total_cmp);
        (last(&seen.queue_ready), last(&seen.ready), latencies)
    };
    let loadavg_at_all_ready = procfs::loadavg();
    let rss_at_all_ready = procfs::memory_mib(operator.pid).map_or(0.0, |m| m.1);
    let cpu_to_all_ready = procfs::cpu_seconds(operator.pid).unwrap_or(0.0);
    let k8s_to_all_ready = services
        .cluster
        .requests()
        .since(&k8s_at_start)
        .from_agent(OPERATOR_USER_AGENT)
        .by_verb_and_resource();
    let queue_to_all_ready = growth(
        &queue_at_start,
        &queue_api_requests(&operator.metrics().await?),
    );
    eprintln!(
        "all Ready after {all_ready:.1} s; settling {:?}, then measuring {:?}",
        config.settle, config.window
    );

    tokio::time::sleep(config.settle).await;
    operator.check_alive()?;
    let k8s_before = services.cluster.requests();
    let queue_before = queue_api_requests(&operator.metrics().await?);
    let monitoring_before = services.monitoring.calls();
    let cpu_before = procfs::cpu_seconds(operator.pid).unwrap_or(0.0);
    let window_started = Instant::now();
    tokio::time::sleep(config.window).await;
    let window_seconds = window_started.elapsed().as_secs_f64();
    operator.check_alive()?;
    let k8s = services
        .cluster
        .requests()
        .since(&k8s_before)
        .from_agent(OPERATOR_USER_AGENT);
    let queue = growth(
        &queue_before,
        &queue_api_requests(&operator.metrics().await?),
    );
    let monitoring_calls_seen = services.monitoring.calls() - monitoring_before;
    let cpu = procfs::cpu_seconds(operator.pid).unwrap_or(0.0) - cpu_before;
    let (peak_rss, rss_now) = procfs::memory_mib(operator.pid).unwrap_or((0.0, 0.0));
    let still_ready = milestones.lock().expect("milestones lock").ready.len();
    if still_ready < config.count {
        bail!("consumers were lost during the run");
    }

    let per_minute = |calls: u64| per_object_per_minute(calls, config.count, window_seconds);
    let polls_in_window = window_seconds / config.poll_interval_seconds;
    let queue_calls: u64 = queue.values().sum();
    let steady = SteadyState {
        window_seconds,
        polls_in_window,
        k8s_requests: k8s.total(),
        k8s_requests_per_object_per_minute: per_minute(k8s.total()),
        k8s_by_verb: k8s
            .by_verb()
            .into_iter()
            .map(|(verb, n)| (verb.to_string(), per_minute(n)))
            .collect(),
        k8s_by_verb_and_resource: k8s.by_verb_and_resource(),
        queue_calls,
        queue_calls_per_object_per_minute: per_minute(queue_calls),
        queue_calls_per_object_per_poll: queue_calls as f64
            / config.count as f64
            / polls_in_window.max(1e-9),
        queue_calls_by_operation: queue,
        monitoring_calls_seen,
        operator_cpu_percent: cpu / window_seconds * 100.0,
        operator_rss_mib: rss_now,
    };
    let targets = BTreeMap::from([
        ("all_ready_within_60s".to_string(), all_ready <= 60.0),
        ("peak_rss_under_64mib".to_string(), peak_rss < 64.0),
        (
            "at_most_one_queue_call_per_object_per_poll".to_string(),
            steady.queue_calls_per_object_per_poll <= 1.0,
        ),
    ]);
    let report = Report {
        count: config.count,
        namespaces: config.namespaces,
        in_flight: config.in_flight,
        poll_interval_seconds: config.poll_interval_seconds,
        create_seconds,
        all_queue_ready_seconds: all_queue_ready,
        all_ready_seconds: all_ready,
        ready_latency_p50_seconds: quantile(&latencies, 0.5).unwrap_or(0.0),
        ready_latency_p99_seconds: quantile(&latencies, 0.99).unwrap_or(0.0),
        operator_peak_rss_mib: peak_rss,
        operator_rss_at_all_ready_mib: rss_at_all_ready,
        operator_cpu_seconds_to_all_ready: cpu_to_all_ready,
        k8s_requests_to_all_ready: k8s_to_all_ready,
        queue_calls_to_all_ready: queue_to_all_ready,
        steady,
        targets,
        loadavg_before,
        loadavg_at_all_ready,
        loadavg_after: procfs::loadavg(),
        machine: procfs::machine(),
        operator_log: operator.log.clone(),
    };
    operator.stop().await;
    Ok(report)
}

/// The report as the table printed at the end of a run.
pub fn table(report: &Report) -> String {
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    let target = |key: &str| mark(report.targets.get(key).copied().unwrap_or(false));
    let s = &report.steady;
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!(
        "{} QueueConsumers (Pub/Sub, minReplicas 0) in {} namespaces, {} creates in flight, poll every {} s",
        report.count, report.namespaces, report.in_flight, report.poll_interval_seconds
    ));
    line(format!("{:<52} {:>12}  {}", "figure", "value", "target"));
    line(format!(
        "{:<52} {:>10.1} s  ≤ 60 s: {}",
        "time from first create to all Ready",
        report.all_ready_seconds,
        target("all_ready_within_60s")
    ));
    line(format!(
        "{:<52} {:>10.1} s",
        "  all created (answered)", report.create_seconds
    ));
    line(format!(
        "{:<52} {:>10.1} s",
        "  all with QueueReady", report.all_queue_ready_seconds
    ));
    line(format!(
        "{:<52} {:>5.1} / {:>4.1} s",
        "  per consumer, create → Ready p50 / p99",
        report.ready_latency_p50_seconds,
        report.ready_latency_p99_seconds
    ));
    line(format!(
        "{:<52} {:>8.1} MiB  < 64 MiB: {}",
        "operator peak RSS (VmHWM)",
        report.operator_peak_rss_mib,
        target("peak_rss_under_64mib")
    ));
    line(format!(
        "{:<52} {:>8.1} MiB",
        "  RSS at all Ready", report.operator_rss_at_all_ready_mib
    ));
    line(format!(
        "{:<52} {:>8.1} MiB",
        "  RSS at steady state", s.operator_rss_mib
    ));
    line(format!(
        "{:<52} {:>10.1} s",
        "operator CPU until all Ready", report.operator_cpu_seconds_to_all_ready
    ));
    line(format!(
        "steady state, {:.0} s window ({:.1} polls):",
        s.window_seconds, s.polls_in_window
    ));
    line(format!(
        "{:<52} {:>12.3}",
        "  Kubernetes requests / object / min", s.k8s_requests_per_object_per_minute
    ));
    for (verb, rate) in &s.k8s_by_verb {
        line(format!("{:<52} {:>12.3}", format!("    {verb}"), rate));
    }
    line(format!(
        "{:<52} {:>12.3}",
        "  queue API calls / object / min", s.queue_calls_per_object_per_minute
    ));
    line(format!(
        "{:<52} {:>12.4}  ≤ 1: {}",
        "  queue API calls / object / poll",
        s.queue_calls_per_object_per_poll,
        target("at_most_one_queue_call_per_object_per_poll")
    ));
    for (operation, calls) in &s.queue_calls_by_operation {
        line(format!(
            "{:<52} {:>12}",
            format!("    {operation} (calls)"),
            calls
        ));
    }
    line(format!(
        "{:<52} {:>12}",
        "  Monitoring calls seen by the stand-in", s.monitoring_calls_seen
    ));
    line(format!(
        "{:<52} {:>11.1}%",
        "  operator CPU", s.operator_cpu_percent
    ));
    line(format!(
        "load average: before {} · at all Ready {} · after {}",
        report.loadavg_before, report.loadavg_at_all_ready, report.loadavg_after
    ));
    out
}
