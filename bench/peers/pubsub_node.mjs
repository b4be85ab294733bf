// The Pub/Sub Node peer: Google's official client (@google-cloud/pubsub), streaming pull with
// flow control at the benchmark's concurrency, POSTing every message to the worker and
// acking on 2xx (nacking otherwise). PUBSUB_EMULATOR_HOST points it at the emulator.
import http from "node:http";
import { PubSub } from "@google-cloud/pubsub";

const subscriptionPath = process.env.BENCH_QUEUE; // projects/<p>/subscriptions/<s>
const workerUrl = new URL(process.env.BENCH_WORKER_URL);
const concurrency = Number(process.env.BENCH_CONCURRENCY || "10");
const [, project, , name] = subscriptionPath.split("/");

const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });

function post(body) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        agent,
        host: workerUrl.hostname,
        port: workerUrl.port,
        path: workerUrl.pathname,
        method: "POST",
        headers: { "content-type": "application/json", "content-length": body.length },
      },
      (res) => {
        res.resume();
        res.on("end", () => resolve(res.statusCode));
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

const pubsub = new PubSub({ projectId: project });
const subscription = pubsub.subscription(name, {
  flowControl: { maxMessages: concurrency, allowExcessMessages: false },
});
subscription.on("message", async (message) => {
  try {
    const status = await post(message.data);
    if (status >= 200 && status < 300) message.ack();
    else message.nack();
  } catch (err) {
    console.error("delivery failed:", err.message);
    message.nack();
  }
});
subscription.on("error", (err) => console.error("subscription error:", err.message));

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
