//! The CustomResourceDefinition as `crdgen` prints it and `crds/queueconsumer.yaml` holds it.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use crate::spec::QueueConsumer;

/// The committed CRD file, relative to the `crds/` crate.
pub const CRD_FILE: &str = "queueconsumer.yaml";

/// The command that regenerates [`CRD_FILE`] from the types.
pub const REGENERATE: &str = "cargo run -p ferry-crds --bin crdgen > crds/queueconsumer.yaml";

/// Tells Helm never to delete the CRD (on uninstall, or if a later chart moved it): deleting
/// a CRD deletes every QueueConsumer with it, and with them the workers.
pub const HELM_KEEP_ANNOTATION: (&str, &str) = ("helm.sh/resource-policy", "keep");

/// The QueueConsumer CRD, with descriptions reflowed for `kubectl explain`.
pub fn crd() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(QueueConsumer::crd()).expect("a CRD serializes");
    reflow_descriptions(&mut crd);
    let (key, value) = HELM_KEEP_ANNOTATION;
    crd["metadata"]["annotations"] = serde_json::json!({ key: value });
    serde_json::from_value(crd).expect("reflowing descriptions keeps the CRD valid")
}

/// The CRD as YAML, with a header saying where it comes from.
pub fn crd_yaml() -> String {
    let yaml = serde_saphyr::to_string(&crd()).expect("a CRD serializes");
    format!(
        "# Generated from the ferry-crds types: do not edit. Regenerate with\n#   {REGENERATE}\n---\n{yaml}"
    )
}

/// Doc comments keep the source's line wrapping; `kubectl explain` wraps text itself and
/// would show both, breaking lines mid-sentence. Paragraph breaks stay.
fn reflow_descriptions(node: &mut Value) {
    match node {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(text) if key == "description" => *text = reflow(text),
                    _ => reflow_descriptions(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(reflow_descriptions),
        _ => {}
    }
}

fn reflow(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .split('\n')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflow_joins_wrapped_lines_and_keeps_paragraphs() {
        assert_eq!(reflow("one\ntwo\n\nthree\nfour"), "one two\n\nthree four");
        assert_eq!(reflow("single line"), "single line");
    }

    #[test]
    fn the_published_crd_has_no_wrapped_descriptions() {
        let crd = serde_json::to_string(&crd()).unwrap();
        let schema: Value = serde_json::from_str(&crd).unwrap();
        let text = schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["deadLetter"]["description"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(!text.contains('\n'), "{text:?}");
    }
}
