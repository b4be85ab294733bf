//! CPU time and peak memory of a process and its descendants, from /proc.

use std::collections::HashMap;

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

struct Stat {
    ppid: u32,
    /// utime + stime + cutime + cstime, in ticks.
    ticks: u64,
    /// utime + stime alone: this process's own threads, not its reaped children.
    own_ticks: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces; fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some(Stat {
        ppid: num(1)? as u32,
        ticks: num(11)? + num(12)? + num(13)? + num(14)?,
        own_ticks: num(11)? + num(12)?,
    })
}

/// `pid` and every live process below it.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut parents: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok())
                && let Some(s) = stat(child)
            {
                parents.entry(s.ppid).or_default().push(child);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(children) = parents.get(&out[i]) {
            out.extend(children);
        }
        i += 1;
    }
    out
}

/// CPU seconds (user + system, children included) used so far by `pid`'s tree.
pub fn cpu_seconds(pid: u32) -> f64 {
    tree(pid)
        .into_iter()
        .filter_map(stat)
        .map(|s| s.ticks as f64 / TICKS_PER_SECOND)
        .sum()
}

/// CPU seconds used so far by this process's own threads (not by its children, running or
/// reaped). The benchmark serves the worker and the SQS endpoint from its own threads.
pub fn own_cpu_seconds() -> f64 {
    stat(std::process::id()).map_or(0.0, |s| s.own_ticks as f64 / TICKS_PER_SECOND)
}

/// Peak resident memory (VmHWM) of `pid`'s tree, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    tree(pid)
        .into_iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .sum::<f64>()
        / 1024.0
}

/// The machine's CPU time so far, from the `cpu` line of `/proc/stat`, in ticks: all of it,
/// the part left idle, and the part the hypervisor gave to other guests (steal). A benchmark
/// that shares its host is slowed by steal without spending any CPU of its own, so each cell
/// reports it; and one whose consumer, queue and worker share the machine is bounded by the
/// machine's cores, so each cell reports how busy they were.
#[derive(Debug, Clone, Copy)]
pub struct MachineTime {
    total: u64,
    idle: u64,
    steal: u64,
}

impl MachineTime {
    pub fn now() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        // user nice system idle iowait irq softirq steal (guest time is counted in user).
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        (fields.len() == 8).then(|| Self {
            total: fields.iter().sum(),
            idle: fields[3] + fields[4],
            steal: fields[7],
        })
    }

    /// Percentage of the machine's CPU time stolen since `self`.
    pub fn steal_percent_since(self) -> Option<f64> {
        let now = Self::now()?;
        let total = now.total.checked_sub(self.total)?;
        (total > 0).then(|| (now.steal - self.steal) as f64 / total as f64 * 100.0)
    }

    /// Percentage of the machine's CPU time spent working (by any process, in user space or
    /// the kernel) since `self`: 100 means every core was busy, so nothing on this machine
    /// could have gone faster without taking CPU from the rest.
    pub fn busy_percent_since(self) -> Option<f64> {
        let now = Self::now()?;
        let total = now.total.checked_sub(self.total)?;
        let idle = now.idle.checked_sub(self.idle)?;
        let steal = now.steal.checked_sub(self.steal)?;
        (total > 0).then(|| (total - idle - steal) as f64 / total as f64 * 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_seconds(me) >= 0.0);
        assert!(peak_rss_mib(me) > 0.0);
        let spin = std::time::Instant::now();
        let before = own_cpu_seconds();
        while spin.elapsed() < std::time::Duration::from_millis(60) {}
        assert!(
            own_cpu_seconds() > before,
            "60 ms of spinning shows as CPU time"
        );
        let start = MachineTime::now().expect("/proc/stat has a cpu line");
        std::thread::sleep(std::time::Duration::from_millis(50));
        let steal = start.steal_percent_since();
        assert!(
            steal.is_none_or(|s| (0.0..=100.0).contains(&s)),
            "{steal:?}"
        );
        let busy = start.busy_percent_since();
        assert!(busy.is_none_or(|b| (0.0..=100.0).contains(&b)), "{busy:?}");
        assert_eq!(tree(me)[0], me);
    }
}
