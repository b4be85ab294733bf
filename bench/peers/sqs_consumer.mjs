// The SQS peer: bbc's sqs-consumer (the most used Node SQS consumer) POSTing every message
// to the benchmark worker and deleting it on 2xx (sqs-consumer deletes when the handler
// resolves, and leaves the message when it throws).
//
// sqs-consumer receives a batch (batchSize ≤ 10), handles it with Promise.all and only then
// polls again, so concurrency C is ceil(C / 10) consumers of min(C, 10) messages each,
// sharing one SQS client, the way its users scale it.
import http from "node:http";
import { SQSClient } from "@aws-sdk/client-sqs";
import { Consumer } from "sqs-consumer";

const queueUrl = process.env.BENCH_QUEUE;
const endpoint = process.env.BENCH_ENDPOINT;
const workerUrl = new URL(process.env.BENCH_WORKER_URL);
const concurrency = Number(process.env.BENCH_CONCURRENCY || "10");

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
        headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) },
      },
      (res) => {
        res.resume();
        res.on("end", () =>
          res.statusCode >= 200 && res.statusCode < 300
            ? resolve()
            : reject(new Error(`worker answered ${res.statusCode}`)),
        );
      },
    );
    req.on("error", reject);
    req.end(body);
  });
}

const sqs = new SQSClient({
  endpoint,
  region: process.env.AWS_REGION || "us-east-1",
  credentials: { accessKeyId: "bench", secretAccessKey: "bench" },
});

const consumers = [];
for (let left = concurrency; left > 0; left -= 10) {
  const consumer = Consumer.create({
    queueUrl,
    sqs,
    batchSize: Math.min(left, 10),
    waitTimeSeconds: 20,
    visibilityTimeout: 60,
    messageSystemAttributeNames: ["All"],
    messageAttributeNames: ["All"],
    handleMessage: async (message) => {
      await post(message.Body);
      return message;
    },
  });
  consumer.on("error", (err) => console.error("error:", err.message));
  consumer.on("processing_error", (err) => console.error("processing_error:", err.message));
  consumer.start();
  consumers.push(consumer);
}

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    consumers.forEach((c) => c.stop());
    process.exit(0);
  });
}
