//! Link settings for the sidecar binary.
//!
//! The sidecar runs in every worker pod, so its resident memory is multiplied by the fleet.
//! Packed relative relocations (DT_RELR) shrink the part of a position-independent binary
//! that the dynamic loader must write at start-up, and every page it writes stays resident
//! and private to the process: measured on the Pub/Sub benchmark, peak RSS fell by about
//! 0.6-1 MiB (docs/performance.md). The format needs glibc 2.36 or later where the binary
//! runs; other targets link as before.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
