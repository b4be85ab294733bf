//! Structural-schema handling for custom resources: pruning, defaulting, OpenAPI validation and
//! CEL `x-kubernetes-validations` (through kube-cel, which uses Kubernetes' CEL libraries).

use regex::Regex;
use serde_json::Value;

/// One served version's schema of a CRD.
pub struct CrdVersionSchema {
    pub schema: Option<Value>,
    compiled: Option<kube_cel::CompiledSchema>,
    root: kube_cel::RootContext,
    /// The text of the rules on the schema's root, to tell which parts they read.
    root_rules: String,
}

impl std::fmt::Debug for CrdVersionSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdVersionSchema").finish_non_exhaustive()
    }
}

/// How a list merges in strategic-merge patches and server-side apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

impl CrdVersionSchema {
    pub fn new(schema: Option<Value>, group: &str, version: &str, kind: &str) -> Self {
        let compiled = schema.as_ref().map(kube_cel::compile_schema);
        let root_rules = schema
            .as_ref()
            .and_then(|s| s.get("x-kubernetes-validations"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|r| r.get("rule").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n");
        Self {
            schema,
            compiled,
            root_rules,
            root: kube_cel::RootContext {
                api_version: format!("{group}/{version}"),
                api_group: group.into(),
                kind: kind.into(),
            },
        }
    }

    /// CEL rules that do not compile, reported when the CRD is written.
    pub fn compile_errors(&self) -> Vec<String> {
        fn walk(s: &kube_cel::CompiledSchema, out: &mut Vec<String>) {
            for e in s.compilation_errors() {
                out.push(e.to_string());
            }
            for c in s.properties.values() {
                walk(c, out);
            }
            if let Some(i) = &s.items {
                walk(i, out);
            }
            if let Some(a) = &s.additional_properties {
                walk(a, out);
            }
        }
        let mut out = Vec::new();
        if let Some(c) = &self.compiled {
            walk(c, &mut out);
        }
        out
    }

    /// Prune unknown fields and apply defaults, as the API server does before validation.
    /// Returns the paths of the unknown fields that were dropped.
    pub fn prune_and_default(&self, obj: &mut Value) -> Vec<String> {
        let Some(schema) = &self.schema else {
            return Vec::new();
        };
        let mut unknown = Vec::new();
        prune(schema, obj, true, "", &mut unknown);
        *obj = kube_cel::apply_defaults(schema, obj);
        unknown
    }

    /// OpenAPI validation, then CEL rules (transition rules see `old`). Returns (field, message).
    pub fn validate(&self, obj: &Value, old: Option<&Value>) -> Vec<(String, String)> {
        let Some(schema) = &self.schema else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        validate_node(schema, obj, "", &mut errors, true);
        if !errors.is_empty() {
            return errors;
        }
        if let Some(compiled) = &self.compiled {
            // Registering every CEL function is costly; keep one validator per thread.
            thread_local! {
                static VALIDATOR: kube_cel::Validator = kube_cel::Validator::new();
            }
            let ratcheted = old.and_then(|old| self.without_unchanged_parts(obj, old));
            let (checked, checked_old) = match &ratcheted {
                Some((new, old)) => (new, Some(old)),
                None => (obj, old),
            };
            let result = VALIDATOR.with(|v| {
                v.validate_compiled_with_context(compiled, checked, checked_old, Some(&self.root))
            });
            if let Err(errs) = result {
                for e in errs.into_vec() {
                    let field = e.field_path.trim_start_matches('.').to_string();
                    let value = field
                        .split('.')
                        .filter(|s| !s.is_empty())
                        .try_fold(obj, |v, seg| v.get(seg));
                    let shown = value.map(short).unwrap_or_else(|| "\"null\"".into());
                    errors.push((field, format!("Invalid value: {shown}: {}", e.message)));
                }
            }
        }
        errors
    }

    /// The new and old object without the top-level parts (`spec`, `status`, ...) an update
    /// left as they were, for the CEL rules; None when every part changed. The API server
    /// ratchets validation the same way (errors in unchanged parts do not fail an update), and
    /// it spares a status write the cost of every rule under `spec` (a QueueConsumer's
    /// name rules compile regular expressions each time they run). A part that a rule on the
    /// root names (`self.spec`) is always kept, so no root rule loses what it reads.
    fn without_unchanged_parts(&self, obj: &Value, old: &Value) -> Option<(Value, Value)> {
        let (new_map, old_map) = (obj.as_object()?, old.as_object()?);
        let unchanged: Vec<&String> = new_map
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "apiVersion" | "kind"))
            .filter(|(k, v)| old_map.get(*k) == Some(v))
            .filter(|(k, _)| !self.root_rules.contains(&format!("self.{k}")))
            .map(|(k, _)| k)
            .collect();
        if unchanged.is_empty() {
            return None;
        }
        let keep = |m: &serde_json::Map<String, Value>| -> Value {
            Value::Object(
                m.iter()
                    .filter(|(k, _)| !unchanged.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        };
        Some((keep(new_map), keep(old_map)))
    }

    /// The list semantics declared at a field path (field names only, list indices skipped).
    pub fn list_kind(&self, path: &[String]) -> ListKind {
        let Some(mut node) = self.schema.as_ref() else {
            return ListKind::Atomic;
        };
        for seg in path {
            let n = if node.get("type").and_then(Value::as_str) == Some("array") {
                node.get("items")
                    .and_then(|i| i.get("properties"))
                    .and_then(|p| p.get(seg))
            } else {
                node.get("properties")
                    .and_then(|p| p.get(seg))
                    .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))
            };
            match n {
                Some(n) => node = n,
                None => return ListKind::Atomic,
            }
        }
        match node.get("x-kubernetes-list-type").and_then(Value::as_str) {
            Some("set") => ListKind::Set,
            Some("map") => ListKind::Map(
                node.get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|k| k.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            _ => ListKind::Atomic,
        }
    }
}

fn preserves_unknown(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn prune(schema: &Value, value: &mut Value, root: bool, path: &str, unknown: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let keep_unknown = preserves_unknown(schema)
                || schema.get("x-kubernetes-int-or-string").is_some()
                || schema.get("additionalProperties").and_then(Value::as_bool) == Some(true);
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_schema = props.and_then(|p| p.get(&k)).or(additional);
                match child_schema {
                    Some(cs) => {
                        let nullable = cs.get("nullable").and_then(Value::as_bool) == Some(true);
                        if map.get(&k).is_some_and(Value::is_null) && !nullable {
                            map.remove(&k);
                        } else if let Some(child) = map.get_mut(&k) {
                            let p = if path.is_empty() {
                                k.clone()
                            } else {
                                format!("{path}.{k}")
                            };
                            prune(cs, child, false, &p, unknown);
                        }
                    }
                    None if keep_unknown => {}
                    None if props.is_none()
                        && additional.is_none()
                        && schema.get("type").is_none() => {}
                    None => {
                        map.remove(&k);
                        unknown.push(if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        });
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = schema.get("items") {
                for (n, i) in items.iter_mut().enumerate() {
                    prune(is, i, false, &format!("{path}[{n}]"), unknown);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn short(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

fn validate_node(
    schema: &Value,
    value: &Value,
    path: &str,
    errors: &mut Vec<(String, String)>,
    root: bool,
) {
    let field = if path.is_empty() {
        "<root>".to_string()
    } else {
        path.to_string()
    };
    if value.is_null() {
        if schema.get("nullable").and_then(Value::as_bool) != Some(true) && !root {
            errors.push((field, "Invalid value: \"null\": must not be null".into()));
        }
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    if int_or_string {
        if !(value.is_string() || value.is_i64() || value.is_u64()) {
            errors.push((
                field.clone(),
                format!(
                    "Invalid value: {}: {field} in body must be of type int-or-string: \"{}\"",
                    short(value),
                    type_name(value)
                ),
            ));
            return;
        }
    } else if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let actual = type_name(value);
        let ok = match t {
            "integer" => {
                value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            "number" => value.is_number(),
            other => other == actual,
        };
        if !ok {
            errors.push((
                field.clone(),
                format!(
                    "Invalid value: \"{actual}\": {field} in body must be of type {t}: \"{actual}\""
                ),
            ));
            return;
        }
    }
    if let Some(en) = schema.get("enum").and_then(Value::as_array)
        && !en.contains(value)
    {
        let allowed: Vec<String> = en.iter().map(|e| e.to_string()).collect();
        errors.push((
            field.clone(),
            format!(
                "Unsupported value: {}: supported values: {}",
                short(value),
                allowed.join(", ")
            ),
        ));
    }
    match value {
        Value::Object(map) => {
            if let Some(req) = schema.get("required").and_then(Value::as_array) {
                for r in req.iter().filter_map(Value::as_str) {
                    if !map.contains_key(r) {
                        let f = if path.is_empty() {
                            r.to_string()
                        } else {
                            format!("{path}.{r}")
                        };
                        errors.push((f, "Required value".into()));
                    }
                }
            }
            if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64)
                && map.len() as u64 > max
            {
                errors.push((
                    field.clone(),
                    format!("Too many: {}: must have at most {max} items", map.len()),
                ));
            }
            if let Some(min) = schema.get("minProperties").and_then(Value::as_u64)
                && (map.len() as u64) < min
            {
                errors.push((
                    field.clone(),
                    format!(
                        "Invalid value: {}: {field} in body should have at least {min} properties",
                        map.len()
                    ),
                ));
            }
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, v) in map {
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(cs) = props.and_then(|p| p.get(k)).or(additional) {
                    validate_node(cs, v, &child, errors, false);
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && items.len() as u64 > max
            {
                errors.push((
                    field.clone(),
                    format!("Too many: {}: must have at most {max} items", items.len()),
                ));
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && (items.len() as u64) < min
            {
                errors.push((
                    field.clone(),
                    format!(
                        "Invalid value: {}: {field} in body should have at least {min} items",
                        items.len()
                    ),
                ));
            }
            let unique = schema.get("uniqueItems").and_then(Value::as_bool) == Some(true)
                || schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("set");
            if unique {
                for (i, a) in items.iter().enumerate() {
                    if items[..i].contains(a) {
                        errors.push((format!("{field}[{i}]"), format!("Duplicate value: {a}")));
                    }
                }
            }
            if schema.get("x-kubernetes-list-type").and_then(Value::as_str) == Some("map")
                && let Some(keys) = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
            {
                let key_of = |item: &Value| -> Vec<Value> {
                    keys.iter()
                        .filter_map(Value::as_str)
                        .map(|k| item.get(k).cloned().unwrap_or(Value::Null))
                        .collect()
                };
                for (i, a) in items.iter().enumerate() {
                    let ka = key_of(a);
                    if items[..i].iter().any(|b| key_of(b) == ka) {
                        errors.push((
                            format!("{field}[{i}]"),
                            format!("Duplicate value: {}", Value::Array(ka)),
                        ));
                    }
                }
            }
            if let Some(is) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    validate_node(is, item, &format!("{path}[{i}]"), errors, false);
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && len > max
            {
                errors.push((
                    field.clone(),
                    format!("Too long: may not be more than {max} bytes"),
                ));
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && len < min
            {
                errors.push((field.clone(), format!("Invalid value: \"{s}\": {field} in body should be at least {min} chars long")));
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                match Regex::new(p) {
                    Ok(re) if !re.is_match(s) => errors.push((
                        field.clone(),
                        format!("Invalid value: \"{s}\": {field} in body should match '{p}'"),
                    )),
                    _ => {}
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                let excl = schema.get("exclusiveMinimum").and_then(Value::as_bool) == Some(true);
                if x < min || (excl && x == min) {
                    let rel = if excl {
                        "greater than"
                    } else {
                        "greater than or equal to"
                    };
                    errors.push((
                        field.clone(),
                        format!(
                            "Invalid value: {n}: {field} in body should be {rel} {}",
                            fmt_num(min)
                        ),
                    ));
                }
            }
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                let excl = schema.get("exclusiveMaximum").and_then(Value::as_bool) == Some(true);
                if x > max || (excl && x == max) {
                    let rel = if excl {
                        "less than"
                    } else {
                        "less than or equal to"
                    };
                    errors.push((
                        field.clone(),
                        format!(
                            "Invalid value: {n}: {field} in body should be {rel} {}",
                            fmt_num(max)
                        ),
                    ));
                }
            }
            if let Some(m) = schema.get("multipleOf").and_then(Value::as_f64)
                && m != 0.0
                && (x / m).fract() != 0.0
            {
                errors.push((
                    field.clone(),
                    format!(
                        "Invalid value: {n}: {field} in body should be a multiple of {}",
                        fmt_num(m)
                    ),
                ));
            }
        }
        _ => {}
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(branches) = schema.get(key).and_then(Value::as_array) {
            let results: Vec<bool> = branches
                .iter()
                .map(|b| {
                    let mut e = Vec::new();
                    validate_node(b, value, path, &mut e, root);
                    e.is_empty()
                })
                .collect();
            let ok = match key {
                "allOf" => results.iter().all(|r| *r),
                "anyOf" => results.iter().any(|r| *r),
                _ => results.iter().filter(|r| **r).count() == 1,
            };
            if !ok {
                errors.push((
                    field.clone(),
                    format!("Invalid value: {}: must validate {key}", short(value)),
                ));
            }
        }
    }
    if let Some(not) = schema.get("not") {
        let mut e = Vec::new();
        validate_node(not, value, path, &mut e, root);
        if e.is_empty() {
            errors.push((
                field,
                format!(
                    "Invalid value: {}: must not validate the schema (not)",
                    short(value)
                ),
            ));
        }
    }
}

fn fmt_num(f: f64) -> String {
    if f.fract() == 0.0 {
        format!("{}", f as i64)
    } else {
        f.to_string()
    }
}

/// Checks a CRD's own schema is structural enough to serve: every node has a type or
/// preserves unknown fields (the real server's structural-schema rule, in its essentials).
pub fn structural_errors(schema: &Value, path: &str, out: &mut Vec<(String, String)>) {
    let Some(obj) = schema.as_object() else {
        return;
    };
    let has_type = obj.contains_key("type");
    let special = preserves_unknown(schema) || obj.contains_key("x-kubernetes-int-or-string");
    if !has_type && !special && path.contains("properties") {
        out.push((
            format!("{path}.type"),
            "Required value: must not be empty for specified object fields".into(),
        ));
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            structural_errors(v, &format!("{path}.properties[{k}]"), out);
        }
    }
    if let Some(items) = obj.get("items") {
        structural_errors(items, &format!("{path}.items"), out);
    }
    if let Some(a) = obj.get("additionalProperties").filter(|a| a.is_object()) {
        structural_errors(a, &format!("{path}.additionalProperties"), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> CrdVersionSchema {
        let schema = json!({
            "type": "object",
            "x-kubernetes-validations": [{"rule": "!has(self.status) || self.status.n >= 0"}],
            "properties": {
                "spec": {
                    "type": "object",
                    "x-kubernetes-validations": [{"rule": "self.x > 1", "message": "x must exceed 1"}],
                    "properties": {"x": {"type": "integer"}}
                },
                "status": {
                    "type": "object",
                    "x-kubernetes-validations": [{"rule": "self.n < 10", "message": "n stays under 10"}],
                    "properties": {"n": {"type": "integer"}}
                }
            }
        });
        CrdVersionSchema::new(Some(schema), "example.dev", "v1", "Thing")
    }

    fn thing(x: i64, n: i64) -> Value {
        json!({"metadata": {"name": "a"}, "spec": {"x": x}, "status": {"n": n}})
    }

    #[test]
    fn rules_of_a_part_an_update_left_alone_are_not_run_again() {
        let s = schema();
        // Stored before the rule existed: a status write must not be refused for the spec.
        assert!(s.validate(&thing(0, 2), Some(&thing(0, 1))).is_empty());
        // The changed part is still checked, and a changed spec is too.
        let status_errors = s.validate(&thing(0, 12), Some(&thing(0, 1)));
        assert_eq!(status_errors.len(), 1, "{status_errors:?}");
        assert!(status_errors[0].1.contains("n stays under 10"));
        let spec_errors = s.validate(&thing(0, 1), Some(&thing(5, 1)));
        assert_eq!(spec_errors.len(), 1, "{spec_errors:?}");
        assert!(spec_errors[0].1.contains("x must exceed 1"));
        // Creates check everything.
        assert_eq!(s.validate(&thing(0, 1), None).len(), 1);
    }

    #[test]
    fn a_part_a_root_rule_reads_is_kept_for_it() {
        let s = schema();
        // The root rule reads self.status: an unchanged status stays in, and is checked.
        let errors = s.validate(&thing(5, 12), Some(&thing(6, 12)));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].1.contains("n stays under 10"));
    }
}
