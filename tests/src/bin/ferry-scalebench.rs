//! The operator at scale: N QueueConsumers applied at once against devcluster, Google's
//! Pub/Sub emulator, the Cloud Monitoring stand-in and the real `ferry-operator` process.
//! Prints a table and writes `target/bench/scale.json`. `scripts/bench-scale.sh` builds
//! everything and runs this; docs/performance.md has the figures.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ferry_tests::repo_root;
use ferry_tests::scalebench::{ScaleBenchConfig, run, table};

#[derive(Parser, Debug)]
#[command(
    about = "Applies N QueueConsumers at once and measures the operator: time to all Ready, peak RSS, API calls per object at steady state"
)]
struct Options {
    /// QueueConsumers to create.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 4)]
    namespaces: usize,
    /// Creates in flight at once.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// The operator's FERRY_SCALING_POLL_INTERVAL, seconds.
    #[arg(long, default_value_t = 5.0)]
    poll_interval: f64,
    /// Give up when not every consumer is Ready after this many seconds.
    #[arg(long, default_value_t = 600)]
    ready_timeout: u64,
    /// Seconds to wait after all are Ready before the steady-state window.
    #[arg(long, default_value_t = 30)]
    settle: u64,
    /// Seconds of the steady-state window.
    #[arg(long, default_value_t = 60)]
    window: u64,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench/scale.json")]
    out: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    let config = ScaleBenchConfig {
        count: options.count,
        namespaces: options.namespaces.max(1),
        in_flight: options.in_flight.max(1),
        poll_interval_seconds: options.poll_interval,
        ready_timeout: Duration::from_secs(options.ready_timeout),
        settle: Duration::from_secs(options.settle),
        window: Duration::from_secs(options.window),
        work_dir: repo_root().join("target/bench/scale"),
    };
    let _ = std::fs::remove_dir_all(&config.work_dir);
    let report = tokio::select! {
        report = run(&config) => report,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted");
            return ExitCode::from(130);
        }
    };
    match report {
        Ok(report) => {
            print!("{}", table(&report));
            let out = if options.out.is_absolute() {
                options.out
            } else {
                repo_root().join(options.out)
            };
            if let Some(dir) = out.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let json = serde_json::to_string_pretty(&report).expect("the report serializes");
            if let Err(error) = std::fs::write(&out, json + "\n") {
                eprintln!("cannot write {}: {error}", out.display());
                return ExitCode::FAILURE;
            }
            eprintln!("wrote {}", out.display());
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("scale benchmark failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}
