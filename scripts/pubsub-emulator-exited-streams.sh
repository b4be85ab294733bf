#!/usr/bin/env bash
# Shows that Google's Pub/Sub emulator, as the Google Cloud CLI installs it, hands a
# subscription's messages to the stream of a consumer that has exited, and that the repair the
# tests put ahead of its jar (tests/pubsub-emulator/io/grpc/InternalStatus.java; see
# docs/sandbox.md, "The Pub/Sub emulator's repair") stops it. No Kubernetes: the emulator, the
# example worker and three ferry-consumer processes on this machine.
#
#   consumer A takes 5 messages; consumer B starts; A stops (SIGTERM, or SIG=9);
#   10 messages are published: does B get them? (LATE=75 waits past the 60 s ack deadline);
#   consumer C starts, 10 more are published: who gets them?
#
# REPAIRED=1 runs the emulator with the repair, as the tests do; without it, as installed.
# Needs the debug binaries (cargo build --bin ferry-consumer --bin ferry-example-worker) and
# the emulator and a JDK (scripts/install-test-deps.sh).
set -u
cd "$(dirname "$0")/.."
launcher=${FERRY_PUBSUB_EMULATOR:-$(gcloud info --format='value(installation.sdk_root)')/platform/pubsub-emulator/bin/cloud-pubsub-emulator}
work=$(mktemp -d)
port=${PORT:-18085}
emulator=127.0.0.1:$port
project=projects/exited-streams
if [ -n "${REPAIRED:-}" ]; then
  jar=$(ls "$(dirname "$launcher")"/../lib/cloud-pubsub-emulator-*.jar)
  javac -nowarn -cp "$jar" -d "$work/repair" tests/pubsub-emulator/io/grpc/InternalStatus.java
  java -cp "$work/repair:$jar" com.google.cloud.pubsub.testing.v1.Main --host=127.0.0.1 --port="$port" > "$work/emulator.log" 2>&1 &
else
  "$launcher" --host=127.0.0.1 --port="$port" > "$work/emulator.log" 2>&1 &
fi
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null; pkill -f "port=$port" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 60); do curl -s "http://$emulator/" > /dev/null && break; sleep 1; done
curl -s -X PUT "http://$emulator/v1/$project/topics/orders" > /dev/null
curl -s -X PUT "http://$emulator/v1/$project/topics/orders-dlq" > /dev/null
curl -s -X PUT -H 'content-type: application/json' "http://$emulator/v1/$project/subscriptions/orders" \
  -d "{\"topic\":\"$project/topics/orders\",\"ackDeadlineSeconds\":60}" > /dev/null
WORKER_LISTEN=127.0.0.1:18080 WORKER_LATENCY_MS=10 target/debug/ferry-example-worker > "$work/worker.log" 2>&1 &
pids+=($!)

consumer() { # metrics port
  PUBSUB_EMULATOR_HOST=$emulator FERRY_PROVIDER=pubsub FERRY_QUEUE=$project/subscriptions/orders \
    FERRY_DEAD_LETTER_TOPIC=$project/topics/orders-dlq FERRY_DELIVERY_URL=http://127.0.0.1:18080/ \
    FERRY_LISTEN_ADDR=127.0.0.1:$1 FERRY_CONCURRENCY=4 target/debug/ferry-consumer > "$work/consumer-$1.log" 2>&1 &
  echo $!
}
publish() { # first last
  local messages
  messages=$(for i in $(seq "$1" "$2"); do printf '{"data":"%s"},' "$(printf '{"seq":%s}' "$i" | base64)"; done)
  curl -s -X POST -H 'content-type: application/json' "http://$emulator/v1/$project/topics/orders:publish" \
    -d "{\"messages\":[${messages%,}]}" > /dev/null
}
received() { # metrics port
  curl -s "http://127.0.0.1:$1/metrics" | awk '/^ferry_messages_received_total/ {print $2}'
}

a=$(consumer 19090); pids+=("$a"); sleep 3
publish 1 5; sleep 3
echo "A received $(received 19090) of 5"
b=$(consumer 19091); pids+=("$b"); sleep 3
kill "-${SIG:-TERM}" "$a"; wait "$a" 2>/dev/null
echo "A stopped (SIG${SIG:-TERM})"
sleep 2
publish 6 15; sleep 5
echo "B received $(received 19091) of the 10 published after A stopped"
if [ -n "${LATE:-}" ]; then
  sleep "$LATE"; echo "B received $(received 19091) of them ${LATE}s later"
fi
c=$(consumer 19092); pids+=("$c"); sleep 5
publish 16 25; sleep 5
echo "after 10 more: B received $(received 19091) in all, C $(received 19092)"
