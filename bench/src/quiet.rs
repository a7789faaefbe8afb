//! Is the machine quiet? CPU time spent by processes other than this one
//! and its stores during a measurement, from `/proc/stat` and
//! `/proc/PID/stat` (Linux only; reads as 0 elsewhere).

/// Share of the CPUs other processes may take during a measurement
/// before its figures are called untrustworthy, percent.
pub(crate) const NOISY_PERCENT: f64 = 5.0;

/// CPU time counters at one moment, in clock ticks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuSnapshot {
    /// All CPUs, all states.
    total: u64,
    /// All CPUs, busy (not idle, not waiting for I/O).
    busy: u64,
    /// This process and the given store processes.
    ours: u64,
}

impl CpuSnapshot {
    /// Reads the counters; `pids` are the store processes to count as ours.
    pub(crate) fn read(pids: &[u32]) -> Self {
        let (total, busy) = machine_ticks().unwrap_or((0, 0));
        let ours = process_ticks("self").unwrap_or(0)
            + pids
                .iter()
                .filter_map(|pid| process_ticks(&pid.to_string()))
                .sum::<u64>();
        CpuSnapshot { total, busy, ours }
    }

    /// Share of the machine's CPU capacity used by other processes between
    /// `earlier` and `self`, percent.
    pub(crate) fn foreign_percent(&self, earlier: &CpuSnapshot) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        let busy = self.busy.saturating_sub(earlier.busy);
        let ours = self.ours.saturating_sub(earlier.ours);
        if total == 0 {
            return 0.0;
        }
        busy.saturating_sub(ours) as f64 / total as f64 * 100.0
    }
}

fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line.split_whitespace().take(8).filter_map(|f| f.parse().ok()).collect();
    if fields.len() < 8 {
        return None;
    }
    let total: u64 = fields.iter().sum();
    // idle and iowait.
    Some((total, total - fields[3] - fields[4]))
}

fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): state is
    // the first, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Waits (up to `max_wait`) until other processes use less than
/// `percent` of the CPUs over half a second; returns whether they did.
pub(crate) async fn wait_until_quiet(pids: &[u32], percent: f64, max_wait: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + max_wait;
    loop {
        let before = CpuSnapshot::read(pids);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if CpuSnapshot::read(pids).foreign_percent(&before) < percent {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
    }
}
