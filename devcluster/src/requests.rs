//! Counts the API requests the server answers, by client (User-Agent), verb and resource: what
//! a real API server's `apiserver_request_total` tells, so a benchmark can say how many calls
//! an operator makes per object and minute. Watches count once, when they start.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use axum::http::Method;

/// One kind of request: who sent it, the Kubernetes verb, and `plural` or `plural/sub`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    /// The client's User-Agent header, whole (`""` when it sent none, as kube-rs does by default).
    pub user_agent: String,
    pub verb: &'static str,
    pub resource: String,
}

/// The Kubernetes verb of a request, as RBAC and the API server's metrics name it.
pub fn verb(method: &Method, named: bool, watch: bool) -> &'static str {
    match (method.as_str(), named) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "other",
    }
}

/// `plural`, or `plural/subresource`.
pub fn resource(plural: &str, sub: Option<&str>) -> String {
    match sub {
        Some(sub) => format!("{plural}/{sub}"),
        None => plural.to_string(),
    }
}

#[derive(Default)]
pub struct RequestCounter {
    counts: Mutex<HashMap<RequestKey, u64>>,
}

impl RequestCounter {
    pub fn record(&self, key: RequestKey) {
        *self
            .counts
            .lock()
            .expect("request counter lock")
            .entry(key)
            .or_insert(0) += 1;
    }

    pub fn snapshot(&self) -> RequestCounts {
        let counts = self.counts.lock().expect("request counter lock");
        RequestCounts(counts.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }
}

/// Counts at one moment; subtract two snapshots to count a window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts(pub BTreeMap<RequestKey, u64>);

impl RequestCounts {
    /// Requests made after `earlier` was taken (keys with none are left out).
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts(
            self.0
                .iter()
                .filter_map(|(key, &now)| {
                    let before = earlier.0.get(key).copied().unwrap_or(0);
                    (now > before).then(|| (key.clone(), now - before))
                })
                .collect(),
        )
    }

    /// Only the requests of clients whose User-Agent starts with `prefix`.
    pub fn from_agent(&self, prefix: &str) -> RequestCounts {
        RequestCounts(
            self.0
                .iter()
                .filter(|(key, _)| key.user_agent.starts_with(prefix))
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
        )
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// Totals by verb.
    pub fn by_verb(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for (key, count) in &self.0 {
            *out.entry(key.verb).or_insert(0) += count;
        }
        out
    }

    /// Totals by `verb resource`.
    pub fn by_verb_and_resource(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (key, count) in &self.0 {
            *out.entry(format!("{} {}", key.verb, key.resource))
                .or_insert(0) += count;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(agent: &str, verb: &'static str, resource: &str) -> RequestKey {
        RequestKey {
            user_agent: agent.into(),
            verb,
            resource: resource.into(),
        }
    }

    #[test]
    fn verbs_follow_kubernetes_names() {
        assert_eq!(verb(&Method::GET, true, false), "get");
        assert_eq!(verb(&Method::GET, false, false), "list");
        assert_eq!(verb(&Method::GET, false, true), "watch");
        assert_eq!(verb(&Method::PATCH, true, false), "patch");
        assert_eq!(verb(&Method::DELETE, false, false), "deletecollection");
        assert_eq!(resource("deployments", Some("scale")), "deployments/scale");
    }

    #[test]
    fn a_window_is_the_difference_of_two_snapshots() {
        let counter = RequestCounter::default();
        counter.record(key("op/1", "list", "pods"));
        let before = counter.snapshot();
        counter.record(key("op/1", "patch", "deployments"));
        counter.record(key("op/1", "patch", "deployments"));
        counter.record(key("bench", "get", "pods"));
        let window = counter.snapshot().since(&before);
        assert_eq!(window.total(), 3);
        let op = window.from_agent("op/");
        assert_eq!(op.total(), 2);
        assert_eq!(op.by_verb().get("patch"), Some(&2));
        assert_eq!(op.by_verb_and_resource().get("patch deployments"), Some(&2));
        assert_eq!(op.by_verb().get("list"), None);
    }
}
