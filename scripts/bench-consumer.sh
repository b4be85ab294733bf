#!/usr/bin/env bash
# Benchmarks ferry-consumer against the consumers users run today, on the same backend, with
# the same worker, in the same run (docs/performance.md):
#   SQS:     raw aws-sdk-sqs, ferry-consumer, sqs-consumer (npm), against bench/'s own SQS endpoint
#   Pub/Sub: raw google-cloud-pubsub, ferry-consumer, @google-cloud/pubsub (npm),
#            google-cloud-pubsub (PyPI), against Google's Pub/Sub emulator
# Writes target/bench/consumer.json and prints the table. Everything runs on 127.0.0.1.
#
#   scripts/bench-consumer.sh            # the full comparison (about 10 minutes on 2 cores)
#   scripts/bench-consumer.sh --quick    # a smoke check (concurrency 10, worker 0 ms)
# Other flags go to `ferry-bench run` (--backends sqs, --concurrency 1,10, --worker-ms 0, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== peers: npm (bench/node_modules) and PyPI (bench/.venv)" >&2
if [ ! -d bench/node_modules/sqs-consumer ] || [ ! -d bench/node_modules/@google-cloud/pubsub ]; then
  (cd bench && npm ci --no-audit --no-fund --loglevel=error)
fi
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
fi
if ! bench/.venv/bin/python -c 'import google.cloud.pubsub_v1' 2>/dev/null; then
  bench/.venv/bin/pip install --quiet -r bench/requirements.txt
fi

echo "== building ferry-consumer and ferry-bench (release)" >&2
# Separately: built together, ferry-bench's features would be unified into ferry-consumer's
# dependencies and the sidecar measured would be larger than the one users run (1 MB of code).
cargo build --release --locked -p ferry-consumer
cargo build --release --locked -p ferry-bench

bin="${CARGO_TARGET_DIR:-target}/release"
mkdir -p target/bench
# Minutes of saturation: the emulator keeps the JVM's optimizing compiler here (the tests run
# it with the quick compiler only; see tests/src/emulators.rs).
export CLOUD_PUBSUB_EMULATOR_OPTS="${CLOUD_PUBSUB_EMULATOR_OPTS-}"
echo "== load before: $(uptime)" >&2
"$bin/ferry-bench" run --ferry "$bin/ferry-consumer" --bench-dir bench \
  --out target/bench/consumer.json "$@"
