//! `ferry-bench`: measures `ferry-consumer` against the consumers users run today, on the
//! same backend, with the same worker, in the same run (`scripts/bench-consumer.sh`).
//!
//! Subcommands:
//! - `run`: the whole comparison; writes `target/bench/consumer.json` and prints the table.
//! - `sqs-endpoint`: only the SQS endpoint, for trying a consumer by hand.
//! - `raw-sqs`, `raw-pubsub`: the raw-client ceilings (receive + delete/ack, no delivery),
//!   started as their own processes by `run` so their CPU and memory are measured alike.

mod orchestrate;
mod procstat;
mod raw;
mod sqs_endpoint;
mod stream_tap;
mod worker;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ferry-bench", about = "ferry-consumer benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the whole comparison.
    Run(orchestrate::RunArgs),
    /// Serves the benchmark's SQS endpoint until interrupted (at most `--seconds`).
    SqsEndpoint {
        #[arg(long, default_value_t = 9324)]
        port: u16,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// Prints the tables of a saved report.
    Table {
        #[arg(default_value = "target/bench/consumer.json")]
        report: std::path::PathBuf,
    },
    /// Raw aws-sdk-sqs client: receive and delete as fast as possible.
    RawSqs(raw::RawSqsArgs),
    /// Raw google-cloud-pubsub streaming pull: receive and ack as fast as possible.
    RawPubsub(raw::RawPubSubArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => orchestrate::run(args).await,
            Command::SqsEndpoint { port, seconds } => {
                let endpoint = sqs_endpoint::SqsEndpoint::start(port).await?;
                eprintln!("SQS endpoint on {}", endpoint.queue_url());
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(seconds)) => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                Ok(())
            }
            Command::Table { report } => orchestrate::print_report(&report),
            Command::RawSqs(args) => raw::raw_sqs(args).await,
            Command::RawPubsub(args) => raw::raw_pubsub(args).await,
        }
    })
}
