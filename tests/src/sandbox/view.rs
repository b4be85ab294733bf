//! The sandbox's live view: a refreshing panel on a terminal, one plain line per second
//! otherwise (logs, CI).

use std::io::Write;
use std::time::Duration;

/// What the sandbox sees at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub elapsed: Duration,
    pub phase: String,
    pub published: usize,
    pub processed: usize,
    pub failed_deliveries: usize,
    pub rejected: usize,
    /// Visible messages as the autoscaler last saw them.
    pub backlog: Option<f64>,
    /// Messages in the dead-letter queue, where the sidecars report it (SQS).
    pub dead_letter: Option<i64>,
    /// Longest wait of the messages started in the last 5 s.
    pub recent_max_wait_s: Option<f64>,
    pub current: i32,
    pub desired: i32,
    pub last_scaling: Option<String>,
}

pub struct View {
    terminal: bool,
    previous: Option<(Duration, usize, usize)>,
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".into(), |v| v.to_string())
}

impl View {
    pub fn new(terminal: bool) -> Self {
        Self {
            terminal,
            previous: None,
        }
    }

    /// Messages per second published and processed since the previous snapshot.
    fn rates(&mut self, s: &Snapshot) -> (f64, f64) {
        let rates = match self.previous {
            Some((at, published, processed)) if s.elapsed > at => {
                let seconds = (s.elapsed - at).as_secs_f64();
                (
                    (s.published - published.min(s.published)) as f64 / seconds,
                    (s.processed - processed.min(s.processed)) as f64 / seconds,
                )
            }
            _ => (0.0, 0.0),
        };
        self.previous = Some((s.elapsed, s.published, s.processed));
        rates
    }

    pub fn show(&mut self, s: &Snapshot) {
        let (in_rate, out_rate) = self.rates(s);
        let backlog = or_dash(s.backlog.map(|b| b as u64));
        let wait = or_dash(s.recent_max_wait_s.map(|w| format!("{w:.1}s")));
        let scaling = s.last_scaling.clone().unwrap_or_else(|| "-".into());
        let dead = or_dash(s.dead_letter);
        if self.terminal {
            let mut out = std::io::stdout().lock();
            let _ = write!(
                out,
                "\x1b[2J\x1b[H\
                 ferry sandbox  {:>5.0}s  phase: {}\n\n\
                 messages   published {:>6}  processed {:>6}  ({:>5.1}/s in, {:>5.1}/s done)\n\
                 queue      backlog {:>6}  max wait (5 s) {:>6}\n\
                 failures   failed deliveries {:>5}  rejected as poison {:>4}  dead-letter queue {:>4}\n\
                 replicas   current {:>3}  desired {:>3}  last scaling: {}\n\n\
                 (Ctrl-C stops everything)\n",
                s.elapsed.as_secs_f64(),
                s.phase,
                s.published,
                s.processed,
                in_rate,
                out_rate,
                backlog,
                wait,
                s.failed_deliveries,
                s.rejected,
                dead,
                s.current,
                s.desired,
                scaling,
            );
            let _ = out.flush();
        } else {
            println!(
                "t={:.0}s phase={} published={} processed={} in={:.1}/s done={:.1}/s backlog={} max_wait_5s={} failed={} rejected={} dlq={} replicas={}/{} last_scaling=\"{}\"",
                s.elapsed.as_secs_f64(),
                s.phase,
                s.published,
                s.processed,
                in_rate,
                out_rate,
                backlog,
                wait,
                s.failed_deliveries,
                s.rejected,
                dead,
                s.current,
                s.desired,
                scaling
            );
        }
    }
}
