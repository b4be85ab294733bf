//! Link settings for the sidecar binary.
//!
//! The sidecar runs in every worker pod, so its resident memory is multiplied by the fleet.
//! Packed relative relocations (DT_RELR) shrink the relocation table of a
//! position-independent binary, which the dynamic loader reads whole at start-up and which
//! then stays resident: ferry-consumer's goes from 965 KiB to 13 KiB, and peak RSS fell by
//! 1.2-2.1 MiB in every benchmark cell (docs/performance.md, item 9). The format needs glibc
//! 2.36 or later where the binary runs, which the image carries (scripts/build-images.py
//! refuses an older libc6); other targets link as before.

fn main() {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
