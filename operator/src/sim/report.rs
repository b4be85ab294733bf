//! `report.json` (the shape, nothing more) and the table printed to stdout.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::bench::{TraceResult, Verdict};
use super::summary::{PolicyStats, PolicySummary};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub traces: Vec<TraceReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceReport {
    pub name: String,
    /// Keyed `ferry`, `keda`, `oracle`.
    pub policies: BTreeMap<String, PolicySummary>,
}

impl Report {
    pub fn of(results: &[TraceResult]) -> Self {
        let traces = results
            .iter()
            .map(|r| TraceReport {
                name: r.name.clone(),
                policies: [
                    ("ferry", r.ferry.stats.summary),
                    ("keda", r.keda.stats.summary),
                    ("oracle", r.oracle.stats.summary),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            })
            .collect();
        Self { traces }
    }
}

fn row(out: &mut String, trace: &str, policy: &str, stats: &PolicyStats) {
    let s = &stats.summary;
    let _ = writeln!(
        out,
        "| {trace} | {policy} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {:.0} |",
        stats.p50_wait_s,
        s.p99_wait_s,
        s.max_wait_s,
        s.replica_seconds,
        s.scale_events,
        s.slo_violation_s,
    );
}

fn mark(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

/// Two Markdown tables: every policy's numbers, then ferry's ratios against the goal.
pub fn table(results: &[TraceResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| trace | policy | p50 wait s | p99 wait s | max wait s | replica-s | scale events | s over target |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|\n");
    for r in results {
        row(&mut out, &r.name, "ferry", &r.ferry.stats);
        row(
            &mut out,
            &r.name,
            &format!("keda (queueLength {})", r.keda_queue_length),
            &r.keda.stats,
        );
        row(&mut out, &r.name, "oracle", &r.oracle.stats);
    }
    out.push('\n');
    out.push_str(
        "| trace | ferry p99 / keda p99 | ferry / keda replica-s | ferry / oracle replica-s | ferry meets target | goal met |\n",
    );
    out.push_str("|---|---:|---:|---:|---|---|\n");
    for r in results {
        let v = r.verdict();
        let (f, k, o) = (
            &r.ferry.stats.summary,
            &r.keda.stats.summary,
            &r.oracle.stats.summary,
        );
        let _ = writeln!(
            out,
            "| {} | {} {} | {} {} | {} {} | {} | {} |",
            r.name,
            ratio(f.p99_wait_s, k.p99_wait_s),
            mark(v.half_of_keda_wait),
            ratio(f.replica_seconds, k.replica_seconds),
            mark(v.no_costlier_than_keda),
            ratio(f.replica_seconds, o.replica_seconds),
            mark(v.within_oracle_bound),
            mark(v.ferry_meets_target),
            mark(v.all()),
        );
    }
    let _ = writeln!(
        out,
        "\nGoal: ferry p99 ≤ ½ keda p99, ferry replica-s ≤ keda's and ≤ {}× oracle's, ferry p99 ≤ the target.",
        Verdict::ORACLE_FACTOR
    );
    out
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else if a == 0.0 {
        "0/0".to_owned()
    } else {
        "∞".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_of_nothing_to_nothing_reads_0_over_0_not_nan() {
        assert_eq!(ratio(1.0, 4.0), "0.25");
        assert_eq!(ratio(0.0, 0.0), "0/0", "a trace with no messages");
        assert_eq!(ratio(3.0, 0.0), "∞");
    }
}
