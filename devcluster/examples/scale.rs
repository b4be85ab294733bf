//! Scale measurement: 10,000 objects, 50 concurrent watchers, list and watch latency.
//!
//! `cargo run --release -p ferry-devcluster --example scale [OBJECTS] [WATCHERS] [UPDATES]`
//!
//! Everything goes through HTTP with kube::Client, as the operator would.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_devcluster::DevCluster;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let objects = args.first().copied().unwrap_or(10_000);
    let watchers = args.get(1).copied().unwrap_or(50);
    let updates = args.get(2).copied().unwrap_or(200);
    let dc = DevCluster::builder().kubelet(false).start().await?;
    let client = dc.client();
    let namespaces = 10;
    let nss: Api<Namespace> = Api::all(client.clone());
    for n in 0..namespaces {
        nss.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": format!("scale-{n}")}}))?,
        )
        .await?;
    }
    let started = Instant::now();
    futures::stream::iter(0..objects)
        .map(|i| {
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), &format!("scale-{}", i % namespaces));
            async move {
                let cm: ConfigMap = serde_json::from_value(json!({
                    "metadata": {"name": format!("cm-{i}"), "labels": {"app": "scale", "shard": (i % 7).to_string()}},
                    "data": {"payload": "x".repeat(200), "sent": "0"}
                }))?;
                api.create(&PostParams::default(), &cm).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let create_secs = started.elapsed().as_secs_f64();
    let all: Api<ConfigMap> = Api::all(client.clone());

    // List latency: full unpaged list, a paged list (500 per page, as kube's watcher does), and
    // a label-selected list.
    let mut full = Vec::new();
    let mut paged = Vec::new();
    let mut selected = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let l = all.list(&ListParams::default()).await?;
        full.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(l.items.len() >= objects);
        let t = Instant::now();
        let mut token: Option<String> = None;
        let mut n = 0;
        loop {
            let mut lp = ListParams::default().limit(500);
            if let Some(c) = &token {
                lp = lp.continue_token(c);
            }
            let page = all.list(&lp).await?;
            n += page.items.len();
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => token = Some(c),
                _ => break,
            }
        }
        paged.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(n >= objects);
        let t = Instant::now();
        all.list(&ListParams::default().labels("shard=3")).await?;
        selected.push(t.elapsed().as_secs_f64() * 1000.0);
    }

    // Watch latency: each watcher sees every update; latency = receive time - send time.
    let base = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let rv = all
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut handles = Vec::new();
    for _ in 0..watchers {
        let all = all.clone();
        let rv = rv.clone();
        let samples = samples.clone();
        let stream = all.watch(&WatchParams::default().timeout(290), &rv).await?;
        handles.push(tokio::spawn(async move {
            let mut s = stream.boxed();
            let mut seen = 0;
            while let Ok(Some(ev)) = s.try_next().await {
                if let WatchEvent::Modified(cm) = ev {
                    let sent: u128 = cm
                        .data
                        .as_ref()
                        .and_then(|d| d.get("sent"))
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let now = base.elapsed().as_micros();
                    samples
                        .lock()
                        .expect("samples")
                        .push((now.saturating_sub(sent)) as f64 / 1000.0);
                    seen += 1;
                    if seen == updates {
                        return;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for u in 0..updates {
        let i = (u * 37) % objects;
        let api: Api<ConfigMap> =
            Api::namespaced(client.clone(), &format!("scale-{}", i % namespaces));
        let sent = base.elapsed().as_micros().to_string();
        api.patch(
            &format!("cm-{i}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"sent": sent}})),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for h in handles {
        tokio::time::timeout(Duration::from_secs(60), h).await??;
    }
    let mut w = samples.lock().expect("samples").clone();
    println!(
        "objects: {} ({} created in {create_secs:.1}s), watchers: {watchers}, updates: {updates}",
        dc.state().store.object_count(),
        objects
    );
    println!("| measurement | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    for (name, v) in [
        ("list all (unpaged)", &mut full),
        ("list all (limit=500 pages)", &mut paged),
        ("list labelSelector (1/7)", &mut selected),
        ("watch event delivery", &mut w),
    ] {
        let max = v.iter().cloned().fold(0.0, f64::max);
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            pct(v, 0.5),
            pct(v, 0.99),
            max
        );
    }
    println!("watch samples: {}", w.len());
    Ok(())
}
