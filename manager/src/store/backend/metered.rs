//! [`Metered`]: a [`NodeBackend`] that records every operation's duration
//! in the histogram `memcached_sessions_store_operation_duration_seconds`
//! with the node's label, the operation and its result (`ok`, `error`, or
//! `abandoned` when the caller stopped waiting: `operationTimeout`, or a
//! cancelled request). The handles are registered with the global
//! recorder at their first use, so the hot path does not allocate.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::error::BackendError;
use crate::store::backend::node_backend::{Expiry, Item, NodeBackend, Versioned, WriteMode, WriteOutcome};
use crate::telemetry::STORE_OPERATION;

/// The operations, named as the `op` label says.
#[derive(Clone, Copy)]
enum Op {
    Get,
    GetWithCas,
    GetWithTtl,
    Set,
    Add,
    AddWithCas,
    DeleteIfCas,
    ReplaceIfCas,
    Touch,
    Delete,
    GetAndTouch,
    AddThenGetAndTouch,
    StoreAs,
    SetMany,
}

impl Op {
    const COUNT: usize = 14;

    fn name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::GetWithCas => "get_with_cas",
            Self::GetWithTtl => "get_with_ttl",
            Self::Set => "set",
            Self::Add => "add",
            Self::AddWithCas => "add_with_cas",
            Self::DeleteIfCas => "delete_if_cas",
            Self::ReplaceIfCas => "replace_if_cas",
            Self::Touch => "touch",
            Self::Delete => "delete",
            Self::GetAndTouch => "get_and_touch",
            Self::AddThenGetAndTouch => "add_then_get_and_touch",
            Self::StoreAs => "store_as",
            Self::SetMany => "set_many",
        }
    }
}

/// The results, as the `result` label names them, by index.
const RESULTS: [&str; 3] = ["ok", "error", "abandoned"];
const OK: usize = 0;
const ERROR: usize = 1;
const ABANDONED: usize = 2;

/// Wraps the backend of the node labelled `node`.
pub(crate) struct Metered {
    inner: Arc<dyn NodeBackend>,
    node: String,
    histograms: [[OnceLock<metrics::Histogram>; RESULTS.len()]; Op::COUNT],
}

impl Metered {
    pub(crate) fn new(inner: Arc<dyn NodeBackend>, node: String) -> Self {
        Self {
            inner,
            node,
            histograms: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
        }
    }

    fn record(&self, op: Op, result: usize, elapsed: Duration) {
        self.histograms[op as usize][result]
            .get_or_init(|| {
                metrics::histogram!(
                    STORE_OPERATION,
                    "node" => self.node.clone(),
                    "op" => op.name(),
                    "result" => RESULTS[result],
                )
            })
            .record(elapsed.as_secs_f64());
    }

    /// Runs one operation, recording its duration and outcome — also when
    /// the caller drops it before it finished.
    async fn timed<T>(&self, op: Op, work: impl Future<Output = Result<T, BackendError>>) -> Result<T, BackendError> {
        let mut guard = Timing::start(self, op);
        let outcome = work.await;
        guard.result = if outcome.is_err() { ERROR } else { OK };
        outcome
    }
}

/// Records on drop, so an operation given up on is counted as `abandoned`.
struct Timing<'a> {
    metered: &'a Metered,
    op: Op,
    started: Instant,
    result: usize,
}

impl<'a> Timing<'a> {
    /// Starts timing `op`; counted `abandoned` unless a result is set.
    fn start(metered: &'a Metered, op: Op) -> Self {
        Self {
            metered,
            op,
            started: Instant::now(),
            result: ABANDONED,
        }
    }
}

impl Drop for Timing<'_> {
    fn drop(&mut self) {
        self.metered.record(self.op, self.result, self.started.elapsed());
    }
}

#[async_trait]
impl NodeBackend for Metered {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        self.timed(Op::Get, self.inner.get(key)).await
    }

    async fn get_with_cas(&self, key: &str) -> Result<Option<Versioned>, BackendError> {
        self.timed(Op::GetWithCas, self.inner.get_with_cas(key)).await
    }

    async fn get_with_ttl(&self, key: &str) -> Result<Option<(Vec<u8>, Option<Duration>)>, BackendError> {
        self.timed(Op::GetWithTtl, self.inner.get_with_ttl(key)).await
    }

    async fn set(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<(), BackendError> {
        self.timed(Op::Set, self.inner.set(key, value, expiry)).await
    }

    async fn add(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<bool, BackendError> {
        self.timed(Op::Add, self.inner.add(key, value, expiry)).await
    }

    async fn add_with_cas(&self, key: &str, value: &[u8], expiry: Expiry) -> Result<Option<u64>, BackendError> {
        self.timed(Op::AddWithCas, self.inner.add_with_cas(key, value, expiry))
            .await
    }

    async fn delete_if_cas(&self, key: &str, cas: u64) -> Result<bool, BackendError> {
        self.timed(Op::DeleteIfCas, self.inner.delete_if_cas(key, cas)).await
    }

    async fn replace_if_cas(
        &self,
        key: &str,
        value: &[u8],
        cas: u64,
        expiry: Expiry,
    ) -> Result<Option<u64>, BackendError> {
        self.timed(Op::ReplaceIfCas, self.inner.replace_if_cas(key, value, cas, expiry))
            .await
    }

    async fn touch(&self, key: &str, expiry: Expiry) -> Result<bool, BackendError> {
        self.timed(Op::Touch, self.inner.touch(key, expiry)).await
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        self.timed(Op::Delete, self.inner.delete(key)).await
    }

    async fn get_and_touch(&self, key: &str, expiry: Expiry) -> Result<Option<Versioned>, BackendError> {
        self.timed(Op::GetAndTouch, self.inner.get_and_touch(key, expiry)).await
    }

    async fn add_then_get_and_touch(
        &self,
        lock: Item<'_>,
        key: &str,
        expiry: Expiry,
    ) -> Result<(Option<u64>, Option<Versioned>), BackendError> {
        self.timed(
            Op::AddThenGetAndTouch,
            self.inner.add_then_get_and_touch(lock, key, expiry),
        )
        .await
    }

    async fn store_as(&self, item: Item<'_>, mode: WriteMode) -> Result<WriteOutcome, BackendError> {
        self.timed(Op::StoreAs, self.inner.store_as(item, mode)).await
    }

    async fn set_many(&self, items: &[Item<'_>]) -> Vec<Result<(), BackendError>> {
        let mut guard = Timing::start(self, Op::SetMany);
        let outcomes = self.inner.set_many(items).await;
        guard.result = if outcomes.iter().any(Result::is_err) { ERROR } else { OK };
        outcomes
    }
}
