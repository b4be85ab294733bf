//! How many delivery slots keep the wait under a budget: the Erlang C model (M/M/k).
//!
//! A consumer is a pool of `k` delivery slots (replicas × concurrency) fed by one queue, which
//! is the textbook multi-server queue. Its wait tail is
//! `P(W > t) = C(k, a) · exp(-(k - a) · t / S)` with offered load `a = λ·S`, so the slots
//! needed follow from the arrival rate and the measured service time rather than from the
//! queue length. Large pools can run hot and still meet a target; small ones need headroom.

/// Probability that an arrival has to wait at all, for `slots` servers and `offered_load`
/// Erlangs. 1 when the pool cannot keep up.
pub fn erlang_c(slots: u64, offered_load: f64) -> f64 {
    if offered_load <= 0.0 {
        return 0.0;
    }
    if (slots as f64) <= offered_load {
        return 1.0;
    }
    // Erlang B by its stable recurrence, then C from B.
    let mut blocking = 1.0;
    for k in 1..=slots {
        blocking = offered_load * blocking / (k as f64 + offered_load * blocking);
    }
    let k = slots as f64;
    k * blocking / (k - offered_load * (1.0 - blocking))
}

/// Probability that a message waits longer than `wait_seconds`.
pub fn wait_exceedance(
    slots: u64,
    offered_load: f64,
    service_seconds: f64,
    wait_seconds: f64,
) -> f64 {
    let c = erlang_c(slots, offered_load);
    if c >= 1.0 {
        return 1.0;
    }
    c * (-(slots as f64 - offered_load) * wait_seconds / service_seconds).exp()
}

/// Fewest slots such that at most `1 - quantile` of messages wait longer than `wait_seconds`,
/// and no more than `max_utilization` of the slots are busy on average.
pub fn slots_needed(
    arrival_rate: f64,
    service_seconds: f64,
    wait_seconds: f64,
    quantile: f64,
    max_utilization: f64,
) -> u64 {
    let offered_load = arrival_rate * service_seconds;
    if !(offered_load.is_finite() && offered_load > 0.0) {
        return 0;
    }
    let utilization_floor = (offered_load / max_utilization).ceil() as u64;
    let allowed = 1.0 - quantile;
    // Erlang B grows one slot at a time, so the whole search is a single pass.
    let mut blocking = 1.0;
    let mut slots = 0u64;
    loop {
        slots += 1;
        let k = slots as f64;
        blocking = offered_load * blocking / (k + offered_load * blocking);
        if k <= offered_load || slots < utilization_floor {
            continue;
        }
        let waits = k * blocking / (k - offered_load * (1.0 - blocking));
        let exceedance = waits * (-(k - offered_load) * wait_seconds / service_seconds).exp();
        if exceedance <= allowed {
            return slots;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erlang_c_matches_textbook_values() {
        // Two servers, one Erlang: C = 1/3.
        assert!((erlang_c(2, 1.0) - 1.0 / 3.0).abs() < 1e-12);
        // One server is M/M/1: C = utilization.
        assert!((erlang_c(1, 0.7) - 0.7).abs() < 1e-12);
        assert_eq!(erlang_c(3, 3.0), 1.0);
        assert_eq!(erlang_c(3, 0.0), 0.0);
    }

    #[test]
    fn large_pools_run_hotter_than_small_ones() {
        let small = slots_needed(2.0, 1.0, 0.5, 0.99, 1.0);
        let large = slots_needed(200.0, 1.0, 0.5, 0.99, 1.0);
        let small_util = 2.0 / small as f64;
        let large_util = 200.0 / large as f64;
        assert!(large_util > small_util, "{small_util} vs {large_util}");
        assert!(wait_exceedance(large, 200.0, 1.0, 0.5) <= 0.01);
        assert!(wait_exceedance(large - 1, 200.0, 1.0, 0.5) > 0.01);
    }

    #[test]
    fn the_single_pass_search_agrees_with_the_formula() {
        for (rate, service, wait) in [(3.0, 2.0, 1.0), (120.0, 0.5, 5.0), (0.5, 60.0, 15.0)] {
            let load = rate * service;
            let k = slots_needed(rate, service, wait, 0.99, 1.0);
            assert!(wait_exceedance(k, load, service, wait) <= 0.01);
            assert!(wait_exceedance(k - 1, load, service, wait) > 0.01 || (k - 1) as f64 <= load);
        }
        assert_eq!(slots_needed(f64::NAN, 1.0, 1.0, 0.99, 0.9), 0);
    }

    #[test]
    fn utilization_cap_bounds_the_pool_from_below() {
        // A generous wait budget alone would allow 101 slots for 100 Erlangs.
        assert_eq!(slots_needed(100.0, 1.0, 60.0, 0.99, 1.0), 101);
        assert_eq!(slots_needed(100.0, 1.0, 60.0, 0.99, 0.8), 125);
        assert_eq!(slots_needed(0.0, 1.0, 1.0, 0.99, 0.8), 0);
    }
}
