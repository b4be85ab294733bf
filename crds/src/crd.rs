//! The CustomResourceDefinition as YAML: what `crdgen` prints and `crds/queueconsumer.yaml`
//! holds.

use kube::CustomResourceExt;

use crate::spec::QueueConsumer;

/// The committed CRD file, relative to the `crds/` crate.
pub const CRD_FILE: &str = "queueconsumer.yaml";

/// The command that regenerates [`CRD_FILE`] from the types.
pub const REGENERATE: &str = "cargo run -p ferry-crds --bin crdgen > crds/queueconsumer.yaml";

/// The QueueConsumer CRD, serialized as YAML with a header saying where it comes from.
pub fn crd_yaml() -> String {
    let yaml = serde_saphyr::to_string(&QueueConsumer::crd())
        .expect("a CustomResourceDefinition always serializes");
    format!(
        "# Generated from the ferry-crds types: do not edit. Regenerate with\n#   {REGENERATE}\n---\n{yaml}"
    )
}
