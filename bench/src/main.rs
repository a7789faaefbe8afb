//! `bench`: memcached-sessions side by side with its peers, the ceiling
//! (warp without sessions) and the floor (memcached alone).
//!
//! ```sh
//! cargo run --release -p bench                 # everything, ~3 min
//! cargo run --release -p bench -- --quick      # smoke run, ~30 s
//! cargo run --release -p bench -- --only sticky-read,warp-plain --time-per-row 10
//! ```
//!
//! One command: it starts two memcached processes and a redis-server on
//! free ports of 127.0.0.1 (killed on exit), serves every contender
//! in-process on `127.0.0.1:0` and drives each with the same HTTP load
//! client — `--concurrency` virtual users, each with its own connection and
//! session, for `--time-per-row` seconds. Rows run interleaved
//! (A B C … A B C …) for `--rounds` rounds so machine drift cancels; the
//! table shows medians over rounds. Then the failover cost (kill -9 of one
//! of three memcached nodes under write load, sticky and non-sticky) and
//! the memory per sticky session (in a child process). Results go to
//! stdout as markdown and to `--json`.

mod apps;
mod client;
mod error;
mod failover;
mod load;
mod memory;
mod peers;
mod quiet;
mod report;
mod rows;
mod servers;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

use crate::error::BenchError;
use crate::failover::{FailoverResult, FailoverSpec};
use crate::memory::MemoryResult;
use crate::quiet::NOISY_PERCENT;
use crate::report::Target;
use crate::rows::{ALL_ROWS, Env, Round, RowSummary};

/// Side-by-side benchmarks of memcached-sessions.
#[derive(Debug, Parser)]
#[command(name = "bench", about)]
struct Options {
    /// Measured seconds per row and round.
    #[arg(long, default_value_t = 3.0)]
    time_per_row: f64,
    /// Rounds (rows interleaved; medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Virtual users (each with its own connection and session).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Run only these (comma separated): row names, `failover`, `memory`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    json: PathBuf,
    /// Skip the peers (and redis).
    #[arg(long)]
    skip_peers: bool,
    /// Skip the node-kill measurement.
    #[arg(long)]
    skip_failover: bool,
    /// Skip the memory measurement.
    #[arg(long)]
    skip_memory: bool,
    /// Smoke run: 0.5 s per row, 1 round, 10 000 sessions, short failover.
    #[arg(long)]
    quick: bool,
    /// Sessions of the memory measurement.
    #[arg(long, default_value_t = 100_000)]
    memory_sessions: u64,
    /// `operationTimeout` of the failover scenarios, ms.
    #[arg(long, default_value_t = 1000)]
    operation_timeout_ms: u64,
    /// Measure rows as they come, even while other processes use the CPU
    /// (by default each row waits for a quiet machine and is measured again,
    /// up to 4 times, when another process took more than 5% meanwhile).
    #[arg(long)]
    no_quiet_wait: bool,
    /// Internal: run the memory measurement in this process.
    #[arg(long, hide = true)]
    memory_child: bool,
    /// Internal: memcached nodes of the memory child.
    #[arg(long, hide = true)]
    memcached_nodes: Option<String>,
}

impl Options {
    fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == part)
    }
}

/// Everything measured, as written to the JSON file.
#[derive(Debug, Serialize)]
struct Results {
    machine: Machine,
    settings: Settings,
    rows: Vec<RowSummary>,
    failover: Vec<FailoverResult>,
    memory: Option<MemoryResult>,
    targets: Vec<Target>,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Settings {
    time_per_row_secs: f64,
    rounds: usize,
    concurrency: usize,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    loadavg_at_start: String,
    kernel: String,
    memcached: String,
    redis: String,
    /// `git describe --always --dirty` of the workspace (the code measured).
    git: String,
}

impl Machine {
    fn read() -> Self {
        let command_output = |program: &str, arg: &str| {
            std::process::Command::new(program)
                .arg(arg)
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            loadavg_at_start: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            kernel: command_output("uname", "-r"),
            memcached: command_output("memcached", "-V"),
            redis: command_output("redis-server", "--version"),
            git: std::process::Command::new("git")
                .args(["describe", "--always", "--dirty"])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = Options::parse();
    let outcome = if options.memory_child {
        memory::child_main(
            options.memory_sessions,
            options.memcached_nodes.as_deref().unwrap_or_default(),
        )
        .await
    } else {
        run(options).await
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn print(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

async fn run(mut options: Options) -> Result<(), BenchError> {
    if options.quick {
        options.time_per_row = 0.5;
        options.rounds = 1;
        options.memory_sessions = options.memory_sessions.min(10_000);
    }
    for name in &options.only {
        if !ALL_ROWS.contains(&name.as_str()) && name != "failover" && name != "memory" {
            return Err(BenchError::Setup(format!(
                "--only {name:?}: not a row, `failover` or `memory`; rows: {}",
                ALL_ROWS.join(", ")
            )));
        }
    }
    let rows: Vec<&str> = ALL_ROWS
        .iter()
        .copied()
        .filter(|name| options.wants(name) && !(options.skip_peers && rows::is_peer(name)))
        .collect();
    let machine = Machine::read();
    print(&format!(
        "# bench: {} rows × {} rounds × {:.1} s, {} virtual users\n\nmachine: {} CPUs, loadavg {}, kernel {}, {}, {}; code {}\n\n",
        rows.len(),
        options.rounds,
        options.time_per_row,
        options.concurrency,
        machine.cpus,
        machine.loadavg_at_start,
        machine.kernel,
        machine.memcached,
        machine.redis,
        machine.git
    ));
    let needs_redis = rows.iter().any(|r| r.starts_with("tower-sessions-redis"));
    let env = Env::start(needs_redis).await?;
    let duration = Duration::from_secs_f64(options.time_per_row);
    let mut rounds: BTreeMap<String, Vec<Round>> = BTreeMap::new();
    for round in 0..options.rounds {
        for name in &rows {
            let measured = measure_quietly(&env, name, &options, duration).await?;
            eprintln!(
                "bench: round {}/{} {name}: {:.0} req/s p50 {:.3} ms p99 {:.3} ms ops/req {:.2} conns/req {:.3} failed {} foreign-cpu {:.1}%",
                round + 1,
                options.rounds,
                measured.rps,
                measured.p50_ms,
                measured.p99_ms,
                measured.store_ops_per_request,
                measured.store_connections_per_request,
                measured.failures.values().sum::<u64>(),
                measured.foreign_cpu_percent
            );
            rounds.entry((*name).to_owned()).or_default().push(measured);
        }
    }
    let summaries = rows::summarize(&rows, &rounds);
    if !summaries.is_empty() {
        print(&format!(
            "## Throughput and latency (medians of {} rounds)\n\n{}\n{}\n",
            options.rounds,
            report::table(&summaries),
            report::legend(&summaries)
        ));
        print(&report::quietness(&summaries));
    }

    let mut failovers = Vec::new();
    if !options.skip_failover && options.wants("failover") {
        let (before, after) = if options.quick {
            (Duration::from_millis(1500), Duration::from_millis(2500))
        } else {
            (Duration::from_secs(4), Duration::from_secs(8))
        };
        for sticky in [true, false] {
            if !options.no_quiet_wait {
                quiet::wait_until_quiet(&env.store_pids(), 3.0, Duration::from_secs(60)).await;
            }
            failovers.push(
                failover::run(FailoverSpec {
                    sticky,
                    concurrency: options.concurrency,
                    before_kill: before,
                    after_kill: after,
                    operation_timeout: Duration::from_millis(options.operation_timeout_ms),
                })
                .await?,
            );
        }
        print(&format!(
            "## Failover: kill -9 of one of 3 memcached nodes under write load ({} users, {:.1} s before, {:.1} s after, async backup, operationTimeout {} ms)\n\n{}\n",
            options.concurrency,
            before.as_secs_f64(),
            after.as_secs_f64(),
            options.operation_timeout_ms,
            report::failover_table(&failovers)
        ));
    }

    let mut memory_result = None;
    if !options.skip_memory && options.wants("memory") {
        if !options.no_quiet_wait {
            quiet::wait_until_quiet(&env.store_pids(), 3.0, Duration::from_secs(60)).await;
        }
        let measured = memory::measure_in_child(options.memory_sessions, &env.memcached_nodes())?;
        print(&format!(
            "## Memory: sticky sessions with a 1 KiB attribute each\n\n{}\n",
            report::memory_text(&measured)
        ));
        memory_result = Some(measured);
    }

    let targets = report::targets(&summaries, &failovers, memory_result.as_ref());
    print(&format!("## Targets\n\n{}\n", report::targets_table(&targets)));

    let results = Results {
        machine,
        settings: Settings {
            time_per_row_secs: options.time_per_row,
            rounds: options.rounds,
            concurrency: options.concurrency,
        },
        rows: summaries,
        failover: failovers,
        memory: memory_result,
        targets,
        notes: vec![
            "tower-sessions 0.15 uses tower-sessions-redis-store 0.16.0 (built for tower-sessions-core 0.14) \
             through a pass-through adapter; no Redis store release supports 0.15"
                .into(),
            "tower-sessions-memcached rows: this project's store (two copies per session); the only other \
             memcached store found (tower-sessions-memcache-store 0.1.0) is not on crates.io and targets \
             tower-sessions-core 0.13"
                .into(),
        ],
    };
    write_json(&options.json, &results)?;
    print(&format!("JSON: {}\n", options.json.display()));
    Ok(())
}

/// Attempts per row and round when the machine is noisy.
const NOISY_ATTEMPTS: usize = 4;

/// Runs a row once; unless `--no-quiet-wait`, first waits for a quiet
/// machine and repeats the row when another process got in the way.
async fn measure_quietly(env: &Env, name: &str, options: &Options, duration: Duration) -> Result<Round, BenchError> {
    let pids = env.store_pids();
    let mut attempt = 1;
    loop {
        if !options.no_quiet_wait && !quiet::wait_until_quiet(&pids, 3.0, Duration::from_secs(60)).await {
            eprintln!("bench: {name}: the machine stayed busy for 60 s; measuring anyway");
        }
        let measured = env.run_row(name, options.concurrency, duration).await?;
        if options.no_quiet_wait || measured.foreign_cpu_percent <= NOISY_PERCENT || attempt == NOISY_ATTEMPTS {
            return Ok(measured);
        }
        eprintln!(
            "bench: {name}: other processes took {:.0}% of the CPUs, measuring again",
            measured.foreign_cpu_percent
        );
        attempt += 1;
    }
}

fn write_json(path: &std::path::Path, results: &Results) -> Result<(), BenchError> {
    let error = |source| BenchError::Write {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    let json = serde_json::to_string_pretty(results).expect("results serialize");
    std::fs::write(path, json + "\n").map_err(error)
}
