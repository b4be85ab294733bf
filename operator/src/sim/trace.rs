//! Arrival traces: messages arriving per second, optionally with their mean service time.

use std::f64::consts::PI;
use std::path::Path;

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::random::poisson;

/// Longest trace accepted: 30 days, one entry per second.
const MAX_TRACE_SECONDS: u64 = 30 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSecond {
    pub arrivals: u32,
    /// Mean service time of the messages arriving in this second; `None` uses the model's.
    pub mean_service_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub name: String,
    pub seconds: Vec<TraceSecond>,
}

impl Trace {
    pub fn duration_seconds(&self) -> usize {
        self.seconds.len()
    }

    pub fn total_arrivals(&self) -> u64 {
        self.seconds.iter().map(|s| u64::from(s.arrivals)).sum()
    }

    /// Parses `second,arrivals[,mean_service_s]` lines. The first line's second is second 0,
    /// so relative seconds and Unix times both work. Seconds may have gaps (no arrivals then)
    /// but must not go backwards; blank lines, `#` comments and the lines before the first
    /// whose first field is a number (headers, titles) are skipped. A file with no such line
    /// (`;`-separated, say) is refused naming its first line, so it cannot pass for
    /// something else.
    pub fn parse_csv(name: &str, text: &str) -> anyhow::Result<Self> {
        let mut seconds: Vec<TraceSecond> = Vec::new();
        let mut first_second: Option<u64> = None;
        let mut first_skipped: Option<(usize, &str)> = None;
        for (index, line) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if first_second.is_none() && fields[0].parse::<f64>().is_err() {
                first_skipped.get_or_insert((line_no, line));
                continue;
            }
            if !(2..=3).contains(&fields.len()) {
                bail!("line {line_no}: expected `second,arrivals[,mean_service_s]`, got `{line}`");
            }
            let absolute = parse_second(fields[0])
                .with_context(|| format!("line {line_no}: second `{}`", fields[0]))?;
            let arrivals = parse_arrivals(fields[1])
                .with_context(|| format!("line {line_no}: arrivals `{}`", fields[1]))?;
            let mean_service_seconds = match fields.get(2) {
                Some(f) if !f.is_empty() => {
                    let s: f64 = f
                        .parse()
                        .with_context(|| format!("line {line_no}: mean service `{f}`"))?;
                    if !(s.is_finite() && s > 0.0) {
                        bail!("line {line_no}: mean service must be positive, got {s}");
                    }
                    Some(s)
                }
                _ => None,
            };
            let origin = *first_second.get_or_insert(absolute);
            let Some(second) = absolute.checked_sub(origin) else {
                bail!("line {line_no}: second {absolute} is before the first line's {origin}");
            };
            if second >= MAX_TRACE_SECONDS {
                bail!(
                    "line {line_no}: second {absolute} is {second} s after the first line; traces are limited to {MAX_TRACE_SECONDS} s"
                );
            }
            let second = second as usize;
            if second + 1 < seconds.len() {
                bail!("line {line_no}: second {absolute} goes backwards");
            }
            if second >= seconds.len() {
                seconds.resize(
                    second + 1,
                    TraceSecond {
                        arrivals: 0,
                        mean_service_seconds: None,
                    },
                );
            }
            let slot = &mut seconds[second];
            slot.arrivals += arrivals;
            if mean_service_seconds.is_some() {
                slot.mean_service_seconds = mean_service_seconds;
            }
        }
        if seconds.is_empty() {
            match first_skipped {
                Some((line_no, line)) => bail!(
                    "trace {name} has no `second,arrivals[,mean_service_s]` lines: no line has a number before its first comma (line {line_no}: `{line}`)"
                ),
                None => bail!("trace {name} has no `second,arrivals` lines"),
            }
        }
        Ok(Self {
            name: name.to_owned(),
            seconds,
        })
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading trace {}", path.display()))?;
        let name = path
            .file_stem()
            .map_or_else(|| "trace".to_owned(), |s| s.to_string_lossy().into_owned());
        Self::parse_csv(&name, &text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Poisson arrivals around `rate(second)` messages per second.
    fn from_rate(
        name: &str,
        duration: usize,
        seed: u64,
        mean_service_seconds: Option<f64>,
        rate: impl Fn(usize, &mut StdRng) -> f64,
    ) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let seconds = (0..duration)
            .map(|t| {
                let r = rate(t, &mut rng);
                TraceSecond {
                    arrivals: poisson(&mut rng, r),
                    mean_service_seconds,
                }
            })
            .collect();
        Self {
            name: name.to_owned(),
            seconds,
        }
    }
}

/// A second as an integer, or as a number with a fraction (spreadsheet exports write `12.0`,
/// sub-second timestamps `12.25`), which counts toward the whole second it falls in.
fn parse_second(field: &str) -> anyhow::Result<u64> {
    if let Ok(second) = field.parse::<u64>() {
        return Ok(second);
    }
    let second: f64 = field.parse().context("not a number")?;
    if !(second.is_finite() && second >= 0.0) {
        bail!("must be a non-negative number");
    }
    Ok(second.floor() as u64)
}

/// A count of messages: a whole number, also when written as `5.0`. A fraction is refused
/// rather than rounded, since a column of rates would silently become a different trace.
fn parse_arrivals(field: &str) -> anyhow::Result<u32> {
    if let Ok(arrivals) = field.parse::<u32>() {
        return Ok(arrivals);
    }
    let arrivals: f64 = field.parse().context("not a number")?;
    if !(arrivals.is_finite() && arrivals >= 0.0 && arrivals.fract() == 0.0) {
        bail!("must be a whole number of messages, got {arrivals}");
    }
    if arrivals > f64::from(u32::MAX) {
        bail!("more than {} messages in one second", u32::MAX);
    }
    Ok(arrivals as u32)
}

/// The built-in suite. Fixed seeds: the traces are part of the benchmark, not of a run.
pub fn builtin_suite() -> Vec<Trace> {
    vec![
        Trace::from_rate("steady", 1800, 1, None, |_, _| 100.0),
        Trace::from_rate("step-x10", 2400, 2, None, |t, _| {
            if (600..1800).contains(&t) {
                200.0
            } else {
                20.0
            }
        }),
        Trace::from_rate("short-spike", 1800, 3, None, |t, _| {
            if (600..660).contains(&t) { 400.0 } else { 20.0 }
        }),
        Trace::from_rate("diurnal", 3600, 4, None, |t, _| {
            10.0 + 190.0 * (1.0 - (2.0 * PI * t as f64 / 3600.0).cos()) / 2.0
        }),
        bursty(),
        Trace::from_rate("slow-drip", 3600, 6, Some(2.0), |_, _| 1.0 / 45.0),
        Trace::from_rate("long-jobs", 3600, 7, Some(60.0), |_, _| 0.5),
    ]
}

/// Quiet stretches of 2 msg/s broken by bursts of 20–60 s at 100–300 msg/s, a few minutes apart.
fn bursty() -> Trace {
    let mut rng = StdRng::seed_from_u64(5);
    let duration = 3600;
    let mut rates = vec![2.0; duration];
    let mut t = rng.random_range(60..240);
    while t < duration {
        let length = rng.random_range(20..=60);
        let rate = rng.random_range(100.0..300.0);
        for r in rates.iter_mut().skip(t).take(length) {
            *r = rate;
        }
        t += length + rng.random_range(90..400);
    }
    Trace::from_rate("bursty", duration, 55, None, move |t, _| rates[t])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_from_a_spreadsheet_export_with_decimal_points() {
        let trace = Trace::parse_csv(
            "export",
            "t,n\n1700000000.0,5.0\n1700000001.5,2\n1700000001.9,1e1\n",
        )
        .unwrap();
        assert_eq!(trace.duration_seconds(), 2);
        assert_eq!(trace.seconds[0].arrivals, 5);
        assert_eq!(trace.seconds[1].arrivals, 12);
    }

    #[test]
    fn csv_with_header_gaps_and_service_column() {
        let trace = Trace::parse_csv(
            "mine",
            "second,arrivals,mean_service_s\n0,5\n3,2,1.5\n3,1\n",
        )
        .unwrap();
        assert_eq!(trace.duration_seconds(), 4);
        assert_eq!(trace.total_arrivals(), 8);
        assert_eq!(trace.seconds[1].arrivals, 0);
        assert_eq!(trace.seconds[3].mean_service_seconds, Some(1.5));
        assert_eq!(trace.seconds[0].mean_service_seconds, None);
    }

    #[test]
    fn unix_seconds_start_at_zero_and_comments_may_precede_the_header() {
        let trace = Trace::parse_csv(
            "prod",
            "# from the access log\nts,count\n1700000000,4\n1700000002,1\n",
        )
        .unwrap();
        assert_eq!(trace.duration_seconds(), 3);
        assert_eq!(trace.seconds[0].arrivals, 4);
        assert_eq!(trace.seconds[2].arrivals, 1);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let err = Trace::parse_csv("bad", "0,1\n1,x\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
        let err = Trace::parse_csv("bad", "5,1\n7,1\n6,1\n").unwrap_err();
        assert!(format!("{err:#}").contains("backwards"), "{err:#}");
        let err = Trace::parse_csv("bad", "5,1\n2,1\n").unwrap_err();
        assert!(format!("{err:#}").contains("before the first"), "{err:#}");
        let err = Trace::parse_csv("bad", "0,1\n99999999999,1\n").unwrap_err();
        assert!(format!("{err:#}").contains("limited"), "{err:#}");
        assert!(Trace::parse_csv("bad", "0,1,-2\n").is_err());
        assert!(Trace::parse_csv("empty", "\n# nothing\n").is_err());
        let err = Trace::parse_csv("rates", "0,2.5\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("whole number of messages"),
            "{err:#}"
        );
        assert!(Trace::parse_csv("bad", "-1,2\n").is_err());
    }

    #[test]
    fn a_file_of_another_format_is_refused_naming_its_first_line() {
        let err = Trace::parse_csv("semicolons", "second;arrivals\n0;5\n1;6\n").unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("no line has a number before its first comma")
                && err.contains("line 1: `second;arrivals`"),
            "{err}"
        );
        let err = Trace::parse_csv("header only", "second,arrivals\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
        // Lines before the data may be a title and a header; Windows line endings and a
        // trailing empty column are a spreadsheet's habits.
        let trace = Trace::parse_csv(
            "excel",
            "orders per second\r\nsecond,arrivals\r\n0,5,\r\n1, 7\r\n",
        )
        .unwrap();
        assert_eq!(trace.total_arrivals(), 12);
        // Once the data has started, a line that does not parse is an error.
        let err = Trace::parse_csv("mixed", "0,5\n1;6\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }

    #[test]
    fn builtin_suite_is_reproducible_and_shaped_as_named() {
        let a = builtin_suite();
        assert_eq!(a, builtin_suite());
        let names: Vec<_> = a.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "steady",
                "step-x10",
                "short-spike",
                "diurnal",
                "bursty",
                "slow-drip",
                "long-jobs"
            ]
        );
        let step = &a[1];
        let before: u32 = step.seconds[..600].iter().map(|s| s.arrivals).sum();
        let after: u32 = step.seconds[600..1200].iter().map(|s| s.arrivals).sum();
        let ratio = f64::from(after) / f64::from(before);
        assert!((9.0..11.0).contains(&ratio), "{ratio}");
    }
}
