//! Built-in defaulting and the little built-in validation devcluster does (what controllers and
//! kubectl rely on: defaulted replicas/strategy/restartPolicy, protocol TCP, clusterIP, ...).

use serde_json::{Map, Value, json};

use crate::registry::ResourceInfo;

fn set_default(obj: &mut Map<String, Value>, key: &str, v: Value) {
    if !obj.contains_key(key) || obj.get(key).is_some_and(Value::is_null) {
        obj.insert(key.into(), v);
    }
}

fn default_pod_spec(spec: &mut Value) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    set_default(s, "restartPolicy", json!("Always"));
    set_default(s, "terminationGracePeriodSeconds", json!(30));
    set_default(s, "dnsPolicy", json!("ClusterFirst"));
    set_default(s, "schedulerName", json!("default-scheduler"));
    set_default(s, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                let tag_latest = !image.rsplit('/').next().unwrap_or("").contains(':')
                    || image.ends_with(":latest");
                let pull = if tag_latest && !image.contains('@') {
                    "Always"
                } else {
                    "IfNotPresent"
                };
                set_default(c, "imagePullPolicy", json!(pull));
                set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "terminationMessagePolicy", json!("File"));
                set_default(c, "resources", json!({}));
                if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                    }
                }
                for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
                    if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
                        set_default(p, "timeoutSeconds", json!(1));
                        set_default(p, "periodSeconds", json!(10));
                        set_default(p, "successThreshold", json!(1));
                        set_default(p, "failureThreshold", json!(3));
                        if let Some(h) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
                            set_default(h, "path", json!("/"));
                            set_default(h, "scheme", json!("HTTP"));
                        }
                    }
                }
            }
        }
    }
}

/// Apply the built-in defaults for a kind (idempotent, so it runs on every write).
pub fn apply(info: &ResourceInfo, obj: &mut Value) {
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
            }
        }
        ("apps", "deployments") | ("apps", "replicasets") => {
            let is_deploy = info.plural == "deployments";
            let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
                return;
            };
            set_default(spec, "replicas", json!(1));
            if is_deploy {
                set_default(spec, "revisionHistoryLimit", json!(10));
                set_default(spec, "progressDeadlineSeconds", json!(600));
                set_default(
                    spec,
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
                );
            }
            if let Some(t) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                default_pod_spec(t);
            }
        }
        ("", "services") => {
            let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
                return;
            };
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set_default(p, "targetPort", port);
                    }
                }
            }
        }
        ("", "secrets") => {
            if let Some(o) = obj.as_object_mut() {
                set_default(o, "type", json!("Opaque"));
                // stringData is write-only: it is folded into data (base64), as upstream does.
                if let Some(Value::Object(string_data)) = o.remove("stringData") {
                    use base64::Engine;
                    let data = o.entry("data").or_insert_with(|| json!({}));
                    if let Some(d) = data.as_object_mut() {
                        for (k, v) in string_data {
                            let text = v.as_str().unwrap_or("").as_bytes().to_vec();
                            d.insert(
                                k,
                                json!(base64::engine::general_purpose::STANDARD.encode(text)),
                            );
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// Validation the real server does for built-ins that tests and kubectl users hit.
pub fn validate(info: &ResourceInfo, obj: &Value) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let containers_ok =
        |spec: Option<&Value>, path: &str, errs: &mut Vec<(String, String)>| match spec
            .and_then(|s| s.get("containers"))
            .and_then(Value::as_array)
        {
            Some(cs) if !cs.is_empty() => {
                for (i, c) in cs.iter().enumerate() {
                    if c.get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .is_empty()
                    {
                        errs.push((
                            format!("{path}.containers[{i}].name"),
                            "Required value".into(),
                        ));
                    }
                    if c.get("image")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .is_empty()
                    {
                        errs.push((
                            format!("{path}.containers[{i}].image"),
                            "Required value".into(),
                        ));
                    }
                }
            }
            _ => errs.push((format!("{path}.containers"), "Required value".into())),
        };
    match (info.group.as_str(), info.plural.as_str()) {
        ("", "pods") => containers_ok(obj.get("spec"), "spec", &mut errs),
        ("apps", "deployments") | ("apps", "replicasets") => {
            let spec = obj.get("spec");
            let sel = spec.and_then(|s| s.get("selector"));
            let tmpl_labels = spec
                .and_then(|s| s.pointer("/template/metadata/labels"))
                .cloned()
                .unwrap_or(json!({}));
            match sel {
                None => errs.push(("spec.selector".into(), "Required value".into())),
                Some(sel) => {
                    if !crate::selectors::label_selector_matches(sel, &tmpl_labels) {
                        errs.push((
                            "spec.template.metadata.labels".into(),
                            format!("Invalid value: {tmpl_labels}: `selector` does not match template `labels`"),
                        ));
                    }
                }
            }
            if let Some(r) = spec.and_then(|s| s.get("replicas")).and_then(Value::as_i64)
                && r < 0
            {
                errs.push((
                    "spec.replicas".into(),
                    format!("Invalid value: {r}: must be greater than or equal to 0"),
                ));
            }
            containers_ok(
                spec.and_then(|s| s.pointer("/template/spec")),
                "spec.template.spec",
                &mut errs,
            );
        }
        _ => {}
    }
    errs
}

/// DNS-1123 subdomain (most kinds) or label (namespaces, services) name check.
pub fn validate_name(info: &ResourceInfo, name: &str) -> Option<String> {
    let label = matches!(info.plural.as_str(), "namespaces" | "services");
    let max = if label { 63 } else { 253 };
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.'));
    let ends_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if info.group == "apiextensions.k8s.io" || info.group.starts_with("rbac") {
        // CRD names contain dots; RBAC names may contain ':' (system:...).
        return None;
    }
    if name.len() > max || !valid_chars || !ends_ok {
        let what = if label {
            "RFC 1123 label"
        } else {
            "RFC 1123 subdomain"
        };
        return Some(format!(
            "Invalid value: \"{name}\": a lowercase {what} must consist of lower case alphanumeric characters, '-'{} and must start and end with an alphanumeric character",
            if label { "" } else { " or '.'" }
        ));
    }
    None
}

/// Fields upstream refuses to change after creation (the ones Ferry's users can trip over).
pub fn immutable_violations(
    info: &ResourceInfo,
    old: &Value,
    new: &Value,
) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let changed = |ptr: &str| old.pointer(ptr) != new.pointer(ptr);
    match (info.group.as_str(), info.plural.as_str()) {
        ("apps", "deployments") | ("apps", "replicasets") if changed("/spec/selector") => errs
            .push((
                "spec.selector".into(),
                format!(
                    "Invalid value: {}: field is immutable",
                    new.pointer("/spec/selector")
                        .cloned()
                        .unwrap_or(Value::Null)
                ),
            )),
        ("", "configmaps") | ("", "secrets")
            if old.get("immutable") == Some(&Value::Bool(true)) =>
        {
            for f in ["data", "binaryData"] {
                if old.get(f) != new.get(f) {
                    errs.push((
                        f.into(),
                        "Forbidden: field is immutable when `immutable` is set".into(),
                    ));
                }
            }
            if new.get("immutable") != Some(&Value::Bool(true)) {
                errs.push((
                    "immutable".into(),
                    "Forbidden: field is immutable when `immutable` is set".into(),
                ));
            }
        }
        _ => {}
    }
    errs
}
