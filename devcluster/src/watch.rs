//! Watch streams: initial state or replay from history, live changes filtered by selectors,
//! bookmarks, `timeoutSeconds`, and 410 `Expired` when the requested version is gone.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::cluster::{as_version, meta_str};
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceInfo;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::{AppState, Query, matches, selectors, wants_table};
use crate::store::{ChangeEvent, EventType, WatchOrigin};
use crate::table;

struct WatchSpec {
    cluster: Arc<crate::cluster::Cluster>,
    info: ResourceInfo,
    ns: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
    table: bool,
    include_object: String,
    bookmarks: bool,
}

impl WatchSpec {
    fn selected(&self, obj: &Value) -> bool {
        let ns_ok = self
            .ns
            .as_deref()
            .is_none_or(|n| meta_str(obj, "namespace") == Some(n));
        ns_ok && matches(&self.labels, &self.fields, obj)
    }

    fn render(&self, kind: &str, obj: &Value, headers: bool) -> Bytes {
        let o = as_version(&self.info, obj);
        let object = if self.table && kind != "BOOKMARK" {
            let rv = meta_str(&o, "resourceVersion").unwrap_or("").to_string();
            table::table(&self.info, &[o], &rv, None, &self.include_object, headers)
        } else {
            o
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    /// The watch event an object change becomes for this watcher, honouring selectors.
    fn translate(&self, ev: &ChangeEvent) -> Option<(&'static str, Arc<Value>)> {
        if ev.gr != self.info.gr() {
            return None;
        }
        let now = self.selected(&ev.object);
        let before = ev.old.as_deref().is_some_and(|o| self.selected(o));
        match ev.kind {
            EventType::Added if now => Some(("ADDED", ev.object.clone())),
            EventType::Modified if now && before => Some(("MODIFIED", ev.object.clone())),
            EventType::Modified if now => Some(("ADDED", ev.object.clone())),
            EventType::Modified if before => Some(("DELETED", ev.object.clone())),
            EventType::Deleted if before || now => Some(("DELETED", ev.object.clone())),
            _ => None,
        }
    }
}

fn bookmark(info: &ResourceInfo, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": meta})
}

pub fn watch(
    st: &AppState,
    info: &ResourceInfo,
    ns: Option<&str>,
    q: &Query,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let (labels, fields) = selectors(q)?;
    st.cluster
        .stats
        .watches_started
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let spec = WatchSpec {
        cluster: st.cluster.clone(),
        info: info.clone(),
        ns: ns.map(str::to_string),
        labels,
        fields,
        table: wants_table(headers),
        include_object: q.get("includeObject").unwrap_or("Metadata").to_string(),
        bookmarks: q.flag("allowWatchBookmarks") && q.get("allowWatchBookmarks").is_some(),
    };
    let send_initial = q.get("sendInitialEvents") == Some("true");
    let start_rv = match q.get("resourceVersion") {
        None | Some("") | Some("0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {v:?}")))?,
        ),
    };
    let start_rv = if send_initial { None } else { start_rv };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let (rx, cur_rv, origin) = st.cluster.store.watch_from(&info.gr(), ns, start_rv);
    let (tx, out) = mpsc::channel::<Result<Bytes, Infallible>>(256);
    let interval = st.bookmark_interval;
    tokio::spawn(run_watch(
        spec,
        rx,
        cur_rv,
        origin,
        start_rv,
        send_initial,
        timeout,
        interval,
        tx,
    ));
    let stream = futures::stream::unfold(
        out,
        |mut rx| async move { rx.recv().await.map(|x| (x, rx)) },
    );
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

#[allow(clippy::too_many_arguments)]
async fn run_watch(
    spec: WatchSpec,
    mut rx: broadcast::Receiver<Arc<ChangeEvent>>,
    cur_rv: u64,
    origin: Result<WatchOrigin, ()>,
    start_rv: Option<u64>,
    send_initial: bool,
    timeout: Duration,
    bookmark_every: Duration,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
) {
    let expired = |rv: Option<u64>| {
        spec.cluster
            .stats
            .watches_expired
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let e = ApiError::gone(format!(
            "too old resource version: {} ({})",
            rv.unwrap_or(0),
            cur_rv
        ));
        let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()}))
            .unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    };
    let mut headers = true;
    let mut last = cur_rv;
    match origin {
        Err(()) => {
            let _ = tx.send(Ok(expired(start_rv))).await;
            return;
        }
        Ok(WatchOrigin::List(items)) => {
            for o in items.iter().filter(|o| spec.selected(o)) {
                if tx.send(Ok(spec.render("ADDED", o, headers))).await.is_err() {
                    return;
                }
                headers = false;
            }
            if send_initial {
                let b = spec.render("BOOKMARK", &bookmark(&spec.info, cur_rv, true), false);
                if tx.send(Ok(b)).await.is_err() {
                    return;
                }
            }
        }
        Ok(WatchOrigin::Replay(events)) => {
            for ev in &events {
                if let Some((kind, obj)) = spec.translate(ev) {
                    if tx.send(Ok(spec.render(kind, &obj, headers))).await.is_err() {
                        return;
                    }
                    headers = false;
                }
            }
        }
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(bookmark_every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = ticker.tick(), if spec.bookmarks => {
                if tx.send(Ok(spec.render("BOOKMARK", &bookmark(&spec.info, last, false), false))).await.is_err() {
                    return;
                }
            }
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if ev.rv <= last && ev.rv <= cur_rv {
                        continue;
                    }
                    last = last.max(ev.rv);
                    if let Some((kind, obj)) = spec.translate(&ev) {
                        if tx.send(Ok(spec.render(kind, &obj, headers))).await.is_err() {
                            return;
                        }
                        headers = false;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = tx.send(Ok(expired(Some(last)))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}
