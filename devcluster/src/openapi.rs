//! A minimal OpenAPI v3 surface: enough for kubectl to see that every resource's PATCH accepts
//! `fieldValidation` (so it validates server-side instead of demanding a full schema), and to
//! publish CRD schemas. Built-in kinds carry no schemas; kubectl then falls back to its
//! compiled-in types for strategic merge patches, which is what the real server's schemas say.

use serde_json::{Map, Value, json};

use crate::cluster::Cluster;
use crate::registry::ResourceInfo;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

pub fn root(cluster: &Cluster) -> Value {
    let mut paths = Map::new();
    for r in cluster.registry.all() {
        let p = gv_path(&r.group, &r.version);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}")}),
        );
    }
    json!({"paths": paths})
}

fn params() -> Value {
    json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
        {"name": "force", "in": "query", "schema": {"type": "boolean"}},
    ])
}

fn schema_name(r: &ResourceInfo) -> String {
    let group = if r.group.is_empty() {
        "core".to_string()
    } else {
        r.group.clone()
    };
    format!("{group}.{}.{}", r.version, r.kind)
}

/// The document for one group/version, or None when nothing is served there.
pub fn group_version(cluster: &Cluster, rel: &str) -> Option<Value> {
    let infos: Vec<ResourceInfo> = cluster
        .registry
        .all()
        .into_iter()
        .filter(|r| gv_path(&r.group, &r.version) == rel)
        .collect();
    if infos.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in &infos {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let base = if r.namespaced {
            format!("/{rel}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("/{rel}/{}/{{name}}", r.plural)
        };
        let op = json!({
            "x-kubernetes-group-version-kind": gvk,
            "x-kubernetes-action": "patch",
            "parameters": params(),
            "responses": {"200": {"description": "OK"}},
        });
        paths.insert(base, json!({"patch": op, "put": op}));
        if let Some(crd) = &r.crd
            && let Some(s) = &crd.schema
        {
            let mut s = s.clone();
            s["x-kubernetes-group-version-kind"] = json!([gvk]);
            schemas.insert(schema_name(r), s);
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (devcluster)", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
