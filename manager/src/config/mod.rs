//! Configuration: a builder with MSM's settings and defaults, validated once
//! in [`ConfigBuilder::build`].
//!
//! Every setting can be given typed (`.sticky(true)`) or as text by its MSM
//! name (`.set("sticky", "true")`), which is what configuration files and
//! environment variables produce. Every bad value is a [`ConfigError`] that
//! names the setting and quotes the text.

use std::sync::Arc;
use std::time::Duration;

use cookie::SameSite;
use http::HeaderName;

pub(crate) mod builder;
pub(crate) mod locking_mode;
pub(crate) mod settings;
#[cfg(test)]
mod tests;
pub(crate) mod uri_pattern;

use crate::config::locking_mode::{LockFailure, LockingMode};
use crate::config::uri_pattern::UriPattern;
use crate::store::node::NodeSpec;
use crate::store::seal::{Sealer, StorageKeyHasher};

/// Longest accepted `storageKeyPrefix`, so that every key stays far below
/// memcached's 250-byte limit.
pub(crate) const MAX_KEY_PREFIX_LEN: usize = 64;

/// Validated configuration of a [`SessionManager`](crate::SessionManager).
#[derive(Clone, Debug)]
pub struct Config {
    /// `None`: the embedded in-process store (no memcached).
    pub(crate) nodes: Option<Vec<NodeSpec>>,
    pub(crate) sticky: bool,
    pub(crate) enabled: bool,
    pub(crate) backup_async: bool,
    pub(crate) backup_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    /// `None`: sessions never expire from inactivity.
    pub(crate) max_inactive: Option<Duration>,
    pub(crate) storage_key_prefix: String,
    pub(crate) ignore_pattern: Option<UriPattern>,
    pub(crate) route: Option<String>,
    pub(crate) cookie: CookieConfig,
    /// Header carrying the session id besides (or instead of) the cookie.
    pub(crate) id_header: Option<HeaderName>,
    pub(crate) max_session_size: usize,
    /// Seals every blob written to memcached (`sessionEncryptionKeys`).
    pub(crate) sealer: Option<Arc<Sealer>>,
    /// Hashes session ids into memcached keys (`storageKeySecret`).
    pub(crate) key_hasher: Option<Arc<StorageKeyHasher>>,
    pub(crate) locking_mode: LockingMode,
    pub(crate) lock_expiration: Duration,
    pub(crate) lock_failure: LockFailure,
    pub(crate) backup_queue_capacity: usize,
    pub(crate) backup_concurrency: usize,
    pub(crate) node_probe_interval: Duration,
    pub(crate) expiry_sweep_interval: Duration,
}

/// How the session cookie is written. `HttpOnly` is always set.
#[derive(Clone, Debug)]
pub(crate) struct CookieConfig {
    /// `false`: ids travel only in the session id header.
    pub(crate) enabled: bool,
    /// Send `Max-Age` (the inactivity interval), refreshed on every response.
    pub(crate) persistent: bool,
    pub(crate) name: String,
    pub(crate) path: String,
    pub(crate) domain: Option<String>,
    pub(crate) secure: bool,
    pub(crate) same_site: SameSite,
}

impl Config {
    /// Default `sessionBackupTimeout`: how long a sync backup may delay a response.
    pub const DEFAULT_BACKUP_TIMEOUT: Duration = Duration::from_millis(100);
    /// Default `operationTimeout`: the bound of every memcached operation.
    pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_millis(1000);
    /// Default `maxInactiveInterval`: 30 minutes.
    pub const DEFAULT_MAX_INACTIVE: Duration = Duration::from_secs(1800);
    /// Default `lockExpiration` (non-sticky locking).
    pub const DEFAULT_LOCK_EXPIRATION: Duration = Duration::from_secs(5);
    /// Default cookie name.
    pub const DEFAULT_COOKIE_NAME: &'static str = "SESSIONID";
    /// Default `maxSessionSize`: well below memcached's 1 MB item limit.
    pub const DEFAULT_MAX_SESSION_SIZE: usize = 512 * 1024;
    /// Largest accepted `maxSessionSize` (memcached's default item limit
    /// is 1 MiB, keys and item overhead included).
    pub const MAX_SESSION_SIZE_LIMIT: usize = 1000 * 1024;
    /// Default number of sessions that may wait for an async backup.
    pub const DEFAULT_BACKUP_QUEUE_CAPACITY: usize = 10_000;
    /// Default number of async backups in flight at once.
    pub const DEFAULT_BACKUP_CONCURRENCY: usize = 32;
    /// Default interval of the node availability probe (MSM's cache TTL).
    pub const DEFAULT_NODE_PROBE_INTERVAL: Duration = Duration::from_secs(1);
    /// Default interval of the local expiry sweep.
    pub const DEFAULT_EXPIRY_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

    /// The configured nodes; `None` for the embedded in-process store.
    pub fn nodes(&self) -> Option<&[NodeSpec]> {
        self.nodes.as_deref()
    }

    /// The nodes to run on: the configured ones, the embedded store's
    /// pseudo node when none is configured, none when `enabled` is false.
    pub(crate) fn node_specs(&self) -> Vec<NodeSpec> {
        if !self.enabled {
            return Vec::new();
        }
        self.nodes()
            .map_or_else(|| vec![NodeSpec::embedded()], <[NodeSpec]>::to_vec)
    }

    /// Sticky (primary copy in process) or non-sticky mode.
    pub fn sticky(&self) -> bool {
        self.sticky
    }

    /// This instance's route (Tomcat's `jvmRoute`), appended to session ids.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// The inactivity timeout; `None` means sessions never expire.
    pub fn max_inactive_interval(&self) -> Option<Duration> {
        self.max_inactive
    }

    /// The bound of every memcached operation.
    pub fn operation_timeout(&self) -> Duration {
        self.operation_timeout
    }

    /// The locking mode (non-sticky mode).
    pub fn locking_mode(&self) -> &LockingMode {
        &self.locking_mode
    }

    /// TTL of a session lock (non-sticky mode).
    pub fn lock_expiration(&self) -> Duration {
        self.lock_expiration
    }

    /// What a non-sticky request does when its lock cannot be had.
    pub fn lock_failure(&self) -> LockFailure {
        self.lock_failure
    }

    /// The session cookie's name.
    pub fn cookie_name(&self) -> &str {
        &self.cookie.name
    }
}
