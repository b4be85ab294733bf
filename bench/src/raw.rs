//! Raw-client ceilings: receive and delete/ack as fast as the client library allows, with no
//! delivery in between. No consumer built on the same library can go faster.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use clap::Args;

use crate::worker::{message_number, unix_nanos};

#[derive(Args, Debug)]
pub struct RawSqsArgs {
    #[arg(long)]
    pub endpoint: String,
    #[arg(long)]
    pub queue: String,
    /// Most messages held at once: ceil(concurrency / 10) loops of receive(≤10) + delete.
    #[arg(long)]
    pub concurrency: usize,
    /// Stops after this long.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// POST every message here (all of a batch at once) before deleting the batch: the
    /// smallest consumer that delivers, the ceiling for anything that does.
    #[arg(long)]
    pub deliver_to: Option<String>,
}

/// ceil(concurrency / 10) loops, each receiving up to ten messages (as many as its share of
/// the concurrency allows) with the same attributes ferry-consumer asks for, then deleting
/// them in one batch.
pub async fn raw_sqs(args: RawSqsArgs) -> anyhow::Result<()> {
    let client = ferry_queues::sqs::client(Some(&args.endpoint), Some(&args.queue)).await;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let loops = args.concurrency.div_ceil(10).max(1);
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .no_proxy()
        .build()?;
    let mut tasks = Vec::new();
    for i in 0..loops {
        let batch = (args.concurrency - i * 10).clamp(1, 10) as i32;
        let client = client.clone();
        let queue = args.queue.clone();
        let http = http.clone();
        let deliver_to = args.deliver_to.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let out = match client
                    .receive_message()
                    .queue_url(&queue)
                    .max_number_of_messages(batch)
                    .wait_time_seconds(1)
                    .set_message_system_attribute_names(Some(
                        ferry_queues::sqs::RECEIVED_SYSTEM_ATTRIBUTES.to_vec(),
                    ))
                    .message_attribute_names("All")
                    .send()
                    .await
                {
                    Ok(out) => out,
                    Err(e) => {
                        eprintln!("receive failed: {e:?}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if let Some(url) = &deliver_to {
                    let mut posts = tokio::task::JoinSet::new();
                    for message in out.messages() {
                        let request = http
                            .post(url)
                            .header("content-type", "application/json")
                            .body(message.body().unwrap_or_default().to_string());
                        posts.spawn(async move {
                            match request.send().await {
                                Ok(r) => {
                                    let _ = r.bytes().await;
                                }
                                Err(e) => eprintln!("delivery failed: {e}"),
                            }
                        });
                    }
                    while posts.join_next().await.is_some() {}
                }
                let handles: Vec<String> = out
                    .messages()
                    .iter()
                    .filter_map(|m| m.receipt_handle().map(str::to_string))
                    .collect();
                let result = match handles.len() {
                    0 => continue,
                    1 => client
                        .delete_message()
                        .queue_url(&queue)
                        .receipt_handle(&handles[0])
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("{e:?}")),
                    _ => client
                        .delete_message_batch()
                        .queue_url(&queue)
                        .set_entries(Some(
                            handles
                                .iter()
                                .enumerate()
                                .map(|(i, h)| {
                                    DeleteMessageBatchRequestEntry::builder()
                                        .id(i.to_string())
                                        .receipt_handle(h)
                                        .build()
                                        .expect("id and handle are set")
                                })
                                .collect(),
                        ))
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("{e:?}")),
                };
                if let Err(e) = result {
                    eprintln!("delete failed: {e}");
                }
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct RawPubSubArgs {
    /// The emulator, `http://127.0.0.1:<port>`.
    #[arg(long)]
    pub endpoint: String,
    #[arg(long)]
    pub subscription: String,
    /// Flow control: most unacknowledged messages held at once.
    #[arg(long)]
    pub concurrency: i64,
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Print `r <message number> <receive time, Unix ns>` for every message.
    #[arg(long)]
    pub report_each: bool,
}

/// Streaming pull with flow control at `concurrency`; every message is acked on receipt.
/// Prints `c <acked so far>` every 100 ms on stdout, for the orchestrator to count.
pub async fn raw_pubsub(args: RawPubSubArgs) -> anyhow::Result<()> {
    use google_cloud_pubsub::client::Subscriber;
    let subscriber = Subscriber::builder()
        .with_endpoint(args.endpoint.clone())
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .build()
        .await?;
    let mut stream = subscriber
        .subscribe(args.subscription.clone())
        .set_max_outstanding_messages(args.concurrency.max(1))
        .build();
    let acked = Arc::new(AtomicU64::new(0));
    let reporter = {
        let acked = acked.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "c {}", acked.load(Ordering::Relaxed));
                let _ = out.flush();
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        match next {
            Some(Ok((message, handler))) => {
                let received = unix_nanos();
                handler.ack();
                acked.fetch_add(1, Ordering::Relaxed);
                if args.report_each
                    && let Some(n) = message_number(&message.data)
                {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "r {n} {received}");
                    let _ = out.flush();
                }
            }
            Some(Err(e)) => eprintln!("streaming pull: {e}"),
            None => break,
        }
    }
    reporter.abort();
    Ok(())
}
