//! `chaos-local`: local cluster chaos without Docker.
//!
//! For every scenario (see `chaos::scenario`; `--list` names them): fresh
//! memcached nodes `n1..n3` and demo-app instances `a1`, `a2` on loopback,
//! the load engine of `load-verify` in-process (16 users, a quarter of them
//! readers idling 1 s between reads, 8 s, every write identified by a
//! token), one fault 2 s into the load, a read-back of every session (in
//! sticky mode also through the other instance, forcing a takeover from
//! memcached), the check that the fault had its effect (from every
//! instance's `/stats` and from what the clients saw), and one line on
//! stdout:
//!
//! ```text
//! scenario=app-kill mode=sticky result=PASS backup=sync sessions=16 requests=… errors={refused:8} lost_sessions=0 lost_updates=0 extra_updates=0 phantom_writes=0 server_errors=0 … effects={takeovers>0:4,moved>0:6} fault_at_ms=2000
//! ```
//!
//! A closing line `chaos-local: N passed, N failed` follows. Exit code 0
//! iff no scenario failed; a scenario that cannot start (memcached or
//! demo-app missing, a port conflict, …) fails, and nothing is retried.
//! Pending scenarios (known violations waiting for their issue's fix) run
//! only with `--pending` or `--only NAME`. Instance logs go to `target/chaos-local/` (or
//! `--log-dir`); details of inconsistencies go to stderr.
//!
//! The demo-app binary is built with `cargo build -p demo-app` (same
//! profile) before the run unless `--no-build`, `--demo-app` or
//! `DEMO_APP_BIN` says otherwise.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chaos::scenario::{self, ClusterMode};
use chaos::{ScenarioReport, ScenarioSettings, Verdict, demo_app_binary, run_scenario};
use clap::{Parser, ValueEnum};

/// Kill, freeze and restart memcached nodes and app instances under load;
/// check that no session or update is lost.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Virtual users per scenario.
    #[arg(long, default_value_t = 16)]
    users: usize,
    /// Load duration per scenario, seconds.
    #[arg(long, default_value_t = 8.0, value_name = "SECS")]
    duration: f64,
    /// When the fault is injected, seconds after the load started.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    fault_at: f64,
    /// How long a frozen memcached node stays stopped, seconds.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    freeze: f64,
    /// Client timeout of one request, milliseconds.
    #[arg(long, default_value_t = 3000, value_name = "N")]
    timeout_ms: u64,
    /// Share of writes among the requests.
    #[arg(long, default_value_t = 0.5)]
    write_ratio: f64,
    /// Users that only read once they have a session (default: a quarter).
    #[arg(long, value_name = "N")]
    readers: Option<usize>,
    /// Readers pause this long before each read, milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    reader_idle_ms: u64,
    /// Sticky mode: pause before reading every session back through the
    /// other instance (a takeover from memcached), milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    handoff_after_ms: u64,
    /// `delay_ms` of every write.
    #[arg(long, default_value_t = 0, value_name = "N")]
    delay_ms: u64,
    /// The apps' `--operation-timeout-ms`.
    #[arg(long, default_value_t = 500, value_name = "N")]
    operation_timeout_ms: u64,
    /// Seed of the read/write choices.
    #[arg(long, default_value_t = 0x5e55_1015)]
    seed: u64,
    /// Run only the scenarios with this name (repeatable; includes pending ones).
    #[arg(long, value_name = "NAME")]
    only: Vec<String>,
    /// Also run the pending scenarios (known violations awaiting a fix).
    #[arg(long)]
    pending: bool,
    /// List the scenarios (name, mode, fault, asserted effects) and exit.
    #[arg(long)]
    list: bool,
    /// Run only this mode.
    #[arg(long, value_enum)]
    mode: Option<ModeFilter>,
    /// The demo-app binary (default: built and taken from `target/<profile>/`).
    #[arg(long, value_name = "PATH")]
    demo_app: Option<PathBuf>,
    /// Do not run `cargo build -p demo-app` first.
    #[arg(long)]
    no_build: bool,
    /// Directory for the instances' logs (default: target/chaos-local).
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeFilter {
    Sticky,
    NonSticky,
}

impl ModeFilter {
    fn matches(self, mode: ClusterMode) -> bool {
        matches!(
            (self, mode),
            (ModeFilter::Sticky, ClusterMode::Sticky) | (ModeFilter::NonSticky, ClusterMode::NonSticky)
        )
    }
}

fn seconds(value: f64, option: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(value).map_err(|_| format!("--{option} must be >= 0 seconds"))
}

fn settings(args: &Args) -> Result<ScenarioSettings, String> {
    let settings = ScenarioSettings {
        users: args.users,
        duration: seconds(args.duration, "duration")?,
        fault_at: seconds(args.fault_at, "fault-at")?,
        freeze: seconds(args.freeze, "freeze")?,
        timeout: Duration::from_millis(args.timeout_ms),
        write_ratio: args.write_ratio,
        readers: args.readers.unwrap_or(args.users / 4),
        reader_idle: Duration::from_millis(args.reader_idle_ms),
        handoff_after: Duration::from_millis(args.handoff_after_ms),
        delay_ms: args.delay_ms,
        operation_timeout_ms: args.operation_timeout_ms,
        seed: args.seed,
        log_dir: args.log_dir.clone().unwrap_or_else(default_log_dir),
    };
    if settings.fault_at >= settings.duration {
        return Err("--fault-at must be before the end of --duration".to_owned());
    }
    Ok(settings)
}

/// `target/chaos-local` next to `target/<profile>/chaos-local`.
fn default_log_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("chaos-local")))
        .unwrap_or_else(|| std::env::temp_dir().join("chaos-local"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match settings(&args) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("chaos-local: {error}");
            return ExitCode::from(2);
        }
    };
    if args.list {
        let mut stdout = std::io::stdout().lock();
        for s in scenario::all(settings.freeze) {
            let effects = s.effects.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
            let pending = s.pending.map(|issue| format!(" pending={issue:?}")).unwrap_or_default();
            let _ = writeln!(
                stdout,
                "{} mode={} backup={} fault={:?} effects={{{effects}}}{pending}",
                s.name,
                s.mode,
                s.backup_label(),
                s.fault.to_string()
            );
        }
        return ExitCode::SUCCESS;
    }
    let scenarios: Vec<_> = scenario::all(settings.freeze)
        .into_iter()
        .filter(|s| {
            if args.only.is_empty() {
                s.pending.is_none() || args.pending
            } else {
                args.only.iter().any(|name| name == s.name)
            }
        })
        .filter(|s| args.mode.is_none_or(|mode| mode.matches(s.mode)))
        .collect();
    if scenarios.is_empty() {
        eprintln!("chaos-local: no scenario matches --only/--mode");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chaos-local: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let binary = demo_app_binary(args.demo_app.as_deref(), !args.no_build);
    if let Ok(binary) = &binary {
        eprintln!(
            "chaos-local: demo-app {}, logs in {}",
            binary.display(),
            settings.log_dir.display()
        );
    }

    let (mut passed, mut failed) = (0, 0);
    for scenario in scenarios {
        eprintln!(
            "chaos-local: running {} ({}, {})",
            scenario.name, scenario.mode, scenario.fault
        );
        let report = match &binary {
            Ok(binary) => run_scenario(&scenario, &settings, binary, &runtime),
            Err(error) => {
                ScenarioReport::not_started(scenario, chaos::Error::Harness(format!("no demo-app binary: {error}")))
            }
        };
        print_details(&report);
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{report}");
        let _ = stdout.flush();
        match report.verdict().0 {
            Verdict::Pass => passed += 1,
            Verdict::Fail => failed += 1,
        }
    }
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "chaos-local: {passed} passed, {failed} failed");
    let _ = stdout.flush();
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Anomalies, notes and (unless it passed) log paths, on stderr.
fn print_details(report: &ScenarioReport) {
    let name = format!("{}/{}", report.scenario.name, report.scenario.mode);
    if let Ok(load) = &report.load {
        for note in &load.notes {
            eprintln!("chaos-local: {name}: note: {note}");
        }
        for anomaly in &load.anomalies {
            eprintln!("chaos-local: {name}: {anomaly}");
        }
    }
    if report.verdict().0 != Verdict::Pass {
        for log in &report.logs {
            eprintln!("chaos-local: {name}: instance log {}", log.display());
        }
    }
}
