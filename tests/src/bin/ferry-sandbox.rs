//! The whole system on one machine with a live view: devcluster, a queue emulator, the
//! operator, and the example QueueConsumer, under a burst, a steady load and an idle phase;
//! then the worker is fixed to accept the poison and the dead-letter queue is redriven.
//! The last line of the output is the run's summary as one JSON object.
//!
//! `scripts/sandbox.sh` builds everything and runs this.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ferry_queues::Provider;
use ferry_tests::sandbox::{Sandbox, SandboxConfig, View};

#[derive(Parser, Debug)]
#[command(
    about = "Runs Ferry end to end on this machine: devcluster, a queue emulator, the operator and an autoscaled example consumer under load"
)]
struct Options {
    /// Queue provider: pubsub (Google's emulator) or sqs (moto).
    #[arg(long, default_value = "pubsub", value_parser = ["pubsub", "sqs"])]
    provider: String,
    /// Messages published at once when the run starts.
    #[arg(long, default_value_t = 600)]
    burst: usize,
    /// Messages per second published after the burst...
    #[arg(long, default_value_t = 20.0)]
    steady_rate: f64,
    /// ...for this many seconds; then nothing, until the consumer is idle again.
    #[arg(long, default_value_t = 30)]
    steady_seconds: u64,
    /// Every n-th message is poison (the worker rejects it; it goes to the dead-letter
    /// queue). 0 for none.
    #[arg(long, default_value_t = 50)]
    poison_every: u64,
    /// Seconds between two autoscaler polls.
    #[arg(long, default_value_t = 2.0)]
    poll_interval: f64,
    /// Once the load is settled, fix the worker and redrive the dead-letter queue (default:
    /// true).
    #[arg(long)]
    redrive: Option<bool>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    let provider = match options.provider.as_str() {
        "sqs" => Provider::Sqs,
        _ => Provider::PubSub,
    };
    let mut config = SandboxConfig::new(provider);
    config.burst = options.burst;
    config.steady_rate = options.steady_rate;
    config.steady_seconds = options.steady_seconds;
    config.poison_every = options.poison_every;
    if let Some(redrive) = options.redrive {
        config.redrive = redrive;
    }
    config.poll_interval_seconds = options.poll_interval;
    config.timeout = Duration::from_secs(options.timeout);
    eprintln!(
        "starting devcluster, the {} emulator and ferry-operator (logs in {})",
        provider.as_str(),
        config.work_dir.display()
    );
    let run = async {
        let mut sandbox = Sandbox::start(config).await?;
        eprintln!(
            "\nfrom another terminal:\n  export KUBECONFIG={}\n  kubectl get qc -w\n  kubectl describe qc orders\n  kubectl get pods\n",
            sandbox.kubeconfig().display()
        );
        let mut view = View::new(std::io::stdout().is_terminal());
        let result = sandbox.run(&mut |snapshot| view.show(snapshot)).await;
        sandbox.shutdown().await;
        result
    };
    let outcome = tokio::select! {
        result = run => result,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: stopping the operator, the pods, devcluster and the emulator");
            return ExitCode::from(130);
        }
    };
    match outcome {
        Ok(summary) => {
            let ok = summary.lost == 0
                && summary.duplicates == 0
                && summary.periodic_tick_duplicates == 0
                && summary.poison_not_dead_lettered == 0
                && (summary.redrive.is_none() || summary.in_dead_letter == 0);
            println!(
                "\n{} published, {} processed, {} dead-lettered, {} lost, {} duplicates; max wait {:.1}s, p99 {:.1}s; up to {} replicas, {:.0} replica-seconds",
                summary.published,
                summary.processed,
                summary.dead_lettered,
                summary.lost,
                summary.duplicates,
                summary.max_wait_s,
                summary.p99_wait_s,
                summary.max_replicas,
                summary.replica_seconds
            );
            println!(
                "periodic task `heartbeat` (spec.periodicTasks, every minute): {} tick(s) the operator sent through the queue were processed, {}",
                summary.periodic_ticks_processed,
                if summary.periodic_tick_duplicates == 0 {
                    "each once"
                } else {
                    "some more than once"
                }
            );
            if summary.unseen_attempts > 0 {
                println!(
                    "{} delivery attempt(s) of {} message(s) reached no worker: a sidecar \
                     stopped with them in hand, and they came back after their lease ran out \
                     (docs/sandbox.md)",
                    summary.unseen_attempts, summary.messages_with_unseen_attempts,
                );
            }
            if let Some(redrive) = &summary.redrive {
                println!(
                    "after the fix: the redrive moved {} dead letter(s) back ({} failed again), the fixed worker processed {} of them in {:.0}s; {} left in the dead-letter queue",
                    redrive.moved,
                    redrive.failed_again,
                    redrive.processed_after,
                    redrive.seconds,
                    summary.in_dead_letter
                );
            }
            println!(
                "{}",
                serde_json::to_string(&summary).expect("a summary serializes")
            );
            if ok {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "FAILED: messages were lost, duplicated, poison was not dead-lettered, or the redrive left dead letters"
                );
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("sandbox failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
