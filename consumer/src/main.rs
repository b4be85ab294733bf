use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use ferry_consumer::config::Config;
use ferry_consumer::delivery::{Deliverer, RetryPolicy};
use ferry_consumer::health::Health;
use ferry_consumer::metrics::Metrics;
use ferry_consumer::pump::{Environment, Pump, PumpSettings};
use ferry_consumer::{server, stats};
use tokio::signal::unix::{SignalKind, signal};

fn main() -> ExitCode {
    let mut config = Config::parse();
    if let Err(message) = config.validate() {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    init_tracing(&config.log_format);
    let runtime = match config.threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    }
    .enable_all()
    .build()
    .expect("tokio runtime");
    runtime.block_on(run(config))
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(config: Config) -> ExitCode {
    let queue = match ferry_queues::connect(&config.target()).await {
        Ok(queue) => queue,
        Err(error) => {
            tracing::error!("{error}");
            return ExitCode::from(2);
        }
    };
    let metrics = Arc::new(Metrics::new(queue.queue_name(), config.provider.as_str()));
    let health = Arc::new(Health::new(metrics.clone()));
    let deliverer = match Deliverer::new(
        &config.delivery_url,
        config.concurrency,
        config.connect_timeout,
        config.delivery_timeout,
        config.worker_readiness_path.clone(),
    ) {
        Ok(d) => d,
        Err(error) => {
            tracing::error!("FERRY_DELIVERY_URL: {error}");
            return ExitCode::from(2);
        }
    };
    let pump = Pump::new(
        queue.clone(),
        deliverer,
        metrics.clone(),
        health.clone(),
        PumpSettings {
            concurrency: config.concurrency,
            receive_wait: config.receive_wait,
            lease: config.lease,
            content_type: config.content_type.clone(),
            permanent_failure_statuses: config.permanent_failure_statuses.clone(),
            retry: RetryPolicy {
                min: config.retry_backoff_min,
                max: config.retry_backoff_max,
            },
            rate_limit: config.rate_limit,
        },
        Environment::default(),
    );
    let listener = match tokio::net::TcpListener::bind(config.listen_addr).await {
        Ok(l) => l,
        Err(error) => {
            tracing::error!(
                "cannot listen on FERRY_LISTEN_ADDR={}: {error}",
                config.listen_addr
            );
            return ExitCode::from(1);
        }
    };
    let app = server::router(server::ServerState {
        metrics: metrics.clone(),
        health: health.clone(),
        pump: pump.clone(),
        drain_timeout: config.drain_timeout,
        control_token: config.control_token.clone().map(Arc::new),
    });
    let (stop_serving, serving_stops) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let stop = async {
            let _ = serving_stops.await;
        };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("metrics server stopped: {error}");
        }
    });
    tokio::spawn(stats::run(
        queue.clone(),
        metrics.clone(),
        health.clone(),
        config.stats_interval,
    ));
    tracing::info!(
        provider = %config.provider,
        queue = queue.queue_name(),
        delivery_url = %config.delivery_url,
        concurrency = config.concurrency,
        rate_limit = config.rate_limit.map_or("none".to_string(), |r| format!("{r}/s")),
        listen = %config.listen_addr,
        control = if config.control_token.is_some() {
            "token"
        } else {
            "open"
        },
        "ferry-consumer started"
    );
    let pump_task = tokio::spawn(pump.clone().run());

    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(
        "{signal_name}: draining for up to {:?}",
        config.drain_timeout
    );
    let report = pump.drain(config.drain_timeout).await;
    let _ = pump_task.await;
    // The worker's preStop hook is waiting on /drained: answer it before exiting, so the
    // hook ends in success and the worker is stopped now rather than at a timeout.
    let _ = stop_serving.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
    if report.drained {
        tracing::info!("drained; every message was settled or handed back");
    } else {
        tracing::warn!(
            in_flight = report.still_in_flight,
            "drain timeout passed with deliveries still running; their messages will be redelivered when their lease expires"
        );
    }
    ExitCode::SUCCESS
}
