//! The markdown report on stdout and the targets it is judged against.

use std::fmt::Write as _;

use serde::Serialize;

use crate::failover::FailoverResult;
use crate::memory::MemoryResult;
use crate::quiet::NOISY_PERCENT;
use crate::rows::{CEILING, RowSummary};

/// One target, as reported (never asserted).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Target {
    /// What is demanded.
    pub(crate) target: String,
    /// What was measured.
    pub(crate) measured: String,
    /// `Some(true)` MET, `Some(false)` MISSED, `None` not measured.
    pub(crate) met: Option<bool>,
}

impl Target {
    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "MET",
            Some(false) => "MISSED",
            None => "not measured",
        }
    }
}

/// The rows as a markdown table.
pub(crate) fn table(rows: &[RowSummary]) -> String {
    let mut out = String::new();
    out.push_str(
        "| row | req/s | spread | p50 ms | p99 ms | × ceiling | store ops/req | store conns/req | failed |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let ratio = row.ratio_to_ceiling.map_or("–".to_owned(), |r| format!("{r:.2}"));
        let _ = writeln!(
            out,
            "| {} | {:.0} | ±{:.1}% | {:.3} | {:.3} | {} | {:.2} | {:.3} | {} |",
            row.name,
            row.rps,
            row.rps_spread_pct / 2.0,
            row.p50_ms,
            row.p99_ms,
            ratio,
            row.store_ops_per_request,
            row.store_connections_per_request,
            row.failed
        );
    }
    out
}

/// Whether other processes used the CPU during the rows.
pub(crate) fn quietness(rows: &[RowSummary]) -> String {
    let worst = rows.iter().map(|r| r.max_foreign_cpu_percent).fold(0.0, f64::max);
    let noisy: Vec<String> = rows
        .iter()
        .filter(|r| r.max_foreign_cpu_percent > NOISY_PERCENT)
        .map(|r| format!("{} ({:.0}%)", r.name, r.max_foreign_cpu_percent))
        .collect();
    if noisy.is_empty() {
        format!("Quiet machine: other processes used at most {worst:.1}% of the CPUs during any measured round.\n\n")
    } else {
        format!(
            "WARNING: other processes used more than {NOISY_PERCENT}% of the CPUs during rounds of: {}; \
             those figures are not trustworthy.\n\n",
            noisy.join(", ")
        )
    }
}

/// What each row is.
pub(crate) fn legend(rows: &[RowSummary]) -> String {
    let mut out = String::new();
    for row in rows {
        let _ = writeln!(out, "- `{}`: {}", row.name, row.description);
    }
    out
}

/// The failover results as a markdown table.
pub(crate) fn failover_table(results: &[FailoverResult]) -> String {
    let mut out = String::from(
        "| mode | requests | failed | failures | last failure (ms after kill) | p99 2 s before kill ms | p99 last 2 s ms | longest before kill ms | longest after kill ms | recovery ms | relocations |\n\
         |---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let failures = if r.failures.is_empty() {
            "–".to_owned()
        } else {
            r.failures
                .iter()
                .map(|(cause, n)| format!("{cause}:{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let recovery = r
            .recovery_ms
            .map_or("not recovered".to_owned(), |ms| format!("{ms:.0}"));
        let last_failure = r
            .last_failure_after_kill_ms
            .map_or("–".to_owned(), |ms| format!("{ms:.0}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {} | {} |",
            r.mode,
            r.requests,
            r.failed,
            failures,
            last_failure,
            r.baseline_p99_ms,
            r.final_p99_ms,
            r.max_before_kill_ms,
            r.max_after_kill_ms,
            recovery,
            r.relocations
        );
    }
    out
}

/// The memory result as text.
pub(crate) fn memory_text(m: &MemoryResult) -> String {
    format!(
        "sessions={} payload={} B rss_before={:.1} MiB rss_after={:.1} MiB per_session={:.0} B \
         ({:.2} × payload) backups_written={} backups_dropped={} create={:.1} s drain={:.1} s\n",
        m.sessions,
        m.payload_bytes,
        m.rss_before as f64 / 1048576.0,
        m.rss_after as f64 / 1048576.0,
        m.bytes_per_session,
        m.bytes_per_session / m.payload_bytes as f64,
        m.backups_written,
        m.backups_dropped,
        m.create_secs,
        m.drain_secs
    )
}

/// Judges the measurements against the targets.
pub(crate) fn targets(rows: &[RowSummary], failover: &[FailoverResult], memory: Option<&MemoryResult>) -> Vec<Target> {
    let rps = |name: &str| rows.iter().find(|r| r.name == name).map(|r| r.rps);
    let mut targets = Vec::new();
    for (row, factor) in [("sticky-read", 0.90), ("sticky-write-async", 0.80)] {
        let (measured, met) = match (rps(row), rps(CEILING)) {
            (Some(value), Some(ceiling)) => (
                format!("{value:.0} req/s = {:.2} × {ceiling:.0}", value / ceiling),
                Some(value >= factor * ceiling),
            ),
            _ => ("–".to_owned(), None),
        };
        targets.push(Target {
            target: format!("{row} ≥ {factor:.2} × {CEILING}"),
            measured,
            met,
        });
    }
    for (ours, peer) in [
        ("nonsticky-read", "tower-sessions-redis-read"),
        ("nonsticky-write", "tower-sessions-redis-write"),
    ] {
        let (measured, met) = match (rps(ours), rps(peer)) {
            (Some(value), Some(best)) => (
                format!("{value:.0} vs {best:.0} req/s ({:.2} ×)", value / best),
                Some(value >= best),
            ),
            _ => ("–".to_owned(), None),
        };
        targets.push(Target {
            target: format!("{ours} ≥ best networked peer ({peer})"),
            measured,
            met,
        });
    }
    for result in failover {
        targets.push(Target {
            target: format!("{} node kill: zero failed requests", result.mode),
            measured: format!("{} failed of {}", result.failed, result.requests),
            met: Some(result.failed == 0),
        });
        let bound = result.operation_timeout_ms + 100.0;
        targets.push(Target {
            target: format!(
                "{} node kill: longest request ≤ operationTimeout + 100 ms = {bound:.0} ms",
                result.mode
            ),
            measured: format!("{:.1} ms", result.max_after_kill_ms),
            met: Some(result.max_after_kill_ms <= bound),
        });
    }
    if let Some(m) = memory {
        let bound = 1.5 * m.payload_bytes as f64 + 512.0;
        targets.push(Target {
            target: format!("memory ≤ 1.5 × payload + 512 B = {bound:.0} B per session"),
            measured: format!("{:.0} B per session", m.bytes_per_session),
            met: Some(m.bytes_per_session <= bound),
        });
    }
    targets
}

/// The targets as a markdown table.
pub(crate) fn targets_table(targets: &[Target]) -> String {
    let mut out = String::from("| target | measured | verdict |\n|---|---|---|\n");
    for t in targets {
        let _ = writeln!(out, "| {} | {} | {} |", t.target, t.measured, t.verdict());
    }
    out
}
