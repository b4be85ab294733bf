//! The API semantics shared by the HTTP layer and the built-in controllers: create, get,
//! update, patch (incl. server-side apply), delete, status and scale subresources.

use std::sync::Arc;

use rand::Rng;
use serde_json::{Map, Value, json};

use crate::apply::{self, Part, WriteContext};
use crate::error::{ApiError, ApiResult};
use crate::registry::{Registry, ResourceInfo, crd_resources};
use crate::store::{GroupResource, Mutation, Store};
use crate::{defaults, patch, pod_security};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
    /// Writes through `/scale`: main-resource semantics, recorded as subresource "scale".
    Scale,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Some(Self::Json),
            "application/merge-patch+json" => Some(Self::Merge),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    pub field_manager: Option<String>,
    pub force: bool,
    pub dry_run: bool,
    /// `fieldValidation=Strict`: unknown fields are an error instead of being dropped.
    pub strict: bool,
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub propagation: Option<String>,
    pub grace_seconds: Option<i64>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    pub dry_run: bool,
}

pub struct Cluster {
    pub store: Store,
    pub registry: Registry,
    /// Next Service cluster IP (10.96.0.0/12, as kubeadm clusters use; nothing routes to it).
    next_cluster_ip: std::sync::atomic::AtomicU32,
    /// Counters tests use to prove a path was exercised (e.g. that watchers really got 410s).
    pub stats: Stats,
}

#[derive(Debug, Default)]
pub struct Stats {
    /// Watches answered with `410 Expired` (compacted history or a lagging watcher).
    pub watches_expired: std::sync::atomic::AtomicU64,
    pub watches_started: std::sync::atomic::AtomicU64,
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub fn uid() -> String {
    let mut r = rand::rng();
    let b: [u8; 16] = r.random();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0x0fff,
        (u16::from_be_bytes([b[8], b[9]]) & 0x3fff) | 0x8000,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}

pub fn random_suffix(n: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut r = rand::rng();
    (0..n)
        .map(|_| ALPHABET[r.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub fn qualified(info: &ResourceInfo) -> String {
    if info.group.is_empty() {
        info.plural.clone()
    } else {
        format!("{}.{}", info.plural, info.group)
    }
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata is an object")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

/// Whether two versions of an object have the same spec (what bumps generation): everything
/// but metadata, and status where status is a subresource. Compared in place: a write
/// compares on every call.
fn same_spec(info: &ResourceInfo, a: &Value, b: &Value) -> bool {
    let outside = |k: &str| k == "metadata" || (info.status && k == "status");
    same_entries(a, b, outside, |_, x, y| x == y)
}

/// Whether a write changed nothing: the objects are equal but for their resourceVersion and
/// the times in managedFields. Who owns which field is part of the comparison, as in the API
/// server: a second manager applying values already in place takes co-ownership of them, and
/// dropping that write would let the first manager's next apply remove fields the second
/// still wants.
fn same_but_version(a: &Value, b: &Value) -> bool {
    same_entries(
        a,
        b,
        |_| false,
        |k, x, y| {
            if k != "metadata" {
                return x == y;
            }
            same_entries(
                x,
                y,
                |k| k == "resourceVersion",
                |k, x, y| {
                    if k == "managedFields" {
                        same_owners(x, y)
                    } else {
                        x == y
                    }
                },
            )
        },
    )
}

/// Two objects' entries compared by `eq`, the keys `skip` names left out.
fn same_entries(
    a: &Value,
    b: &Value,
    skip: impl Fn(&str) -> bool,
    eq: impl Fn(&str, &Value, &Value) -> bool,
) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let counted = |m: &serde_json::Map<String, Value>| m.keys().filter(|k| !skip(k)).count();
    counted(a) == counted(b)
        && a.iter()
            .filter(|(k, _)| !skip(k))
            .all(|(k, x)| b.get(k).is_some_and(|y| eq(k, x, y)))
}

/// managedFields with the same entries but for their times, in any order (an apply moves its
/// manager's entry to the end; the order carries no meaning).
fn same_owners(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_array(), b.as_array()) else {
        return a == b;
    };
    let same_entry = |x: &Value, y: &Value| same_entries(x, y, |k| k == "time", |_, x, y| x == y);
    let mut unmatched: Vec<&Value> = b.iter().collect();
    a.len() == b.len()
        && a.iter().all(|x| {
            let found = unmatched.iter().position(|y| same_entry(x, y));
            found.map(|i| unmatched.swap_remove(i)).is_some()
        })
}

fn finalizers_empty(obj: &Value) -> bool {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .is_none_or(|f| f.is_empty())
}

/// Present an object in the requested version (all versions share storage; no conversion).
pub fn as_version(info: &ResourceInfo, obj: &Value) -> Value {
    if info.is_events_v1() {
        return convert_event(obj, false);
    }
    let mut o = obj.clone();
    if info.crd.is_some() {
        o["apiVersion"] = Value::String(info.api_version());
    }
    o
}

impl Cluster {
    pub fn new(history_limit: usize) -> Self {
        Self {
            store: Store::new(history_limit),
            registry: Registry::new(),
            next_cluster_ip: std::sync::atomic::AtomicU32::new(10),
            stats: Stats::default(),
        }
    }

    pub fn resource(&self, group: &str, version: &str, plural: &str) -> ApiResult<ResourceInfo> {
        self.registry
            .find(group, version, plural)
            .ok_or_else(|| ApiError::not_found_path(&format!("{group}/{version} {plural}")))
    }

    fn key(info: &ResourceInfo, ns: &str, name: &str) -> (String, String) {
        (
            if info.namespaced {
                ns.to_string()
            } else {
                String::new()
            },
            name.to_string(),
        )
    }

    pub fn get(&self, info: &ResourceInfo, ns: &str, name: &str) -> ApiResult<Value> {
        self.store
            .get(&info.gr(), &Self::key(info, ns, name))
            .map(|o| as_version(info, &o))
            .ok_or_else(|| ApiError::not_found(&qualified(info), name))
    }

    pub fn try_get(&self, info: &ResourceInfo, ns: &str, name: &str) -> Option<Arc<Value>> {
        self.store.get(&info.gr(), &Self::key(info, ns, name))
    }

    fn check_namespace(&self, info: &ResourceInfo, ns: &str) -> ApiResult<()> {
        if !info.namespaced {
            return Ok(());
        }
        let ns_gr = GroupResource::new("", "namespaces");
        match self.store.get(&ns_gr, &(String::new(), ns.to_string())) {
            None => Err(ApiError::not_found("namespaces", ns)),
            Some(n) if meta(&n).is_some_and(|m| m.contains_key("deletionTimestamp")) => {
                Err(ApiError::forbidden(format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    info.plural, "",
                )))
            }
            Some(_) => Ok(()),
        }
    }

    /// Defaulting, pruning and validation shared by every write.
    fn admit(
        &self,
        info: &ResourceInfo,
        obj: &mut Value,
        old: Option<&Value>,
        strict: bool,
    ) -> ApiResult<()> {
        defaults::apply(info, obj);
        let name = meta_str(obj, "name").unwrap_or("").to_string();
        let mut errs = Vec::new();
        if let Some(crd) = &info.crd {
            let unknown = crd.prune_and_default(obj);
            if strict && !unknown.is_empty() {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|u| format!("unknown field \"{u}\""))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )));
            }
            errs.extend(crd.validate(obj, old));
        } else {
            errs.extend(defaults::validate(info, obj));
        }
        if info.plural == "customresourcedefinitions" {
            errs.extend(validate_crd(obj));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid(&info.kind, &info.group, &name, errs))
        }
    }

    pub fn create(
        &self,
        info: &ResourceInfo,
        ns: &str,
        body: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        if meta_str(&body, "resourceVersion").is_some_and(|rv| !rv.is_empty()) {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let mut obj = self.prepare_create(info, ns, to_storage(info, body), opts.strict)?;
        let now = now();
        let manager = opts
            .field_manager
            .clone()
            .unwrap_or_else(|| "unknown".into());
        apply::track_update(
            &WriteContext {
                info,
                manager: &manager,
                subresource: "",
                part: Part::Main {
                    has_status: info.status,
                },
                now: &now,
            },
            None,
            &mut obj,
        );
        self.insert_new(info, obj, opts.dry_run)
    }

    fn prepare_create(
        &self,
        info: &ResourceInfo,
        ns: &str,
        body: Value,
        strict: bool,
    ) -> ApiResult<Value> {
        let mut obj = body;
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was not a JSON object",
            ));
        }
        if let Some(k) = obj.get("kind").and_then(Value::as_str)
            && k != info.kind
        {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({}), or kind {k} does not match {}",
                obj.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
                info.api_version(),
                info.kind
            )));
        }
        obj["apiVersion"] = Value::String(info.storage_api_version());
        obj["kind"] = Value::String(info.kind.clone());
        let m = meta_mut(&mut obj);
        if info.namespaced {
            match m.get("namespace").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {
                    m.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            m.remove("namespace");
        }
        let name = m
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let name = if name.is_empty() {
            match m.get("generateName").and_then(Value::as_str) {
                Some(g) if !g.is_empty() => format!("{g}{}", random_suffix(5)),
                _ => {
                    return Err(ApiError::invalid(
                        &info.kind,
                        &info.group,
                        "",
                        vec![(
                            "metadata.name".into(),
                            "Required value: name or generateName is required".into(),
                        )],
                    ));
                }
            }
        } else {
            name
        };
        if let Some(e) = defaults::validate_name(info, &name) {
            return Err(ApiError::invalid(
                &info.kind,
                &info.group,
                &name,
                vec![("metadata.name".into(), e)],
            ));
        }
        m.insert("name".into(), json!(name));
        m.insert("uid".into(), json!(uid()));
        m.insert("creationTimestamp".into(), json!(now()));
        for f in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "managedFields",
            "selfLink",
        ] {
            m.remove(f);
        }
        if info.tracks_generation {
            m.insert("generation".into(), json!(1));
        } else {
            m.remove("generation");
        }
        if info.plural != "namespaces" {
            self.check_namespace(info, ns)?;
        }
        // Status is the controllers' to write; a create never sets it (pods start Pending).
        if info.status {
            let initial = match (info.group.as_str(), info.plural.as_str()) {
                ("", "pods") => Some(json!({"phase": "Pending", "qosClass": "BestEffort"})),
                ("", "namespaces") => Some(json!({"phase": "Active"})),
                _ => None,
            };
            let o = obj.as_object_mut().expect("object");
            match initial {
                Some(s) => {
                    o.insert("status".into(), s);
                }
                None => {
                    o.remove("status");
                }
            }
        }
        if info.plural == "namespaces" {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
        if info.group.is_empty() && info.plural == "services" {
            self.allocate_cluster_ip(&mut obj);
        }
        self.admit(info, &mut obj, None, strict)?;
        if info.group.is_empty() && info.plural == "pods" {
            self.check_pod_security(ns, &obj)?;
        }
        Ok(obj)
    }

    /// The `PodSecurity` admission plugin's `enforce` mode, for a pod being created.
    fn check_pod_security(&self, ns: &str, pod: &Value) -> ApiResult<()> {
        let ns_gr = GroupResource::new("", "namespaces");
        let Some(namespace) = self.store.get(&ns_gr, &(String::new(), ns.to_string())) else {
            return Ok(());
        };
        let level = pod_security::Level::of_namespace(&namespace);
        let found = pod_security::violations(level, pod.get("spec").unwrap_or(&Value::Null));
        if found.is_empty() {
            return Ok(());
        }
        Err(ApiError::forbidden(pod_security::forbidden_message(
            level,
            meta_str(pod, "name").unwrap_or(""),
            &found,
        )))
    }

    fn insert_new(&self, info: &ResourceInfo, obj: Value, dry_run: bool) -> ApiResult<Value> {
        let name = meta_str(&obj, "name").unwrap_or("").to_string();
        let ns = meta_str(&obj, "namespace").unwrap_or("").to_string();
        if dry_run {
            return Ok(obj);
        }
        if info.plural == "customresourcedefinitions" {
            self.register_crd(&obj)?;
        }
        let stored = self
            .store
            .mutate(&info.gr(), &Self::key(info, &ns, &name), |old, _| {
                if old.is_some() {
                    return Err(ApiError::already_exists(&qualified(info), &name));
                }
                Ok(Mutation::Put(obj))
            })?;
        let stored = stored.ok_or_else(|| ApiError::internal("create stored nothing"))?;
        if info.group.is_empty() && info.plural == "namespaces" {
            // What the service-account controller does for every namespace.
            if let Ok(sa) = self.resource("", "v1", "serviceaccounts") {
                let opts = WriteOptions {
                    field_manager: Some("kube-controller-manager".into()),
                    ..Default::default()
                };
                let _ = self.create(&sa, &name, json!({"metadata": {"name": "default"}}), &opts);
            }
        }
        if info.plural == "customresourcedefinitions" {
            self.mark_crd_established(&name);
            return self.get(info, "", &name);
        }
        Ok(as_version(info, &stored))
    }

    fn allocate_cluster_ip(&self, svc: &mut Value) {
        let Some(spec) = svc.get_mut("spec").and_then(Value::as_object_mut) else {
            return;
        };
        let external = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
        if external
            || spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .is_some_and(|ip| !ip.is_empty())
        {
            return;
        }
        let n = self
            .next_cluster_ip
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ip = format!(
            "10.{}.{}.{}",
            96 + (n >> 16) % 16,
            (n >> 8) & 0xff,
            n & 0xff
        );
        spec.insert("clusterIP".into(), json!(ip));
        spec.insert("clusterIPs".into(), json!([ip]));
        spec.insert("ipFamilies".into(), json!(["IPv4"]));
        spec.insert("ipFamilyPolicy".into(), json!("SingleStack"));
        spec.entry("internalTrafficPolicy")
            .or_insert(json!("Cluster"));
    }

    fn register_crd(&self, crd: &Value) -> ApiResult<()> {
        let infos = crd_resources(crd).map_err(|e| {
            ApiError::invalid(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                meta_str(crd, "name").unwrap_or(""),
                vec![("spec".into(), e)],
            )
        })?;
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or("");
        let plural = crd
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or("");
        self.registry.set_crd_resources(group, plural, infos);
        Ok(())
    }

    fn mark_crd_established(&self, name: &str) {
        let Ok(info) = self.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        else {
            return;
        };
        let _ = self.store.mutate(&info.gr(), &(String::new(), name.to_string()), |old, _| {
            let Some(old) = old else { return Ok::<_, ApiError>(Mutation::Unchanged) };
            let mut new = old.clone();
            let t = now();
            let names = old.pointer("/spec/names").cloned().unwrap_or(json!({}));
            new["status"] = json!({
                "acceptedNames": names,
                "storedVersions": old.pointer("/spec/versions").and_then(Value::as_array).map(|vs| {
                    vs.iter().filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true)).filter_map(|v| v.get("name").cloned()).collect::<Vec<_>>()
                }).unwrap_or_default(),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": t},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": t},
                ],
            });
            if new == *old { Ok(Mutation::Unchanged) } else { Ok(Mutation::Put(new)) }
        });
    }

    /// The common tail of update, patch and apply: restore what the client may not change,
    /// admit, bump generation, track managed fields, and finish deletions whose finalizers cleared.
    #[allow(clippy::too_many_arguments)]
    fn commit(
        &self,
        info: &ResourceInfo,
        sub: Sub,
        old: &Value,
        mut new: Value,
        manager: &str,
        track: bool,
        strict: bool,
    ) -> ApiResult<Mutation> {
        if !new.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was not a JSON object",
            ));
        }
        let name = meta_str(old, "name").unwrap_or("").to_string();
        if let Some(rv) = meta_str(&new, "resourceVersion")
            && !rv.is_empty()
            && Some(rv) != meta_str(old, "resourceVersion")
        {
            return Err(ApiError::stale(&qualified(info), &name));
        }
        if let Some(u) = meta_str(&new, "uid")
            && !u.is_empty()
            && Some(u) != meta_str(old, "uid")
        {
            return Err(ApiError::conflict(
                &qualified(info),
                &name,
                &format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {}",
                    meta_str(old, "uid").unwrap_or("")
                ),
            ));
        }
        if let Some(n) = meta_str(&new, "name")
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        new["apiVersion"] = Value::String(info.storage_api_version());
        new["kind"] = Value::String(info.kind.clone());
        let applied_fields = new.pointer("/metadata/managedFields").cloned();
        match sub {
            Sub::Status => {
                let status = new.get("status").cloned();
                let mut base = old.clone();
                match status {
                    Some(s) => base["status"] = s,
                    None => {
                        base.as_object_mut().map(|m| m.remove("status"));
                    }
                }
                new = base;
            }
            Sub::Main | Sub::Scale if info.status => match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().map(|m| m.remove("status"));
                }
            },
            Sub::Main | Sub::Scale => {}
        }
        {
            let om = meta(old).cloned().unwrap_or_default();
            let m = meta_mut(&mut new);
            for f in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "resourceVersion",
            ] {
                match om.get(f) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            match (track, &applied_fields) {
                // Apply computed managedFields already; keep them.
                (false, Some(mf)) => m.insert("managedFields".into(), mf.clone()),
                (false, None) => m.remove("managedFields"),
                (true, _) => match om.get("managedFields") {
                    Some(v) => m.insert("managedFields".into(), v.clone()),
                    None => m.remove("managedFields"),
                },
            };
        }
        if info.plural == "namespaces" {
            new["spec"] = old.get("spec").cloned().unwrap_or(json!({}));
        }
        if info.group.is_empty() && info.plural == "services" {
            // clusterIP is immutable; an update that omits it keeps the allocated one.
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                if new.pointer(&format!("/spec/{f}")).is_none()
                    && let Some(v) = old.pointer(&format!("/spec/{f}"))
                    && new.get("spec").is_some_and(Value::is_object)
                {
                    new["spec"][f] = v.clone();
                }
            }
        }
        self.admit(info, &mut new, Some(old), strict)?;
        let immutable = defaults::immutable_violations(info, old, &new);
        if !immutable.is_empty() {
            return Err(ApiError::invalid(&info.kind, &info.group, &name, immutable));
        }
        if info.tracks_generation && !same_spec(info, old, &new) {
            let g = meta(old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if track {
            let now = now();
            let subresource = match sub {
                Sub::Status => "status",
                Sub::Scale => "scale",
                Sub::Main => "",
            };
            let part = if sub == Sub::Status {
                Part::Status
            } else {
                Part::Main {
                    has_status: info.status,
                }
            };
            apply::track_update(
                &WriteContext {
                    info,
                    manager,
                    subresource,
                    part,
                    now: &now,
                },
                Some(old),
                &mut new,
            );
        }
        if same_but_version(&new, old) {
            return Ok(Mutation::Unchanged);
        }
        if meta(&new).is_some_and(|m| m.contains_key("deletionTimestamp"))
            && finalizers_empty(&new)
            && info.plural != "namespaces"
            && !pod_awaits_kubelet(info, &new)
        {
            return Ok(Mutation::Delete);
        }
        Ok(Mutation::Put(new))
    }

    pub fn update(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        sub: Sub,
        body: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        let manager = opts
            .field_manager
            .clone()
            .unwrap_or_else(|| "unknown".into());
        let out = self
            .store
            .mutate(&info.gr(), &Self::key(info, ns, name), |old, _| {
                let Some(old) = old else {
                    return Err(ApiError::not_found(&qualified(info), name));
                };
                let m = self.commit(
                    info,
                    sub,
                    old,
                    to_storage(info, body),
                    &manager,
                    true,
                    opts.strict,
                )?;
                if opts.dry_run {
                    return Err(dry_run_result(m, old));
                }
                Ok(m)
            });
        self.finish_write(info, ns, name, out)
    }

    fn finish_write(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        out: ApiResult<Option<Arc<Value>>>,
    ) -> ApiResult<Value> {
        match out {
            Ok(Some(v)) => {
                // A CRD serves what was stored, only after the write was admitted.
                if info.plural == "customresourcedefinitions" {
                    if self.try_get(info, ns, name).is_some() {
                        let _ = self.register_crd(&v);
                        self.mark_crd_established(name);
                    } else {
                        self.drop_crd(&v);
                    }
                }
                Ok(as_version(info, &v))
            }
            Ok(None) => Err(ApiError::not_found(&qualified(info), name)),
            Err(e) if e.reason == "DryRun" => {
                let _ = ns;
                Ok(e.details.unwrap_or(Value::Null))
            }
            Err(e) => Err(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        sub: Sub,
        ptype: PatchType,
        body: &Value,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        let manager = opts.field_manager.clone();
        if ptype == PatchType::Apply && manager.as_deref().unwrap_or("").is_empty() {
            return Err(ApiError::invalid(
                "PatchOptions",
                "meta.k8s.io",
                "",
                vec![(
                    "fieldManager".into(),
                    "Required value: is required for apply patch".into(),
                )],
            ));
        }
        let manager = manager.unwrap_or_else(|| "unknown".into());
        if ptype == PatchType::Apply {
            if let Some(n) = body.pointer("/metadata/name").and_then(Value::as_str)
                && n != name
            {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
            if self.try_get(info, ns, name).is_none() {
                return self.apply_create(info, ns, name, body, &manager, opts);
            }
        }
        let out = self.store.mutate(&info.gr(), &Self::key(info, ns, name), |old, _| {
            let Some(old) = old else {
                return Err(ApiError::not_found(&qualified(info), name));
            };
            let old_v = as_version(info, old);
            let (candidate, track) = match ptype {
                PatchType::Merge => {
                    let mut c = old_v.clone();
                    patch::json_merge(&mut c, body);
                    (c, true)
                }
                PatchType::Json => {
                    let mut c = old_v.clone();
                    patch::json_patch(&mut c, body)?;
                    (c, true)
                }
                PatchType::Strategic => {
                    if info.crd.is_some() {
                        return Err(ApiError::unsupported_media(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
                        ));
                    }
                    let mut c = old_v.clone();
                    patch::strategic_merge(info, &mut c, body, &mut Vec::new())?;
                    (c, true)
                }
                PatchType::Apply => {
                    let now = now();
                    let subresource = if sub == Sub::Status { "status" } else { "" };
                    let part = if sub == Sub::Status { Part::Status } else { Part::Main { has_status: info.status } };
                    let ctx = WriteContext { info, manager: &manager, subresource, part, now: &now };
                    let mut applied = body.clone();
                    if let Some(m) = applied.as_object_mut() {
                        m.remove("apiVersion");
                        m.remove("kind");
                        if let Some(md) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                            md.remove("name");
                            md.remove("namespace");
                        }
                    }
                    let c = apply::apply(&ctx, &old_v, &applied, opts.force)
                        .map_err(|c| ApiError::apply_conflict(&qualified(info), name, &info.api_version(), &c))?;
                    (c, false)
                }
            };
            let m = self.commit(info, sub, old, to_storage(info, candidate), &manager, track, opts.strict)?;
            if opts.dry_run {
                return Err(dry_run_result(m, old));
            }
            Ok(m)
        });
        self.finish_write(info, ns, name, out)
    }

    fn apply_create(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        body: &Value,
        manager: &str,
        opts: &WriteOptions,
    ) -> ApiResult<Value> {
        let now = now();
        let ctx = WriteContext {
            info,
            manager,
            subresource: "",
            part: Part::Main {
                has_status: info.status,
            },
            now: &now,
        };
        let mut applied = body.clone();
        if let Some(m) = applied.as_object_mut() {
            m.remove("apiVersion");
            m.remove("kind");
        }
        let mut obj = apply::apply(&ctx, &json!({}), &applied, opts.force).map_err(|c| {
            ApiError::apply_conflict(&qualified(info), name, &info.api_version(), &c)
        })?;
        meta_mut(&mut obj).insert("name".into(), json!(name));
        let managed = obj.pointer("/metadata/managedFields").cloned();
        let mut obj = self.prepare_create(info, ns, to_storage(info, obj), opts.strict)?;
        if let Some(mf) = managed {
            meta_mut(&mut obj).insert("managedFields".into(), mf);
        }
        self.insert_new(info, obj, opts.dry_run)
    }

    pub fn delete(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> ApiResult<Value> {
        let policy = opts
            .propagation
            .clone()
            .unwrap_or_else(|| "Background".into());
        if policy == "Orphan"
            && let Some(obj) = self.try_get(info, ns, name)
            && let Some(u) = meta_str(&obj, "uid")
        {
            self.orphan_dependents(u);
        }
        let out = self.store.mutate(&info.gr(), &Self::key(info, ns, name), |old, _| {
            let Some(old) = old else {
                return Err(ApiError::not_found(&qualified(info), name));
            };
            if let Some(u) = &opts.uid
                && Some(u.as_str()) != meta_str(old, "uid")
            {
                return Err(ApiError::conflict(&qualified(info), name, &format!(
                    "Precondition failed: UID in precondition: {u}, UID in object meta: {}", meta_str(old, "uid").unwrap_or(""))));
            }
            if let Some(rv) = &opts.resource_version
                && Some(rv.as_str()) != meta_str(old, "resourceVersion")
            {
                return Err(ApiError::conflict(&qualified(info), name, &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}", meta_str(old, "resourceVersion").unwrap_or(""))));
            }
            if opts.dry_run {
                return Ok(Mutation::Unchanged);
            }
            let mut new = old.clone();
            let already = meta(old).is_some_and(|m| m.contains_key("deletionTimestamp"));
            let is_pod = info.group.is_empty() && info.plural == "pods";
            let is_ns = info.group.is_empty() && info.plural == "namespaces";
            let mut pending = false;
            if is_ns {
                new["status"] = json!({"phase": "Terminating"});
                pending = true;
            }
            if policy == "Foreground" {
                let m = meta_mut(&mut new);
                let fins = m.entry("finalizers").or_insert(json!([]));
                if let Some(a) = fins.as_array_mut()
                    && !a.iter().any(|f| f == "foregroundDeletion")
                {
                    a.push(json!("foregroundDeletion"));
                }
            }
            if !finalizers_empty(&new) {
                pending = true;
            }
            if is_pod {
                let bound = old.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
                let phase = old.pointer("/status/phase").and_then(Value::as_str).unwrap_or("");
                let terminal = phase == "Succeeded" || phase == "Failed";
                let grace = opts.grace_seconds.or_else(|| old.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64)).unwrap_or(30);
                if bound && !terminal && grace > 0 {
                    pending = true;
                    let prev = meta(old).and_then(|m| m.get("deletionGracePeriodSeconds")).and_then(Value::as_i64);
                    if prev.is_none_or(|p| grace < p) {
                        let m = meta_mut(&mut new);
                        m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                        let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
                        m.insert("deletionTimestamp".into(), json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
                    }
                } else if finalizers_empty(&new) {
                    pending = false;
                } else {
                    meta_mut(&mut new).insert("deletionGracePeriodSeconds".into(), json!(0));
                }
            }
            if !pending {
                return Ok(Mutation::Delete);
            }
            let m = meta_mut(&mut new);
            if !already && !m.contains_key("deletionTimestamp") {
                m.insert("deletionTimestamp".into(), json!(now()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
            }
            if info.tracks_generation && !already {
                let g = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
                m.insert("generation".into(), json!(g + 1));
            }
            if new == *old {
                Ok(Mutation::Unchanged)
            } else {
                Ok(Mutation::Put(new))
            }
        });
        let v = match out {
            Ok(Some(v)) => v,
            Ok(None) => return Err(ApiError::not_found(&qualified(info), name)),
            Err(e) => return Err(e),
        };
        let gone = self.try_get(info, ns, name).is_none();
        if gone && info.plural == "customresourcedefinitions" {
            self.drop_crd(&v);
        }
        Ok(as_version(info, &v))
    }

    fn drop_crd(&self, crd: &Value) {
        let group = crd
            .pointer("/spec/group")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let plural = crd
            .pointer("/spec/names/plural")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let gr = GroupResource::new(&group, &plural);
        for obj in self.store.list(&gr, None).items {
            let key = (
                meta_str(&obj, "namespace").unwrap_or("").to_string(),
                meta_str(&obj, "name").unwrap_or("").to_string(),
            );
            let _ = self
                .store
                .mutate(&gr, &key, |_, _| Ok::<_, ApiError>(Mutation::Delete));
        }
        self.registry.set_crd_resources(&group, &plural, Vec::new());
    }

    /// Remove ownerReferences to `owner_uid` everywhere (Orphan propagation).
    pub fn orphan_dependents(&self, owner_uid: &str) {
        for gr in self.store.resources() {
            for obj in self.store.list(&gr, None).items {
                let owned = obj
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|a| {
                        a.iter()
                            .any(|r| r.get("uid").and_then(Value::as_str) == Some(owner_uid))
                    });
                if !owned {
                    continue;
                }
                let key = (
                    meta_str(&obj, "namespace").unwrap_or("").to_string(),
                    meta_str(&obj, "name").unwrap_or("").to_string(),
                );
                let _ = self.store.mutate(&gr, &key, |cur, _| {
                    let Some(cur) = cur else {
                        return Ok::<_, ApiError>(Mutation::Unchanged);
                    };
                    let mut new = cur.clone();
                    if let Some(refs) = new
                        .pointer_mut("/metadata/ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(owner_uid));
                    }
                    Ok(Mutation::Put(new))
                });
            }
        }
    }

    /// Internal status write by a built-in controller (no managed-fields bookkeeping beyond Update).
    pub fn write_status(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        status: Value,
        manager: &str,
    ) -> ApiResult<Value> {
        let out = self
            .store
            .mutate(&info.gr(), &Self::key(info, ns, name), |old, _| {
                let Some(old) = old else {
                    return Err(ApiError::not_found(&qualified(info), name));
                };
                // The controllers write status at every resync; most of those change nothing.
                if old.get("status") == Some(&status) {
                    return Ok(Mutation::Unchanged);
                }
                let mut new = old.clone();
                new["status"] = status;
                if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                self.commit(info, Sub::Status, old, new, manager, true, false)
            });
        self.finish_write(info, ns, name, out)
    }

    /// Internal read-modify-write for controllers; `f` returns None to leave the object alone.
    pub fn modify(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        manager: &str,
        f: impl FnOnce(&Value) -> Option<Value>,
    ) -> ApiResult<Value> {
        self.modify_as(info, ns, name, manager, Sub::Main, f)
    }

    /// Like `modify`, recording the write against a subresource (`/scale` writes).
    pub fn modify_as(
        &self,
        info: &ResourceInfo,
        ns: &str,
        name: &str,
        manager: &str,
        sub: Sub,
        f: impl FnOnce(&Value) -> Option<Value>,
    ) -> ApiResult<Value> {
        let out = self
            .store
            .mutate(&info.gr(), &Self::key(info, ns, name), |old, _| {
                let Some(old) = old else {
                    return Err(ApiError::not_found(&qualified(info), name));
                };
                match f(old) {
                    None => Ok(Mutation::Unchanged),
                    // Nothing to admit or track: the same object was stored before.
                    Some(new) if new == *old => Ok(Mutation::Unchanged),
                    Some(new) => self.commit(info, sub, old, new, manager, true, false),
                }
            });
        self.finish_write(info, ns, name, out)
    }

    /// Record a core/v1 Event about `involved`, as the built-in components do (best effort).
    pub fn record_event(
        &self,
        involved: &Value,
        type_: &str,
        reason: &str,
        message: &str,
        component: &str,
    ) {
        let Ok(info) = self.resource("", "v1", "events") else {
            return;
        };
        let ns = meta_str(involved, "namespace")
            .filter(|n| !n.is_empty())
            .unwrap_or("default");
        let name = meta_str(involved, "name").unwrap_or("");
        let t = now();
        let ev = json!({
            "metadata": {"name": format!("{name}.{}", random_suffix(10)), "namespace": ns},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                "namespace": meta_str(involved, "namespace"), "name": name,
                "uid": meta_str(involved, "uid"), "resourceVersion": meta_str(involved, "resourceVersion"),
            },
            "type": type_, "reason": reason, "message": message,
            "source": {"component": component},
            "firstTimestamp": t, "lastTimestamp": t, "count": 1,
            "reportingComponent": component, "reportingInstance": "",
        });
        let opts = WriteOptions {
            field_manager: Some(component.into()),
            ..Default::default()
        };
        let _ = self.create(&info, ns, ev, &opts);
    }

    /// Remove an object now, whatever its state (the kubelet finishing a graceful pod deletion).
    pub fn remove_now(&self, info: &ResourceInfo, ns: &str, name: &str) {
        let _ = self
            .store
            .mutate(&info.gr(), &Self::key(info, ns, name), |old, _| {
                Ok::<_, ApiError>(if old.is_some() {
                    Mutation::Delete
                } else {
                    Mutation::Unchanged
                })
            });
    }
}

/// A bound, running pod being deleted stays until the kubelet has stopped it.
fn pod_awaits_kubelet(info: &ResourceInfo, pod: &Value) -> bool {
    if !(info.group.is_empty() && info.plural == "pods") {
        return false;
    }
    let bound = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    let phase = pod
        .pointer("/status/phase")
        .and_then(Value::as_str)
        .unwrap_or("");
    let grace = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    bound && phase != "Succeeded" && phase != "Failed" && grace > 0
}

/// Dry runs compute the result and then abort the store mutation carrying it.
fn dry_run_result(m: Mutation, old: &Value) -> ApiError {
    let v = match m {
        Mutation::Put(v) => v,
        _ => old.clone(),
    };
    ApiError {
        code: 200,
        reason: "DryRun",
        message: String::new(),
        details: Some(v),
    }
}

fn validate_crd(crd: &Value) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    let Some(spec) = crd.get("spec") else {
        return vec![("spec".into(), "Required value".into())];
    };
    let group = spec.get("group").and_then(Value::as_str).unwrap_or("");
    let plural = spec
        .pointer("/names/plural")
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = meta_str(crd, "name").unwrap_or("");
    if name != format!("{plural}.{group}") {
        errs.push((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"),
        ));
    }
    if spec
        .pointer("/names/kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        errs.push(("spec.names.kind".into(), "Required value".into()));
    }
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        errs.push(("spec.versions".into(), "Required value".into()));
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        errs.push((
            "spec.versions".into(),
            "Invalid value: must have exactly one version marked as storage version".into(),
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        match v.pointer("/schema/openAPIV3Schema") {
            None => errs.push((
                format!("spec.versions[{i}].schema.openAPIV3Schema"),
                "Required value: schemas are required".into(),
            )),
            Some(s) => {
                crate::schema::structural_errors(
                    s,
                    &format!("spec.versions[{i}].schema.openAPIV3Schema"),
                    &mut errs,
                );
                let compiled = crate::schema::CrdVersionSchema::new(Some(s.clone()), group, "", "");
                for e in compiled.compile_errors() {
                    errs.push((
                        format!("spec.versions[{i}].schema.openAPIV3Schema"),
                        format!("Invalid value: compilation failed: {e}"),
                    ));
                }
            }
        }
    }
    errs
}

/// Field renames between core/v1 Event and events.k8s.io/v1 Event (same storage upstream).
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("count", "deprecatedCount"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("source", "deprecatedSource"),
    ("reportingComponent", "reportingController"),
];

/// Convert an Event between storage (core/v1) and events.k8s.io/v1 shapes.
pub fn convert_event(obj: &Value, to_core: bool) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for (core, v1) in EVENT_FIELDS {
            let (from, to) = if to_core { (v1, core) } else { (core, v1) };
            if let Some(v) = m.remove(*from) {
                m.insert(to.to_string(), v);
            }
        }
        let api = if to_core { "v1" } else { "events.k8s.io/v1" };
        m.insert("apiVersion".into(), Value::String(api.into()));
    }
    o
}

/// What a client sent, in the shape it is stored in.
pub fn to_storage(info: &ResourceInfo, obj: Value) -> Value {
    if info.is_events_v1() && obj.is_object() {
        return convert_event(&obj, true);
    }
    obj
}
