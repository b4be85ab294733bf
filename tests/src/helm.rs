//! Helm's own engine, through `tests/helm/helm_engine.py` and the PyPI package
//! `helm-python-sdk` (which bundles Helm's Go library) in the project virtualenv.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::repo_root;

pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/ferry")
}

/// The virtualenv's Python with helm-python-sdk, or `FERRY_HELM_PYTHON`.
fn python() -> PathBuf {
    if let Some(path) = std::env::var_os("FERRY_HELM_PYTHON") {
        return PathBuf::from(path);
    }
    let path = repo_root().join(".venv/bin/python");
    assert!(
        path.exists(),
        "Helm's engine is needed: {} is missing; run scripts/install-test-deps.sh (it installs helm-python-sdk into .venv), or set FERRY_HELM_PYTHON to a Python that has it",
        path.display()
    );
    path
}

/// Runs one engine command; `Err` carries the engine's own message.
fn engine(args: &[&str], values: &Value) -> Result<Value, String> {
    let values_file = tempfile_with(values);
    let output = Command::new(python())
        .arg(repo_root().join("tests/helm/helm_engine.py"))
        .args(args)
        .arg("--values")
        .arg(&values_file)
        .output()
        .expect("run tests/helm/helm_engine.py");
    let _ = std::fs::remove_file(&values_file);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reply: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!(
            "helm_engine.py {args:?} printed no JSON (exit {:?}); stdout:\n{stdout}\nstderr:\n{}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    if output.status.code() == Some(3) {
        panic!(
            "{}; run scripts/install-test-deps.sh (it installs helm-python-sdk into .venv)",
            reply["error"]
        );
    }
    match reply.get("error").and_then(Value::as_str) {
        Some(error) => Err(error.to_string()),
        None => Ok(reply),
    }
}

fn tempfile_with(values: &Value) -> PathBuf {
    let path = crate::log_dir().join(format!("{}.values.json", crate::unique_name("helm")));
    std::fs::write(&path, values.to_string()).expect("write the values file");
    path
}

/// `helm lint --strict`: the findings, each `(severity, path, message)`; severity 1 is
/// INFO, 2 WARNING, 3 ERROR (strict mode fails on 2 and up).
pub fn lint(values: &Value) -> Vec<(u64, String, String)> {
    let chart = chart_dir();
    let report = engine(&["lint", path_str(&chart)], values)
        .unwrap_or_else(|e| panic!("helm lint could not run: {e}"));
    let mut findings: Vec<(u64, String, String)> = report["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["severity"].as_u64().unwrap_or(0),
                m["path"].as_str().unwrap_or_default().to_string(),
                m["error"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for error in report["errors"].as_array().into_iter().flatten() {
        findings.push((3, String::new(), error.to_string()));
    }
    findings
}

/// A rendered release: each template's output and the chart's CRDs (path → text).
pub struct Rendered {
    pub manifests: BTreeMap<String, String>,
    pub crds: BTreeMap<String, String>,
}

impl Rendered {
    /// Every object of every template, in template order.
    pub fn objects(&self) -> Vec<Value> {
        self.manifests
            .iter()
            .filter(|(path, _)| path.ends_with(".yaml"))
            .flat_map(|(path, text)| {
                serde_saphyr::from_multiple::<Value>(text)
                    .unwrap_or_else(|e| panic!("{path} is not YAML: {e}\n{text}"))
            })
            .filter(|o| !o.is_null())
            .collect()
    }

    pub fn of_kind(&self, kind: &str) -> Vec<Value> {
        self.objects()
            .into_iter()
            .filter(|o| o["kind"] == kind)
            .collect()
    }

    pub fn one(&self, kind: &str) -> Value {
        let mut found = self.of_kind(kind);
        assert_eq!(found.len(), 1, "expected one {kind}, got {found:#?}");
        found.remove(0)
    }

    /// The manifests as one multi-document YAML stream, as `helm template` prints them.
    pub fn yaml_stream(&self) -> String {
        self.manifests
            .iter()
            .filter(|(path, _)| path.ends_with(".yaml"))
            .map(|(path, text)| format!("---\n# Source: {path}\n{}\n", text.trim()))
            .collect()
    }
}

/// Validates `values` against values.schema.json and renders the chart as `helm install`
/// would (release `release` in `namespace`).
pub fn render(values: &Value, release: &str, namespace: &str) -> Result<Rendered, String> {
    let chart = chart_dir();
    let reply = engine(
        &[
            "render",
            path_str(&chart),
            "--release",
            release,
            "--namespace",
            namespace,
        ],
        values,
    )?;
    let strings = |v: &Value| -> BTreeMap<String, String> {
        v.as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect()
    };
    Ok(Rendered {
        manifests: strings(&reply["manifests"]),
        crds: reply["crds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["name"].as_str().unwrap_or_default().to_string(),
                    c["data"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect(),
    })
}

/// `helm install` of the chart into the cluster of `kubeconfig`, through Helm's own client
/// (CRDs from `crds/` first, then the templates; the release recorded in a Secret).
pub fn install(
    values: &Value,
    release: &str,
    namespace: &str,
    kubeconfig: &Path,
) -> Result<Value, String> {
    let chart = chart_dir();
    engine(
        &[
            "install",
            path_str(&chart),
            "--release",
            release,
            "--namespace",
            namespace,
            "--kubeconfig",
            path_str(kubeconfig),
        ],
        values,
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}
