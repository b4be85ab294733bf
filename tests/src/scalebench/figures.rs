//! The benchmark's figures from raw counts: pure functions, so the arithmetic is tested.

use std::collections::BTreeMap;

/// Calls per object per minute over a window.
pub fn per_object_per_minute(calls: u64, objects: usize, window_seconds: f64) -> f64 {
    if objects == 0 || window_seconds <= 0.0 {
        return 0.0;
    }
    calls as f64 / objects as f64 / (window_seconds / 60.0)
}

/// The value at quantile `q` (0..=1) of sorted values, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// `ferry_queue_api_requests_total` from the operator's /metrics, by `provider operation`.
pub fn queue_api_requests(metrics: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("ferry_queue_api_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let value = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        out.insert(
            format!("{} {}", label("provider"), label("operation")),
            value,
        );
    }
    out
}

/// What each key grew by between two readings of counters.
pub fn growth(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(key, &now)| {
            let then = before.get(key).copied().unwrap_or(0);
            (now > then).then(|| (key.clone(), now - then))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_object_and_minute() {
        assert_eq!(per_object_per_minute(2000, 1000, 60.0), 2.0);
        assert_eq!(per_object_per_minute(1000, 1000, 30.0), 2.0);
        assert_eq!(per_object_per_minute(5, 0, 60.0), 0.0);
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let values = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&values, 0.5), Some(2.0));
        assert_eq!(quantile(&values, 1.0), Some(4.0));
        assert_eq!(quantile(&values, 0.0), Some(1.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn queue_calls_are_read_from_the_exposition() {
        let text = "# HELP ferry_queue_api_requests_total x\n\
            ferry_queue_api_requests_total{operation=\"GetTopic\",provider=\"pubsub\"} 4000\n\
            ferry_queue_api_requests_total{operation=\"ListTimeSeries\",provider=\"monitoring\"} 12\n\
            ferry_reconcile_errors_total{reason=\"x\"} 1\n";
        let calls = queue_api_requests(text);
        assert_eq!(calls.get("pubsub GetTopic"), Some(&4000));
        assert_eq!(calls.get("monitoring ListTimeSeries"), Some(&12));
        assert_eq!(calls.len(), 2);
        let later = BTreeMap::from([
            ("pubsub GetTopic".to_string(), 4000),
            ("monitoring ListTimeSeries".to_string(), 24),
        ]);
        assert_eq!(
            growth(&calls, &later),
            BTreeMap::from([("monitoring ListTimeSeries".to_string(), 12)])
        );
    }
}
