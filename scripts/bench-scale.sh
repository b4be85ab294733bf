#!/usr/bin/env bash
# The operator at scale (docs/performance.md, "The operator at scale"): 1,000 QueueConsumers
# applied at once against devcluster, Google's Pub/Sub emulator, the Cloud Monitoring
# stand-in and the real ferry-operator process. Prints the table and writes
# target/bench/scale.json; the operator's log is in target/bench/scale/operator.log.
#
#   scripts/bench-scale.sh                       # 1,000 consumers, release build
#   scripts/bench-scale.sh --count 100 --window 20
#   FERRY_BENCH_PROFILE=debug scripts/bench-scale.sh   # reuse a debug build (slower operator)
# Flags go to ferry-scalebench (--count, --namespaces, --in-flight, --poll-interval,
# --settle, --window, --ready-timeout, --out).
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${FERRY_BENCH_PROFILE:-release}"
flag=(); [ "$profile" = release ] && flag=(--release)
echo "== building ferry-operator and ferry-scalebench ($profile)" >&2
cargo build "${flag[@]}" --locked -p ferry-operator --bin ferry-operator
cargo build "${flag[@]}" --locked -p ferry-tests --bin ferry-scalebench

bin="${CARGO_TARGET_DIR:-target}/$profile"
mkdir -p target/bench
echo "== load before: $(uptime)" >&2
# Watches, the emulator's connections and 1,000 objects: more descriptors than the default.
ulimit -n 65536 2>/dev/null || true
"$bin/ferry-scalebench" "$@"
