//! `meta.k8s.io/v1` Table responses, which is what `kubectl get` asks for: built-in columns for
//! the common kinds and a CRD's `additionalPrinterColumns` (evaluated with a small JSONPath).

use serde_json::{Value, json};

use crate::registry::{PrinterColumn, ResourceInfo};

fn col(name: &str, type_: &str, priority: i64) -> PrinterColumn {
    PrinterColumn {
        name: name.into(),
        type_: type_.into(),
        format: if name == "Name" {
            "name".into()
        } else {
            String::new()
        },
        description: String::new(),
        priority,
        json_path: String::new(),
    }
}

pub fn columns(info: &ResourceInfo) -> Vec<PrinterColumn> {
    let mut cols = vec![col("Name", "string", 0)];
    if info.crd.is_some() {
        if info.columns.is_empty() {
            cols.push(col("Age", "date", 0));
        } else {
            cols.extend(info.columns.iter().cloned());
        }
        return cols;
    }
    let extra: &[(&str, &str, i64)] = match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => &[
            ("Ready", "string", 0),
            ("Status", "string", 0),
            ("Restarts", "string", 0),
            ("Age", "string", 0),
            ("IP", "string", 1),
            ("Node", "string", 1),
        ],
        ("apps", "deployments") => &[
            ("Ready", "string", 0),
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            ("Age", "string", 0),
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ],
        ("apps", "replicasets") => &[
            ("Desired", "integer", 0),
            ("Current", "integer", 0),
            ("Ready", "integer", 0),
            ("Age", "string", 0),
        ],
        ("", "services") => &[
            ("Type", "string", 0),
            ("Cluster-IP", "string", 0),
            ("External-IP", "string", 0),
            ("Port(s)", "string", 0),
            ("Age", "string", 0),
        ],
        ("", "namespaces") => &[("Status", "string", 0), ("Age", "string", 0)],
        ("", "configmaps") => &[("Data", "integer", 0), ("Age", "string", 0)],
        ("", "secrets") => &[
            ("Type", "string", 0),
            ("Data", "integer", 0),
            ("Age", "string", 0),
        ],
        ("apiextensions.k8s.io", "customresourcedefinitions") => &[("Created At", "date", 0)],
        ("coordination.k8s.io", "leases") => &[("Holder", "string", 0), ("Age", "string", 0)],
        ("policy", "poddisruptionbudgets") => &[
            ("Min Available", "string", 0),
            ("Max Unavailable", "string", 0),
            ("Allowed Disruptions", "integer", 0),
            ("Age", "string", 0),
        ],
        _ if info.plural == "events" => {
            return vec![
                col("Last Seen", "string", 0),
                col("Type", "string", 0),
                col("Reason", "string", 0),
                col("Object", "string", 0),
                col("Message", "string", 0),
            ];
        }
        _ => &[("Age", "string", 0)],
    };
    cols.extend(extra.iter().map(|(n, t, p)| col(n, t, *p)));
    cols
}

/// kubectl's short human durations ("5s", "3m2s", "4h", "12d").
pub fn human_age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()) else {
        return "<unknown>".into();
    };
    let secs = (chrono::Utc::now() - t.with_timezone(&chrono::Utc))
        .num_seconds()
        .max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        }
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        let mm = m % 60;
        if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        }
    } else if d < 2 {
        format!("{h}h")
    } else if d < 8 {
        let hh = h % 24;
        if hh == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{hh}h")
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else {
        format!("{}y", d / 365)
    }
}

/// A small JSONPath: `.a.b`, `.a[0]`, `.a[*].b`, `.a[?(@.type=="Ready")].status`.
pub fn json_path(obj: &Value, path: &str) -> Vec<Value> {
    let path = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('$');
    let mut cur = vec![obj.clone()];
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            cur = cur.iter().filter_map(|v| v.get(field).cloned()).collect();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some(end) = r.find(']') else {
                return Vec::new();
            };
            let sel = &r[..end];
            rest = &r[end + 1..];
            if sel == "*" {
                cur = cur
                    .iter()
                    .filter_map(Value::as_array)
                    .flatten()
                    .cloned()
                    .collect();
            } else if let Ok(i) = sel.parse::<usize>() {
                cur = cur.iter().filter_map(|v| v.get(i).cloned()).collect();
            } else if let Some(f) = sel.strip_prefix("?(@.").and_then(|s| s.strip_suffix(')')) {
                let (k, want) = match f.split_once("==") {
                    Some((k, w)) => (k.trim(), Some(w.trim().trim_matches(['"', '\'']))),
                    None => (f.trim(), None),
                };
                cur = cur
                    .iter()
                    .filter_map(Value::as_array)
                    .flatten()
                    .filter(|item| {
                        let v = item.get(k);
                        match want {
                            Some(w) => v.is_some_and(|v| {
                                v.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| v.to_string())
                                    == w
                            }),
                            None => v.is_some(),
                        }
                    })
                    .cloned()
                    .collect();
            } else {
                return Vec::new();
            }
        } else {
            return Vec::new();
        }
    }
    cur
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(o) => o.to_string(),
    }
}

fn i(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_i64).unwrap_or(0)
}

fn cells(info: &ResourceInfo, obj: &Value) -> Vec<Value> {
    let name = json!(
        obj.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
    );
    let created = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str);
    let age = json!(human_age(created));
    let p = |ptr: &str| obj.pointer(ptr);
    if let Some(_crd) = &info.crd {
        let mut out = vec![name];
        if info.columns.is_empty() {
            out.push(age);
        }
        for c in &info.columns {
            let vals = json_path(obj, &c.json_path);
            let v = match vals.as_slice() {
                [] => Value::Null,
                [one] => one.clone(),
                many => json!(
                    many.iter()
                        .map(|v| s(Some(v)))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            out.push(if c.type_ == "date" {
                match v.as_str() {
                    Some(t) => json!(human_age(Some(t))),
                    None => Value::Null,
                }
            } else {
                v
            });
        }
        return out;
    }
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => {
            let statuses = p("/status/containerStatuses")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let total = p("/spec/containers")
                .and_then(Value::as_array)
                .map(Vec::len)
                .unwrap_or(0);
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses.iter().map(|c| i(c.get("restartCount"))).sum();
            let mut status = s(p("/status/phase"));
            if let Some(r) = p("/status/reason").and_then(Value::as_str) {
                status = r.to_string();
            }
            for c in &statuses {
                if let Some(r) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
                    status = r.to_string();
                }
            }
            if p("/metadata/deletionTimestamp").is_some() {
                status = "Terminating".into();
            }
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                age,
                json!(s(p("/status/podIP")).if_empty("<none>")),
                json!(s(p("/spec/nodeName")).if_empty("<none>")),
            ]
        }
        ("apps", "deployments") => {
            let cs = p("/spec/template/spec/containers")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let names: Vec<String> = cs.iter().map(|c| s(c.get("name"))).collect();
            let images: Vec<String> = cs.iter().map(|c| s(c.get("image"))).collect();
            let sel = p("/spec/selector")
                .map(|sel| crate::selectors::LabelSelector::from_object(sel).to_query())
                .unwrap_or_default();
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i(p("/status/readyReplicas")),
                    i(p("/spec/replicas"))
                )),
                json!(i(p("/status/updatedReplicas"))),
                json!(i(p("/status/availableReplicas"))),
                age,
                json!(names.join(",")),
                json!(images.join(",")),
                json!(sel),
            ]
        }
        ("apps", "replicasets") => vec![
            name,
            json!(i(p("/spec/replicas"))),
            json!(i(p("/status/replicas"))),
            json!(i(p("/status/readyReplicas"))),
            age,
        ],
        ("", "services") => {
            let ports: Vec<String> = p("/spec/ports")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .map(|x| {
                            format!(
                                "{}/{}",
                                s(x.get("port")),
                                s(x.get("protocol")).if_empty("TCP")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            vec![
                name,
                json!(s(p("/spec/type")).if_empty("ClusterIP")),
                json!(s(p("/spec/clusterIP")).if_empty("<none>")),
                json!("<none>"),
                json!(if ports.is_empty() {
                    "<none>".to_string()
                } else {
                    ports.join(",")
                }),
                age,
            ]
        }
        ("", "namespaces") => vec![name, json!(s(p("/status/phase"))), age],
        ("", "configmaps") => {
            let n = p("/data")
                .and_then(Value::as_object)
                .map(|m| m.len())
                .unwrap_or(0)
                + p("/binaryData")
                    .and_then(Value::as_object)
                    .map(|m| m.len())
                    .unwrap_or(0);
            vec![name, json!(n), age]
        }
        ("", "secrets") => vec![
            name,
            json!(s(p("/type"))),
            json!(
                p("/data")
                    .and_then(Value::as_object)
                    .map(|m| m.len())
                    .unwrap_or(0)
            ),
            age,
        ],
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            vec![name, json!(s(p("/metadata/creationTimestamp")))]
        }
        ("coordination.k8s.io", "leases") => vec![name, json!(s(p("/spec/holderIdentity"))), age],
        ("policy", "poddisruptionbudgets") => vec![
            name,
            json!(s(p("/spec/minAvailable")).if_empty("N/A")),
            json!(s(p("/spec/maxUnavailable")).if_empty("N/A")),
            json!(i(p("/status/disruptionsAllowed"))),
            age,
        ],
        _ if info.plural == "events" => {
            let last = p("/lastTimestamp")
                .or(p("/eventTime"))
                .or(p("/metadata/creationTimestamp"))
                .and_then(Value::as_str);
            let regarding = p("/involvedObject").or(p("/regarding"));
            let object = regarding
                .map(|r| format!("{}/{}", s(r.get("kind")).to_lowercase(), s(r.get("name"))))
                .unwrap_or_default();
            vec![
                json!(human_age(last)),
                json!(s(p("/type"))),
                json!(s(p("/reason"))),
                json!(object),
                json!(s(p("/message")).if_empty(&s(p("/note")))),
            ]
        }
        _ => vec![name, age],
    }
}

trait IfEmpty {
    fn if_empty(self, alt: &str) -> String;
}

impl IfEmpty for String {
    fn if_empty(self, alt: &str) -> String {
        if self.is_empty() {
            alt.to_string()
        } else {
            self
        }
    }
}

fn partial_metadata(info: &ResourceInfo, obj: &Value) -> Value {
    let mut meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.remove("managedFields");
    }
    let _ = info;
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
}

fn row(info: &ResourceInfo, obj: &Value, include_object: &str) -> Value {
    let object = match include_object {
        "None" => Value::Null,
        "Object" => obj.clone(),
        _ => partial_metadata(info, obj),
    };
    json!({"cells": cells(info, obj), "object": object})
}

pub fn table(
    info: &ResourceInfo,
    objs: &[Value],
    rv: &str,
    cont: Option<&str>,
    include_object: &str,
    headers: bool,
) -> Value {
    let defs: Vec<Value> = if headers {
        columns(info)
            .iter()
            .map(|c| json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority}))
            .collect()
    } else {
        Vec::new()
    };
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": objs.iter().map(|o| row(info, o, include_object)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_filters_and_indexes() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]}, "spec": {"l": [1, 2]}});
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            vec![json!("True")]
        );
        assert_eq!(json_path(&o, ".spec.l[1]"), vec![json!(2)]);
        assert_eq!(json_path(&o, ".spec.missing"), Vec::<Value>::new());
    }
}
