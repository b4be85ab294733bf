#!/usr/bin/env bash
# Runs Ferry's whole test suite: installs what the tests need (scripts/install-test-deps.sh),
# then every unit, integration and end-to-end test in the workspace. The tests start the
# Pub/Sub emulator and moto's SQS server themselves, on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
# Every binary first: the live tests run the operator, the sidecar and the example worker as
# processes, and a test cannot build a binary of another package itself. --all-targets makes
# this build resolve features as `cargo test` does (dev-dependencies enable more kube
# features), so each crate is compiled once rather than once per feature set.
cargo build --workspace --all-targets
# Every test binary runs even after one fails, so a red run shows every failure at once.
cargo test --workspace --no-fail-fast "$@"
