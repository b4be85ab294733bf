#!/usr/bin/env bash
# Runs Ferry end to end on this machine: devcluster (an in-process Kubernetes API with a process
# kubelet), Google's Pub/Sub emulator (or moto's SQS server with --provider sqs), the operator,
# and the example QueueConsumer from examples/sandbox/, under a burst, a steady load and an idle
# phase, with a live view. The last line is the run's summary as JSON. Pass --help for the knobs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo build --quiet --bin ferry-sandbox --bin ferry-operator --bin ferry-consumer --bin ferry-example-worker
exec target/debug/ferry-sandbox "$@"
