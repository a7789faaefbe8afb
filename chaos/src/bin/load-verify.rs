//! `load-verify`: keeps K virtual users busy against a load balancer or a
//! list of demo-app instances, remembers the count it expects for every
//! session, reads every session back at the end and prints one summary line:
//!
//! ```text
//! sessions=32 requests=12345 ok=12300 errors={503:40,transport:5} lost_sessions=0 lost_updates=0 extra_updates=0 phantom_writes=0 server_errors=0 unverified=0 moved=0 relocated=0 p50_ms=1.2 p99_ms=8.5 max_ms=31.0
//! ```
//!
//! Every write carries a unique token (`POST /counter?token=u3-17`); the
//! session's token list is checked against what each write was answered
//! (see `chaos::token_ledger`).
//!
//! Exit code: 0 when at least one request succeeded and every session was
//! read back with nothing lost, invented or saved against a `503`/`409`,
//! and no `500` was answered (`--allow-server-errors` declares them); 1
//! otherwise; 2 for usage and startup errors (e.g. no target reachable).
//! Details of every inconsistency go to stderr. See the `chaos` crate docs
//! for the accounting.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use chaos::{LoadConfig, TargetMode, Tolerance, parse_targets, run_load};
use clap::Parser;

/// Load a session counter app and verify that no session or update is lost.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Target base URL; repeat the option or give a comma-separated list.
    /// One URL is a load balancer; several are instances to spread over.
    #[arg(long = "target", required = true, value_name = "URL")]
    targets: Vec<String>,
    /// Virtual users (concurrency), each with its own cookie jar.
    #[arg(long, default_value_t = 32)]
    users: usize,
    /// Run this many seconds (default 10 unless --requests is given).
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Stop after this many requests in total.
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// Share of writes (POST /counter) among the requests.
    #[arg(long, default_value_t = 0.5, value_name = "0.0..1.0")]
    write_ratio: f64,
    /// The first N users only read once they have created their session.
    #[arg(long, default_value_t = 0, value_name = "N")]
    readers: usize,
    /// Readers pause this long before each read, so their sessions sit idle.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    reader_idle_ms: u64,
    /// Share of requests on which the client hangs up (closes the
    /// connection) at a random moment before the answer.
    #[arg(long, default_value_t = 0.0, value_name = "0.0..1.0")]
    hangup_ratio: f64,
    /// Do not fail on 500 answers (the scenario expects them).
    #[arg(long)]
    allow_server_errors: bool,
    /// Acknowledged updates one user may lose and the run still pass
    /// (e.g. 1 for the async-backup window of a killed instance).
    #[arg(long, default_value_t = 0, value_name = "N")]
    max_lost_per_user: u64,
    /// `delay_ms` sent with every write.
    #[arg(long, default_value_t = 0, value_name = "N")]
    delay_ms: u64,
    /// Timeout of one request, in milliseconds.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    timeout_ms: u64,
    /// How a user picks among several targets.
    #[arg(long, value_enum, default_value_t = TargetMode::Sticky)]
    mode: TargetMode,
    /// Seed of the read/write choices.
    #[arg(long, default_value_t = 0x5e55_1015)]
    seed: u64,
    /// After the read-back, wait this long (ms) and read every session once
    /// more through the next target (in sticky mode a takeover from
    /// memcached: checks the backup, not only the primary copy).
    #[arg(long, value_name = "MS")]
    verify_handoff_after_ms: Option<u64>,
    /// Also print the summary as a JSON line.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn config(&self) -> Result<LoadConfig, chaos::Error> {
        let duration = match (self.duration, self.requests) {
            (Some(secs), _) => Some(
                Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| chaos::Error::InvalidOptions("--duration must be positive".to_owned()))?,
            ),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        };
        Ok(LoadConfig {
            users: self.users,
            duration,
            requests: self.requests,
            write_ratio: self.write_ratio,
            readers: self.readers,
            reader_idle: Duration::from_millis(self.reader_idle_ms),
            hangup_ratio: self.hangup_ratio,
            delay_ms: self.delay_ms,
            timeout: Duration::from_millis(self.timeout_ms),
            mode: self.mode,
            seed: self.seed,
            handoff_after: self.verify_handoff_after_ms.map(Duration::from_millis),
            ..LoadConfig::new(parse_targets(&self.targets)?)
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args.config() {
        Ok(config) => config,
        Err(error) => return startup_error(&error),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("load-verify: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let report = match runtime.block_on(run_load(&config)) {
        Ok(report) => report,
        Err(error) => return startup_error(&error),
    };
    for note in &report.notes {
        eprintln!("load-verify: note: {note}");
    }
    for anomaly in &report.anomalies {
        eprintln!("load-verify: {anomaly}");
    }
    let summary = &report.summary;
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{summary}");
    if args.json {
        let _ = writeln!(stdout, "{}", summary.to_json());
    }
    let _ = stdout.flush();
    let problems = summary.problems_with(Tolerance {
        lost_updates_per_user: args.max_lost_per_user,
        server_errors: args.allow_server_errors,
    });
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("load-verify: FAIL: {}", problems.join("; "));
        ExitCode::from(1)
    }
}

fn startup_error(error: &chaos::Error) -> ExitCode {
    eprintln!("load-verify: {error}");
    ExitCode::from(2)
}
