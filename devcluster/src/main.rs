//! `ferry-devcluster serve`: run the development API server, controllers and process kubelet.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferry_devcluster::{DevCluster, ImageMapping};

#[derive(Parser)]
#[command(
    name = "ferry-devcluster",
    about = "An in-process Kubernetes API server and process kubelet for development and tests (not for production)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until interrupted.
    Serve {
        /// Loopback address to listen on.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// Where to write a kubeconfig pointing at this server.
        #[arg(long)]
        kubeconfig: PathBuf,
        /// Image → local program, `PATTERN=PROGRAM [ARGS]` (`*` wildcards); repeatable.
        #[arg(long = "image")]
        images: Vec<String>,
        /// Directory for pod logs (default: a temporary directory).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Seconds between watch bookmarks.
        #[arg(long, default_value_t = 10)]
        bookmark_seconds: u64,
        /// Change events kept for watch resumption (older resourceVersions get 410 Gone).
        #[arg(long, default_value_t = 100_000)]
        history: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Command::Serve {
        listen,
        kubeconfig,
        images,
        work_dir,
        bookmark_seconds,
        history,
    } = Cli::parse().command;
    let mut b = DevCluster::builder()
        .listen(listen)
        .kubeconfig(kubeconfig)
        .history_limit(history)
        .bookmark_interval(std::time::Duration::from_secs(bookmark_seconds.max(1)));
    if let Some(d) = work_dir {
        b = b.work_dir(d);
    }
    for spec in &images {
        let m = ImageMapping::parse(spec)
            .ok_or_else(|| anyhow::anyhow!("--image {spec:?}: expected PATTERN=PROGRAM [ARGS]"))?;
        b = b.image(&m.pattern, m.program);
    }
    let dc = b.start().await?;
    tracing::info!(url = dc.url(), kubeconfig = %dc.kubeconfig().display(), "devcluster ready");
    // Stop on SIGINT or SIGTERM, and stop the pods' processes with us.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    tracing::info!("stopping pods and shutting down");
    dc.shutdown().await;
    Ok(())
}
