//! Resident memory per sticky session.
//!
//! Runs in a child process of its own (this binary with the hidden
//! `--memory-child` flag), so nothing the other measurements allocated
//! blurs the RSS delta. The child serves this library's app in sticky mode
//! (the bench's memcached nodes, async backup), creates the sessions
//! through the real HTTP layer — every `POST /blob` comes without a cookie
//! and stores a 1 KiB string attribute in a new session — waits until the
//! backup queue has drained, and prints one JSON line: the `VmRSS` of
//! `/proc/self/status` before and after, and the sessions held.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::Method;
use memcached_sessions::{Config, SessionManager};
use serde::{Deserialize, Serialize};

use crate::apps::our_routes;
use crate::client::HttpUser;
use crate::error::BenchError;

/// Bytes of the attribute each session stores.
pub(crate) const PAYLOAD_LEN: usize = 1024;
/// How long the child waits for the backup queue to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Users creating sessions at once.
const CREATORS: u64 = 32;

static PAYLOAD: LazyLock<String> = LazyLock::new(|| {
    (0..PAYLOAD_LEN)
        .map(|i| char::from(b'a' + u8::try_from(i % 26).expect("< 26")))
        .collect()
});

/// The 1 KiB attribute value.
pub(crate) fn payload() -> &'static str {
    &PAYLOAD
}

/// What the child measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MemoryResult {
    /// Sessions created and held in process.
    pub(crate) sessions: u64,
    /// Attribute bytes per session.
    pub(crate) payload_bytes: u64,
    /// VmRSS before creating them, bytes.
    pub(crate) rss_before: u64,
    /// VmRSS after, backup queue drained, bytes.
    pub(crate) rss_after: u64,
    /// (after − before) / sessions.
    pub(crate) bytes_per_session: f64,
    /// Full backups written to memcached during the creation.
    pub(crate) backups_written: u64,
    /// Backups dropped because the async queue was full.
    pub(crate) backups_dropped: u64,
    /// How long creating them took, seconds.
    pub(crate) create_secs: f64,
    /// How long the queue took to drain after that, seconds.
    pub(crate) drain_secs: f64,
}

/// Runs the measurement in a child process and reads its result.
pub(crate) fn measure_in_child(sessions: u64, memcached_nodes: &str) -> Result<MemoryResult, BenchError> {
    let exe = std::env::current_exe().map_err(|e| BenchError::Setup(format!("current_exe: {e}")))?;
    let output = Command::new(exe)
        .args([
            "--memory-child",
            "--memory-sessions",
            &sessions.to_string(),
            "--memcached-nodes",
            memcached_nodes,
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| BenchError::Setup(format!("memory child: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| {
        BenchError::Setup(format!(
            "memory child failed ({}): {e}; output {stdout:?}",
            output.status
        ))
    })
}

/// The child's side: measure and print the JSON line.
pub(crate) async fn child_main(sessions: u64, memcached_nodes: &str) -> Result<(), BenchError> {
    let config = Config::builder()
        .memcached_nodes(memcached_nodes)
        .build()
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let manager = SessionManager::start(config)
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| BenchError::Setup(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| BenchError::Setup(e.to_string()))?;
    let server = tokio::spawn(warp::serve(our_routes(&manager)).incoming(listener).run());

    // Warm up everything that is allocated once (connections, buffers,
    // the runtime's tasks), then forget those sessions' share by measuring
    // the sessions created afterwards only.
    create_sessions(addr, CREATORS * 20).await;
    wait_drained(&manager).await;
    let created_before = manager.statistics().counters.sessions_created;
    let written_before = manager.statistics().counters.backups_written;
    let dropped_before = manager.statistics().counters.backups_dropped;
    let held_before = manager.statistics().local_sessions;
    let rss_before = vm_rss()?;

    let started = Instant::now();
    create_sessions(addr, sessions).await;
    let create_secs = started.elapsed().as_secs_f64();
    let drain_started = Instant::now();
    wait_drained(&manager).await;
    let drain_secs = drain_started.elapsed().as_secs_f64();
    // Let the allocator settle (freed request buffers, finished tasks).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = vm_rss()?;

    let statistics = manager.statistics();
    let created = statistics.counters.sessions_created - created_before;
    let held = statistics.local_sessions.saturating_sub(held_before);
    if held != created {
        return Err(BenchError::Setup(format!(
            "memory: created {created} sessions but {held} are held"
        )));
    }
    let result = MemoryResult {
        sessions: created,
        payload_bytes: PAYLOAD_LEN as u64,
        rss_before,
        rss_after,
        bytes_per_session: rss_after.saturating_sub(rss_before) as f64 / created.max(1) as f64,
        backups_written: statistics.counters.backups_written - written_before,
        backups_dropped: statistics.counters.backups_dropped - dropped_before,
        create_secs,
        drain_secs,
    };
    server.abort();
    let line = serde_json::to_string(&result).expect("serializable");
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    Ok(())
}

/// `total` requests `POST /blob` without a cookie: `total` new sessions.
async fn create_sessions(addr: std::net::SocketAddr, total: u64) {
    let next = std::sync::Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CREATORS {
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut user = HttpUser::new(addr);
            while next.fetch_add(1, Ordering::Relaxed) < total {
                user.clear_cookies();
                if let Err(error) = user.request(&Method::POST, "/blob").await {
                    eprintln!("memory: POST /blob failed: {error}");
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn wait_drained(manager: &SessionManager) {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while manager.statistics().backup_queue_len > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resident set size of this process, bytes.
fn vm_rss() -> Result<u64, BenchError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| BenchError::Setup(format!("/proc/self/status: {e}")))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| BenchError::Setup("no VmRSS in /proc/self/status".into()))
}
