//! Field ownership (`metadata.managedFields`, FieldsV1) and server-side apply.
//!
//! Ownership is tracked per (manager, operation, subresource). Apply merges the applied
//! configuration, reports conflicts with other managers unless forced, and removes fields the
//! applying manager set before but no longer sets (when nobody else owns them).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::patch::{item_key, list_kind};
use crate::registry::ResourceInfo;
use crate::schema::ListKind;

/// A set of field paths in the FieldsV1 shape: a tree whose leaves are owned fields;
/// a `.` child marks ownership of a list item itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldSet(pub BTreeMap<String, FieldSet>);

const SKIPPED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Which part of the object a write addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The main resource; `status` excluded when the kind has a status subresource.
    Main {
        has_status: bool,
    },
    Status,
    Whole,
}

impl FieldSet {
    pub fn of(info: &ResourceInfo, obj: &Value, part: Part) -> FieldSet {
        let mut out = FieldSet::default();
        if let Some(m) = obj.as_object() {
            for (k, v) in m {
                if matches!(k.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                match part {
                    Part::Main { has_status: true } if k == "status" => continue,
                    Part::Status if k != "status" => continue,
                    _ => {}
                }
                let mut path = vec![k.clone()];
                let mut child = FieldSet::default();
                collect(info, v, &mut path, &mut child, k == "metadata");
                out.0.insert(format!("f:{k}"), child);
            }
        }
        out.0.retain(|k, v| !(k == "f:metadata" && v.0.is_empty()));
        out
    }

    pub fn from_v1(v: &Value) -> FieldSet {
        let mut out = FieldSet::default();
        if let Some(m) = v.as_object() {
            for (k, c) in m {
                out.0.insert(k.clone(), FieldSet::from_v1(c));
            }
        }
        out
    }

    pub fn to_v1(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.to_v1()))
                .collect::<Map<String, Value>>(),
        )
    }

    /// Every path in the set, inner nodes as well as leaves.
    pub fn nodes(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        fn walk(s: &FieldSet, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            for (k, v) in &s.0 {
                prefix.push(k.clone());
                out.push(prefix.clone());
                walk(v, prefix, out);
                prefix.pop();
            }
        }
        walk(self, &mut Vec::new(), &mut out);
        out
    }

    /// Whether `path` is in the set, as a leaf or as an inner node.
    pub fn contains(&self, path: &[String]) -> bool {
        let mut node = self;
        for p in path {
            match node.0.get(p) {
                Some(n) => node = n,
                None => return false,
            }
        }
        true
    }

    pub fn leaves(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        fn walk(s: &FieldSet, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
            for (k, v) in &s.0 {
                prefix.push(k.clone());
                if v.0.is_empty() {
                    out.push(prefix.clone());
                } else {
                    walk(v, prefix, out);
                }
                prefix.pop();
            }
        }
        walk(self, &mut Vec::new(), &mut out);
        out
    }

    pub fn insert(&mut self, path: &[String]) {
        let mut node = self;
        for p in path {
            node = node.0.entry(p.clone()).or_default();
        }
    }

    pub fn contains_leaf(&self, path: &[String]) -> bool {
        let mut node = self;
        for p in path {
            match node.0.get(p) {
                Some(n) => node = n,
                None => return false,
            }
        }
        node.0.is_empty()
    }

    /// Whether any owned path lies under `prefix`, or owns an ancestor of it.
    pub fn touches(&self, prefix: &[String]) -> bool {
        self.leaves()
            .iter()
            .any(|l| l.starts_with(prefix) || prefix.starts_with(l))
    }

    pub fn remove(&mut self, path: &[String]) {
        fn rm(node: &mut FieldSet, path: &[String]) -> bool {
            match path {
                [] => true,
                [first, rest @ ..] => {
                    if let Some(child) = node.0.get_mut(first)
                        && rm(child, rest)
                        && (rest.is_empty() || child.0.is_empty())
                    {
                        node.0.remove(first);
                    }
                    node.0.is_empty()
                }
            }
        }
        rm(self, path);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn collect(info: &ResourceInfo, v: &Value, path: &mut Vec<String>, out: &mut FieldSet, meta: bool) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, c) in m {
                if meta && path.len() == 1 && SKIPPED_META.contains(&k.as_str()) {
                    continue;
                }
                path.push(k.clone());
                let mut child = FieldSet::default();
                collect(info, c, path, &mut child, meta);
                path.pop();
                out.0.insert(format!("f:{k}"), child);
            }
        }
        Value::Array(items) => match list_kind(info, path) {
            ListKind::Atomic => {}
            ListKind::Set => {
                for i in items {
                    out.0.insert(format!("v:{i}"), FieldSet::default());
                }
            }
            ListKind::Map(keys) => {
                for i in items {
                    let mut child = FieldSet::default();
                    child.0.insert(".".into(), FieldSet::default());
                    collect(info, i, path, &mut child, meta);
                    out.0.insert(item_key(i, &keys), child);
                }
            }
        },
        _ => {}
    }
}

/// The value a field path addresses, if present.
pub fn value_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for p in path {
        if p == "." {
            return Some(cur);
        }
        cur = step(cur, p)?;
    }
    Some(cur)
}

fn step<'a>(cur: &'a Value, p: &str) -> Option<&'a Value> {
    if let Some(f) = p.strip_prefix("f:") {
        cur.get(f)
    } else if let Some(k) = p.strip_prefix("k:") {
        let want: Value = serde_json::from_str(k).ok()?;
        cur.as_array()?.iter().find(|i| item_has(i, &want))
    } else if let Some(v) = p.strip_prefix("v:") {
        let want: Value = serde_json::from_str(v).ok()?;
        cur.as_array()?.iter().find(|i| **i == want)
    } else {
        None
    }
}

fn item_has(item: &Value, want: &Value) -> bool {
    want.as_object().is_some_and(|w| {
        w.iter()
            .all(|(k, v)| crate::patch::key_field(item, k).as_ref() == Some(v))
    })
}

/// Remove the field a path addresses (a `.` leaf removes the list item itself).
pub fn remove_at(obj: &mut Value, path: &[String]) {
    let path: Vec<String> = if path.last().map(String::as_str) == Some(".") {
        path[..path.len() - 1].to_vec()
    } else {
        path.to_vec()
    };
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for p in parents {
        let next = if let Some(f) = p.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = p.strip_prefix("k:") {
            let Ok(want) = serde_json::from_str::<Value>(k) else {
                return;
            };
            cur.as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| item_has(i, &want)))
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(k), cur.as_array_mut()) {
            a.retain(|i| !item_has(i, &want));
        }
    } else if let Some(v) = last.strip_prefix("v:")
        && let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut())
    {
        a.retain(|i| *i != want);
    }
}

/// Merge an applied configuration into the live object with apply's list semantics.
pub fn merge_applied(
    info: &ResourceInfo,
    target: &mut Value,
    applied: &Value,
    path: &mut Vec<String>,
) {
    match (target.as_object_mut(), applied.as_object()) {
        (Some(t), Some(a)) => {
            for (k, av) in a {
                if av.is_null() {
                    t.remove(k);
                    continue;
                }
                path.push(k.clone());
                match (t.get_mut(k), av) {
                    (Some(tv @ Value::Object(_)), Value::Object(_)) => {
                        merge_applied(info, tv, av, path)
                    }
                    (Some(Value::Array(tl)), Value::Array(al)) => match list_kind(info, path) {
                        ListKind::Atomic => *tl = al.clone(),
                        ListKind::Set => {
                            for i in al {
                                if !tl.contains(i) {
                                    tl.push(i.clone());
                                }
                            }
                        }
                        ListKind::Map(keys) => {
                            for ai in al {
                                let k = item_key(ai, &keys);
                                match tl.iter_mut().find(|ti| item_key(ti, &keys) == k) {
                                    Some(ti) => merge_applied(info, ti, ai, path),
                                    None => tl.push(ai.clone()),
                                }
                            }
                        }
                    },
                    _ => {
                        t.insert(k.clone(), av.clone());
                    }
                }
                path.pop();
            }
        }
        _ => *target = applied.clone(),
    }
}

/// One managedFields entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub subresource: String,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    manager: e
                        .get("manager")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    operation: e
                        .get("operation")
                        .and_then(Value::as_str)
                        .unwrap_or("Update")
                        .into(),
                    subresource: e
                        .get("subresource")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    api_version: e
                        .get("apiVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .into(),
                    time: e.get("time").and_then(Value::as_str).unwrap_or("").into(),
                    fields: FieldSet::from_v1(e.get("fieldsV1").unwrap_or(&Value::Null)),
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": e.fields.to_v1(),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = Value::String(e.subresource.clone());
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

fn display(path: &[String]) -> String {
    let mut s = String::new();
    for p in path {
        if let Some(f) = p.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = p.strip_prefix("k:") {
            s.push('[');
            s.push_str(k);
            s.push(']');
        } else if let Some(v) = p.strip_prefix("v:") {
            s.push_str(&format!("[={v}]"));
        }
    }
    s
}

pub struct WriteContext<'a> {
    pub info: &'a ResourceInfo,
    pub manager: &'a str,
    pub subresource: &'a str,
    pub part: Part,
    pub now: &'a str,
}

/// Record an ordinary (non-apply) write: the fields it changed move to `manager`.
pub fn track_update(ctx: &WriteContext, old: Option<&Value>, new: &mut Value) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let new_fields = FieldSet::of(ctx.info, new, ctx.part);
    let null = Value::Null;
    let old_obj = old.unwrap_or(&null);
    let changed: Vec<Vec<String>> = new_fields
        .leaves()
        .into_iter()
        .filter(|l| value_at(old_obj, l) != value_at(new, l))
        .collect();
    // Fields that disappeared are owned by nobody anymore.
    let old_fields = old
        .map(|o| FieldSet::of(ctx.info, o, ctx.part))
        .unwrap_or_default();
    let gone: Vec<Vec<String>> = old_fields
        .leaves()
        .into_iter()
        .filter(|l| value_at(new, l).is_none())
        .collect();
    for e in &mut entries {
        for l in changed.iter().chain(gone.iter()) {
            e.fields.remove(l);
        }
    }
    if !changed.is_empty() {
        let idx = entries.iter().position(|e| {
            e.manager == ctx.manager && e.operation == "Update" && e.subresource == ctx.subresource
        });
        let entry = match idx {
            Some(i) => &mut entries[i],
            None => {
                entries.push(Entry {
                    manager: ctx.manager.into(),
                    operation: "Update".into(),
                    subresource: ctx.subresource.into(),
                    api_version: ctx.info.api_version(),
                    time: ctx.now.into(),
                    fields: FieldSet::default(),
                });
                entries.last_mut().expect("just pushed")
            }
        };
        entry.time = ctx.now.into();
        for l in &changed {
            entry.fields.insert(l);
        }
    }
    write_entries(new, &entries);
}

/// Server-side apply of `applied` by `ctx.manager` onto `live` (an empty object when creating).
/// Returns the new object or the conflicts (manager, field).
pub fn apply(
    ctx: &WriteContext,
    live: &Value,
    applied: &Value,
    force: bool,
) -> Result<Value, Vec<(String, String)>> {
    let mut entries = read_entries(live);
    let applied_fields = FieldSet::of(ctx.info, applied, ctx.part);
    let is_mine = |e: &Entry| {
        e.manager == ctx.manager && e.operation == "Apply" && e.subresource == ctx.subresource
    };
    let mut conflicts = Vec::new();
    let mut contested: Vec<Vec<String>> = Vec::new();
    for leaf in applied_fields.leaves() {
        if leaf.last().map(String::as_str) == Some(".") {
            continue;
        }
        let live_v = value_at(live, &leaf);
        if live_v.is_none() || live_v == value_at(applied, &leaf) {
            continue;
        }
        for e in entries
            .iter()
            // Status is its own world; main-resource and /scale writes own the same fields.
            .filter(|e| !is_mine(e) && (e.subresource == "status") == (ctx.subresource == "status"))
        {
            if e.fields.contains_leaf(&leaf) {
                conflicts.push((e.manager.clone(), display(&leaf)));
                contested.push(leaf.clone());
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    let previous = entries
        .iter()
        .find(|e| is_mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut others = FieldSet::default();
    for e in entries.iter().filter(|e| !is_mine(e)) {
        for l in e.fields.leaves() {
            if !contested.contains(&l) {
                others.insert(&l);
            }
        }
    }
    let mut out = live.clone();
    let mut dropped: Vec<Vec<String>> = previous
        .leaves()
        .into_iter()
        .filter(|l| !applied_fields.contains_leaf(l))
        .filter(|l| {
            let target = if l.last().map(String::as_str) == Some(".") {
                &l[..l.len() - 1]
            } else {
                &l[..]
            };
            !others.touches(target)
        })
        .collect();
    // A field holding others (`status.lastScaling`) goes with them when the applier set it
    // before, sets none of it now and nobody else owns any of it, as structured-merge-diff
    // does (it makes named fields members before removing). Removing only the leaves left an
    // empty object behind, which fails validation when its schema has required fields: an
    // apply that merely stopped setting the field was refused as invalid.
    dropped.extend(
        previous
            .nodes()
            .into_iter()
            .filter(|n| n.len() >= 2 && n[0] != "f:metadata")
            .filter(|n| n.last().is_some_and(|f| f.starts_with("f:")))
            .filter(|n| !previous.contains_leaf(n))
            .filter(|n| !applied_fields.contains(n) && !others.touches(n)),
    );
    dropped.sort_by_key(|l| std::cmp::Reverse(l.len()));
    for l in &dropped {
        remove_at(&mut out, l);
    }
    merge_applied(ctx.info, &mut out, applied, &mut Vec::new());
    for e in &mut entries {
        if !is_mine(e) {
            for l in &contested {
                e.fields.remove(l);
            }
        }
    }
    entries.retain(|e| !is_mine(e));
    entries.push(Entry {
        manager: ctx.manager.into(),
        operation: "Apply".into(),
        subresource: ctx.subresource.into(),
        api_version: ctx.info.api_version(),
        time: ctx.now.into(),
        fields: applied_fields,
    });
    write_entries(&mut out, &entries);
    Ok(out)
}
