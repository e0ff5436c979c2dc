//! Where the cycles and the memory went, read from Linux's `/proc`: the load
//! generator, both keygate children and the database share the machine's cores,
//! so every phase reports each one's CPU share, and the run reports keygate's
//! resident memory.

use std::time::{Duration, Instant};

use crate::instance::Instance;

/// Linux reports CPU time in USER_HZ ticks, 100 per second on every mainstream platform.
const TICKS_PER_SEC: f64 = 100.0;

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
pub(crate) fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU ticks a process has used so far.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are fixed.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Ticks all cores spent busy (neither idle nor waiting for I/O) since boot.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    Some(f.iter().take(8).sum::<u64>() - f.get(3)? - f.get(4)?)
}

/// The database server's pid when it runs on this machine, to account its CPU too.
fn find_database_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        matches!(comm.trim(), "mariadbd" | "mysqld").then_some(pid)
    })
}

/// Processes whose CPU time is reported per phase: where the cycles of the shared
/// cores went.
pub(crate) struct CpuWatch {
    pub(crate) names: Vec<&'static str>,
    pids: Vec<u32>,
}

impl CpuWatch {
    pub(crate) fn new(cached: &Instance, uncached: &Instance) -> Self {
        let mut w = vec![
            ("bench", std::process::id()),
            ("kg", cached.pid()),
            ("kg0", uncached.pid()),
        ];
        w.extend(find_database_pid().map(|p| ("db", p)));
        let mut names: Vec<_> = w.iter().map(|x| x.0).collect();
        // Whatever else ran meanwhile (another build, another test) took cores from us.
        names.push("other");
        Self {
            names,
            pids: w.iter().map(|x| x.1).collect(),
        }
    }

    /// Ticks of each watched process, then of the whole machine.
    pub(crate) fn sample(&self) -> Vec<u64> {
        let mut ticks: Vec<u64> = self
            .pids
            .iter()
            .map(|&p| cpu_ticks(p).unwrap_or(0))
            .collect();
        ticks.push(machine_busy_ticks().unwrap_or(0));
        ticks
    }

    /// % of one core each process, and everything else, used between two samples.
    pub(crate) fn percent(before: &[u64], after: &[u64], elapsed: Duration) -> Vec<f64> {
        let secs = elapsed.as_secs_f64();
        let mut pct: Vec<f64> = after
            .iter()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(*b) as f64 / TICKS_PER_SEC / secs * 100.0)
            .collect();
        if let Some((machine, watched)) = pct.split_last_mut() {
            *machine = (*machine - watched.iter().sum::<f64>()).max(0.0);
        }
        pct
    }

    /// Waits until processes other than ours use less than a third of a core.
    pub(crate) async fn wait_for_quiet(&self, max: Duration) {
        let give_up = Instant::now() + max;
        let mut said = false;
        while Instant::now() < give_up {
            let before = self.sample();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let other = Self::percent(&before, &self.sample(), Duration::from_secs(1));
            let other = other.last().copied().unwrap_or(0.0);
            if other < 33.0 {
                return;
            }
            if !said {
                eprintln!("  waiting: other processes use {other:.0}% of a core");
                said = true;
            }
        }
    }

    pub(crate) fn format(&self, cpu: &[f64]) -> String {
        let parts: Vec<String> = self
            .names
            .iter()
            .zip(cpu)
            .map(|(n, c)| format!("{n} {c:.0}"))
            .collect();
        parts.join(" / ")
    }
}
