//! The HTTP face: path routing, request options, get/list (with Tables), create, update, patch
//! and delete. Discovery, watch and the scale/log subresources live in their own modules.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::cluster::{Cluster, DeleteOptions, PatchType, Sub, WriteOptions, as_version, meta_str};
use crate::error::{ApiError, ApiResult};
use crate::registry::ResourceInfo;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::table;

#[derive(Clone)]
pub struct AppState {
    pub cluster: Arc<Cluster>,
    pub bookmark_interval: Duration,
    /// Where the process kubelet writes container logs (`pods/log`).
    pub logs_dir: Option<std::path::PathBuf>,
    /// Every resource request, by client, verb and resource.
    pub requests: Arc<crate::requests::RequestCounter>,
}

pub fn router(state: AppState) -> Router {
    Router::new().fallback(handle).with_state(state)
}

pub fn json_response(code: u16, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::OK))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.to_status())
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Self(
            q.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }

    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1" | ""))
    }
}

struct Route {
    info: ResourceInfo,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
    watch_path: bool,
}

async fn handle(
    State(st): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    let q = Query::parse(uri.query());
    match path.as_str() {
        "/healthz" | "/readyz" | "/livez" => {
            return Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("ok"))
                .unwrap_or_else(|_| StatusCode::OK.into_response());
        }
        "/version" => return json_response(200, &crate::discovery::version()),
        "/api" => {
            return json_response(
                200,
                &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]}),
            );
        }
        "/apis" => return json_response(200, &crate::discovery::group_list(&st.cluster)),
        "/openapi/v3" => return json_response(200, &crate::openapi::root(&st.cluster)),
        _ => {}
    }
    if let Some(rel) = path.strip_prefix("/openapi/v3/") {
        return match crate::openapi::group_version(&st.cluster, rel) {
            Some(doc) => json_response(200, &doc),
            None => error_response(&ApiError::not_found_path(&path)),
        };
    }
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g] => {
            return match crate::discovery::group_entry(&st.cluster, g) {
                Some(g) => json_response(200, &g),
                None => error_response(&ApiError::not_found_path(&path)),
            };
        }
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return error_response(&ApiError::not_found_path(&path)),
    };
    if rest.is_empty() {
        return match crate::discovery::resource_list(&st.cluster, group, version) {
            Some(l) => json_response(200, &l),
            None => error_response(&ApiError::not_found_path(&path)),
        };
    }
    let (watch_path, rest) = match rest {
        ["watch", r @ ..] => (true, r),
        r => (false, r),
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, r @ ..]
            if st
                .cluster
                .registry
                .find(group, version, plural)
                .is_some_and(|i| i.namespaced) =>
        {
            (Some(ns.to_string()), {
                let mut v = vec![*plural];
                v.extend_from_slice(r);
                v
            })
        }
        r => (None, r.to_vec()),
    };
    let Some(plural) = rest.first() else {
        return error_response(&ApiError::not_found_path(&path));
    };
    let info = match st.cluster.resource(group, version, plural) {
        Ok(i) => i,
        Err(e) => return error_response(&e),
    };
    if rest.len() > 3 {
        return error_response(&ApiError::not_found_path(&path));
    }
    let route = Route {
        info,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
        watch_path,
    };
    st.requests.record(crate::requests::RequestKey {
        user_agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        verb: crate::requests::verb(
            &method,
            route.name.is_some(),
            route.watch_path || q.flag("watch") && q.get("watch").is_some(),
        ),
        resource: crate::requests::resource(&route.info.plural, route.sub.as_deref()),
    });
    match dispatch(&st, &method, &route, &q, &headers, &body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

pub fn parse_body(body: &Bytes) -> ApiResult<Value> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    // Protobuf bodies start with the "k8s\0" magic; clients fall back to JSON on 415.
    if body.starts_with(b"k8s\0") {
        if let Some(v) = crate::protobuf::decode(body) {
            return Ok(v);
        }
        return Err(ApiError::unsupported_media(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body of the request could not be decoded as JSON: {e}"
        ))
    })
}

pub fn write_opts(q: &Query, headers: &HeaderMap) -> WriteOptions {
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split('/').next())
        .unwrap_or("unknown")
        .to_string();
    WriteOptions {
        field_manager: Some(q.get("fieldManager").map(str::to_string).unwrap_or(agent)),
        force: q.flag("force") && q.get("force").is_some(),
        dry_run: q.get("dryRun").is_some_and(|d| d == "All"),
        strict: q.get("fieldValidation") == Some("Strict"),
    }
}

pub fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

async fn dispatch(
    st: &AppState,
    method: &Method,
    r: &Route,
    q: &Query,
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<Response> {
    let c = &st.cluster;
    let info = &r.info;
    let ns = r.namespace.as_deref().unwrap_or("");
    if info.namespaced && r.namespace.is_none() && r.name.is_some() {
        return Err(ApiError::not_found_path(
            "namespaced resource requested without a namespace",
        ));
    }
    if !info.namespaced && r.namespace.is_some() {
        return Err(ApiError::not_found_path(
            "cluster-scoped resource requested in a namespace",
        ));
    }
    let sub = match r.sub.as_deref() {
        None => None,
        Some("status") if info.status => Some(Sub::Status),
        Some("status") | Some("scale") | Some("log") => None,
        Some(other) => return Err(ApiError::not_found_path(other)),
    };
    if r.sub.as_deref() == Some("scale") {
        if info.scale.is_none() {
            return Err(ApiError::not_found_path("scale"));
        }
        let name = r.name.as_deref().unwrap_or("");
        return crate::subresources::scale(st, method, info, ns, name, q, headers, body);
    }
    if r.sub.as_deref() == Some("log")
        && info.group.is_empty()
        && info.plural == "pods"
        && *method == Method::GET
    {
        return crate::subresources::pod_log(st, ns, r.name.as_deref().unwrap_or(""), q).await;
    }
    if r.sub.as_deref() == Some("status") && sub.is_none() {
        return Err(ApiError::not_found_path("status"));
    }
    let sub = sub.unwrap_or(Sub::Main);
    if info.group == "authorization.k8s.io" {
        if *method != Method::POST {
            return Err(ApiError::method_not_allowed(
                "access reviews only support create",
            ));
        }
        // The answer does not depend on the question, so a protobuf body need not be decoded.
        let mut review = if body.starts_with(b"k8s\0") {
            json!({"spec": {}})
        } else {
            parse_body(body)?
        };
        review["apiVersion"] = json!(info.api_version());
        review["kind"] = json!(info.kind);
        review["status"] =
            json!({"allowed": true, "reason": "devcluster does not enforce authorization"});
        return Ok(json_response(201, &review));
    }
    match (method.clone(), r.name.as_deref()) {
        (Method::GET, None) => {
            if r.watch_path || q.flag("watch") && q.get("watch").is_some() {
                crate::watch::watch(st, info, r.namespace.as_deref(), q, headers)
            } else {
                list(c, info, r.namespace.as_deref(), q, headers)
            }
        }
        (Method::GET, Some(name)) => {
            if r.watch_path {
                let mut q2 = Query(q.0.clone());
                q2.0.push(("fieldSelector".into(), format!("metadata.name={name}")));
                return crate::watch::watch(st, info, r.namespace.as_deref(), &q2, headers);
            }
            let obj = c.get(info, ns, name)?;
            if wants_table(headers) {
                let rv = meta_str(&obj, "resourceVersion").unwrap_or("").to_string();
                return Ok(json_response(
                    200,
                    &table::table(
                        info,
                        &[obj],
                        &rv,
                        None,
                        q.get("includeObject").unwrap_or("Metadata"),
                        true,
                    ),
                ));
            }
            Ok(json_response(200, &obj))
        }
        (Method::POST, None) => {
            if info.namespaced && r.namespace.is_none() {
                return Err(ApiError::method_not_allowed("create requires a namespace"));
            }
            let body = parse_body(body)?;
            let obj = c.create(info, ns, body, &write_opts(q, headers))?;
            Ok(json_response(201, &obj))
        }
        (Method::PUT, Some(name)) => {
            let body = parse_body(body)?;
            Ok(json_response(
                200,
                &c.update(info, ns, name, sub, body, &write_opts(q, headers))?,
            ))
        }
        (Method::PATCH, Some(name)) => {
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let ptype = PatchType::from_content_type(ct)
                .ok_or_else(|| ApiError::unsupported_media(format!("the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})")))?;
            let body = parse_body(body)?;
            let existed = c.try_get(info, ns, name).is_some();
            let mut opts = write_opts(q, headers);
            if ptype == PatchType::Apply {
                // Apply needs an explicit manager; the user-agent fallback is for other writes.
                opts.field_manager = q.get("fieldManager").map(str::to_string);
            }
            let obj = c.patch(info, ns, name, sub, ptype, &body, &opts)?;
            Ok(json_response(if existed { 200 } else { 201 }, &obj))
        }
        (Method::DELETE, Some(name)) => {
            let opts = delete_opts(q, body)?;
            let obj = c.delete(info, ns, name, &opts)?;
            let gone = c.try_get(info, ns, name).is_none();
            Ok(json_response(if gone { 200 } else { 202 }, &obj))
        }
        (Method::DELETE, None) => {
            let opts = delete_opts(q, body)?;
            let (items, rv) = select(c, info, r.namespace.as_deref(), q)?;
            let mut out = Vec::new();
            for o in items {
                let n = meta_str(&o, "name").unwrap_or("").to_string();
                let ons = meta_str(&o, "namespace").unwrap_or("").to_string();
                if let Ok(v) = c.delete(info, &ons, &n, &opts) {
                    out.push(v);
                }
            }
            Ok(json_response(200, &list_json(info, out, &rv.to_string())))
        }
        _ => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported here"
        ))),
    }
}

fn delete_opts(q: &Query, body: &Bytes) -> ApiResult<DeleteOptions> {
    let b = parse_body(body)?;
    let s = |k: &str| {
        b.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| q.get(k).map(str::to_string))
    };
    Ok(DeleteOptions {
        propagation: s("propagationPolicy").or_else(|| {
            match b.get("orphanDependents").and_then(Value::as_bool) {
                Some(true) => Some("Orphan".into()),
                _ => None,
            }
        }),
        grace_seconds: b
            .get("gracePeriodSeconds")
            .and_then(Value::as_i64)
            .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok())),
        uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        resource_version: b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run: q.get("dryRun").is_some_and(|d| d == "All")
            || b.get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x == "All")),
    })
}

pub fn selectors(q: &Query) -> ApiResult<(LabelSelector, FieldSelector)> {
    let l = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    let f = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""))
        .map_err(ApiError::bad_request)?;
    Ok((l, f))
}

pub fn matches(l: &LabelSelector, f: &FieldSelector, obj: &Value) -> bool {
    l.matches(obj.pointer("/metadata/labels")) && (f.is_empty() || f.matches(obj))
}

fn select(
    c: &Cluster,
    info: &ResourceInfo,
    ns: Option<&str>,
    q: &Query,
) -> ApiResult<(Vec<Value>, u64)> {
    let (l, f) = selectors(q)?;
    let snap = c.store.list(&info.gr(), ns);
    let items = snap
        .items
        .iter()
        .filter(|o| matches(&l, &f, o))
        .map(|o| as_version(info, o))
        .collect();
    Ok((items, snap.rv))
}

fn list_json(info: &ResourceInfo, items: Vec<Value>, rv: &str) -> Value {
    json!({"kind": format!("{}List", info.kind), "apiVersion": info.api_version(), "metadata": {"resourceVersion": rv}, "items": items})
}

/// A continue token: the first page's resourceVersion and the last key returned. Every page
/// reports the first page's version, so a watch started from it replays whatever changed while
/// the pages were fetched (pages are not a snapshot; see README).
fn encode_continue(rv: u64, ns: &str, name: &str) -> String {
    let raw = serde_json::to_string(&(rv, ns, name)).unwrap_or_default();
    raw.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> ApiResult<(u64, (String, String))> {
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let bad = || ApiError::bad_request("continue key is not valid");
    let (rv, ns, name): (u64, String, String) =
        serde_json::from_slice(&bytes.ok_or_else(bad)?).map_err(|_| bad())?;
    Ok((rv, (ns, name)))
}

fn list(
    c: &Cluster,
    info: &ResourceInfo,
    ns: Option<&str>,
    q: &Query,
    headers: &HeaderMap,
) -> ApiResult<Response> {
    let (l, f) = selectors(q)?;
    let (first_rv, after) = match q.get("continue").filter(|t| !t.is_empty()) {
        Some(token) => {
            let (rv, key) = decode_continue(token)?;
            (Some(rv), Some(key))
        }
        None => (None, None),
    };
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let (items, rv, more) = c.store.scan(&info.gr(), ns, after.as_ref(), limit, |o| {
        matches(&l, &f, o)
    });
    let rv = first_rv.unwrap_or(rv);
    let cont = match items.last() {
        Some(last) if more => Some(encode_continue(
            rv,
            meta_str(last, "namespace").unwrap_or(""),
            meta_str(last, "name").unwrap_or(""),
        )),
        _ => None,
    };
    let rv = rv.to_string();
    if wants_table(headers) {
        let objs: Vec<Value> = items.iter().map(|o| as_version(info, o)).collect();
        let t = table::table(
            info,
            &objs,
            &rv,
            cont.as_deref(),
            q.get("includeObject").unwrap_or("Metadata"),
            true,
        );
        return Ok(json_response(200, &t));
    }
    // Serialise item by item: a 10,000-object list never becomes one big Value.
    let mut meta = json!({"resourceVersion": rv});
    if let Some(c) = &cont {
        meta["continue"] = json!(c);
    }
    let internal = |e: serde_json::Error| ApiError::internal(e.to_string());
    let mut body = Vec::with_capacity(items.len() * 512 + 256);
    body.extend_from_slice(b"{\"kind\":");
    serde_json::to_writer(&mut body, &format!("{}List", info.kind)).map_err(internal)?;
    body.extend_from_slice(b",\"apiVersion\":");
    serde_json::to_writer(&mut body, &info.api_version()).map_err(internal)?;
    body.extend_from_slice(b",\"metadata\":");
    serde_json::to_writer(&mut body, &meta).map_err(internal)?;
    body.extend_from_slice(b",\"items\":[");
    for (i, o) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        if info.crd.is_some() || info.is_events_v1() {
            serde_json::to_writer(&mut body, &as_version(info, o)).map_err(internal)?;
        } else {
            serde_json::to_writer(&mut body, o.as_ref()).map_err(internal)?;
        }
    }
    body.extend_from_slice(b"]}");
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}
