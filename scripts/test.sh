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
status=0
cargo test --workspace --no-fail-fast "$@" || status=$?

# The suites that need only an API server (tests/src/cluster.rs) run against the cluster
# FERRY_TEST_KUBECONFIG names when it is set, a real one included, and then the run above
# already used it. Otherwise they run once more through that variable against a
# `ferry-devcluster serve` of their own: a separate process that all of them share, as
# they would share a real cluster, which shows they keep to their own namespaces, clean
# up after themselves and rely on nothing of the in-process devcluster.
if [[ $# -eq 0 && -z "${FERRY_TEST_KUBECONFIG:-}" ]]; then
  work=$(mktemp -d)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "${CARGO_TARGET_DIR:-target}/debug/ferry-devcluster" serve --listen "127.0.0.1:$port" --kubeconfig "$work/kubeconfig" \
    > "$work/devcluster.log" 2>&1 &
  serve=$!
  trap 'kill "$serve" 2>/dev/null || true; rm -rf "$work"' EXIT
  for _ in $(seq 100); do [[ -s "$work/kubeconfig" ]] && break; sleep 0.1; done
  if [[ ! -s "$work/kubeconfig" ]]; then
    echo "ferry-devcluster serve did not start:" >&2
    cat "$work/devcluster.log" >&2
    exit 1
  fi
  # --workspace, as above: the same features, so nothing is compiled again.
  FERRY_TEST_KUBECONFIG="$work/kubeconfig" cargo test --workspace --no-fail-fast \
    --test reconcile --test credentials --test leader || status=$?
  leftovers=$(KUBECONFIG="$work/kubeconfig" kubectl get namespaces -o name | grep -c ferry-test || true)
  if [[ "$leftovers" != 0 ]]; then
    echo "the API suites left $leftovers test namespaces behind on the shared cluster" >&2
    KUBECONFIG="$work/kubeconfig" kubectl get namespaces >&2
    status=1
  fi
fi
exit "$status"
