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
use http::header::{COOKIE, SET_COOKIE};

pub(crate) mod locking_mode;
pub(crate) mod uri_pattern;

use crate::config::locking_mode::{LockFailure, LockingMode};
use crate::config::uri_pattern::UriPattern;
use crate::error::ConfigError;
use crate::session::id::MAX_ROUTE_LEN;
use crate::store::node::{self, NodeSpec};
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

    /// Starts a builder with the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// The configured nodes; `None` for the embedded in-process store.
    pub fn nodes(&self) -> Option<&[NodeSpec]> {
        self.nodes.as_deref()
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

fn parse_bool(setting: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ConfigError::new(setting, format!("{value:?} is not true or false"))),
    }
}

fn parse_int<T: std::str::FromStr>(setting: &'static str, value: &str, what: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError::new(setting, format!("{value:?} is not {what}")))
}

fn parse_millis(setting: &'static str, value: &str) -> Result<Duration, ConfigError> {
    parse_int::<u64>(setting, value, "a whole number of milliseconds").map(Duration::from_millis)
}

fn parse_same_site(value: &str) -> Result<SameSite, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "lax" => Ok(SameSite::Lax),
        "strict" => Ok(SameSite::Strict),
        "none" => Ok(SameSite::None),
        _ => Err(ConfigError::new(
            "cookieSameSite",
            format!("{value:?} is not Lax, Strict or None"),
        )),
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

    /// Sets one setting by its MSM name from text, as found in a properties
    /// file or an environment variable. Durations are whole milliseconds,
    /// except `maxInactiveInterval` (seconds).
    ///
    /// ```
    /// # use memcached_sessions::Config;
    /// let config = Config::builder()
    ///     .set("memcachedNodes", "n1:127.0.0.1:11211 n2:127.0.0.1:11212")?
    ///     .set("failoverNodes", "n2")?
    ///     .set("operationTimeout", "500")?
    ///     .build()?;
    /// assert_eq!(config.operation_timeout().as_millis(), 500);
    /// assert!(Config::builder().set("sticky", "yes").is_err());
    /// # Ok::<(), memcached_sessions::ConfigError>(())
    /// ```
    pub fn set(self, name: &str, value: &str) -> Result<Self, ConfigError> {
        Ok(match name {
            "memcachedNodes" => self.memcached_nodes(value),
            "failoverNodes" => self.failover_nodes(value),
            "sticky" => self.sticky(parse_bool("sticky", value)?),
            "enabled" => self.enabled(parse_bool("enabled", value)?),
            "sessionBackupAsync" => self.session_backup_async(parse_bool("sessionBackupAsync", value)?),
            "sessionBackupTimeout" => self.session_backup_timeout(parse_millis("sessionBackupTimeout", value)?),
            "operationTimeout" => self.operation_timeout(parse_millis("operationTimeout", value)?),
            "maxInactiveInterval" => {
                self.max_inactive_interval_secs(parse_int("maxInactiveInterval", value, "a whole number of seconds")?)
            }
            "storageKeyPrefix" => self.storage_key_prefix(value),
            "requestUriIgnorePattern" => self.request_uri_ignore_pattern(value),
            "route" | "jvmRoute" => self.route(value),
            "cookieName" => self.cookie_name(value),
            "cookieEnabled" => self.cookie_enabled(parse_bool("cookieEnabled", value)?),
            "cookiePersistent" => self.cookie_persistent(parse_bool("cookiePersistent", value)?),
            "sessionIdHeader" => self.session_id_header(value),
            "sessionEncryptionKeys" => self.session_encryption_keys(value),
            "storageKeySecret" => self.storage_key_secret(value),
            "maxSessionSize" => self.max_session_size(parse_int("maxSessionSize", value, "a whole number of bytes")?),
            "cookiePath" => self.cookie_path(value),
            "cookieDomain" => self.cookie_domain(value),
            "cookieSecure" => self.cookie_secure(parse_bool("cookieSecure", value)?),
            "cookieSameSite" => self.cookie_same_site(parse_same_site(value)?),
            "lockingMode" => self.locking_mode(value),
            "lockExpiration" => self.lock_expiration(parse_millis("lockExpiration", value)?),
            "lockFailure" => self.lock_failure(LockFailure::parse(value)?),
            _ => {
                return Err(ConfigError::new("config", format!("{name:?} is not a known setting")));
            }
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_msm() {
        let config = Config::builder().build().unwrap();
        assert!(config.sticky);
        assert!(config.backup_async);
        assert_eq!(config.backup_timeout, Duration::from_millis(100));
        assert_eq!(config.operation_timeout, Duration::from_millis(1000));
        assert_eq!(config.max_inactive, Some(Duration::from_secs(1800)));
        assert!(config.nodes.is_none(), "no memcachedNodes = embedded store");
        assert_eq!(config.cookie.same_site, SameSite::Lax);
    }

    #[test]
    fn zero_or_negative_max_inactive_means_never() {
        for secs in ["0", "-1"] {
            let config = Config::builder()
                .set("maxInactiveInterval", secs)
                .unwrap()
                .build()
                .unwrap();
            assert_eq!(config.max_inactive, None);
        }
    }

    #[test]
    fn text_settings_name_the_setting_and_quote_the_value() {
        let cases = [
            ("sticky", "yes", r#"sticky: "yes" is not true or false"#),
            (
                "operationTimeout",
                "1s",
                r#"operationTimeout: "1s" is not a whole number of milliseconds"#,
            ),
            (
                "maxInactiveInterval",
                "ten",
                r#"maxInactiveInterval: "ten" is not a whole number of seconds"#,
            ),
            (
                "cookieSameSite",
                "loose",
                r#"cookieSameSite: "loose" is not Lax, Strict or None"#,
            ),
        ];
        for (name, value, expected) in cases {
            assert_eq!(Config::builder().set(name, value).unwrap_err().to_string(), expected);
        }
        assert!(Config::builder().set("nope", "1").is_err());
    }

    #[test]
    fn build_rejects_bad_values() {
        let cases: Vec<(ConfigBuilder, &str)> = vec![
            (Config::builder().memcached_nodes("n1:host"), "memcachedNodes"),
            (Config::builder().failover_nodes("n1"), "failoverNodes"),
            (Config::builder().route("a.b"), "route"),
            (Config::builder().storage_key_prefix("has space"), "storageKeyPrefix"),
            (Config::builder().storage_key_prefix("x".repeat(65)), "storageKeyPrefix"),
            (
                Config::builder().request_uri_ignore_pattern("(("),
                "requestUriIgnorePattern",
            ),
            (Config::builder().cookie_name("bad name"), "cookieName"),
            (Config::builder().cookie_path("nope"), "cookiePath"),
            (Config::builder().locking_mode("maybe"), "lockingMode"),
            (Config::builder().operation_timeout(Duration::ZERO), "operationTimeout"),
            (
                Config::builder().lock_expiration(Duration::from_millis(10)),
                "lockExpiration",
            ),
            (Config::builder().cookie_same_site(SameSite::None), "cookieSameSite"),
            (Config::builder().sticky(false).enabled(false), "enabled"),
            (Config::builder().cookie_name("__Host-id"), "cookieName"),
            (
                Config::builder()
                    .cookie_name("__Host-id")
                    .cookie_secure(true)
                    .cookie_path("/a"),
                "cookieName",
            ),
            (Config::builder().cookie_name("__Secure-id"), "cookieName"),
            (Config::builder().session_id_header("bad header"), "sessionIdHeader"),
            (Config::builder().session_id_header("cookie"), "sessionIdHeader"),
            (Config::builder().cookie_enabled(false), "cookieEnabled"),
            (Config::builder().max_session_size(10), "maxSessionSize"),
            (Config::builder().max_session_size(2 << 20), "maxSessionSize"),
        ];
        for (builder, setting) in cases {
            assert_eq!(builder.build().unwrap_err().setting(), setting);
        }
    }

    #[test]
    fn secure_cookie_prefixes_and_header_ids_are_accepted_when_consistent() {
        let config = Config::builder()
            .cookie_name("__Host-sid")
            .cookie_secure(true)
            .session_id_header("X-Session-Id")
            .cookie_enabled(false)
            .build()
            .unwrap();
        assert_eq!(config.id_header.unwrap().as_str(), "x-session-id");
    }

    #[test]
    fn empty_route_and_pattern_mean_unset() {
        let config = Config::builder()
            .route("")
            .request_uri_ignore_pattern("")
            .build()
            .unwrap();
        assert_eq!(config.route, None);
        assert!(config.ignore_pattern.is_none());
    }

    const SETTINGS: [&str; 24] = [
        "memcachedNodes",
        "failoverNodes",
        "sticky",
        "enabled",
        "sessionBackupAsync",
        "sessionBackupTimeout",
        "operationTimeout",
        "maxInactiveInterval",
        "storageKeyPrefix",
        "requestUriIgnorePattern",
        "route",
        "cookieName",
        "cookiePath",
        "cookieDomain",
        "cookieSecure",
        "cookieSameSite",
        "lockingMode",
        "lockExpiration",
        "lockFailure",
        "cookieEnabled",
        "cookiePersistent",
        "sessionIdHeader",
        "sessionEncryptionKeys",
        "maxSessionSize",
    ];

    proptest::proptest! {
        #[test]
        fn any_text_for_any_setting_is_a_value_or_a_named_error(index in 0..SETTINGS.len(), value in ".{0,80}") {
            let name = SETTINGS[index];
            match Config::builder().set(name, &value).and_then(ConfigBuilder::build) {
                Ok(_) => {}
                Err(error) => proptest::prop_assert!(!error.setting().is_empty()),
            }
        }
    }
}
