//! Just enough Kubernetes protobuf to accept what kubectl's generator commands send
//! (`kubectl create deployment|namespace|configmap|secret|serviceaccount|service|role|...`,
//! `kubectl run`): the `k8s\0` envelope and the fields those generators set, turned into JSON.
//! Unknown fields are skipped; responses are always JSON, which kubectl accepts.

use base64::Engine;
use serde_json::{Map, Value, json};

#[derive(Clone, Copy)]
enum K {
    Str,
    /// A pointer scalar in Go: present on the wire means set, even when zero.
    IntKeep,
    Int,
    Bool,
    BoolKeep,
    Msg(&'static [F]),
    MapStr,
    MapBytes,
    MapQuantity,
    IntOrStr,
    Time,
    Quantity,
}

#[derive(Clone, Copy)]
struct F(u64, &'static str, K, bool);

const fn f(n: u64, name: &'static str, k: K) -> F {
    F(n, name, k, false)
}

const fn r(n: u64, name: &'static str, k: K) -> F {
    F(n, name, k, true)
}

const TYPE_META: &[F] = &[f(1, "apiVersion", K::Str), f(2, "kind", K::Str)];
const OWNER_REF: &[F] = &[
    f(5, "apiVersion", K::Str),
    f(1, "kind", K::Str),
    f(3, "name", K::Str),
    f(4, "uid", K::Str),
    f(6, "controller", K::BoolKeep),
    f(7, "blockOwnerDeletion", K::BoolKeep),
];
const OBJECT_META: &[F] = &[
    f(1, "name", K::Str),
    f(2, "generateName", K::Str),
    f(3, "namespace", K::Str),
    f(5, "uid", K::Str),
    f(6, "resourceVersion", K::Str),
    f(7, "generation", K::Int),
    f(8, "creationTimestamp", K::Time),
    f(11, "labels", K::MapStr),
    f(12, "annotations", K::MapStr),
    r(13, "ownerReferences", K::Msg(OWNER_REF)),
    r(14, "finalizers", K::Str),
];
const LABEL_REQ: &[F] = &[
    f(1, "key", K::Str),
    f(2, "operator", K::Str),
    r(3, "values", K::Str),
];
const LABEL_SELECTOR: &[F] = &[
    f(1, "matchLabels", K::MapStr),
    r(2, "matchExpressions", K::Msg(LABEL_REQ)),
];
const CONTAINER_PORT: &[F] = &[
    f(1, "name", K::Str),
    f(2, "hostPort", K::Int),
    f(3, "containerPort", K::Int),
    f(4, "protocol", K::Str),
    f(5, "hostIP", K::Str),
];
const FIELD_REF: &[F] = &[f(1, "apiVersion", K::Str), f(2, "fieldPath", K::Str)];
const ENV_SOURCE: &[F] = &[f(1, "fieldRef", K::Msg(FIELD_REF))];
const ENV_VAR: &[F] = &[
    f(1, "name", K::Str),
    f(2, "value", K::Str),
    f(3, "valueFrom", K::Msg(ENV_SOURCE)),
];
const RESOURCES: &[F] = &[
    f(1, "limits", K::MapQuantity),
    f(2, "requests", K::MapQuantity),
];
const CONTAINER: &[F] = &[
    f(1, "name", K::Str),
    f(2, "image", K::Str),
    r(3, "command", K::Str),
    r(4, "args", K::Str),
    f(5, "workingDir", K::Str),
    r(6, "ports", K::Msg(CONTAINER_PORT)),
    r(7, "env", K::Msg(ENV_VAR)),
    f(8, "resources", K::Msg(RESOURCES)),
    f(13, "terminationMessagePath", K::Str),
    f(14, "imagePullPolicy", K::Str),
    f(16, "stdin", K::Bool),
    f(17, "stdinOnce", K::Bool),
    f(18, "tty", K::Bool),
    f(20, "terminationMessagePolicy", K::Str),
];
const POD_SPEC: &[F] = &[
    r(2, "containers", K::Msg(CONTAINER)),
    r(20, "initContainers", K::Msg(CONTAINER)),
    f(3, "restartPolicy", K::Str),
    f(4, "terminationGracePeriodSeconds", K::IntKeep),
    f(5, "activeDeadlineSeconds", K::IntKeep),
    f(6, "dnsPolicy", K::Str),
    f(7, "nodeSelector", K::MapStr),
    f(8, "serviceAccountName", K::Str),
    f(10, "nodeName", K::Str),
    f(11, "hostNetwork", K::Bool),
    f(16, "hostname", K::Str),
    f(19, "schedulerName", K::Str),
];
const POD_TEMPLATE: &[F] = &[
    f(1, "metadata", K::Msg(OBJECT_META)),
    f(2, "spec", K::Msg(POD_SPEC)),
];
const ROLLING_UPDATE: &[F] = &[
    f(1, "maxUnavailable", K::IntOrStr),
    f(2, "maxSurge", K::IntOrStr),
];
const STRATEGY: &[F] = &[
    f(1, "type", K::Str),
    f(2, "rollingUpdate", K::Msg(ROLLING_UPDATE)),
];
const DEPLOYMENT_SPEC: &[F] = &[
    f(1, "replicas", K::IntKeep),
    f(2, "selector", K::Msg(LABEL_SELECTOR)),
    f(3, "template", K::Msg(POD_TEMPLATE)),
    f(4, "strategy", K::Msg(STRATEGY)),
    f(5, "minReadySeconds", K::Int),
    f(6, "revisionHistoryLimit", K::IntKeep),
    f(7, "paused", K::Bool),
    f(9, "progressDeadlineSeconds", K::IntKeep),
];
const SERVICE_PORT: &[F] = &[
    f(1, "name", K::Str),
    f(2, "protocol", K::Str),
    f(3, "port", K::Int),
    f(4, "targetPort", K::IntOrStr),
    f(5, "nodePort", K::Int),
    f(6, "appProtocol", K::Str),
];
const SERVICE_SPEC: &[F] = &[
    r(1, "ports", K::Msg(SERVICE_PORT)),
    f(2, "selector", K::MapStr),
    f(3, "clusterIP", K::Str),
    f(4, "type", K::Str),
    r(5, "externalIPs", K::Str),
    f(7, "sessionAffinity", K::Str),
    f(11, "externalName", K::Str),
];
const NAMESPACE_SPEC: &[F] = &[r(1, "finalizers", K::Str)];
const LOCAL_REF: &[F] = &[f(1, "name", K::Str)];
const POLICY_RULE: &[F] = &[
    r(1, "verbs", K::Str),
    r(2, "apiGroups", K::Str),
    r(3, "resources", K::Str),
    r(4, "resourceNames", K::Str),
    r(5, "nonResourceURLs", K::Str),
];
const SUBJECT: &[F] = &[
    f(1, "kind", K::Str),
    f(2, "apiGroup", K::Str),
    f(3, "name", K::Str),
    f(4, "namespace", K::Str),
];
const ROLE_REF: &[F] = &[
    f(1, "apiGroup", K::Str),
    f(2, "kind", K::Str),
    f(3, "name", K::Str),
];
const PDB_SPEC: &[F] = &[
    f(1, "minAvailable", K::IntOrStr),
    f(2, "selector", K::Msg(LABEL_SELECTOR)),
    f(3, "maxUnavailable", K::IntOrStr),
];

fn meta_spec_status(spec: &'static [F]) -> Vec<F> {
    vec![
        f(1, "metadata", K::Msg(OBJECT_META)),
        f(2, "spec", K::Msg(spec)),
        f(3, "status", K::Msg(&[])),
    ]
}

fn schema(api_version: &str, kind: &str) -> Option<Vec<F>> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => meta_spec_status(NAMESPACE_SPEC),
        ("v1", "Pod") => meta_spec_status(POD_SPEC),
        ("v1", "Service") => meta_spec_status(SERVICE_SPEC),
        ("apps/v1", "Deployment") => meta_spec_status(DEPLOYMENT_SPEC),
        ("policy/v1", "PodDisruptionBudget") => meta_spec_status(PDB_SPEC),
        ("v1", "ConfigMap") => vec![
            f(1, "metadata", K::Msg(OBJECT_META)),
            f(2, "data", K::MapStr),
            f(3, "binaryData", K::MapBytes),
            f(4, "immutable", K::BoolKeep),
        ],
        ("v1", "Secret") => vec![
            f(1, "metadata", K::Msg(OBJECT_META)),
            f(2, "data", K::MapBytes),
            f(3, "type", K::Str),
            f(4, "stringData", K::MapStr),
            f(5, "immutable", K::BoolKeep),
        ],
        ("v1", "ServiceAccount") => vec![
            f(1, "metadata", K::Msg(OBJECT_META)),
            r(3, "imagePullSecrets", K::Msg(LOCAL_REF)),
            f(4, "automountServiceAccountToken", K::BoolKeep),
        ],
        ("rbac.authorization.k8s.io/v1", "Role" | "ClusterRole") => {
            vec![
                f(1, "metadata", K::Msg(OBJECT_META)),
                r(2, "rules", K::Msg(POLICY_RULE)),
            ]
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => vec![
            f(1, "metadata", K::Msg(OBJECT_META)),
            r(2, "subjects", K::Msg(SUBJECT)),
            f(3, "roleRef", K::Msg(ROLE_REF)),
        ],
        _ => return None,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.i)?;
            self.i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.varint()? as usize;
        let s = self.b.get(self.i..self.i.checked_add(n)?)?;
        self.i += n;
        Some(s)
    }

    /// Next (field number, value) with value as Varint or Bytes; fixed-width values are skipped.
    fn next(&mut self) -> Option<Option<(u64, Wire<'a>)>> {
        if self.i >= self.b.len() {
            return Some(None);
        }
        let tag = self.varint()?;
        let (num, wt) = (tag >> 3, tag & 7);
        let w = match wt {
            0 => Wire::Varint(self.varint()?),
            2 => Wire::Bytes(self.bytes()?),
            1 => {
                self.i += 8;
                Wire::Skip
            }
            5 => {
                self.i += 4;
                Wire::Skip
            }
            _ => return None,
        };
        Some(Some((num, w)))
    }
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Skip,
}

fn fields(b: &[u8]) -> Option<Vec<(u64, Wire<'_>)>> {
    let mut r = Reader { b, i: 0 };
    let mut out = Vec::new();
    while let Some(x) = r.next()? {
        out.push(x);
    }
    Some(out)
}

fn string(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}

fn map_entry(b: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut key = String::new();
    let mut val = Vec::new();
    for (n, w) in fields(b)? {
        match (n, w) {
            (1, Wire::Bytes(k)) => key = String::from_utf8_lossy(k).into_owned(),
            (2, Wire::Bytes(v)) => val = v.to_vec(),
            _ => {}
        }
    }
    Some((key, val))
}

fn decode_value(k: K, w: &Wire) -> Option<Option<Value>> {
    Some(match (k, w) {
        (K::Str, Wire::Bytes(b)) => (!b.is_empty()).then(|| string(b)),
        (K::Int, Wire::Varint(v)) => (*v != 0).then(|| json!(*v as i64)),
        (K::IntKeep, Wire::Varint(v)) => Some(json!(*v as i64)),
        (K::Bool, Wire::Varint(v)) => (*v != 0).then_some(Value::Bool(true)),
        (K::BoolKeep, Wire::Varint(v)) => Some(Value::Bool(*v != 0)),
        (K::Msg(s), Wire::Bytes(b)) => Some(message(s, b)?),
        (K::Quantity, Wire::Bytes(b)) => {
            let mut q = None;
            for (n, w) in fields(b)? {
                if let (1, Wire::Bytes(s)) = (n, w) {
                    q = Some(string(s));
                }
            }
            q
        }
        (K::IntOrStr, Wire::Bytes(b)) => {
            let (mut t, mut i, mut s) = (0, 0i64, String::new());
            for (n, w) in fields(b)? {
                match (n, w) {
                    (1, Wire::Varint(v)) => t = v,
                    (2, Wire::Varint(v)) => i = v as i32 as i64,
                    (3, Wire::Bytes(b)) => s = String::from_utf8_lossy(b).into_owned(),
                    _ => {}
                }
            }
            Some(if t == 1 { json!(s) } else { json!(i) })
        }
        (K::Time, Wire::Bytes(b)) => {
            let mut secs = 0i64;
            for (n, w) in fields(b)? {
                if let (1, Wire::Varint(v)) = (n, w) {
                    secs = v as i64;
                }
            }
            (secs != 0)
                .then(|| chrono::DateTime::from_timestamp(secs, 0))
                .flatten()
                .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        }
        _ => None,
    })
}

fn message(schema: &[F], b: &[u8]) -> Option<Value> {
    let mut out = Map::new();
    for (num, w) in fields(b)? {
        let Some(F(_, name, kind, repeated)) = schema.iter().find(|x| x.0 == num).copied() else {
            continue;
        };
        match kind {
            K::MapStr | K::MapBytes | K::MapQuantity => {
                let Wire::Bytes(e) = w else { continue };
                let (key, val) = map_entry(e)?;
                let v = match kind {
                    K::MapStr => string(&val),
                    K::MapBytes => json!(base64::engine::general_purpose::STANDARD.encode(&val)),
                    _ => decode_value(K::Quantity, &Wire::Bytes(&val))?.unwrap_or(Value::Null),
                };
                let m = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
                if let Some(m) = m.as_object_mut() {
                    m.insert(key, v);
                }
            }
            _ => {
                let v = decode_value(kind, &w)?;
                if repeated {
                    let list = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
                    if let (Some(l), Some(v)) = (
                        list.as_array_mut(),
                        v.or_else(|| matches!(kind, K::Str).then(|| json!(""))),
                    ) {
                        l.push(v);
                    }
                } else if let Some(v) = v {
                    out.insert(name.to_string(), v);
                }
            }
        }
    }
    Some(Value::Object(out))
}

/// Decode a `k8s\0`-prefixed protobuf body into the JSON object it represents.
/// None when the envelope or kind is not one devcluster understands.
pub fn decode(body: &[u8]) -> Option<Value> {
    let rest = body.strip_prefix(b"k8s\0")?;
    let mut type_meta = Value::Null;
    let mut raw: &[u8] = &[];
    for (n, w) in fields(rest)? {
        match (n, w) {
            (1, Wire::Bytes(b)) => type_meta = message(TYPE_META, b)?,
            (2, Wire::Bytes(b)) => raw = b,
            _ => {}
        }
    }
    let api_version = type_meta.get("apiVersion")?.as_str()?.to_string();
    let kind = type_meta.get("kind")?.as_str()?.to_string();
    let s = schema(&api_version, &kind)?;
    let mut obj = message(&s, raw)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    Some(obj)
}
