#!/usr/bin/env bash
# Runs ferry-consumer locally: a queue with a dead-letter queue on Google's Pub/Sub emulator
# (or moto's SQS server with --provider sqs), the example worker, and a live view of
# deliveries, retries and dead letters. Pass --help to see the knobs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo build --quiet -p ferry-consumer -p ferry-example-worker -p ferry-tests --bin ferry-demo --bin ferry-consumer --bin ferry-example-worker
exec target/debug/ferry-demo "$@"
