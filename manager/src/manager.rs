//! [`SessionManager`]: owns the nodes, the sessions held in this process,
//! the backup queue and the background tasks (node prober, expiry sweep).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::Config;
use crate::detached::run_detached;
use crate::error::{ConfigError, Error};
use crate::non_sticky::InFlightSessions;
use crate::non_sticky::lock_policy::LockPolicy;
use crate::request::context::RequestSlots;
use crate::session::id::{RANDOM_LEN, SessionId};
use crate::session::state::SessionState;
use crate::stats::{Statistics, Stats};
use crate::sticky::backup::{self, BackupQueue};
use crate::sticky::local_sessions::LocalSessions;
use crate::store::backend::{InMemoryNode, MemcachedNode, NodeBackend};
use crate::store::envelope::{self, SessionRecord};
use crate::store::node::NodeSpec;
use crate::store::nodes::{NodeIndex, Nodes, ProbeOutcome};

/// The session manager. Cheap to clone; clones share everything.
///
/// Create it once at start-up with [`SessionManager::start`], hand its
/// [`session`](Self::session) filter to the routes that use sessions and
/// wrap all routes with [`wrap`](Self::wrap). Call
/// [`shutdown`](Self::shutdown) on an orderly stop so pending backups are
/// written (sessions stay in memcached for other instances and restarts).
#[derive(Clone)]
pub struct SessionManager {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// State shared by the manager, its requests and its background tasks.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) nodes: Nodes,
    pub(crate) sessions: LocalSessions,
    pub(crate) stats: Stats,
    pub(crate) backups: BackupQueue,
    pub(crate) slots: RequestSlots,
    /// Non-sticky: sessions in use by this instance's requests.
    pub(crate) inflight: InFlightSessions,
    /// Non-sticky: which requests lock.
    pub(crate) lock_policy: LockPolicy,
    /// Non-sticky: writes that could not be done when due, retried by the prober.
    pub(crate) repairs: crate::non_sticky::repairs::Repairs,
    /// Sticky: sessions whose last backup failed or was deferred.
    pub(crate) unsynced: crate::sticky::unsynced::Unsynced,
    /// Bounds the synchronous backup writes in flight.
    pub(crate) sync_writes: Arc<tokio::sync::Semaphore>,
    /// Serializes, per session id, the loads and takeovers of this process.
    id_gates: IdGates,
    /// Random name of this manager instance (lock values, sentinel key).
    pub(crate) instance_token: String,
    /// Key of this instance's sentinel on every node (detects data loss).
    sentinel_key: String,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

impl SessionManager {
    /// Starts a manager for `config`: connects to the configured memcached
    /// nodes (connections are dialed lazily; a node that is down at start is
    /// simply marked unavailable by the first probe), or uses the embedded
    /// in-process store when no node is configured.
    ///
    /// Must be called inside a tokio runtime: it spawns the backup
    /// dispatcher, the node prober and the expiry sweep.
    pub async fn start(config: Config) -> Result<Self, Error> {
        let mut backends: Vec<Arc<dyn NodeBackend>> = Vec::new();
        if config.enabled {
            match config.nodes() {
                None => backends.push(Arc::new(InMemoryNode::new())),
                Some(specs) => {
                    for spec in specs {
                        let node = MemcachedNode::connect(&spec.address(), config.operation_timeout)
                            .await
                            .map_err(|source| Error::Backend {
                                node: spec.label(),
                                source,
                            })?;
                        backends.push(Arc::new(node));
                    }
                }
            }
        }
        Ok(Self::with_backends(config, backends)?)
    }

    /// Starts a manager on backends supplied by the caller, one per node in
    /// the configured order (one for the embedded store when no node is
    /// configured, none when `enabled` is false). Used by tests with
    /// [`InMemoryNode`]s, and for custom stores.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `memcachedNodes` when the number of backends
    /// does not match the configured nodes.
    pub fn with_backends(config: Config, backends: Vec<Arc<dyn NodeBackend>>) -> Result<Self, ConfigError> {
        let specs = if !config.enabled {
            Vec::new()
        } else {
            config
                .nodes()
                .map(<[NodeSpec]>::to_vec)
                .unwrap_or_else(|| vec![NodeSpec::embedded()])
        };
        if specs.len() != backends.len() {
            return Err(ConfigError::new(
                "memcachedNodes",
                format!(
                    "{} backends were given for {} configured nodes (one per node, in order)",
                    backends.len(),
                    specs.len()
                ),
            ));
        }
        let nodes = Nodes::new(specs, backends, config.operation_timeout);
        let instance_token = SessionId::generate(None, None).as_str()[..16].to_owned();
        let sentinel_key = format!("{}msm-probe:{instance_token}", config.storage_key_prefix);
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| {
            let (backups, dispatcher) =
                BackupQueue::start(weak.clone(), config.backup_queue_capacity, config.backup_concurrency);
            Shared {
                nodes,
                sessions: LocalSessions::default(),
                stats: Stats::default(),
                backups,
                slots: RequestSlots::default(),
                inflight: InFlightSessions::default(),
                repairs: crate::non_sticky::repairs::Repairs::default(),
                sync_writes: Arc::new(tokio::sync::Semaphore::new(MAX_SYNC_WRITES)),
                unsynced: crate::sticky::unsynced::Unsynced::default(),
                lock_policy: LockPolicy::default(),
                id_gates: Mutex::new(HashMap::new()),
                instance_token,
                sentinel_key,
                tasks: Mutex::new(Vec::new()),
                dispatcher: Mutex::new(Some(dispatcher)),
                config,
            }
        });
        let weak = Arc::downgrade(&shared);
        let mut tasks = vec![tokio::spawn(sweep_expired(
            weak.clone(),
            shared.config.expiry_sweep_interval,
        ))];
        if !shared.nodes.is_empty() {
            tasks.push(tokio::spawn(probe_nodes(weak, shared.config.node_probe_interval)));
        }
        *shared.tasks.lock() = tasks;
        Ok(Self { shared })
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// A snapshot of the statistics.
    pub fn statistics(&self) -> Statistics {
        let shared = &self.shared;
        let mut statistics = shared.stats.snapshot();
        statistics.local_sessions = (shared.sessions.len() + shared.inflight.len()) as u64;
        statistics.backup_queue_len = shared.backups.len() as u64;
        statistics.repair_queue_len = shared.repairs.len() as u64;
        statistics.unsynced_sessions = shared.unsynced.len() as u64;
        statistics.available_nodes = shared.nodes.available_labels();
        statistics.counters.node_state_changes = shared.nodes.state_changes();
        statistics
    }

    /// Orderly shutdown: stops the background tasks and writes every
    /// pending backup (waiting for each at most `operationTimeout`).
    /// Sessions are **kept** in memcached, so other instances, or this one
    /// after a restart, pick them up. Requests served afterwards still work
    /// but back up synchronously.
    pub async fn shutdown(&self) {
        let shared = &self.shared;
        for task in shared.tasks.lock().drain(..) {
            task.abort();
        }
        shared.backups.close();
        let dispatcher = shared.dispatcher.lock().take();
        if let Some(dispatcher) = dispatcher {
            let _ = dispatcher.await;
        }
        let mut flushes = JoinSet::new();
        for session in shared.sessions.all() {
            let shared = shared.clone();
            flushes.spawn(async move { backup::update_stored_copy(&shared, &session).await });
        }
        while flushes.join_next().await.is_some() {}
        tracing::info!(
            sessions = shared.sessions.len(),
            "session manager shut down; sessions kept in memcached"
        );
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().drain(..) {
            task.abort();
        }
    }
}

impl Shared {
    /// A session id as it appears in memcached keys: the id itself, or,
    /// with `storageKeySecret`, a keyed hash of its random part followed by
    /// its node and route suffix.
    fn storage_id<'i>(&self, id: &'i SessionId) -> Cow<'i, str> {
        match &self.config.key_hasher {
            None => Cow::Borrowed(id.as_str()),
            Some(hasher) => {
                let mut hashed = hasher.hash(id.random_part());
                hashed.push_str(&id.as_str()[RANDOM_LEN..]);
                Cow::Owned(hashed)
            }
        }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        let prefix = &self.config.storage_key_prefix;
        let mut key = String::with_capacity(kind.len() + prefix.len() + id.len());
        key.push_str(kind);
        key.push_str(prefix);
        key.push_str(id);
        debug_assert!(
            key.len() <= 250 && key.bytes().all(|b| b.is_ascii_graphic()),
            "unsafe memcached key"
        );
        key
    }

    /// The memcached key of a session.
    pub(crate) fn session_key(&self, id: &SessionId) -> String {
        self.key("", &self.storage_id(id))
    }

    /// The key of a non-sticky session's backup copy.
    pub(crate) fn backup_key(&self, id: &SessionId) -> String {
        self.key("bak:", &self.storage_id(id))
    }

    /// The key of a non-sticky session's lock: by the random part only, so
    /// it does not move when the session is relocated.
    pub(crate) fn lock_key(&self, id: &SessionId) -> String {
        let random = match &self.config.key_hasher {
            None => Cow::Borrowed(id.random_part()),
            Some(hasher) => Cow::Owned(hasher.hash(id.random_part())),
        };
        self.key("lock:", &random)
    }

    /// The session stored under `key` on `node`, from its bytes: opened
    /// (when sealed) and decoded. Anything else — garbage, truncated,
    /// foreign, tampered, from a newer version — is "no session", counted
    /// and logged, never a panic.
    pub(crate) fn read_record(&self, key: &str, bytes: &[u8], node: NodeIndex) -> Option<SessionRecord> {
        match self.read_stored(key, bytes, node, envelope::Format::Sticky)? {
            envelope::Stored::Session(record) => Some(record),
            // Sticky decoding never yields non-sticky markers.
            envelope::Stored::Moved(_) | envelope::Stored::Gone => None,
        }
    }

    /// [`read_record`](Self::read_record) for a blob of `format`, which may
    /// also be a non-sticky forward record.
    pub(crate) fn read_stored(
        &self,
        key: &str,
        bytes: &[u8],
        node: NodeIndex,
        format: envelope::Format,
    ) -> Option<envelope::Stored> {
        let outcome = match self.open(key, bytes) {
            None => Err("it failed authentication (tampered, foreign, or sealed with an unknown key)".to_owned()),
            Some(plain) => envelope::decode(&plain, format).map_err(|e| e.to_string()),
        };
        match outcome {
            Ok(stored) => Some(stored),
            Err(error) => {
                Stats::count(&self.stats.counters.decode_failures);
                tracing::warn!(node = %self.nodes.get(node).label(), %error, "a stored session was rejected; treating it as no session");
                None
            }
        }
    }

    /// Seals a blob for `key` when encryption is configured.
    pub(crate) fn seal<'b>(&self, key: &str, bytes: &'b [u8]) -> Cow<'b, [u8]> {
        match &self.config.sealer {
            None => Cow::Borrowed(bytes),
            Some(sealer) => Cow::Owned(sealer.seal(key, bytes)),
        }
    }

    /// [`seal`](Self::seal) for an owned blob (no copy without encryption).
    pub(crate) fn seal_owned(&self, key: &str, bytes: Vec<u8>) -> Vec<u8> {
        match &self.config.sealer {
            None => bytes,
            Some(sealer) => sealer.seal(key, &bytes),
        }
    }

    /// Opens a blob read from `key`; `None` when it fails authentication.
    pub(crate) fn open<'b>(&self, key: &str, bytes: &'b [u8]) -> Option<Cow<'b, [u8]>> {
        match &self.config.sealer {
            None => Some(Cow::Borrowed(bytes)),
            Some(sealer) => sealer.open(key, bytes).map(Cow::Owned),
        }
    }

    /// The key an instance claims before taking over a foreign session.
    pub(crate) fn takeover_key(&self, id: &SessionId) -> String {
        self.key("takeover:", &self.storage_id(id))
    }

    /// The node a session id maps to, if it exists and is configured.
    pub(crate) fn node_index(&self, id: &SessionId) -> Option<NodeIndex> {
        self.nodes.node_of(id)
    }

    /// A new, empty session on a freshly chosen node.
    pub(crate) fn create_session(&self) -> Arc<SessionState> {
        let id = SessionId::generate(self.nodes.choose(), self.config.route());
        if id.node().is_none() && self.nodes.iter().count() > 1 {
            tracing::warn!("no memcached node available; new session kept in memory only until one is back");
        }
        let session = Arc::new(SessionState::new(id.clone(), self.config.max_inactive));
        if self.config.sticky {
            self.sessions.insert(id.as_str(), session.clone());
        }
        Stats::count(&self.stats.counters.sessions_created);
        session
    }

    /// Queues (async mode) a backup of `session`.
    /// `false` when the queue was full: the session then waits among the
    /// unsynced ones and is queued again after the next prober round.
    pub(crate) fn schedule_backup(self: &Arc<Self>, session: &Arc<SessionState>) -> bool {
        if self.backups.push(session, &self.stats) {
            return true;
        }
        if self.backups.len() == 0 {
            // Closed queue (after shutdown): write inline, off the request.
            let shared = self.clone();
            let session = session.clone();
            tokio::spawn(async move { backup::update_stored_copy(&shared, &session).await });
            return true;
        }
        self.unsynced.note(self, session.id().as_str());
        false
    }

    /// [`backup_now`](Self::backup_now), run detached: a request dropped
    /// while it waits (client hang-up, outer timeout) does not abort the
    /// backups of what it changed or ended.
    pub(crate) async fn backup_to_completion(self: &Arc<Self>, sessions: Vec<Arc<SessionState>>) {
        let shared = Arc::clone(self);
        run_detached(async move { shared.backup_now(sessions).await }).await;
    }

    /// Backs `sessions` up now and waits up to `sessionBackupTimeout`; the
    /// writes go on in the background after that (bounded by `operationTimeout`).
    pub(crate) async fn backup_now(self: &Arc<Self>, sessions: Vec<Arc<SessionState>>) {
        let started = Instant::now();
        let deadline = started
            .checked_add(self.config.backup_timeout)
            .unwrap_or(started + Duration::from_secs(86_400));
        let mut writes = JoinSet::new();
        for session in sessions {
            // At most MAX_SYNC_WRITES in flight (they outlive a request
            // that stopped waiting for them); past the wait, the session
            // goes to the bounded async queue instead.
            let permit = tokio::time::timeout_at(deadline, Arc::clone(&self.sync_writes).acquire_owned()).await;
            let Ok(Ok(permit)) = permit else {
                self.schedule_backup(&session);
                continue;
            };
            let shared = self.clone();
            writes.spawn(async move {
                backup::update_stored_copy(&shared, &session).await;
                drop(permit);
            });
        }
        let _ = tokio::time::timeout_at(deadline, async { while writes.join_next().await.is_some() {} }).await;
        writes.detach_all();
        self.stats.effective_backup_time.record_duration(started.elapsed());
    }

    /// Waits for exclusive use of session id `id` within this process
    /// (one load or takeover of an id at a time). The gate is let go, and
    /// its entry removed once nobody else waits, when the guard is dropped
    /// — also when the request holding it is cancelled.
    pub(crate) async fn enter_id_gate(&self, id: &str) -> IdGateGuard<'_> {
        let gate = {
            let mut gates = self.id_gates.lock();
            let (gate, users) = gates.entry(id.into()).or_default();
            *users += 1;
            Arc::clone(gate)
        };
        // Made before the wait, so a waiter cancelled while it waits is
        // counted out too.
        let mut guard = IdGateGuard {
            gates: &self.id_gates,
            id: id.into(),
            held: None,
        };
        guard.held = Some(gate.lock_owned().await);
        guard
    }

    /// Expires a session: removes it here and deletes its memcached copy.
    fn expire(self: &Arc<Self>, session: &Arc<SessionState>) {
        let id = {
            let mut inner = session.inner.lock();
            if inner.invalidated {
                return;
            }
            inner.invalidated = true;
            inner.id.clone()
        };
        self.sessions.remove(id.as_str());
        backup::end_sticky(self, session);
        Stats::count(&self.stats.counters.sessions_expired);
        self.schedule_backup(session);
    }
}

/// Expires idle sessions from memory (and memcached) every `interval`.
async fn sweep_expired(shared: Weak<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        for session in shared.sessions.all() {
            let expired = session.inner.lock().is_expired(now);
            if expired {
                shared.expire(&session);
            }
        }
        shared.sessions.prune_forwards(now);
        shared.sessions.prune_ended();
    }
}

/// Most synchronous backup writes in flight at once (see
/// [`Shared::backup_now`]).
pub(crate) const MAX_SYNC_WRITES: usize = 4096;

/// Probes every node every `interval`; re-writes the sessions of a node
/// that lost its data.
async fn probe_nodes(shared: Weak<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let mut probes = JoinSet::new();
        for index in 0..strong.nodes.iter().count() {
            let shared = strong.clone();
            probes.spawn(async move {
                let outcome = shared.nodes.get(index).probe(&shared.sentinel_key).await;
                (index, outcome)
            });
        }
        drop(strong);
        let mut lost_data = Vec::new();
        while let Some(result) = probes.join_next().await {
            if let Ok((index, ProbeOutcome::LostData)) = result {
                lost_data.push(index);
            }
        }
        let Some(strong) = shared.upgrade() else {
            return;
        };
        crate::non_sticky::repairs::spawn_retry(&strong);
        crate::sticky::unsynced::retry(&strong);
        drop(strong);
        for index in lost_data {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut restored = 0u64;
            for session in shared.sessions.all() {
                let on_node = shared.node_index(&session.id()) == Some(index);
                // Queued now, or (queue full) paced through the unsynced
                // set: every session is restored, however many.
                if on_node && shared.schedule_backup(&session) {
                    restored += 1;
                }
            }
            shared
                .stats
                .counters
                .backups_restored
                .fetch_add(restored, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(node = %shared.nodes.get(index).label(), sessions = restored, "re-writing sessions to a node that lost its data");
        }
    }
}

/// Per session id: its gate, and how many requests hold it or wait for it
/// (the entry goes when that drops to zero).
type IdGates = Mutex<HashMap<Box<str>, (Arc<tokio::sync::Mutex<()>>, usize)>>;

/// Exclusive use of one session id in this process; see
/// [`Shared::enter_id_gate`].
pub(crate) struct IdGateGuard<'a> {
    gates: &'a IdGates,
    id: Box<str>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for IdGateGuard<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut gates = self.gates.lock();
        if let Some((_, users)) = gates.get_mut(&self.id) {
            *users -= 1;
            if *users == 0 {
                gates.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::InMemoryNode;

    /// With every synchronous write slot taken (writes stuck on a frozen
    /// node, say), a request's sync backup does not spawn another task: it
    /// waits up to `sessionBackupTimeout` for a slot, then hands the session
    /// to the bounded async queue.
    #[tokio::test]
    async fn sync_backup_writes_in_flight_are_bounded() {
        let node = Arc::new(InMemoryNode::new());
        let config = Config::builder()
            .set("sticky", "true")
            .unwrap()
            .session_backup_async(false)
            .session_backup_timeout(Duration::from_millis(50))
            .build()
            .unwrap();
        let manager = SessionManager::with_backends(config, vec![node.clone() as Arc<dyn NodeBackend>])
            .expect("one node, one backend");
        let shared = &manager.shared;
        let all = Arc::clone(&shared.sync_writes)
            .acquire_many_owned(u32::try_from(MAX_SYNC_WRITES).unwrap())
            .await
            .unwrap();
        let session = shared.create_session();
        session.inner.lock().set_attribute("k", vec![1].into());
        shared.sessions.insert(session.id().as_str(), session.clone());
        let started = Instant::now();
        shared.backup_now(vec![session.clone()]).await;
        assert!(started.elapsed() >= Duration::from_millis(50), "it waited for a slot");
        assert_eq!(shared.sync_writes.available_permits(), 0, "no write beyond the bound");
        drop(all);
        let id = session.id();
        for _ in 0..100 {
            if node.contains(&shared.session_key(&id)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the async queue wrote it");
    }
}
