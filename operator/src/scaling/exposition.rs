//! One sidecar's `/metrics` page (Prometheus' text format) reduced to the numbers the
//! autoscaler reads. Only ferry-consumer's own series are looked at (docs/metrics.md).

/// What one scrape of one sidecar said. Counters are totals since the sidecar started;
/// [`super::signals`] turns two scrapes into rates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SidecarSample {
    /// `ferry_messages_received_total`.
    pub received: f64,
    /// `ferry_messages_completed_total`, all outcomes.
    pub completed: f64,
    /// `ferry_delivery_duration_seconds` sum and count.
    pub service_seconds_sum: f64,
    pub service_count: f64,
    /// `ferry_message_age_seconds` sum and count (wait before receipt).
    pub age_seconds_sum: f64,
    pub age_count: f64,
    /// `ferry_in_flight`.
    pub in_flight: f64,
    /// `ferry_concurrency_limit`.
    pub concurrency_limit: f64,
    /// `ferry_draining`: the pod is stopping and takes no new messages.
    pub draining: bool,
    /// `ferry_worker_unavailable`: the sidecar holds receiving because its worker, ready
    /// before, stopped being so.
    pub worker_unavailable: bool,
    /// `ferry_queue_messages{state}` with `ferry_queue_stats_timestamp_seconds`; absent when
    /// the sidecar cannot read the queue's counts (Pub/Sub without Cloud Monitoring).
    pub backlog: Option<ReportedBacklog>,
    /// `ferry_dead_letter_messages`.
    pub dead_letter: Option<f64>,
    /// `ferry_rate_limit_per_second`: this sidecar's share of `spec.delivery.maxPerSecond`;
    /// absent without a limit.
    pub rate_limit: Option<f64>,
}

/// The queue-wide counts a sidecar read from the provider, and when.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReportedBacklog {
    pub visible: f64,
    pub in_flight: f64,
    pub delayed: f64,
    /// Unix seconds of the read.
    pub read_at: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExpositionError {
    #[error("line {line}: {problem}")]
    Malformed { line: usize, problem: String },
    #[error("no {0} series: this is not a ferry-consumer metrics page")]
    NotASidecar(&'static str),
}

/// One sample line: `name{label="value",...} value [timestamp]`.
#[derive(Debug, PartialEq)]
struct Line<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

fn parse_line(text: &str) -> Result<Line<'_>, String> {
    let name_end = text
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("a sample needs a value")?;
    let name = &text[..name_end];
    let mut rest = &text[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("a label needs a value")?;
            let key = rest[..eq].trim();
            let quoted = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("a label value must be quoted")?;
            let (value, consumed) = unquote(quoted)?;
            labels.push((key, value));
            rest = &quoted[consumed..];
        }
    }
    let value = rest
        .split_whitespace()
        .next()
        .ok_or("a sample needs a value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("{v:?} is not a number"))?,
    };
    Ok(Line {
        name,
        labels,
        value,
    })
}

/// The label value up to its closing quote, unescaped, and the bytes it took (quote included).
fn unquote(text: &str) -> Result<(String, usize), String> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, i + 1)),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, other)) => value.push(other),
                None => break,
            },
            other => value.push(other),
        }
    }
    Err("unterminated label value".into())
}

pub fn parse_sample(text: &str) -> Result<SidecarSample, ExpositionError> {
    let mut sample = SidecarSample::default();
    let mut seen_received = false;
    let mut seen_limit = false;
    let mut backlog = ReportedBacklog::default();
    let mut seen_backlog = false;
    let mut seen_stats_time = false;
    for (index, raw) in text.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let line = parse_line(raw).map_err(|problem| ExpositionError::Malformed {
            line: index + 1,
            problem,
        })?;
        let label = |key: &str| {
            line.labels
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.as_str())
        };
        match line.name {
            "ferry_messages_received_total" => {
                seen_received = true;
                sample.received += line.value;
            }
            "ferry_messages_completed_total" => sample.completed += line.value,
            "ferry_delivery_duration_seconds_sum" => sample.service_seconds_sum += line.value,
            "ferry_delivery_duration_seconds_count" => sample.service_count += line.value,
            "ferry_message_age_seconds_sum" => sample.age_seconds_sum += line.value,
            "ferry_message_age_seconds_count" => sample.age_count += line.value,
            "ferry_in_flight" => sample.in_flight += line.value,
            "ferry_concurrency_limit" => {
                seen_limit = true;
                sample.concurrency_limit += line.value;
            }
            "ferry_draining" => sample.draining = line.value >= 1.0,
            "ferry_worker_unavailable" => sample.worker_unavailable = line.value >= 1.0,
            "ferry_dead_letter_messages" => sample.dead_letter = Some(line.value),
            "ferry_rate_limit_per_second" => sample.rate_limit = Some(line.value),
            "ferry_queue_stats_timestamp_seconds" => {
                seen_stats_time = true;
                backlog.read_at = line.value;
            }
            "ferry_queue_messages" => {
                seen_backlog = true;
                match label("state") {
                    Some("visible") => backlog.visible = line.value,
                    Some("in_flight") => backlog.in_flight = line.value,
                    Some("delayed") => backlog.delayed = line.value,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if !seen_received {
        return Err(ExpositionError::NotASidecar(
            "ferry_messages_received_total",
        ));
    }
    if !seen_limit {
        return Err(ExpositionError::NotASidecar("ferry_concurrency_limit"));
    }
    // Counts without the time they were read could be any age: not a signal.
    sample.backlog = (seen_backlog && seen_stats_time && backlog.read_at > 0.0).then_some(backlog);
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP ferry_messages_received_total Messages received.
# TYPE ferry_messages_received_total counter
ferry_messages_received_total{queue="orders"} 120
ferry_messages_completed_total{outcome="succeeded",queue="orders"} 100
ferry_messages_completed_total{outcome="retried",queue="orders"} 7
ferry_messages_completed_total{outcome="dead_lettered",queue="orders"} 2
ferry_messages_completed_total{outcome="released",queue="orders"} 0
ferry_delivery_duration_seconds_bucket{queue="orders",le="+Inf"} 109
ferry_delivery_duration_seconds_sum{queue="orders"} 21.8
ferry_delivery_duration_seconds_count{queue="orders"} 109
ferry_message_age_seconds_sum{queue="orders"} 55
ferry_message_age_seconds_count{queue="orders"} 110
ferry_in_flight{queue="orders"} 3
ferry_concurrency_limit{queue="orders"} 10
ferry_draining{queue="orders"} 0
ferry_queue_messages{queue="orders",state="visible"} 42
ferry_queue_messages{queue="orders",state="in_flight"} 5
ferry_queue_messages{queue="orders",state="delayed"} 1
ferry_queue_stats_timestamp_seconds{queue="orders"} 1764000000.5
ferry_build_info{provider="sqs",version="0.1.0"} 1
"#;

    #[test]
    fn a_sidecar_page_becomes_a_sample() {
        let sample = parse_sample(PAGE).unwrap();
        assert_eq!(sample.received, 120.0);
        assert_eq!(sample.completed, 109.0);
        assert_eq!(
            (sample.service_seconds_sum, sample.service_count),
            (21.8, 109.0)
        );
        assert_eq!((sample.age_seconds_sum, sample.age_count), (55.0, 110.0));
        assert_eq!((sample.in_flight, sample.concurrency_limit), (3.0, 10.0));
        assert!(!sample.draining);
        assert!(
            !sample.worker_unavailable,
            "an older sidecar has no such series"
        );
        let down = format!("{PAGE}ferry_worker_unavailable{{queue=\"orders\"}} 1\n");
        assert!(parse_sample(&down).unwrap().worker_unavailable);
        assert_eq!(sample.rate_limit, None, "no limit is no series");
        let limited = format!("{PAGE}ferry_rate_limit_per_second{{queue=\"orders\"}} 12.5\n");
        assert_eq!(parse_sample(&limited).unwrap().rate_limit, Some(12.5));
        assert_eq!(
            sample.backlog,
            Some(ReportedBacklog {
                visible: 42.0,
                in_flight: 5.0,
                delayed: 1.0,
                read_at: 1_764_000_000.5
            })
        );
    }

    #[test]
    fn counts_without_a_read_time_are_not_a_backlog() {
        let page: String = PAGE
            .lines()
            .filter(|l| !l.starts_with("ferry_queue_stats_timestamp_seconds"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse_sample(&page).unwrap().backlog, None);
    }

    #[test]
    fn labels_with_escapes_and_spaces_parse() {
        let line =
            parse_line(r#"x{a="q\"uote", b="back\\slash",c="new\nline"} 2.5 1700000000"#).unwrap();
        assert_eq!(line.name, "x");
        assert_eq!(
            line.labels,
            vec![
                ("a", "q\"uote".to_string()),
                ("b", "back\\slash".to_string()),
                ("c", "new\nline".to_string())
            ]
        );
        assert_eq!(line.value, 2.5);
        assert_eq!(parse_line("y +Inf").unwrap().value, f64::INFINITY);
    }

    #[test]
    fn another_program_or_garbage_is_an_error_not_zeros() {
        assert_eq!(
            parse_sample("up 1\n"),
            Err(ExpositionError::NotASidecar(
                "ferry_messages_received_total"
            ))
        );
        assert!(matches!(
            parse_sample("ferry_messages_received_total{queue=\"x} 1"),
            Err(ExpositionError::Malformed { line: 1, .. })
        ));
    }
}
