//! Which resources are served: the built-in table plus whatever CustomResourceDefinitions add.

use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::schema::CrdVersionSchema;
use crate::store::GroupResource;

/// Where the scale subresource reads and writes replicas.
#[derive(Clone, Debug)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

#[derive(Clone, Debug)]
pub struct PrinterColumn {
    pub name: String,
    pub type_: String,
    pub format: String,
    pub description: String,
    pub priority: i64,
    pub json_path: String,
}

#[derive(Clone, Debug)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    pub status: bool,
    pub scale: Option<ScalePaths>,
    /// Only for custom resources: validation, defaulting and printer columns.
    pub crd: Option<Arc<CrdVersionSchema>>,
    pub columns: Vec<PrinterColumn>,
    /// Kinds whose strategy bumps metadata.generation on spec changes.
    pub tracks_generation: bool,
}

impl ResourceInfo {
    /// The storage identity. events.k8s.io/v1 Events share storage with core/v1 Events, as
    /// upstream, and are converted on the way in and out.
    pub fn gr(&self) -> GroupResource {
        if self.is_events_v1() {
            return GroupResource::new("", "events");
        }
        GroupResource::new(&self.group, &self.plural)
    }

    pub fn is_events_v1(&self) -> bool {
        self.group == "events.k8s.io" && self.plural == "events"
    }

    /// The apiVersion objects are stored with.
    pub fn storage_api_version(&self) -> String {
        if self.is_events_v1() {
            return "v1".into();
        }
        self.api_version()
    }

    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

fn builtin(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    short: &[&str],
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        singular: kind.to_lowercase(),
        kind: kind.into(),
        namespaced,
        short_names: short.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        status: false,
        scale: None,
        crd: None,
        columns: Vec::new(),
        tracks_generation: false,
    }
}

fn builtins() -> Vec<ResourceInfo> {
    let all = vec!["all".to_string()];
    let mut v = vec![
        ResourceInfo {
            status: true,
            ..builtin("", "v1", "namespaces", "Namespace", false, &["ns"])
        },
        ResourceInfo {
            status: true,
            categories: all.clone(),
            ..builtin("", "v1", "pods", "Pod", true, &["po"])
        },
        ResourceInfo {
            status: true,
            categories: all.clone(),
            ..builtin("", "v1", "services", "Service", true, &["svc"])
        },
        ResourceInfo {
            status: true,
            ..builtin("", "v1", "nodes", "Node", false, &["no"])
        },
        builtin("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"]),
        builtin("", "v1", "configmaps", "ConfigMap", true, &["cm"]),
        builtin("", "v1", "secrets", "Secret", true, &[]),
        builtin("", "v1", "events", "Event", true, &["ev"]),
        builtin("", "v1", "endpoints", "Endpoints", true, &["ep"]),
        builtin("events.k8s.io", "v1", "events", "Event", true, &["ev"]),
        ResourceInfo {
            status: true,
            tracks_generation: true,
            categories: all.clone(),
            scale: Some(ScalePaths {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: Some(".status.selector".into()),
            }),
            ..builtin("apps", "v1", "deployments", "Deployment", true, &["deploy"])
        },
        ResourceInfo {
            status: true,
            tracks_generation: true,
            categories: all.clone(),
            scale: Some(ScalePaths {
                spec_replicas: ".spec.replicas".into(),
                status_replicas: ".status.replicas".into(),
                label_selector: Some(".status.selector".into()),
            }),
            ..builtin("apps", "v1", "replicasets", "ReplicaSet", true, &["rs"])
        },
        builtin("coordination.k8s.io", "v1", "leases", "Lease", true, &[]),
        // Review kinds are answered, never stored: devcluster authorizes everything.
        builtin(
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews",
            "SelfSubjectAccessReview",
            false,
            &[],
        ),
        builtin(
            "authorization.k8s.io",
            "v1",
            "subjectaccessreviews",
            "SubjectAccessReview",
            false,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "roles",
            "Role",
            true,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
            &[],
        ),
        builtin(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
            &[],
        ),
        ResourceInfo {
            status: true,
            tracks_generation: true,
            ..builtin(
                "policy",
                "v1",
                "poddisruptionbudgets",
                "PodDisruptionBudget",
                true,
                &["pdb"],
            )
        },
        ResourceInfo {
            status: true,
            tracks_generation: true,
            ..builtin(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                &["crd", "crds"],
            )
        },
    ];
    for r in &mut v {
        r.singular = r.kind.to_lowercase();
    }
    v
}

/// The served resources. Lookups are by group/version/plural (or kind, for apply).
pub struct Registry {
    resources: RwLock<Vec<ResourceInfo>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self {
            resources: RwLock::new(builtins()),
        }
    }

    pub fn all(&self) -> Vec<ResourceInfo> {
        self.resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceInfo> {
        self.resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    /// Any served version of a group/resource (used by garbage collection, which is version-blind).
    pub fn find_gr(&self, gr: &GroupResource) -> Option<ResourceInfo> {
        self.resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|r| r.group == gr.group && r.plural == gr.resource)
            .cloned()
    }

    pub fn find_kind(&self, api_version: &str, kind: &str) -> Option<ResourceInfo> {
        self.resources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|r| r.api_version() == api_version && r.kind == kind)
            .cloned()
    }

    /// Replace everything a CRD serves (an empty list unregisters it).
    pub fn set_crd_resources(&self, group: &str, plural: &str, infos: Vec<ResourceInfo>) {
        let mut all = self.resources.write().unwrap_or_else(|e| e.into_inner());
        all.retain(|r| !(r.crd.is_some() && r.group == group && r.plural == plural));
        all.extend(infos);
    }
}

/// Build the served resources of a CRD object (one per served version).
pub fn crd_resources(crd: &Value) -> Result<Vec<ResourceInfo>, String> {
    let spec = crd.get("spec").ok_or("spec is required")?;
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .ok_or("spec.group is required")?;
    let names = spec.get("names").ok_or("spec.names is required")?;
    let plural = names
        .get("plural")
        .and_then(Value::as_str)
        .ok_or("spec.names.plural is required")?;
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .ok_or("spec.names.kind is required")?;
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let strs = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let short_names = strs(names.get("shortNames"));
    let categories = strs(names.get("categories"));
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .ok_or("spec.versions is required")?;
    let mut out = Vec::new();
    for v in versions {
        if v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let name = v
            .get("name")
            .and_then(Value::as_str)
            .ok_or("spec.versions[].name is required")?;
        let sub = v.get("subresources");
        let status = sub.and_then(|s| s.get("status")).is_some();
        let scale = sub.and_then(|s| s.get("scale")).map(|s| ScalePaths {
            spec_replicas: s
                .get("specReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or(".spec.replicas")
                .into(),
            status_replicas: s
                .get("statusReplicasPath")
                .and_then(Value::as_str)
                .unwrap_or(".status.replicas")
                .into(),
            label_selector: s
                .get("labelSelectorPath")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
        let columns = v
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|cols| {
                cols.iter()
                    .map(|c| PrinterColumn {
                        name: c.get("name").and_then(Value::as_str).unwrap_or("").into(),
                        type_: c
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .into(),
                        format: c.get("format").and_then(Value::as_str).unwrap_or("").into(),
                        description: c
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                        json_path: c
                            .get("jsonPath")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let schema = v
            .get("schema")
            .and_then(|s| s.get("openAPIV3Schema"))
            .cloned();
        out.push(ResourceInfo {
            group: group.into(),
            version: name.into(),
            plural: plural.into(),
            singular: singular.clone(),
            kind: kind.into(),
            namespaced,
            short_names: short_names.clone(),
            categories: categories.clone(),
            status,
            scale,
            crd: Some(Arc::new(CrdVersionSchema::new(schema, group, name, kind))),
            columns,
            tracks_generation: true,
        });
    }
    Ok(out)
}
