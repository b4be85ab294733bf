//! `crds/queueconsumer.yaml` is what users and the Helm chart install; it must be exactly what
//! the types generate, or the API server would enforce a different contract than the code.

use ferry_crds::crd::{CRD_FILE, REGENERATE, crd_yaml};

#[test]
fn committed_crd_yaml_matches_the_types() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CRD_FILE);
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; create it with `{REGENERATE}`",
            path.display()
        )
    });
    assert!(
        committed == crd_yaml(),
        "{} differs from the CRD the types generate; regenerate it with `{REGENERATE}` and commit it",
        path.display()
    );
}

#[test]
fn committed_crd_yaml_parses_back_to_the_same_crd() {
    let crd: serde_json::Value = serde_saphyr::from_str(&crd_yaml()).expect("the YAML parses");
    let direct = serde_json::to_value(ferry_crds::crd::crd()).expect("the CRD serializes");
    // Not assert_eq: the whole CRD in a failure message would bury the difference.
    assert!(
        crd == direct,
        "the YAML does not parse back to the CRD it was made from"
    );
}
