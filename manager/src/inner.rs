//! [`ManagerInner`]: what a [`SessionManager`](crate::SessionManager)
//! handle points to — the configuration, the [`Store`], the [`Mode`] with
//! its own state, and the background tasks (node prober, expiry sweep),
//! which hold it weakly and end when the last handle is dropped.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::ConfigError;
use crate::events::Listeners;
use crate::non_sticky::NonSticky;
use crate::periodic;
use crate::session::id::SessionId;
use crate::session::state::SessionState;
use crate::stats::{CounterSnapshot, Statistics, Stats};
use crate::sticky::Sticky;
use crate::store::Store;
use crate::store::backend::NodeBackend;
use crate::store::codec::Codec;
use crate::store::keys::Keys;
use crate::store::node::NodeSpec;
use crate::store::nodes::{Nodes, ProbeOutcome};
use crate::telemetry;

/// Sticky or non-sticky, each with the state only it needs.
pub(crate) enum Mode {
    Sticky(Arc<Sticky>),
    NonSticky(Arc<NonSticky>),
}

/// State shared by a manager's handles, its requests and its background tasks.
pub(crate) struct ManagerInner {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<Store>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) mode: Mode,
    /// The app's lifecycle listeners.
    pub(crate) listeners: Arc<Listeners>,
    /// Key of this instance's sentinel on every node (detects data loss).
    sentinel_key: String,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Sticky: the backup queue's dispatcher, awaited at shutdown.
    dispatcher: Mutex<Option<JoinHandle<()>>>,
}

impl ManagerInner {
    /// Builds the manager on one backend per node of `config` (see
    /// `SessionManager::with_backends`) and starts its background tasks.
    pub(crate) fn start(config: Config, backends: Vec<Arc<dyn NodeBackend>>) -> Result<Arc<Self>, ConfigError> {
        let specs = config.node_specs();
        crate::store::backend::check_one_per_node(&specs, &backends)?;
        let config = Arc::new(config);
        telemetry::describe();
        let stats = Arc::new(Stats::default());
        let keys = Keys::new(config.storage_key_prefix.clone(), config.key_hasher.clone());
        let instance_token = SessionId::generate(None, None).as_str()[..16].to_owned();
        let sentinel_key = keys.sentinel(&instance_token);
        let store = Arc::new(Store::new(
            Nodes::new(specs, backends, config.operation_timeout),
            keys,
            Codec::new(config.sealer.clone()),
            Arc::clone(&stats),
        ));
        let listeners = Arc::new(Listeners::default());
        let (mode, dispatcher) = if config.sticky {
            let (sticky, dispatcher) = Sticky::start(
                Arc::clone(&config),
                Arc::clone(&store),
                Arc::clone(&stats),
                Arc::clone(&listeners),
            );
            (Mode::Sticky(sticky), Some(dispatcher))
        } else {
            let non_sticky = NonSticky::new(
                Arc::clone(&config),
                Arc::clone(&store),
                Arc::clone(&stats),
                instance_token,
            );
            (Mode::NonSticky(Arc::new(non_sticky)), None)
        };
        let inner = Arc::new(Self {
            config,
            store,
            stats,
            mode,
            listeners,
            sentinel_key,
            tasks: Mutex::new(Vec::new()),
            dispatcher: Mutex::new(dispatcher),
        });
        let weak = Arc::downgrade(&inner);
        let mut tasks = Vec::new();
        if let Mode::Sticky(sticky) = &inner.mode {
            tasks.push(tokio::spawn(sweep_expired(
                Arc::downgrade(sticky),
                inner.config.expiry_sweep_interval,
            )));
        }
        if !inner.store.nodes.is_empty() {
            tasks.push(tokio::spawn(probe_nodes(
                weak.clone(),
                inner.config.node_probe_interval,
            )));
        }
        tasks.push(tokio::spawn(export_metrics(weak, inner.config.node_probe_interval)));
        *inner.tasks.lock() = tasks;
        Ok(inner)
    }

    /// Makes `specs` the node list (see [`Nodes::apply`]); in sticky mode
    /// the sessions held here for a moved node are written to its new
    /// address at once. Sessions on a removed node relocate at their next
    /// request, as for a dead node (a relocation in the background would
    /// hand their clients a new id they only learn with their next request,
    /// and the old one forwards for a minute only).
    pub(crate) fn set_nodes(
        &self,
        specs: Vec<NodeSpec>,
        connect: impl Fn(&NodeSpec) -> Arc<dyn NodeBackend>,
    ) -> Result<(), ConfigError> {
        let changes = self.store.nodes.apply(specs, connect)?;
        let nodes = &self.store.nodes;
        for node in changes.added.iter().map(|&index| nodes.get(index)) {
            tracing::info!(node = %node.label(), address = %node.spec.address(), "memcached node added");
        }
        for node in changes.moved.iter().map(|&index| nodes.get(index)) {
            tracing::info!(node = %node.label(), address = %node.spec.address(), "memcached node moved (or back); its sessions are written again");
        }
        for node in changes.retired.iter().map(|&index| nodes.get(index)) {
            telemetry::node_up(&node.label(), false);
            tracing::warn!(node = %node.label(), "memcached node removed; its sessions relocate");
        }
        if let Some(sticky) = self.sticky() {
            for &index in &changes.moved {
                sticky.restore_node(index);
            }
        }
        Ok(())
    }

    /// The sticky state, in sticky mode.
    pub(crate) fn sticky(&self) -> Option<&Arc<Sticky>> {
        match &self.mode {
            Mode::Sticky(sticky) => Some(sticky),
            Mode::NonSticky(_) => None,
        }
    }

    /// A new, empty session on a freshly chosen node (held here in sticky
    /// mode; stored by the request that made it in non-sticky mode).
    pub(crate) fn create_session(&self) -> Arc<SessionState> {
        let id = SessionId::generate(self.store.nodes.choose().as_ref(), self.config.route());
        if id.node().is_none() && self.store.nodes.len() > 1 {
            tracing::warn!("no memcached node available; new session kept in memory only until one is back");
        }
        let session = Arc::new(SessionState::new(id.clone(), self.config.max_inactive));
        if let Some(sticky) = self.sticky() {
            sticky.sessions.insert(id.as_str(), session.clone());
        }
        Stats::count(&self.stats.counters.sessions_created);
        session
    }

    /// Ends `session` (logout). `false` when it had already ended. Its
    /// stored copies are tombstoned at the end of the request.
    pub(crate) fn invalidate(&self, session: &SessionState) -> bool {
        let ended = match self.sticky() {
            Some(sticky) => sticky.invalidate(session),
            None => session.end().is_some(),
        };
        if ended {
            Stats::count(&self.stats.counters.sessions_invalidated);
        }
        ended
    }

    /// Gives `session` a new id (on a live node when its own is not the
    /// place for it any more), keeping its data; the old id stops working
    /// at once here, and in memcached once the request's write is done.
    pub(crate) fn cycle_id(&self, session: &Arc<SessionState>) -> SessionId {
        let nodes = &self.store.nodes;
        let (old, new) = {
            let mut inner = session.inner.lock();
            let old = inner.id().clone();
            let node = if nodes.should_relocate(&old) {
                nodes.choose()
            } else {
                old.node().cloned()
            };
            let new = SessionId::generate(node.as_ref(), self.config.route());
            inner.change_id(new.clone());
            (old, new)
        };
        if let Some(sticky) = self.sticky() {
            sticky.retire_id(session, &old, &new);
        }
        Stats::count(&self.stats.counters.ids_cycled);
        new
    }

    /// A snapshot of the statistics.
    pub(crate) fn statistics(&self) -> Statistics {
        let mut statistics = self.stats.snapshot();
        statistics.repair_queue_len = self.store.repairs.len() as u64;
        statistics.available_nodes = self.store.nodes.available_labels();
        statistics.counters.node_state_changes = self.store.nodes.state_changes();
        match &self.mode {
            Mode::Sticky(sticky) => {
                statistics.local_sessions = sticky.sessions.len() as u64;
                statistics.backup_queue_len = sticky.backups.queue.len() as u64;
                statistics.unsynced_sessions = sticky.backups.unsynced.len() as u64;
            }
            Mode::NonSticky(non_sticky) => {
                statistics.local_sessions = non_sticky.inflight.len() as u64;
            }
        }
        statistics
    }

    /// Stops the background tasks and (sticky) writes every pending backup.
    pub(crate) async fn shut_down(&self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
        let dispatcher = self.dispatcher.lock().take();
        if let Some(sticky) = self.sticky() {
            sticky.shut_down(dispatcher).await;
        }
        // One last try of the writes still owed (tombstones of logouts,
        // forward records) whose node was down or failed them until now;
        // what still fails is left to the copies' TTLs.
        self.store.retry_repairs().await;
    }
}

impl Drop for ManagerInner {
    fn drop(&mut self) {
        for task in self.tasks.get_mut().drain(..) {
            task.abort();
        }
    }
}

/// Exports the statistics and node states as metrics every `interval`
/// (see [`crate::telemetry`]).
async fn export_metrics(inner: Weak<ManagerInner>, interval: Duration) {
    let mut exported = CounterSnapshot::default();
    periodic::every(inner, interval, move |inner| {
        let nodes: Vec<(String, bool)> = inner
            .store
            .nodes
            .iter()
            .map(|node| (node.label(), node.is_available()))
            .collect();
        telemetry::export(&inner.statistics(), &mut exported, &nodes);
        std::future::ready(())
    })
    .await;
}

/// Expires idle sessions from memory (and memcached) every `interval`.
async fn sweep_expired(sticky: Weak<Sticky>, interval: Duration) {
    periodic::every(sticky, interval, |sticky| {
        sticky.sweep_expired();
        std::future::ready(())
    })
    .await;
}

/// Probes every node every `interval`; retries what could not be written
/// when due; re-writes the sessions of a node that lost its data.
async fn probe_nodes(inner: Weak<ManagerInner>, interval: Duration) {
    periodic::every(inner, interval, |strong| {
        let probes = strong.store.nodes.probe_all(&strong.sentinel_key);
        let inner = Arc::downgrade(strong);
        async move {
            let lost_data: Vec<usize> = probes
                .await
                .into_iter()
                .filter(|(_, outcome)| *outcome == ProbeOutcome::LostData)
                .map(|(index, _)| index)
                .collect();
            let Some(strong) = inner.upgrade() else {
                return;
            };
            strong.store.spawn_repair_retry();
            let Some(sticky) = strong.sticky().cloned() else {
                return;
            };
            drop(strong);
            crate::sticky::relocate::retry_unsynced(&sticky);
            for index in lost_data {
                let restored = sticky.restore_node(index);
                sticky
                    .stats
                    .counters
                    .backups_restored
                    .fetch_add(restored, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(node = %sticky.store.nodes.get(index).label(), sessions = restored, "re-writing sessions to a node that lost its data");
            }
        }
    })
    .await;
}
