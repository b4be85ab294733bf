//! ferry-consumer: the sidecar that pulls messages from SQS or Pub/Sub and delivers them to
//! the worker over HTTP. See docs/consumer.md for the contract and docs/metrics.md for the
//! series it exposes.

pub mod config;
pub mod delivery;
pub mod health;
pub mod metrics;
pub mod pump;
pub mod rate_limit;
pub mod receive_batch;
pub mod server;
pub mod stats;
pub mod worker_client;
