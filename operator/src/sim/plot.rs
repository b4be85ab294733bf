//! Hand-written SVG: replicas and visible backlog over time, one line per policy. A plotting
//! crate would bring a font stack and image codecs for two line charts.

use std::fmt::Write as _;

use super::bench::TraceResult;

const WIDTH: f64 = 900.0;
const PANEL_HEIGHT: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;
/// Lines are drawn with at most this many points; each keeps the highest value of its bucket
/// so that short spikes stay visible.
const MAX_POINTS: usize = 900;

struct Series<'a> {
    label: String,
    color: &'static str,
    width: f64,
    values: &'a [f64],
}

fn bucket_max(values: &[f64]) -> Vec<(usize, f64)> {
    let per_bucket = values.len().div_ceil(MAX_POINTS).max(1);
    values
        .chunks(per_bucket)
        .enumerate()
        .map(|(i, chunk)| (i * per_bucket, chunk.iter().copied().fold(0.0, f64::max)))
        .collect()
}

fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|c| *c >= max)
        .unwrap_or(10.0 * magnitude)
}

fn panel(out: &mut String, top: f64, title: &str, duration: usize, series: &[Series<'_>]) {
    let plot_width = WIDTH - LEFT - RIGHT;
    let y_max = nice_ceiling(
        series
            .iter()
            .flat_map(|s| s.values.iter().copied())
            .fold(0.0, f64::max),
    );
    let x = |second: usize| LEFT + plot_width * second as f64 / duration.max(1) as f64;
    let y = |v: f64| top + PANEL_HEIGHT * (1.0 - v / y_max);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{title}</text>"#,
        top - 8.0
    );
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_width}" height="{PANEL_HEIGHT}" fill="none" stroke="#999"/>"##
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            LEFT + plot_width,
            LEFT - 6.0,
            yy + 4.0,
            format_number(v)
        );
    }
    let x_step = nice_ceiling(duration as f64 / 6.0);
    let mut tick = 0.0;
    while tick <= duration as f64 {
        let xx = x(tick as usize);
        let _ = writeln!(
            out,
            r#"<text x="{xx:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}s</text>"#,
            top + PANEL_HEIGHT + 15.0,
            format_number(tick)
        );
        tick += x_step;
    }
    // Last drawn is on top: ferry, the policy under test, over KEDA over the oracle.
    for s in series.iter().rev() {
        let points: String = bucket_max(s.values)
            .into_iter()
            .map(|(second, v)| format!("{:.1},{:.1} ", x(second), y(v)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="{}" points="{}"/>"#,
            s.color,
            s.width,
            points.trim_end()
        );
    }
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn series_of<'a>(
    values: &'a [Vec<f64>; 3],
    labels: &[String; 3],
    colors: &[&'static str; 3],
) -> Vec<Series<'a>> {
    (0..3)
        .map(|i| Series {
            label: labels[i].clone(),
            color: colors[i],
            // The oracle changes every second; a thin line keeps it from hiding the others.
            width: if i == 2 { 0.8 } else { 1.6 },
            values: &values[i],
        })
        .collect()
}

/// The SVG for one trace.
pub fn trace_svg(result: &TraceResult) -> String {
    let to_f64 = |v: &[u32]| v.iter().map(|&r| f64::from(r)).collect::<Vec<_>>();
    let backlog = |v: &[u64]| v.iter().map(|&b| b as f64).collect::<Vec<_>>();
    let replicas = [
        to_f64(&result.ferry.replicas),
        to_f64(&result.keda.replicas),
        to_f64(&result.oracle.replicas),
    ];
    let backlogs = [
        backlog(&result.ferry.backlog),
        backlog(&result.keda.backlog),
        backlog(&result.oracle.backlog),
    ];
    let labels = [
        "ferry".to_owned(),
        format!("keda (queueLength {})", result.keda_queue_length),
        "oracle (lower bound)".to_owned(),
    ];
    let colors = ["#1f77b4", "#d62728", "#2ca02c"];
    let duration = replicas.iter().map(Vec::len).max().unwrap_or(1);
    let replica_series = series_of(&replicas, &labels, &colors);
    // The oracle's queue is not drawn: it starts each message as late as its deadline allows,
    // so its "backlog" says nothing about how a running system would look.
    let mut backlog_series = series_of(&backlogs, &labels, &colors);
    backlog_series.truncate(2);
    let height = TOP + 2.0 * PANEL_HEIGHT + GAP + 50.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    panel(
        &mut out,
        TOP,
        &format!("{}: replicas", result.name),
        duration,
        &replica_series,
    );
    panel(
        &mut out,
        TOP + PANEL_HEIGHT + GAP,
        &format!(
            "{}: visible backlog (messages waiting; ferry and keda)",
            result.name
        ),
        duration,
        &backlog_series,
    );
    let legend_y = height - 12.0;
    for (i, s) in replica_series.iter().enumerate() {
        let lx = LEFT + 230.0 * i as f64;
        let _ = writeln!(
            out,
            r#"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{legend_y}" font-size="12">{}</text>"#,
            legend_y - 4.0,
            lx + 20.0,
            legend_y - 4.0,
            s.color,
            lx + 25.0,
            s.label
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(42.0), 50.0);
        assert_eq!(nice_ceiling(180.0), 200.0);
    }

    #[test]
    fn buckets_keep_spikes() {
        let mut values = vec![1.0; 10_000];
        values[5_001] = 99.0;
        let points = bucket_max(&values);
        assert!(points.len() <= MAX_POINTS);
        assert!(points.iter().any(|(_, v)| *v == 99.0));
    }
}
