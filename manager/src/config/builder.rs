//! [`ConfigBuilder`]: MSM's settings, typed, with their defaults; every
//! value is checked in [`build`](ConfigBuilder::build). Settings by name
//! (text) are in [`settings`](crate::config::settings).

use std::sync::Arc;
use std::time::Duration;

use cookie::SameSite;
use http::HeaderName;
use http::header::{COOKIE, SET_COOKIE};

use crate::config::locking_mode::{LockFailure, LockingMode};
use crate::config::uri_pattern::UriPattern;
use crate::config::{Config, CookieConfig, MAX_KEY_PREFIX_LEN};
use crate::error::ConfigError;
use crate::session::id::MAX_ROUTE_LEN;
use crate::store::node;
use crate::store::seal::{Sealer, StorageKeyHasher};

impl Config {
    /// Starts a builder with the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }
}

/// Builds a [`Config`]. Methods only record values; [`build`](Self::build)
/// validates them all.
#[derive(Clone, Debug)]
#[must_use]
pub struct ConfigBuilder {
    memcached_nodes: Option<String>,
    failover_nodes: String,
    sticky: bool,
    enabled: bool,
    backup_async: bool,
    backup_timeout: Duration,
    operation_timeout: Duration,
    max_inactive_secs: i64,
    storage_key_prefix: String,
    ignore_pattern: Option<String>,
    route: Option<String>,
    cookie_enabled: bool,
    cookie_persistent: bool,
    id_header: Option<String>,
    max_session_size: usize,
    encryption_keys: Option<String>,
    storage_key_secret: Option<String>,
    cookie_name: String,
    cookie_path: String,
    cookie_domain: Option<String>,
    cookie_secure: bool,
    cookie_same_site: SameSite,
    locking_mode: String,
    lock_expiration: Duration,
    lock_failure: LockFailure,
    backup_queue_capacity: usize,
    backup_concurrency: usize,
    node_probe_interval: Duration,
    expiry_sweep_interval: Duration,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self {
            memcached_nodes: None,
            failover_nodes: String::new(),
            sticky: true,
            enabled: true,
            backup_async: true,
            backup_timeout: Config::DEFAULT_BACKUP_TIMEOUT,
            operation_timeout: Config::DEFAULT_OPERATION_TIMEOUT,
            max_inactive_secs: Config::DEFAULT_MAX_INACTIVE.as_secs() as i64,
            storage_key_prefix: String::new(),
            ignore_pattern: None,
            route: None,
            cookie_enabled: true,
            cookie_persistent: false,
            id_header: None,
            max_session_size: Config::DEFAULT_MAX_SESSION_SIZE,
            encryption_keys: None,
            storage_key_secret: None,
            cookie_name: Config::DEFAULT_COOKIE_NAME.to_owned(),
            cookie_path: "/".to_owned(),
            cookie_domain: None,
            cookie_secure: false,
            cookie_same_site: SameSite::Lax,
            locking_mode: "none".to_owned(),
            lock_expiration: Config::DEFAULT_LOCK_EXPIRATION,
            lock_failure: LockFailure::Fail,
            backup_queue_capacity: Config::DEFAULT_BACKUP_QUEUE_CAPACITY,
            backup_concurrency: Config::DEFAULT_BACKUP_CONCURRENCY,
            node_probe_interval: Config::DEFAULT_NODE_PROBE_INTERVAL,
            expiry_sweep_interval: Config::DEFAULT_EXPIRY_SWEEP_INTERVAL,
        }
    }
}

/// Printable ASCII without spaces: safe inside a memcached key.
fn is_key_safe(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_graphic())
}

/// `[A-Za-z0-9_-]`: no `.`, which separates the route in session ids.
fn is_route_safe(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The characters RFC 6265 allows in a cookie name (a token).
fn is_cookie_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

impl ConfigBuilder {
    /// `memcachedNodes`: `n1:host:port,n2:host:port` (comma or whitespace
    /// separated), or a single `host:port` (session ids then carry no node
    /// id). Not calling this selects the embedded in-process store.
    pub fn memcached_nodes(mut self, spec: impl Into<String>) -> Self {
        self.memcached_nodes = Some(spec.into());
        self
    }

    /// `failoverNodes`: ids of nodes used only when no other node is
    /// available (typically the memcached on the app's own host).
    pub fn failover_nodes(mut self, ids: impl Into<String>) -> Self {
        self.failover_nodes = ids.into();
        self
    }

    /// `sticky` (default `true`): the primary copy lives in this process.
    pub fn sticky(mut self, sticky: bool) -> Self {
        self.sticky = sticky;
        self
    }

    /// `enabled` (default `true`): `false` keeps sessions in this process
    /// only and never talks to memcached (sticky mode only).
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// `sessionBackupAsync` (default `true`): back up off the request path.
    pub fn session_backup_async(mut self, asynchronous: bool) -> Self {
        self.backup_async = asynchronous;
        self
    }

    /// `sessionBackupTimeout` (default 100 ms): how long a sync backup may
    /// delay the response.
    pub fn session_backup_timeout(mut self, timeout: Duration) -> Self {
        self.backup_timeout = timeout;
        self
    }

    /// `operationTimeout` (default 1000 ms): bound of every memcached operation.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// `maxInactiveInterval` in seconds (default 1800); 0 or negative means
    /// sessions never expire.
    pub fn max_inactive_interval_secs(mut self, secs: i64) -> Self {
        self.max_inactive_secs = secs;
        self
    }

    /// `storageKeyPrefix` (default empty): prepended to every memcached key,
    /// so several applications can share nodes.
    pub fn storage_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.storage_key_prefix = prefix.into();
        self
    }

    /// `requestUriIgnorePattern`: requests whose path matches never touch the
    /// session store (see [`UriPattern`] for exactly what is matched).
    pub fn request_uri_ignore_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.ignore_pattern = Some(pattern.into());
        self
    }

    /// This instance's route (Tomcat's `jvmRoute`), `[A-Za-z0-9_-]{1,64}`,
    /// appended to session ids as `.<route>` for sticky load balancing.
    pub fn route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// `cookieEnabled` (default `true`): `false` sends and accepts ids only
    /// in the [`session_id_header`](Self::session_id_header).
    pub fn cookie_enabled(mut self, enabled: bool) -> Self {
        self.cookie_enabled = enabled;
        self
    }

    /// `cookiePersistent` (default `false`): the cookie gets `Max-Age` =
    /// `maxInactiveInterval` (capped at 400 days, the browsers' limit),
    /// re-sent on every response of a request with a session, so cookie
    /// and memcached expiry slide together and never drift apart.
    pub fn cookie_persistent(mut self, persistent: bool) -> Self {
        self.cookie_persistent = persistent;
        self
    }

    /// `sessionIdHeader` (default none): a request header (e.g.
    /// `X-Session-Id`) that carries the session id for API and mobile
    /// clients, checked before the cookie; the response carries the id in
    /// the same header when it is new or changed (empty after invalidation).
    pub fn session_id_header(mut self, name: impl Into<String>) -> Self {
        self.id_header = Some(name.into());
        self
    }

    /// `maxSessionSize` in bytes (default 512 KiB, at most 1000 KiB): an
    /// `insert` that would make the serialized session larger fails with
    /// [`Error::SessionTooLarge`](crate::Error::SessionTooLarge).
    pub fn max_session_size(mut self, bytes: usize) -> Self {
        self.max_session_size = bytes;
        self
    }

    /// `sessionEncryptionKeys`: base64 keys of 32 random bytes (e.g.
    /// `openssl rand -base64 32`), comma separated. Every blob written to
    /// memcached is sealed (encrypted and authenticated, bound to its key)
    /// with the first key; every listed key opens. Rotate by putting a new
    /// key first and dropping the old one after the sessions' TTL.
    pub fn session_encryption_keys(mut self, keys: impl Into<String>) -> Self {
        self.encryption_keys = Some(keys.into());
        self
    }

    /// `storageKeySecret`: base64, at least 16 random bytes. Memcached keys
    /// then carry a keyed hash of the session id instead of the id, so a
    /// dump of memcached yields no usable cookie value (node id and route
    /// stay visible for routing). Changing the secret orphans every stored
    /// session: treat it as a long-lived secret.
    pub fn storage_key_secret(mut self, secret: impl Into<String>) -> Self {
        self.storage_key_secret = Some(secret.into());
        self
    }

    /// Cookie name (default `SESSIONID`). A `__Host-` name requires
    /// `cookieSecure`, path `/` and no domain; `__Secure-` requires `cookieSecure`.
    pub fn cookie_name(mut self, name: impl Into<String>) -> Self {
        self.cookie_name = name.into();
        self
    }

    /// Cookie `Path` (default `/`).
    pub fn cookie_path(mut self, path: impl Into<String>) -> Self {
        self.cookie_path = path.into();
        self
    }

    /// Cookie `Domain` (default none: host-only cookie).
    pub fn cookie_domain(mut self, domain: impl Into<String>) -> Self {
        self.cookie_domain = Some(domain.into());
        self
    }

    /// Cookie `Secure` flag (default `false`; set `true` in production behind TLS).
    pub fn cookie_secure(mut self, secure: bool) -> Self {
        self.cookie_secure = secure;
        self
    }

    /// Cookie `SameSite` (default `Lax`).
    pub fn cookie_same_site(mut self, same_site: SameSite) -> Self {
        self.cookie_same_site = same_site;
        self
    }

    /// `lockingMode` (non-sticky): `none`, `all`, `auto`, `uriPattern:<regex>`.
    pub fn locking_mode(mut self, mode: impl Into<String>) -> Self {
        self.locking_mode = mode.into();
        self
    }

    /// `lockExpiration` (default 5 s): TTL of a session lock.
    pub fn lock_expiration(mut self, ttl: Duration) -> Self {
        self.lock_expiration = ttl;
        self
    }

    /// `lockFailure` (non-sticky, default `fail`): what a request does when
    /// it cannot get its session's lock within `operationTimeout`.
    pub fn lock_failure(mut self, policy: LockFailure) -> Self {
        self.lock_failure = policy;
        self
    }

    /// Capacity of the async backup queue (default 10 000 sessions). A full
    /// queue defers backups (counted) instead of growing memory.
    pub fn backup_queue_capacity(mut self, capacity: usize) -> Self {
        self.backup_queue_capacity = capacity;
        self
    }

    /// Async backups in flight at once (default 32).
    pub fn backup_concurrency(mut self, concurrency: usize) -> Self {
        self.backup_concurrency = concurrency;
        self
    }

    /// Interval of the node availability probe (default 1 s).
    pub fn node_probe_interval(mut self, interval: Duration) -> Self {
        self.node_probe_interval = interval;
        self
    }

    /// Interval of the sweep that expires idle sessions from memory (default 10 s).
    pub fn expiry_sweep_interval(mut self, interval: Duration) -> Self {
        self.expiry_sweep_interval = interval;
        self
    }

    /// Validates every value.
    pub fn build(self) -> Result<Config, ConfigError> {
        let nodes = self
            .memcached_nodes
            .as_deref()
            .map(|spec| node::parse_nodes(spec, &self.failover_nodes))
            .transpose()?;
        if nodes.is_none() && !self.failover_nodes.trim().is_empty() {
            return Err(ConfigError::new(
                "failoverNodes",
                format!("{:?} given without memcachedNodes", self.failover_nodes),
            ));
        }
        if !self.sticky && !self.failover_nodes.trim().is_empty() {
            // Non-sticky mode keeps two copies on a ring of nodes and moves a
            // session only when its node is down: it has no rule for leaving
            // a live failover node, and no instance owns a session whose
            // "own host" node could be preferred (MSM forbids it as well).
            return Err(ConfigError::new(
                "failoverNodes",
                format!(
                    "{:?} is not supported with sticky=false (non-sticky sessions use every node alike); remove failoverNodes",
                    self.failover_nodes
                ),
            ));
        }
        if self.operation_timeout.is_zero() {
            return Err(ConfigError::new("operationTimeout", "\"0\" must be at least 1 ms"));
        }
        if self.backup_timeout.is_zero() {
            return Err(ConfigError::new("sessionBackupTimeout", "\"0\" must be at least 1 ms"));
        }
        if self.lock_expiration < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "lockExpiration",
                format!(
                    "\"{}\" ms is below memcached's 1 s TTL resolution",
                    self.lock_expiration.as_millis()
                ),
            ));
        }
        if !self.sticky && !self.enabled {
            return Err(ConfigError::new(
                "enabled",
                "\"false\" is only possible in sticky mode (non-sticky sessions live in memcached)",
            ));
        }
        let max_inactive = u64::try_from(self.max_inactive_secs)
            .ok()
            .filter(|secs| *secs > 0)
            .map(Duration::from_secs);
        let prefix = self.storage_key_prefix;
        if prefix.len() > MAX_KEY_PREFIX_LEN || !is_key_safe(&prefix) {
            return Err(ConfigError::new(
                "storageKeyPrefix",
                format!("{prefix:?} must be at most {MAX_KEY_PREFIX_LEN} printable ASCII characters without spaces"),
            ));
        }
        let ignore_pattern = self
            .ignore_pattern
            .as_deref()
            .filter(|p| !p.is_empty())
            .map(|p| UriPattern::parse("requestUriIgnorePattern", p))
            .transpose()?;
        let route = self.route.filter(|r| !r.is_empty());
        if let Some(route) = &route {
            if route.len() > MAX_ROUTE_LEN || !is_route_safe(route) {
                return Err(ConfigError::new(
                    "route",
                    format!("{route:?} must be 1-{MAX_ROUTE_LEN} characters of [A-Za-z0-9_-]"),
                ));
            }
        }
        if !is_cookie_name(&self.cookie_name) {
            return Err(ConfigError::new(
                "cookieName",
                format!("{:?} is not a valid cookie name", self.cookie_name),
            ));
        }
        if !self.cookie_path.starts_with('/') || !self.cookie_path.bytes().all(|b| b.is_ascii_graphic() && b != b';') {
            return Err(ConfigError::new(
                "cookiePath",
                format!("{:?} must start with / and contain no spaces or ';'", self.cookie_path),
            ));
        }
        if let Some(domain) = &self.cookie_domain {
            if domain.is_empty()
                || !domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            {
                return Err(ConfigError::new(
                    "cookieDomain",
                    format!("{domain:?} is not a domain name"),
                ));
            }
        }
        if self.cookie_same_site == SameSite::None && !self.cookie_secure {
            return Err(ConfigError::new(
                "cookieSameSite",
                "\"None\" requires cookieSecure=true (browsers drop such cookies otherwise)",
            ));
        }
        if self.cookie_name.starts_with("__Host-")
            && (!self.cookie_secure || self.cookie_path != "/" || self.cookie_domain.is_some())
        {
            return Err(ConfigError::new(
                "cookieName",
                format!(
                    "{:?}: a __Host- cookie requires cookieSecure=true, cookiePath=/ and no cookieDomain",
                    self.cookie_name
                ),
            ));
        }
        if self.cookie_name.starts_with("__Secure-") && !self.cookie_secure {
            return Err(ConfigError::new(
                "cookieName",
                format!("{:?}: a __Secure- cookie requires cookieSecure=true", self.cookie_name),
            ));
        }
        let id_header = self
            .id_header
            .as_deref()
            .filter(|h| !h.is_empty())
            .map(|name| {
                HeaderName::from_bytes(name.as_bytes())
                    .ok()
                    .filter(|h| *h != COOKIE && *h != SET_COOKIE)
                    .ok_or_else(|| ConfigError::new("sessionIdHeader", format!("{name:?} is not a usable header name")))
            })
            .transpose()?;
        if !self.cookie_enabled && id_header.is_none() {
            return Err(ConfigError::new(
                "cookieEnabled",
                "\"false\" needs a sessionIdHeader, or ids could not travel at all",
            ));
        }
        if self.max_session_size < 1024 || self.max_session_size > Config::MAX_SESSION_SIZE_LIMIT {
            return Err(ConfigError::new(
                "maxSessionSize",
                format!(
                    "\"{}\" must be between 1024 and {} bytes",
                    self.max_session_size,
                    Config::MAX_SESSION_SIZE_LIMIT
                ),
            ));
        }
        let sealer = self
            .encryption_keys
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .map(|keys| Sealer::parse(keys).map(Arc::new))
            .transpose()?;
        let key_hasher = self
            .storage_key_secret
            .as_deref()
            .filter(|k| !k.trim().is_empty())
            .map(|secret| StorageKeyHasher::parse(secret).map(Arc::new))
            .transpose()?;
        let locking_mode = LockingMode::parse(&self.locking_mode)?;
        if self.backup_queue_capacity == 0 {
            return Err(ConfigError::new("backupQueueCapacity", "\"0\" must be at least 1"));
        }
        if self.backup_concurrency == 0 {
            return Err(ConfigError::new("backupConcurrency", "\"0\" must be at least 1"));
        }
        if self.node_probe_interval.is_zero() || self.expiry_sweep_interval.is_zero() {
            return Err(ConfigError::new("probe/sweep interval", "\"0\" must be at least 1 ms"));
        }
        Ok(Config {
            nodes,
            sticky: self.sticky,
            enabled: self.enabled,
            backup_async: self.backup_async,
            backup_timeout: self.backup_timeout,
            operation_timeout: self.operation_timeout,
            max_inactive,
            storage_key_prefix: prefix,
            ignore_pattern,
            route,
            id_header,
            max_session_size: self.max_session_size,
            sealer,
            key_hasher,
            cookie: CookieConfig {
                enabled: self.cookie_enabled,
                persistent: self.cookie_persistent,
                name: self.cookie_name,
                path: self.cookie_path,
                domain: self.cookie_domain,
                secure: self.cookie_secure,
                same_site: self.cookie_same_site,
            },
            locking_mode,
            lock_expiration: self.lock_expiration,
            lock_failure: self.lock_failure,
            backup_queue_capacity: self.backup_queue_capacity,
            backup_concurrency: self.backup_concurrency,
            node_probe_interval: self.node_probe_interval,
            expiry_sweep_interval: self.expiry_sweep_interval,
        })
    }
}
