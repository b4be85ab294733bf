"""The Pub/Sub Python peer: Google's official client (google-cloud-pubsub), streaming pull
with flow control at the benchmark's concurrency and a thread pool of the same size, POSTing
every message to the worker and acking on 2xx (nacking otherwise). PUBSUB_EMULATOR_HOST
points it at the emulator."""

import http.client
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

subscription_path = os.environ["BENCH_QUEUE"]
worker = urlsplit(os.environ["BENCH_WORKER_URL"])
concurrency = int(os.environ.get("BENCH_CONCURRENCY", "10"))

local = threading.local()


def post(body: bytes) -> int:
    """One keep-alive connection per thread, reopened after an error."""
    for attempt in range(2):
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(worker.hostname, worker.port, timeout=60)
        try:
            conn.request("POST", worker.path or "/", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            return response.status
        except (http.client.HTTPException, OSError):
            conn.close()
            local.conn = None
            if attempt == 1:
                raise
    return 0


def callback(message):
    try:
        status = post(message.data)
    except Exception as err:  # noqa: BLE001 - any failure is a nack
        print(f"delivery failed: {err}", file=sys.stderr)
        message.nack()
        return
    if 200 <= status < 300:
        message.ack()
    else:
        message.nack()


def main() -> None:
    subscriber = pubsub_v1.SubscriberClient()
    flow_control = pubsub_v1.types.FlowControl(max_messages=concurrency)
    scheduler = ThreadScheduler(ThreadPoolExecutor(max_workers=concurrency))
    future = subscriber.subscribe(
        subscription_path, callback=callback, flow_control=flow_control, scheduler=scheduler
    )
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        future.result()
    except KeyboardInterrupt:
        future.cancel()


if __name__ == "__main__":
    main()
