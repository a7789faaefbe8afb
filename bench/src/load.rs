//! The closed-loop load generator: a fixed number of virtual users, each
//! sending its next request as soon as the previous one answered, for a
//! fixed time after a common start.
//!
//! ```text
//! spawn N users ─► each warms up (own connection, own session)
//!               ─► all warmed: store counters read, start instant sent
//!               ─► measured loop until start + duration ─► results merged
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hyper::Method;
use memcached_sessions::backend::{Expiry, MemcachedNode, NodeBackend};
use tokio::sync::{Barrier, watch};

use crate::apps::COUNTER_PATH;
use crate::client::{HttpUser, RequestError};
use crate::quiet::CpuSnapshot;
use crate::servers::{ServerProcess, StoreCounters};

/// Requests of the row's kind each user sends after creating its session,
/// before the measurement starts.
const WARMUP_REQUESTS: usize = 20;
/// Size of the value the memcached floor reads and writes (about the size
/// of a small serialized session).
const FLOOR_VALUE_LEN: usize = 100;
/// How long the memcached floor's items live.
const FLOOR_EXPIRY: Expiry = Expiry::After(Duration::from_secs(3600));

/// What one measured request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Work {
    /// `GET /counter` (reads the session).
    Read,
    /// `POST /counter` (increments the counter in the session).
    Write,
    /// memcached floor: `get` then `set` of the user's own key.
    FloorGetSet,
    /// memcached floor: `get` of the user's own key.
    FloorGet,
}

/// One virtual user.
pub(crate) enum Worker {
    /// An HTTP user of an app.
    Http { user: HttpUser, work: Work },
    /// A user of memcached itself, with the client inside this library.
    Memcached {
        client: MemcachedNode,
        key: String,
        value: Vec<u8>,
        work: Work,
    },
}

impl Worker {
    /// `concurrency` HTTP users of the app at `addr`.
    pub(crate) fn http_users(addr: SocketAddr, work: Work, concurrency: usize) -> Vec<Worker> {
        (0..concurrency)
            .map(|_| Worker::Http {
                user: HttpUser::new(addr),
                work,
            })
            .collect()
    }

    /// `concurrency` users of the memcached clients, each on its own key,
    /// spread over the clients (nodes) in turn.
    pub(crate) fn memcached_users(clients: &[MemcachedNode], work: Work, concurrency: usize) -> Vec<Worker> {
        (0..concurrency)
            .map(|i| Worker::Memcached {
                client: clients[i % clients.len()].clone(),
                key: format!("bench-floor-{i}"),
                value: vec![b'x'; FLOOR_VALUE_LEN],
                work,
            })
            .collect()
    }

    /// Creates the user's session (or key), then sends a few requests of
    /// the measured kind.
    async fn warm_up(&mut self) -> Result<(), String> {
        if let Worker::Http { user, .. } = self {
            user.clear_cookies();
            user.request(&Method::POST, COUNTER_PATH)
                .await
                .map_err(|e| describe(&e))?;
        }
        if let Worker::Memcached { client, key, value, .. } = self {
            client.set(key, value, FLOOR_EXPIRY).await.map_err(|e| e.to_string())?;
        }
        for _ in 0..WARMUP_REQUESTS {
            self.step().await?;
        }
        Ok(())
    }

    /// One measured request.
    async fn step(&mut self) -> Result<(), String> {
        match self {
            Worker::Http { user, work } => {
                let method = if *work == Work::Write {
                    Method::POST
                } else {
                    Method::GET
                };
                user.request(&method, COUNTER_PATH).await.map_err(|e| describe(&e))
            }
            Worker::Memcached {
                client,
                key,
                value,
                work,
            } => {
                let found = client.get(key).await.map_err(|e| e.to_string())?;
                if found.is_none() {
                    return Err("miss".into());
                }
                if *work == Work::FloorGetSet {
                    client.set(key, value, FLOOR_EXPIRY).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
    }
}

fn describe(error: &RequestError) -> String {
    match error {
        RequestError::Status(status) => status.to_string(),
        RequestError::Transport(_) => "transport".into(),
        RequestError::Timeout => "timeout".into(),
    }
}

/// One request of a timeline: when it ended (µs after the start), how
/// long it took (µs), and whether it succeeded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// End, µs after the measurement started.
    pub(crate) end_us: u64,
    /// Latency in µs.
    pub(crate) latency_us: u64,
    /// 2xx (or a memcached hit).
    pub(crate) ok: bool,
}

/// What happens during a measurement besides the load.
pub(crate) struct Event<'a> {
    /// When, after the start.
    pub(crate) at: Duration,
    /// What (e.g. kill -9 a memcached node).
    pub(crate) action: Box<dyn FnOnce() + Send + 'a>,
}

/// The outcome of one measurement.
#[derive(Debug)]
pub(crate) struct LoadResult {
    /// Successful requests.
    pub(crate) ok: u64,
    /// Failed requests, by cause (`503`, `transport`, `timeout`, …).
    pub(crate) failures: BTreeMap<String, u64>,
    /// Users whose warm-up failed (they are still measured).
    pub(crate) warmup_failures: u64,
    /// From the start to the end of the last request.
    pub(crate) elapsed: Duration,
    /// Latencies of all measured requests, µs.
    pub(crate) histogram: Histogram<u64>,
    /// Every request, when asked for.
    pub(crate) timeline: Vec<Sample>,
    /// Store commands during the measurement.
    pub(crate) store_commands: u64,
    /// Store connections opened during the measurement.
    pub(crate) store_connections: u64,
    /// When the event ran, after the start.
    pub(crate) event_at: Option<Duration>,
    /// CPU used by other processes than this one and its stores during
    /// the measurement, percent of the machine.
    pub(crate) foreign_cpu_percent: f64,
}

impl LoadResult {
    /// All requests, failed ones included.
    pub(crate) fn requests(&self) -> u64 {
        self.ok + self.failed()
    }

    /// Failed requests.
    pub(crate) fn failed(&self) -> u64 {
        self.failures.values().sum()
    }
}

struct UserResult {
    histogram: Histogram<u64>,
    timeline: Vec<Sample>,
    ok: u64,
    failures: BTreeMap<String, u64>,
    warmup_failed: bool,
    last_end: Duration,
}

/// A histogram of latencies in µs, 1 µs to 120 s, 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Warms `workers` up, then measures them for `duration`; counts the
/// commands of `stores` over the measurement; runs `event` on the way.
pub(crate) async fn run(
    workers: Vec<Worker>,
    duration: Duration,
    stores: &[&ServerProcess],
    record_timeline: bool,
    event: Option<Event<'_>>,
) -> LoadResult {
    let warmed = Arc::new(Barrier::new(workers.len() + 1));
    let (start_tx, start_rx) = watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(workers.len());
    for mut worker in workers {
        let warmed = warmed.clone();
        let mut start_rx = start_rx.clone();
        tasks.push(tokio::spawn(async move {
            let warmup_failed = worker.warm_up().await.is_err();
            warmed.wait().await;
            let start = match start_rx.wait_for(Option::is_some).await {
                Ok(start) => start.expect("waited for Some"),
                Err(_) => Instant::now(),
            };
            measure(worker, start, duration, record_timeline, warmup_failed).await
        }));
    }
    warmed.wait().await;
    let before = StoreCounters::read(stores).await;
    let pids: Vec<u32> = stores.iter().filter_map(|s| s.pid()).collect();
    let cpu_before = CpuSnapshot::read(&pids);
    let start = Instant::now();
    let _ = start_tx.send(Some(start));
    let mut event_at = None;
    if let Some(event) = event {
        tokio::time::sleep_until((start + event.at).into()).await;
        event_at = Some(start.elapsed());
        (event.action)();
    }
    let mut result = LoadResult {
        ok: 0,
        failures: BTreeMap::new(),
        warmup_failures: 0,
        elapsed: Duration::ZERO,
        histogram: new_histogram(),
        timeline: Vec::new(),
        store_commands: 0,
        store_connections: 0,
        event_at,
        foreign_cpu_percent: 0.0,
    };
    for task in tasks {
        let user = task.await.expect("virtual user panicked");
        result.ok += user.ok;
        for (cause, n) in user.failures {
            *result.failures.entry(cause).or_default() += n;
        }
        result.warmup_failures += u64::from(user.warmup_failed);
        result.elapsed = result.elapsed.max(user.last_end);
        result
            .histogram
            .add(&user.histogram)
            .expect("histograms have the same bounds");
        result.timeline.extend(user.timeline);
    }
    result.foreign_cpu_percent = CpuSnapshot::read(&pids).foreign_percent(&cpu_before);
    let after = StoreCounters::read(stores).await;
    let delta = after.delta(&before);
    result.store_commands = delta.commands;
    result.store_connections = delta.connections;
    result.timeline.sort_by_key(|s| s.end_us);
    result
}

async fn measure(
    mut worker: Worker,
    start: Instant,
    duration: Duration,
    record_timeline: bool,
    warmup_failed: bool,
) -> UserResult {
    let deadline = start + duration;
    let mut user = UserResult {
        histogram: new_histogram(),
        timeline: Vec::new(),
        ok: 0,
        failures: BTreeMap::new(),
        warmup_failed,
        last_end: Duration::ZERO,
    };
    loop {
        let began = Instant::now();
        if began >= deadline {
            break;
        }
        let outcome = worker.step().await;
        let ended = Instant::now();
        let latency_us = u64::try_from((ended - began).as_micros()).unwrap_or(u64::MAX);
        user.histogram.saturating_record(latency_us.max(1));
        let ok = outcome.is_ok();
        match outcome {
            Ok(()) => user.ok += 1,
            Err(cause) => *user.failures.entry(cause).or_default() += 1,
        }
        user.last_end = ended - start;
        if record_timeline {
            user.timeline.push(Sample {
                end_us: u64::try_from(user.last_end.as_micros()).unwrap_or(u64::MAX),
                latency_us,
                ok,
            });
        }
    }
    user
}
