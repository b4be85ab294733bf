//! A process-wide count of the control-plane calls this crate makes to the clouds
//! (provisioning, queue attributes, Cloud Monitoring), by provider and operation, so the
//! operator can publish what it costs in API quota (`ferry_queue_api_requests_total`).
//! Process-wide because the quota is: every client of a process spends the same budget.

use std::collections::BTreeMap;
use std::sync::Mutex;

static CALLS: Mutex<BTreeMap<(&str, &str), u64>> = Mutex::new(BTreeMap::new());

/// Counts one call, made or attempted (a failed call spends quota too).
pub fn record(provider: &'static str, operation: &'static str) {
    *CALLS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry((provider, operation))
        .or_insert(0) += 1;
}

/// Every (provider, operation, calls so far), sorted.
pub fn snapshot() -> Vec<(&'static str, &'static str, u64)> {
    CALLS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(&(provider, operation), &count)| (provider, operation, count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_add_up_per_provider_and_operation() {
        let count = |op: &str| {
            snapshot()
                .into_iter()
                .find(|(p, o, _)| *p == "test" && *o == op)
                .map_or(0, |(_, _, n)| n)
        };
        let before = count("Get");
        record("test", "Get");
        record("test", "Get");
        record("test", "Create");
        assert_eq!(count("Get"), before + 2);
        assert!(count("Create") >= 1);
    }
}
