//! The workspace's own programs (`ferry-operator`, `ferry-consumer`) for suites in this crate,
//! which Cargo does not hand `CARGO_BIN_EXE_*` of other packages.

use std::path::PathBuf;

/// `target/<profile>/<name>`, next to the running test's own `deps/` directory.
/// `cargo test --workspace` (scripts/test.sh) builds every member's binaries before any test
/// runs; a run of this crate alone must build them first, and is told so.
pub fn workspace_binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("tests run from target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the suite with `cargo test --workspace` (scripts/test.sh), or build it first with `cargo build -p {name}`",
        path.display()
    );
    path
}
