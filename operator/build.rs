//! Link settings for the operator binary.
//!
//! Packed relative relocations (DT_RELR), as for the sidecar (consumer/build.rs): the
//! dynamic loader reads a position-independent binary's relocation table whole at start-up
//! and it stays resident, and the operator's, with kube, both cloud SDKs and their vtables,
//! is its largest. The operator's memory limit is sized for a fleet of consumers
//! (docs/performance.md, "With packed relocations"). Needs glibc 2.36 or later where the
//! binary runs, which the image carries (scripts/build-images.py refuses an older libc6).

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
