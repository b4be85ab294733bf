//! Patches: JSON merge (RFC 7386), JSON patch (RFC 6902), strategic merge for the built-in lists
//! that matter, and the list semantics server-side apply shares with strategic merge.

use serde_json::{Map, Value};

use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceInfo;
use crate::schema::ListKind;

/// The list semantics of a field path (field names from the object root, list indices skipped).
pub fn list_kind(info: &ResourceInfo, path: &[String]) -> ListKind {
    if let Some(crd) = &info.crd
        && path.first().map(String::as_str) != Some("metadata")
    {
        return crd.list_kind(path);
    }
    let last = path.last().map(String::as_str).unwrap_or("");
    let parent = if path.len() >= 2 {
        path[path.len() - 2].as_str()
    } else {
        ""
    };
    let keys = |k: &[&str]| ListKind::Map(k.iter().map(|s| s.to_string()).collect());
    match last {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => keys(&["name"]),
        "ports" if info.plural == "services" && parent == "spec" => keys(&["port", "protocol"]),
        "ports" => keys(&["containerPort", "protocol"]),
        "volumeMounts" => keys(&["mountPath"]),
        "volumeDevices" => keys(&["devicePath"]),
        "conditions" => keys(&["type"]),
        "ownerReferences" => keys(&["uid"]),
        "hostAliases" => keys(&["ip"]),
        "topologySpreadConstraints" => keys(&["topologyKey", "whenUnsatisfiable"]),
        "finalizers" => ListKind::Set,
        _ => ListKind::Atomic,
    }
}

pub fn json_merge(target: &mut Value, patch: &Value) {
    json_patch::merge(target, patch);
}

pub fn json_patch(target: &mut Value, patch: &Value) -> ApiResult<()> {
    let p: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    let fail = |e: json_patch::PatchError| {
        ApiError::invalid(
            "",
            "",
            "",
            vec![(
                String::new(),
                format!("the server rejected our request due to an error in our request: {e}"),
            )],
        )
    };
    for op in p.0 {
        // As in the API server's JSON-patch library, testing a missing path against null succeeds
        // (kube-runtime's finalizer helper relies on this).
        if let json_patch::PatchOperation::Test(t) = &op
            && t.value.is_null()
            && target.pointer(t.path.as_str()).is_none()
        {
            continue;
        }
        json_patch::patch(target, &[op]).map_err(fail)?;
    }
    Ok(())
}

fn key_of(item: &Value, keys: &[String]) -> Vec<Value> {
    keys.iter()
        .map(|k| match (k.as_str(), item.get(k)) {
            // Protocol defaults to TCP, so an item that omits it still matches its stored twin.
            ("protocol", None) => Value::String("TCP".into()),
            (_, v) => v.cloned().unwrap_or(Value::Null),
        })
        .collect()
}

/// Strategic merge patch (the parts kubectl and controllers use): maps merge recursively,
/// `null` deletes, keyed lists merge by key, `$patch: delete|replace`, `$setElementOrder`,
/// `$retainKeys` and `$deleteFromPrimitiveList`.
pub fn strategic_merge(
    info: &ResourceInfo,
    target: &mut Value,
    patch: &Value,
    path: &mut Vec<String>,
) -> ApiResult<()> {
    let Some(pm) = patch.as_object() else {
        *target = patch.clone();
        return Ok(());
    };
    if pm.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = pm.clone();
        p.remove("$patch");
        *target = Value::Object(p);
        return Ok(());
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Some(retain) = pm.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        if let Some(t) = target.as_object_mut() {
            t.retain(|k, _| keep.contains(&k.as_str()));
        }
    }
    for (k, pv) in pm {
        if k == "$patch" || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(del)) = (
                target.get_mut(field).and_then(Value::as_array_mut),
                pv.as_array(),
            ) {
                list.retain(|v| !del.contains(v));
            }
            continue;
        }
        if k.starts_with("$setElementOrder/") {
            continue;
        }
        let t = target.as_object_mut().expect("target is an object");
        if pv.is_null() {
            t.remove(k);
            continue;
        }
        path.push(k.clone());
        match pv {
            Value::Object(po) => {
                if po.get("$patch").and_then(Value::as_str) == Some("delete") {
                    t.remove(k);
                } else {
                    let slot = t.entry(k.clone()).or_insert(Value::Null);
                    if !slot.is_object() {
                        *slot = Value::Object(Map::new());
                    }
                    strategic_merge(info, slot, pv, path)?;
                }
            }
            Value::Array(items) => {
                let kind = list_kind(info, path);
                let order = pm
                    .get(&format!("$setElementOrder/{k}"))
                    .and_then(Value::as_array);
                let existing = t.get(k).and_then(Value::as_array).cloned();
                let merged = merge_list(info, existing, items, &kind, order, path)?;
                t.insert(k.clone(), Value::Array(merged));
            }
            _ => {
                t.insert(k.clone(), pv.clone());
            }
        }
        path.pop();
    }
    Ok(())
}

fn merge_list(
    info: &ResourceInfo,
    existing: Option<Vec<Value>>,
    patch: &[Value],
    kind: &ListKind,
    order: Option<&Vec<Value>>,
    path: &mut Vec<String>,
) -> ApiResult<Vec<Value>> {
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .cloned()
            .collect());
    }
    match kind {
        ListKind::Atomic => Ok(patch.to_vec()),
        ListKind::Set => {
            let mut out = existing.unwrap_or_default();
            for p in patch {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
            if let Some(order) = order {
                out.sort_by_key(|v| order.iter().position(|o| o == v).unwrap_or(usize::MAX));
            }
            Ok(out)
        }
        ListKind::Map(keys) => {
            let mut out = existing.unwrap_or_default();
            for p in patch {
                let pk = key_of(p, keys);
                let pos = out.iter().position(|e| key_of(e, keys) == pk);
                if p.get("$patch").and_then(Value::as_str) == Some("delete") {
                    if let Some(i) = pos {
                        out.remove(i);
                    }
                    continue;
                }
                match pos {
                    Some(i) => strategic_merge(info, &mut out[i], p, path)?,
                    None => {
                        let mut fresh = Value::Object(Map::new());
                        strategic_merge(info, &mut fresh, p, path)?;
                        out.push(fresh);
                    }
                }
            }
            if let Some(order) = order {
                let okeys: Vec<Vec<Value>> = order.iter().map(|o| key_of(o, keys)).collect();
                out.sort_by_key(|e| {
                    let k = key_of(e, keys);
                    okeys.iter().position(|o| *o == k).unwrap_or(usize::MAX)
                });
            }
            Ok(out)
        }
    }
}

/// The item key used by managed fields for a keyed list item: `k:{"name":"x"}`.
/// A key field of a list item, with upstream's default applied: ports omit `protocol` for TCP,
/// and an applied port without it must still match the stored (defaulted) one.
pub fn key_field(item: &Value, key: &str) -> Option<Value> {
    match (key, item.get(key)) {
        ("protocol", None) if item.is_object() => Some(Value::String("TCP".into())),
        (_, v) => v.cloned(),
    }
}

pub fn item_key(item: &Value, keys: &[String]) -> String {
    let mut m = Map::new();
    for k in keys {
        if let Some(v) = key_field(item, k) {
            m.insert(k.clone(), v);
        }
    }
    format!("k:{}", Value::Object(m))
}

pub fn item_matches(item: &Value, keys: &[String], encoded: &str) -> bool {
    item_key(item, keys) == encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    #[test]
    fn strategic_merge_merges_containers_env_and_ports_by_key() {
        let reg = Registry::new();
        let info = reg.find("apps", "v1", "deployments").expect("deployments");
        let mut obj = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
             "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "y"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
             "ports": [{"containerPort": 81}]},
            {"name": "b", "$patch": "delete"}
        ]}}}});
        strategic_merge(&info, &mut obj, &patch, &mut Vec::new()).expect("patch");
        let c = &obj["spec"]["template"]["spec"]["containers"];
        assert_eq!(c.as_array().map(Vec::len), Some(1));
        assert_eq!(c[0]["image"], "x");
        assert_eq!(
            c[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
        );
        assert_eq!(
            c[0]["ports"],
            json!([{"containerPort": 80}, {"containerPort": 81}])
        );
    }

    #[test]
    fn strategic_merge_handles_null_replace_and_element_order() {
        let reg = Registry::new();
        let info = reg.find("", "v1", "pods").expect("pods");
        let mut obj = json!({"metadata": {"labels": {"a": "1", "b": "2"}},
            "spec": {"volumes": [{"name": "v1"}, {"name": "v2"}], "containers": [{"name": "c", "args": ["x", "y"]}]}});
        let patch = json!({"metadata": {"labels": {"a": null}},
            "spec": {"$setElementOrder/volumes": [{"name": "v2"}, {"name": "v1"}],
                     "volumes": [{"name": "v1", "emptyDir": {}}],
                     "containers": [{"name": "c", "args": ["z"]}]}});
        strategic_merge(&info, &mut obj, &patch, &mut Vec::new()).expect("patch");
        assert_eq!(obj["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(
            obj["spec"]["volumes"],
            json!([{"name": "v2"}, {"name": "v1", "emptyDir": {}}])
        );
        assert_eq!(obj["spec"]["containers"][0]["args"], json!(["z"]));
    }
}
