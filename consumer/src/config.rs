//! The sidecar's configuration: every setting is an environment variable and a flag.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use clap::Parser;
use ferry_queues::{ConsumerTarget, Provider};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "ferry-consumer",
    version,
    about = "Pulls messages from SQS or Pub/Sub and delivers each one to a worker over HTTP",
    long_about = "Pulls messages from an SQS queue or a Pub/Sub subscription and POSTs each one to the \
worker on the pod's loopback. A 2xx answer deletes/acks the message; 429, 5xx, a timeout or a refused \
connection retries it with backoff until the queue's redrive policy moves it to the dead-letter queue; \
a status listed in FERRY_PERMANENT_FAILURE_STATUSES sends it to the dead-letter queue at once."
)]
pub struct Config {
    /// Queue provider: sqs or pubsub (required).
    #[arg(long = "provider", env = "FERRY_PROVIDER", value_parser = parse_provider)]
    provider_arg: Option<Provider>,

    /// SQS queue URL, or projects/<project>/subscriptions/<subscription> (required).
    #[arg(long = "queue", env = "FERRY_QUEUE", default_value = "")]
    pub queue: String,

    /// Filled from `provider_arg` by `validate`, so a missing value is reported with the
    /// variable's name instead of clap's generic "required argument" text.
    #[arg(skip = Provider::Sqs)]
    pub provider: Provider,

    /// Dead-letter queue URL (SQS), or the dead-letter topic's subscription path (Pub/Sub).
    #[arg(long, env = "FERRY_DEAD_LETTER")]
    pub dead_letter: Option<String>,

    /// Pub/Sub only: the topic permanent failures are published to. Read from the
    /// subscription's dead-letter policy when not set.
    #[arg(long, env = "FERRY_DEAD_LETTER_TOPIC")]
    pub dead_letter_topic: Option<String>,

    /// Endpoint override: an SQS-compatible server, or the Pub/Sub emulator (host:port or URL).
    /// PUBSUB_EMULATOR_HOST is honoured too.
    #[arg(long, env = "FERRY_ENDPOINT")]
    pub endpoint: Option<String>,

    /// Where the worker listens.
    #[arg(long, env = "FERRY_DELIVERY_URL", default_value = "http://127.0.0.1:8080/", value_parser = parse_url)]
    pub delivery_url: String,

    /// A path on the worker (its host and port) that answers 200-399 once the worker can take
    /// messages: nothing is received until it does (at start, and after a delivery found
    /// nothing listening). Unset: the worker accepting a connection is enough.
    #[arg(long, env = "FERRY_WORKER_READINESS_PATH", value_parser = parse_readiness_path)]
    pub worker_readiness_path: Option<String>,

    /// A token that `/drain` and `PUT /rate-limit` must be sent as `Authorization: Bearer
    /// <token>` (16-256 visible characters); unset, they answer anyone who reaches the port.
    #[arg(long, env = "FERRY_CONTROL_TOKEN", hide_env_values = true, value_parser = parse_control_token)]
    pub control_token: Option<ControlToken>,

    /// Most deliveries in flight at once (1-1000).
    #[arg(long, env = "FERRY_CONCURRENCY", default_value_t = 10, value_parser = in_range::<usize>("FERRY_CONCURRENCY", 1..=1000))]
    pub concurrency: usize,

    /// Seconds a worker may take before the delivery counts as failed.
    #[arg(long, env = "FERRY_DELIVERY_TIMEOUT", default_value = "60", value_parser = seconds("FERRY_DELIVERY_TIMEOUT", 0.001..=43_200.0))]
    pub delivery_timeout: Duration,

    /// Seconds to wait for the worker to accept a connection.
    #[arg(long, env = "FERRY_CONNECT_TIMEOUT", default_value = "5", value_parser = seconds("FERRY_CONNECT_TIMEOUT", 0.001..=300.0))]
    pub connect_timeout: Duration,

    /// Content-Type of the delivery request.
    #[arg(long, env = "FERRY_CONTENT_TYPE", default_value = "application/json")]
    pub content_type: String,

    /// Worker statuses that send a message to the dead-letter queue at once, e.g. "400,422" or "400-499".
    #[arg(long, env = "FERRY_PERMANENT_FAILURE_STATUSES", default_value = "", value_parser = parse_statuses)]
    pub permanent_failure_statuses: StatusSet,

    /// Seconds before the first retry of a failed delivery; doubles with every attempt.
    #[arg(long, env = "FERRY_RETRY_BACKOFF_MIN", default_value = "2", value_parser = seconds("FERRY_RETRY_BACKOFF_MIN", 0.0..=43_200.0))]
    pub retry_backoff_min: Duration,

    /// Longest retry backoff, in seconds.
    #[arg(long, env = "FERRY_RETRY_BACKOFF_MAX", default_value = "300", value_parser = seconds("FERRY_RETRY_BACKOFF_MAX", 0.0..=43_200.0))]
    pub retry_backoff_max: Duration,

    /// Seconds a received message stays leased (SQS visibility timeout / Pub/Sub lease
    /// extension); deliveries running longer are extended, so the message is never redelivered
    /// while the worker is still on it.
    #[arg(long, env = "FERRY_LEASE_SECONDS", default_value = "60", value_parser = seconds("FERRY_LEASE_SECONDS", 10.0..=43_200.0))]
    pub lease: Duration,

    /// SQS long-poll wait, in seconds (0-20).
    #[arg(long, env = "FERRY_RECEIVE_WAIT_SECONDS", default_value = "20", value_parser = seconds("FERRY_RECEIVE_WAIT_SECONDS", 0.0..=20.0))]
    pub receive_wait: Duration,

    /// Seconds between reads of the queue's backlog statistics.
    #[arg(long, env = "FERRY_STATS_INTERVAL", default_value = "5", value_parser = seconds("FERRY_STATS_INTERVAL", 0.1..=3600.0))]
    pub stats_interval: Duration,

    /// Seconds in-flight deliveries get to finish after SIGTERM or a drain request.
    #[arg(long, env = "FERRY_DRAIN_TIMEOUT", default_value = "25", value_parser = seconds("FERRY_DRAIN_TIMEOUT", 0.0..=3600.0))]
    pub drain_timeout: Duration,

    /// Address of /metrics, /healthz, /readyz, /drain and /rate-limit.
    #[arg(long, env = "FERRY_LISTEN_ADDR", default_value = "0.0.0.0:9090", value_parser = parse_addr)]
    pub listen_addr: SocketAddr,

    /// Pub/Sub only: read the subscription's backlog, oldest message age and the DLQ depth
    /// from Cloud Monitoring (needs roles/monitoring.viewer; the numbers lag 1-3 minutes).
    #[arg(long, env = "FERRY_PUBSUB_MONITORING", default_value_t = false, action = clap::ArgAction::Set, value_parser = parse_bool("FERRY_PUBSUB_MONITORING"))]
    pub pubsub_monitoring: bool,

    /// Cloud Monitoring endpoint; anything but the default is called without credentials.
    #[arg(long, env = "FERRY_MONITORING_ENDPOINT", default_value = ferry_queues::monitoring::DEFAULT_ENDPOINT)]
    pub monitoring_endpoint: String,

    /// Most deliveries this sidecar starts per second (retries included), a positive number
    /// (fractions allowed, e.g. 0.5); unset: no limit. Changeable at run time through
    /// PUT /rate-limit on FERRY_LISTEN_ADDR.
    #[arg(long, env = "FERRY_RATE_LIMIT", value_parser = parse_rate_limit)]
    pub rate_limit: Option<f64>,

    /// Threads that run the pump, the deliveries and the queue client: 1 runs everything on
    /// one thread; 0 starts one per CPU the process may use.
    #[arg(long, env = "FERRY_THREADS", default_value_t = 1, value_parser = in_range::<usize>("FERRY_THREADS", 0..=64))]
    pub threads: usize,

    /// Log format: text or json.
    #[arg(long, env = "FERRY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    /// Required values and cross-field rules clap cannot express.
    pub fn validate(&mut self) -> Result<(), String> {
        self.provider = self
            .provider_arg
            .ok_or("FERRY_PROVIDER (--provider) is required; accepted values: sqs, pubsub")?;
        if self.queue.is_empty() {
            return Err(
                "FERRY_QUEUE (--queue) is required: an SQS queue URL, or projects/<project>/subscriptions/<subscription>".into(),
            );
        }
        if self.retry_backoff_min > self.retry_backoff_max {
            return Err(format!(
                "FERRY_RETRY_BACKOFF_MIN ({:?}) must not exceed FERRY_RETRY_BACKOFF_MAX ({:?})",
                self.retry_backoff_min, self.retry_backoff_max
            ));
        }
        match self.provider {
            Provider::Sqs if !self.queue.contains("://") => Err(format!(
                "FERRY_QUEUE must be an SQS queue URL such as https://sqs.eu-west-1.amazonaws.com/123456789012/orders when FERRY_PROVIDER=sqs, got {:?}",
                self.queue
            )),
            Provider::PubSub if !is_subscription_path(&self.queue) => Err(format!(
                "FERRY_QUEUE must be projects/<project>/subscriptions/<subscription> when FERRY_PROVIDER=pubsub, got {:?}",
                self.queue
            )),
            _ => Ok(()),
        }
    }

    pub fn target(&self) -> ConsumerTarget {
        ConsumerTarget {
            provider: self.provider,
            queue: self.queue.clone(),
            dead_letter: self.dead_letter.clone(),
            dead_letter_topic: self.dead_letter_topic.clone(),
            endpoint: self.endpoint.clone(),
            lease: self.lease,
            // Enough to keep every worker slot busy while the next messages are on their way;
            // the client library keeps these leased, so holding them costs no redelivery.
            max_outstanding: self.concurrency * 2,
            monitoring: (self.provider == Provider::PubSub && self.pubsub_monitoring).then(|| {
                ferry_queues::monitoring::MonitoringConfig {
                    endpoint: self.monitoring_endpoint.clone(),
                }
            }),
        }
    }
}

fn is_subscription_path(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts.len() == 4
        && parts[0] == "projects"
        && parts[2] == "subscriptions"
        && !parts[1].is_empty()
        && !parts[3].is_empty()
}

fn parse_provider(value: &str) -> Result<Provider, String> {
    value
        .parse()
        .map_err(|e: String| format!("FERRY_PROVIDER: {e}"))
}

fn parse_bool(variable: &'static str) -> impl Fn(&str) -> Result<bool, String> + Clone {
    move |value| match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err(format!("{variable} must be true or false, got {value:?}")),
    }
}

/// Parsed as a browser would (a path with spaces or non-ASCII characters is percent-encoded,
/// as `spec.delivery.path` allows them), and returned in the normalized form the HTTP
/// client takes.
fn parse_url(value: &str) -> Result<String, String> {
    let parsed = url::Url::parse(value).map_err(|e| {
        format!("FERRY_DELIVERY_URL must be an http:// URL such as http://127.0.0.1:8080/ ({e})")
    })?;
    match (parsed.scheme(), parsed.host()) {
        ("http", Some(_)) => Ok(parsed.into()),
        // The worker shares the pod's network namespace; TLS to it would protect nothing and
        // the sidecar does not speak it, so say so instead of failing every delivery.
        ("https", _) => Err(format!(
            "FERRY_DELIVERY_URL must be a plain http:// URL: the sidecar reaches the worker inside the pod and does not speak TLS, got {value:?}"
        )),
        _ => Err(format!(
            "FERRY_DELIVERY_URL must be an http:// URL with a host, such as http://127.0.0.1:8080/, got {value:?}"
        )),
    }
}

fn parse_readiness_path(value: &str) -> Result<String, String> {
    let usable = value.starts_with('/')
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && value.parse::<http::uri::PathAndQuery>().is_ok();
    if usable {
        Ok(value.to_string())
    } else {
        Err(format!(
            "FERRY_WORKER_READINESS_PATH must be a URL path starting with '/', such as /ready, got {value:?}"
        ))
    }
}

/// `FERRY_CONTROL_TOKEN`: never printed, not even by `Debug`.
#[derive(Clone, PartialEq)]
pub struct ControlToken(pub String);

impl std::fmt::Debug for ControlToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlToken(..)")
    }
}

fn parse_control_token(value: &str) -> Result<ControlToken, String> {
    let usable = (16..=256).contains(&value.len()) && value.chars().all(|c| c.is_ascii_graphic());
    if usable {
        Ok(ControlToken(value.to_string()))
    } else {
        // The value itself is not repeated: it is meant to be secret.
        Err(format!(
            "FERRY_CONTROL_TOKEN must be 16 to 256 visible ASCII characters without spaces, got {} characters",
            value.chars().count()
        ))
    }
}

fn parse_rate_limit(value: &str) -> Result<f64, String> {
    crate::rate_limit::parse_per_second(value).ok_or_else(|| {
        format!(
            "FERRY_RATE_LIMIT must be {} (unset for no limit), got {value:?}",
            crate::rate_limit::ACCEPTED
        )
    })
}

fn parse_addr(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("FERRY_LISTEN_ADDR must be an address:port such as 0.0.0.0:9090, got {value:?}")
    })
}

fn in_range<T>(
    variable: &'static str,
    range: RangeInclusive<T>,
) -> impl Fn(&str) -> Result<T, String> + Clone
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy + Send + Sync + 'static,
{
    move |value| {
        let parsed: T = value.trim().parse().map_err(|_| {
            format!(
                "{variable} must be a whole number from {} to {}, got {value:?}",
                range.start(),
                range.end()
            )
        })?;
        if range.contains(&parsed) {
            Ok(parsed)
        } else {
            Err(format!(
                "{variable} must be from {} to {}, got {value}",
                range.start(),
                range.end()
            ))
        }
    }
}

fn seconds(
    variable: &'static str,
    range: RangeInclusive<f64>,
) -> impl Fn(&str) -> Result<Duration, String> + Clone {
    move |value| {
        let parsed: f64 = value.trim().trim_end_matches('s').parse().map_err(|_| {
            format!(
                "{variable} must be a number of seconds from {} to {}, got {value:?}",
                range.start(),
                range.end()
            )
        })?;
        if !range.contains(&parsed) {
            return Err(format!(
                "{variable} must be from {} to {} seconds, got {value}",
                range.start(),
                range.end()
            ));
        }
        Ok(Duration::from_secs_f64(parsed))
    }
}

/// HTTP statuses given as single codes and inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusSet(Vec<RangeInclusive<u16>>);

impl StatusSet {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|r| r.contains(&status))
    }
}

fn parse_statuses(value: &str) -> Result<StatusSet, String> {
    let invalid = |part: &str| {
        format!(
            "FERRY_PERMANENT_FAILURE_STATUSES takes HTTP statuses (100-599) and ranges separated by commas, such as \"400,422\" or \"400-499\"; {part:?} is not one"
        )
    };
    let status = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
    };
    let mut ranges = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let range = match part.split_once('-') {
            Some((a, b)) => match (status(a), status(b)) {
                (Some(a), Some(b)) if a <= b => a..=b,
                _ => return Err(invalid(part)),
            },
            None => {
                let code = status(part).ok_or_else(|| invalid(part))?;
                code..=code
            }
        };
        if range.contains(&200) || range.clone().any(|c| (200..300).contains(&c)) {
            return Err(format!(
                "FERRY_PERMANENT_FAILURE_STATUSES must not include 2xx statuses (they mean success); got {part:?}"
            ));
        }
        ranges.push(range);
    }
    Ok(StatusSet(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut full = vec!["ferry-consumer"];
        full.extend_from_slice(args);
        Config::try_parse_from(full)
    }

    const SQS: [&str; 4] = [
        "--provider",
        "sqs",
        "--queue",
        "https://sqs.eu-west-1.amazonaws.com/1/q",
    ];

    #[test]
    fn defaults_follow_the_contract() {
        let mut config = parse(&SQS).unwrap();
        assert_eq!(config.delivery_url, "http://127.0.0.1:8080/");
        assert_eq!(config.listen_addr, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(config.content_type, "application/json");
        assert_eq!(config.concurrency, 10);
        assert_eq!(config.delivery_timeout, Duration::from_secs(60));
        assert_eq!(config.threads, 1);
        assert_eq!(config.rate_limit, None);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn bad_values_name_the_variable_and_the_accepted_values() {
        let err = parse(&[&SQS[..], &["--concurrency", "0"]].concat())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("FERRY_CONCURRENCY must be from 1 to 1000"),
            "{err}"
        );
        let err = parse(&["--provider", "kafka", "--queue", "x"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("FERRY_PROVIDER") && err.contains("sqs, pubsub"),
            "{err}"
        );
        let err = parse(&[&SQS[..], &["--delivery-timeout", "soon"]].concat())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("FERRY_DELIVERY_TIMEOUT must be a number of seconds"),
            "{err}"
        );
        let err = parse(&[&SQS[..], &["--threads", "65"]].concat())
            .unwrap_err()
            .to_string();
        assert!(err.contains("FERRY_THREADS must be from 0 to 64"), "{err}");
        for (url, says) in [
            ("https://127.0.0.1:8443/", "does not speak TLS"),
            ("ftp://127.0.0.1/", "with a host"),
            ("http://bad host/", "such as http://127.0.0.1:8080/"),
            ("/jobs", "such as http://127.0.0.1:8080/"),
        ] {
            let err = parse(&[&SQS[..], &["--delivery-url", url]].concat())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("FERRY_DELIVERY_URL") && err.contains(says),
                "{url}: {err}"
            );
        }
        assert!(
            parse(&[&SQS[..], &["--delivery-url", "http://worker:80/jobs?x=1"]].concat()).is_ok()
        );
        let err = parse(&[&SQS[..], &["--listen-addr", "9090"]].concat())
            .unwrap_err()
            .to_string();
        assert!(err.contains("FERRY_LISTEN_ADDR"), "{err}");
    }

    #[test]
    fn queue_must_match_the_provider() {
        let mut config = parse(&["--provider", "pubsub", "--queue", "https://sqs/1/q"]).unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("projects/<project>/subscriptions/<subscription>")
        );
        let mut config =
            parse(&["--provider", "sqs", "--queue", "projects/p/subscriptions/s"]).unwrap();
        assert!(config.validate().unwrap_err().contains("SQS queue URL"));
        let mut config = parse(&[
            "--provider",
            "pubsub",
            "--queue",
            "projects/p/subscriptions/s",
        ])
        .unwrap();
        assert!(config.validate().is_ok());
    }

    #[test]
    fn provider_and_queue_are_required_by_name() {
        let err = parse(&[]).unwrap().validate().unwrap_err();
        assert!(
            err.contains("FERRY_PROVIDER (--provider) is required"),
            "{err}"
        );
        let err = parse(&["--provider", "sqs"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.contains("FERRY_QUEUE (--queue) is required"), "{err}");
    }

    #[test]
    fn backoff_bounds_are_ordered() {
        let mut config = parse(
            &[
                &SQS[..],
                &["--retry-backoff-min", "10", "--retry-backoff-max", "5"],
            ]
            .concat(),
        )
        .unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .contains("FERRY_RETRY_BACKOFF_MIN")
        );
    }

    #[test]
    fn permanent_statuses_take_codes_and_ranges() {
        let set = parse_statuses("400, 422,450-499").unwrap();
        assert!(set.contains(400) && set.contains(422) && set.contains(460) && set.contains(499));
        assert!(!set.contains(401) && !set.contains(500));
        assert_eq!(parse_statuses("").unwrap(), StatusSet::default());
        assert!(
            parse_statuses("abc")
                .unwrap_err()
                .contains("FERRY_PERMANENT_FAILURE_STATUSES")
        );
        assert!(parse_statuses("499-400").is_err());
        assert!(parse_statuses("200").unwrap_err().contains("2xx"));
        assert!(parse_statuses("100-599").is_err());
    }

    #[test]
    fn the_control_token_is_kept_out_of_errors_and_debug_output() {
        assert_eq!(parse(&SQS).unwrap().control_token, None);
        let token = "0123456789abcdef0123456789abcdef";
        let mut args = SQS.to_vec();
        args.extend(["--control-token", token]);
        let config = parse(&args).unwrap();
        assert_eq!(config.control_token, Some(ControlToken(token.into())));
        assert!(
            !format!("{config:?}").contains(token),
            "Debug shows no token"
        );
        for bad in ["short", "with a space in the middle", &"x".repeat(257)] {
            let error = parse_control_token(bad).unwrap_err();
            assert!(error.contains("FERRY_CONTROL_TOKEN"), "{error}");
            assert!(!error.contains(bad), "the error repeats no token: {error}");
        }
    }

    #[test]
    fn the_worker_readiness_path_is_a_url_path() {
        assert_eq!(parse(&SQS).unwrap().worker_readiness_path, None);
        for path in ["/ready", "/health/ready?full=1", "/"] {
            let mut args = SQS.to_vec();
            args.extend(["--worker-readiness-path", path]);
            assert_eq!(
                parse(&args).unwrap().worker_readiness_path.as_deref(),
                Some(path)
            );
        }
        for bad in ["ready", "", "/a b", "http://x/ready"] {
            assert!(
                parse_readiness_path(bad)
                    .unwrap_err()
                    .contains("FERRY_WORKER_READINESS_PATH"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_rate_limit_is_a_positive_number() {
        for (text, rate) in [("100", 100.0), ("12.5", 12.5), ("0.5", 0.5)] {
            let config = parse(&[&SQS[..], &["--rate-limit", text]].concat()).unwrap();
            assert_eq!(config.rate_limit, Some(rate));
        }
        for bad in ["0", "-1", "NaN", "inf", "fast", "none"] {
            let flag = format!("--rate-limit={bad}");
            let err = parse(&[&SQS[..], &[flag.as_str()]].concat())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("FERRY_RATE_LIMIT must be a positive number"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn fractional_seconds_are_accepted() {
        let config = parse(&[&SQS[..], &["--retry-backoff-min", "0.25"]].concat()).unwrap();
        assert_eq!(config.retry_backoff_min, Duration::from_millis(250));
    }
}
