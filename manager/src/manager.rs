//! [`SessionManager`]: the public handle — start, configuration,
//! statistics, shutdown. The adapters add `session()` / `wrap()` (warp)
//! and `layer()` (tower); the behaviour lives in [`ManagerInner`].

use std::sync::Arc;

use crate::cluster::NodeStatus;
use crate::config::Config;
use crate::error::{ConfigError, Error};
use crate::events::SessionEvent;
use crate::inner::ManagerInner;
#[cfg(feature = "warp")]
use crate::request::context::RequestSlots;
use crate::stats::Statistics;
use crate::store::backend::{MemcachedNode, NodeBackend};

/// The session manager. Cheap to clone; clones share everything.
///
/// Create it once at start-up with [`SessionManager::start`], hand its
/// [`session`](Self::session) filter to the routes that use sessions and
/// wrap all routes with [`wrap`](Self::wrap). Call
/// [`shutdown`](Self::shutdown) on an orderly stop so pending backups are
/// written (sessions stay in memcached for other instances and restarts).
#[derive(Clone)]
pub struct SessionManager {
    pub(crate) inner: Arc<ManagerInner>,
    /// The contexts of the requests in flight, for the warp adapter (warp
    /// filters cannot hand data to an enclosing filter).
    #[cfg(feature = "warp")]
    pub(crate) requests: Arc<RequestSlots>,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
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
        let backends = if config.enabled {
            crate::store::backend::connect(config.nodes(), config.operation_timeout).await?
        } else {
            Vec::new()
        };
        Ok(Self::with_backends(config, backends)?)
    }

    /// Starts a manager on backends supplied by the caller, one per node in
    /// the configured order (one for the embedded store when no node is
    /// configured, none when `enabled` is false). Used by tests with
    /// [`InMemoryNode`](crate::backend::InMemoryNode)s, and for custom stores.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `memcachedNodes` when the number of backends
    /// does not match the configured nodes.
    pub fn with_backends(config: Config, backends: Vec<Arc<dyn NodeBackend>>) -> Result<Self, ConfigError> {
        let inner = ManagerInner::start(config, backends)?;
        Ok(Self {
            inner,
            #[cfg(feature = "warp")]
            requests: Arc::new(RequestSlots::default()),
        })
    }

    /// Registers a lifecycle listener: it is called when a session is
    /// created, invalidated, expired (sticky) or taken over from another
    /// instance (sticky), with the session's id and read access to its
    /// attributes. See [`SessionEvent`](crate::SessionEvent) for when and
    /// how listeners run.
    ///
    /// ```
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use memcached_sessions::{Config, SessionEventKind, SessionManager};
    ///
    /// let manager = SessionManager::start(Config::builder().build()?).await?;
    /// manager.on_session_event(|event| {
    ///     if event.kind() == SessionEventKind::Expired {
    ///         let user: Option<String> = event.get("user").ok().flatten();
    ///         tracing::info!(?user, "session expired");
    ///     }
    /// });
    /// # Ok(()) }
    /// ```
    pub fn on_session_event(&self, listener: impl Fn(&SessionEvent<'_>) + Send + Sync + 'static) {
        self.inner.listeners.add(Arc::new(listener));
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// A snapshot of the statistics.
    pub fn statistics(&self) -> Statistics {
        self.inner.statistics()
    }

    /// Changes the memcached node list at run time, without a restart:
    /// `memcached_nodes` and `failover_nodes` as in the configuration
    /// (`n1:host:port,n2:host:port`; `n2`).
    ///
    /// * A node with a new id is added: new sessions may go to it.
    /// * A known id with another address has moved: it is treated as an
    ///   empty node at the new address — in sticky mode this instance
    ///   writes the sessions it holds for it there at once; in non-sticky
    ///   mode a request finds them through their backup copies.
    /// * A node left out is **removed**: from now on it is down for good,
    ///   as if dead — never probed, never chosen; sessions naming it
    ///   relocate at their next request. Ids naming it still parse.
    ///
    /// **Draining a node** without losing a session: first stop it (or
    /// let it die) while it is still configured and wait one
    /// `maxInactiveInterval` — every session in use meanwhile relocates,
    /// the others expire — then remove it here. Removing a running node
    /// directly is safe for sessions held by a live sticky instance; a
    /// session whose only copy is on the removed node (non-sticky, or
    /// sticky whose instance died) is found through its backup copy in
    /// non-sticky mode, and is lost in sticky mode.
    ///
    /// A node's memcached must be **empty** when its id is added, moved to
    /// an address or added back (restart it, or `flush_all`): copies it
    /// kept from before — logged-out sessions among them — could otherwise
    /// be read again.
    ///
    /// Apply the same change to every instance: until they agree, each
    /// routes by its own list. [`config`](Self::config) keeps showing the
    /// configuration the manager started with; [`nodes`](Self::nodes)
    /// shows the list in force.
    ///
    /// # Errors
    /// A [`ConfigError`] (nothing changes) when the strings do not parse,
    /// when a node has no id, when the list is empty, or when the manager
    /// runs on a single anonymous node or the embedded store.
    pub async fn set_nodes(&self, memcached_nodes: &str, failover_nodes: &str) -> Result<(), Error> {
        let specs = crate::store::node::parse_nodes(memcached_nodes, failover_nodes)?;
        let mut backends = Vec::with_capacity(specs.len());
        for spec in &specs {
            let node = MemcachedNode::connect(&spec.address(), self.inner.config.operation_timeout)
                .await
                .map_err(|source| Error::Backend {
                    node: spec.label(),
                    source,
                })?;
            backends.push((spec.id.clone(), Arc::new(node) as Arc<dyn NodeBackend>));
        }
        self.inner.set_nodes(specs, |spec| {
            let (_, backend) = backends
                .iter()
                .find(|(id, _)| *id == spec.id)
                .expect("a backend was made for every spec");
            Arc::clone(backend)
        })?;
        Ok(())
    }

    /// Every memcached node in force (see [`set_nodes`](Self::set_nodes)),
    /// in configured order, and whether it answers as far as this instance
    /// knows (no I/O: the state the prober and the last operations left).
    pub fn nodes(&self) -> Vec<NodeStatus> {
        crate::cluster::node_statuses(&self.inner.store.nodes)
    }

    /// Orderly shutdown: stops the background tasks and writes every
    /// pending backup (waiting for each at most `operationTimeout`).
    /// Sessions are **kept** in memcached, so other instances, or this one
    /// after a restart, pick them up. Requests served afterwards still work
    /// but back up synchronously.
    pub async fn shutdown(&self) {
        self.inner.shut_down().await;
    }
}
