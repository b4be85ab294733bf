//! The `scale` subresource (autoscaling/v1 Scale) and `pods/log`.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::cluster::{PatchType, qualified};
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceInfo;
use crate::selectors::LabelSelector;
use crate::server::{AppState, Query, json_response, parse_body, write_opts};

fn pointer_of(path: &str) -> String {
    path.trim_start_matches('.')
        .split('.')
        .fold(String::new(), |acc, s| format!("{acc}/{s}"))
}

fn scale_of(info: &ResourceInfo, obj: &Value) -> Value {
    let sp = info.scale.as_ref().expect("scale paths");
    let spec_r = obj
        .pointer(&pointer_of(&sp.spec_replicas))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let status_r = obj
        .pointer(&pointer_of(&sp.status_replicas))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = if info.crd.is_none() {
        obj.pointer("/spec/selector")
            .map(|s| LabelSelector::from_object(s).to_query())
    } else {
        sp.label_selector
            .as_ref()
            .and_then(|p| obj.pointer(&pointer_of(p)))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut status = json!({"replicas": status_r});
    if let Some(s) = selector {
        status["selector"] = json!(s);
    }
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": m.get("name"), "namespace": m.get("namespace"), "uid": m.get("uid"),
                      "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp")},
        "spec": {"replicas": spec_r},
        "status": status,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn scale(
    st: &AppState,
    method: &Method,
    info: &ResourceInfo,
    ns: &str,
    name: &str,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let c = &st.cluster;
    let obj = c.get(info, ns, name)?;
    let current = scale_of(info, &obj);
    // An update is checked against the resourceVersion it carries (none: unconditional). A
    // patch is applied to the latest object, so it is checked only against a version the
    // patch itself names; the one in `current` was read before the write and would turn
    // every concurrent write into a conflict.
    let (desired, want_rv) = match *method {
        Method::GET => return Ok(json_response(200, &current)),
        Method::PUT => {
            let update = parse_body(body)?;
            let named = resource_version(&update);
            (update, named)
        }
        Method::PATCH => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let patch = parse_body(body)?;
            let mut s = current.clone();
            match PatchType::from_content_type(ct) {
                Some(PatchType::Json) => crate::patch::json_patch(&mut s, &patch)?,
                Some(PatchType::Merge) | Some(PatchType::Strategic) | Some(PatchType::Apply) => {
                    crate::patch::json_merge(&mut s, &patch)
                }
                None => {
                    return Err(ApiError::unsupported_media(format!(
                        "unsupported patch type {ct:?}"
                    )));
                }
            }
            (s, patch_resource_version(&patch))
        }
        _ => {
            return Err(ApiError::method_not_allowed(
                "scale supports get, update and patch",
            ));
        }
    };
    let replicas = desired
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .ok_or_else(|| {
            ApiError::invalid(
                "Scale",
                "autoscaling",
                name,
                vec![("spec.replicas".into(), "Required value".into())],
            )
        })?;
    if replicas < 0 {
        return Err(ApiError::invalid(
            "Scale",
            "autoscaling",
            name,
            vec![(
                "spec.replicas".into(),
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            )],
        ));
    }
    let opts = write_opts(q, headers);
    let manager = opts.field_manager.clone().unwrap_or_default();
    let ptr = pointer_of(&info.scale.as_ref().expect("scale").spec_replicas);
    let updated = c.modify_as(
        info,
        ns,
        name,
        &manager,
        crate::cluster::Sub::Scale,
        |old| {
            let mut new = old.clone();
            if let Some(rv) = &want_rv
                && !rv.is_empty()
            {
                new["metadata"]["resourceVersion"] = json!(rv);
            } else if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            set_pointer(&mut new, &ptr, json!(replicas));
            Some(new)
        },
    )?;
    let _ = qualified(info);
    Ok(json_response(200, &scale_of(info, &updated)))
}

/// The resourceVersion a patch names: a merge patch's `metadata.resourceVersion`, or the
/// value a JSON patch adds, replaces or tests at `/metadata/resourceVersion`.
fn patch_resource_version(patch: &Value) -> Option<String> {
    match patch {
        Value::Array(ops) => ops
            .iter()
            .filter(|op| {
                op.get("path").and_then(Value::as_str) == Some("/metadata/resourceVersion")
            })
            .find_map(|op| op.get("value"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => resource_version(patch),
    }
}

fn resource_version(obj: &Value) -> Option<String> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn set_pointer(obj: &mut Value, ptr: &str, v: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = ptr.split('/').filter(|s| !s.is_empty()).collect();
    for (i, p) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            if let Some(m) = cur.as_object_mut() {
                m.insert(p.to_string(), v);
            }
            return;
        }
        if !cur.get(*p).is_some_and(Value::is_object) {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
}

/// `pods/{name}/log`: the container's log file; `follow` keeps streaming until the pod is gone.
pub async fn pod_log(st: &AppState, ns: &str, name: &str, q: &Query) -> ApiResult<Response> {
    let pods = st.cluster.resource("", "v1", "pods")?;
    let pod = st.cluster.get(&pods, ns, name)?;
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let container = match q.get("container") {
        Some(c) if containers.iter().any(|x| x == c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )));
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    let Some(dir) = &st.logs_dir else {
        return Err(ApiError::bad_request(
            "this devcluster runs no kubelet, so there are no logs",
        ));
    };
    let path = dir.join(format!("{ns}_{name}_{container}.log"));
    let content = std::fs::read(&path).unwrap_or_default();
    let mut text = String::from_utf8_lossy(&content).into_owned();
    if let Some(n) = q.get("tailLines").and_then(|t| t.parse::<usize>().ok()) {
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(n);
        text = lines[start..].iter().map(|l| format!("{l}\n")).collect();
    }
    let plain = |body: Body| {
        Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(body)
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    };
    if q.get("follow") != Some("true") {
        return Ok(plain(Body::from(text)));
    }
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(16);
    let cluster = st.cluster.clone();
    let (ns, name) = (ns.to_string(), name.to_string());
    let mut offset = content.len() as u64;
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(text))).await.is_err() {
            return;
        }
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = std::fs::read(&path).unwrap_or_default();
            if (now.len() as u64) > offset {
                let chunk = Bytes::copy_from_slice(&now[offset as usize..]);
                offset = now.len() as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            if cluster.try_get(&pods, &ns, &name).is_none() || tx.is_closed() {
                return;
            }
        }
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) });
    Ok(plain(Body::from_stream(stream)))
}
