//! The rows of the table: what each one serves, how it is driven, and the
//! medians over rounds.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use memcached_sessions::Config;
use memcached_sessions::backend::MemcachedNode;
use serde::Serialize;

use crate::apps::{Contender, RunningApp};
use crate::error::BenchError;
use crate::load::{self, LoadResult, Work, Worker};
use crate::servers::ServerProcess;

/// Name of the ceiling row.
pub(crate) const CEILING: &str = "warp-plain";

/// Row names, in table order.
pub(crate) const ALL_ROWS: &[&str] = &[
    CEILING,
    "sticky-read",
    "sticky-write-async",
    "sticky-write-sync",
    "nonsticky-read",
    "nonsticky-write",
    "nonsticky-write-lock-all",
    "tower-sessions-redis-read",
    "tower-sessions-redis-write",
    "tower-sessions-memcached-read",
    "tower-sessions-memcached-write",
    "warp-sessions-memory-read",
    "warp-sessions-memory-write",
    "memcached-floor",
    "memcached-floor-get",
];

/// The peers' rows, and this project's tower-sessions store beside them
/// (skipped by `--skip-peers`).
pub(crate) fn is_peer(name: &str) -> bool {
    name.starts_with("tower-sessions") || name.starts_with("warp-sessions")
}

/// One line per row for the README and the report.
pub(crate) fn describe(name: &str) -> &'static str {
    match name {
        CEILING => "warp 0.4, no sessions: the same two routes answering constants (ceiling)",
        "sticky-read" => "this library, sticky, GET reads the counter (session held in process)",
        "sticky-write-async" => "this library, sticky, POST increments; backup to memcached queued (default)",
        "sticky-write-sync" => "this library, sticky, POST increments; response waits for the backup",
        "nonsticky-read" => "this library, non-sticky, lock none, GET: load from memcached per request",
        "nonsticky-write" => "this library, non-sticky, lock none, POST: load + write before the response",
        "nonsticky-write-lock-all" => "as nonsticky-write with lockingMode=all (add + delete of a lock)",
        "tower-sessions-redis-read" => "axum 0.8 + tower-sessions 0.15 + Redis store (fred), GET",
        "tower-sessions-redis-write" => "axum 0.8 + tower-sessions 0.15 + Redis store (fred), POST",
        "tower-sessions-memcached-read" => {
            "axum 0.8 + tower-sessions 0.15 + this project's replicated memcached store, GET (reads both copies)"
        }
        "tower-sessions-memcached-write" => {
            "axum 0.8 + tower-sessions 0.15 + this project's replicated memcached store, POST (reads and writes both copies)"
        }
        "warp-sessions-memory-read" => "warp 0.4 + warp-sessions 1.0.22, async-session MemoryStore, GET",
        "warp-sessions-memory-write" => "warp 0.4 + warp-sessions 1.0.22, async-session MemoryStore, POST",
        "memcached-floor" => "no HTTP: this library's memcached client (MemcachedNode), get + set of a 100 B value",
        "memcached-floor-get" => "no HTTP: this library's memcached client (MemcachedNode), get of a 100 B value",
        _ => "",
    }
}

/// The stores and clients the rows use.
pub(crate) struct Env {
    /// The two memcached nodes.
    pub(crate) memcached: Vec<ServerProcess>,
    /// redis-server for the tower-sessions rows.
    pub(crate) redis: Option<ServerProcess>,
    /// The floor's client on both nodes.
    /// The floor rows' clients, one per memcached node.
    pub(crate) floor_clients: Vec<MemcachedNode>,
}

impl Env {
    /// `n1:127.0.0.1:P1,n2:127.0.0.1:P2`.
    pub(crate) fn memcached_nodes(&self) -> String {
        self.memcached
            .iter()
            .enumerate()
            .map(|(i, node)| format!("n{}:{}", i + 1, node.addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts the stores (redis only when peers run).
    pub(crate) async fn start(with_redis: bool) -> Result<Self, BenchError> {
        let memcached = vec![
            ServerProcess::memcached(256).await?,
            ServerProcess::memcached(256).await?,
        ];
        let redis = if with_redis {
            Some(ServerProcess::redis().await?)
        } else {
            None
        };
        let addrs: Vec<String> = memcached.iter().map(|m| m.addr().to_string()).collect();
        let mut floor_clients = Vec::new();
        for addr in &addrs {
            let client = MemcachedNode::connect(addr, Duration::from_secs(1))
                .await
                .map_err(|e| BenchError::Setup(format!("memcached client: {e}")))?;
            floor_clients.push(client);
        }
        Ok(Env {
            memcached,
            redis,
            floor_clients,
        })
    }

    /// Process ids of the stores (their CPU time counts as ours).
    pub(crate) fn store_pids(&self) -> Vec<u32> {
        self.stores().iter().filter_map(|s| s.pid()).collect()
    }

    fn stores(&self) -> Vec<&ServerProcess> {
        self.memcached.iter().chain(self.redis.as_ref()).collect()
    }

    fn redis_addr(&self) -> Result<SocketAddr, BenchError> {
        self.redis
            .as_ref()
            .map(ServerProcess::addr)
            .ok_or_else(|| BenchError::Setup("redis is not running".into()))
    }

    fn ours(
        &self,
        build: impl FnOnce(memcached_sessions::ConfigBuilder) -> memcached_sessions::ConfigBuilder,
    ) -> Result<Contender, BenchError> {
        let config = build(Config::builder().memcached_nodes(self.memcached_nodes()))
            .build()
            .map_err(|e| BenchError::Setup(e.to_string()))?;
        Ok(Contender::Ours(Box::new(config)))
    }

    /// What serves row `name` and how it is driven.
    fn plan(&self, name: &str) -> Result<(Option<Contender>, Work), BenchError> {
        let http = |contender, work| Ok((Some(contender), work));
        match name {
            CEILING => http(Contender::WarpPlain, Work::Read),
            "sticky-read" => http(self.ours(|b| b)?, Work::Read),
            "sticky-write-async" => http(self.ours(|b| b.session_backup_async(true))?, Work::Write),
            "sticky-write-sync" => http(self.ours(|b| b.session_backup_async(false))?, Work::Write),
            "nonsticky-read" => http(self.ours(|b| b.sticky(false).locking_mode("none"))?, Work::Read),
            "nonsticky-write" => http(self.ours(|b| b.sticky(false).locking_mode("none"))?, Work::Write),
            "nonsticky-write-lock-all" => http(self.ours(|b| b.sticky(false).locking_mode("all"))?, Work::Write),
            "tower-sessions-redis-read" => http(Contender::TowerSessionsRedis(self.redis_addr()?), Work::Read),
            "tower-sessions-redis-write" => http(Contender::TowerSessionsRedis(self.redis_addr()?), Work::Write),
            "tower-sessions-memcached-read" => {
                http(Contender::TowerSessionsMemcached(self.memcached_nodes()), Work::Read)
            }
            "tower-sessions-memcached-write" => {
                http(Contender::TowerSessionsMemcached(self.memcached_nodes()), Work::Write)
            }
            "warp-sessions-memory-read" => http(Contender::WarpSessionsMemory, Work::Read),
            "warp-sessions-memory-write" => http(Contender::WarpSessionsMemory, Work::Write),
            "memcached-floor" => Ok((None, Work::FloorGetSet)),
            "memcached-floor-get" => Ok((None, Work::FloorGet)),
            other => Err(BenchError::Setup(format!(
                "unknown row {other:?}; rows: {}",
                ALL_ROWS.join(", ")
            ))),
        }
    }

    /// Runs row `name` once.
    pub(crate) async fn run_row(
        &self,
        name: &str,
        concurrency: usize,
        duration: Duration,
    ) -> Result<Round, BenchError> {
        let (contender, work) = self.plan(name)?;
        let stores = self.stores();
        let result = match contender {
            Some(contender) => {
                let app = RunningApp::start(&contender).await?;
                let workers = Worker::http_users(app.addr, work, concurrency);
                let result = load::run(workers, duration, &stores, false, None).await;
                app.stop().await;
                result
            }
            None => {
                let workers = Worker::memcached_users(&self.floor_clients, work, concurrency);
                load::run(workers, duration, &stores, false, None).await
            }
        };
        Ok(Round::from(&result))
    }
}

/// One row measured once.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Round {
    /// Requests (or floor operations) per second, failed ones included.
    pub(crate) rps: f64,
    /// Median latency, ms.
    pub(crate) p50_ms: f64,
    /// 99th percentile latency, ms.
    pub(crate) p99_ms: f64,
    /// Store commands per request.
    pub(crate) store_ops_per_request: f64,
    /// Store connections opened per request (a pooled client opens ~0).
    pub(crate) store_connections_per_request: f64,
    /// Requests.
    pub(crate) requests: u64,
    /// Failed requests by cause.
    pub(crate) failures: BTreeMap<String, u64>,
    /// Users whose warm-up failed.
    pub(crate) warmup_failures: u64,
    /// CPU used by other processes meanwhile, percent of the machine.
    pub(crate) foreign_cpu_percent: f64,
}

impl From<&LoadResult> for Round {
    fn from(result: &LoadResult) -> Self {
        let requests = result.requests();
        Round {
            rps: requests as f64 / result.elapsed.as_secs_f64().max(1e-9),
            p50_ms: result.histogram.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: result.histogram.value_at_quantile(0.99) as f64 / 1000.0,
            store_ops_per_request: result.store_commands as f64 / requests.max(1) as f64,
            store_connections_per_request: result.store_connections as f64 / requests.max(1) as f64,
            requests,
            failures: result.failures.clone(),
            warmup_failures: result.warmup_failures,
            foreign_cpu_percent: result.foreign_cpu_percent,
        }
    }
}

/// A row over all its rounds.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RowSummary {
    /// Row name.
    pub(crate) name: String,
    /// What it measures.
    pub(crate) description: &'static str,
    /// Median requests/s over rounds.
    pub(crate) rps: f64,
    /// (max − min) / median of the rounds' requests/s, percent.
    pub(crate) rps_spread_pct: f64,
    /// Median p50, ms.
    pub(crate) p50_ms: f64,
    /// Median p99, ms.
    pub(crate) p99_ms: f64,
    /// Median store commands per request.
    pub(crate) store_ops_per_request: f64,
    /// Median store connections opened per request.
    pub(crate) store_connections_per_request: f64,
    /// rps / ceiling rps (when the ceiling ran).
    pub(crate) ratio_to_ceiling: Option<f64>,
    /// Failed requests over all rounds.
    pub(crate) failed: u64,
    /// Largest share of CPU other processes used in a round, percent.
    pub(crate) max_foreign_cpu_percent: f64,
    /// Every round.
    pub(crate) rounds: Vec<Round>,
}

/// Median of `values` (mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Medians of each row's rounds, in the given order.
pub(crate) fn summarize(order: &[&str], rounds: &BTreeMap<String, Vec<Round>>) -> Vec<RowSummary> {
    let mut rows: Vec<RowSummary> = order
        .iter()
        .filter_map(|name| {
            let rounds = rounds.get(*name)?;
            let pick = |f: fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
            let rps = pick(|r| r.rps);
            let (min, max) = rounds
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), r| (lo.min(r.rps), hi.max(r.rps)));
            Some(RowSummary {
                name: (*name).to_owned(),
                description: describe(name),
                rps,
                rps_spread_pct: if rps > 0.0 { (max - min) / rps * 100.0 } else { 0.0 },
                p50_ms: pick(|r| r.p50_ms),
                p99_ms: pick(|r| r.p99_ms),
                store_ops_per_request: pick(|r| r.store_ops_per_request),
                store_connections_per_request: pick(|r| r.store_connections_per_request),
                ratio_to_ceiling: None,
                failed: rounds.iter().map(|r| r.failures.values().sum::<u64>()).sum(),
                max_foreign_cpu_percent: rounds.iter().map(|r| r.foreign_cpu_percent).fold(0.0, f64::max),
                rounds: rounds.clone(),
            })
        })
        .collect();
    if let Some(ceiling) = rows.iter().find(|r| r.name == CEILING).map(|r| r.rps) {
        for row in &mut rows {
            row.ratio_to_ceiling = Some(row.rps / ceiling);
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn every_row_has_a_description() {
        for name in ALL_ROWS {
            assert!(!describe(name).is_empty(), "{name}");
        }
    }
}
