//! Every setting, defined once: its name for [`ConfigBuilder::set`] (MSM's
//! name where MSM has the setting), its builder method, its default and
//! what it means. The table drives `set`; a test renders it and checks the
//! README's configuration table against it, another feeds every setting
//! arbitrary text, so the three cannot drift apart.

use std::time::Duration;

use cookie::SameSite;

use crate::config::builder::ConfigBuilder;
use crate::config::locking_mode::LockFailure;
use crate::error::ConfigError;

/// One setting. Outside `set`, only the tests read it (they render the
/// README's table from it).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) struct Setting {
    /// The name `set` takes (MSM's, where MSM has the setting).
    pub(crate) name: &'static str,
    /// Other names `set` accepts for it.
    pub(crate) aliases: &'static [&'static str],
    /// Where the setting comes from.
    pub(crate) origin: Origin,
    /// The [`ConfigBuilder`] method that sets it typed.
    pub(crate) method: &'static str,
    /// The default, as documented.
    pub(crate) default: &'static str,
    /// The text `set` takes for the default; `None` when the default is
    /// "not set".
    pub(crate) default_text: Option<&'static str>,
    /// What it does (one README table cell, Markdown).
    pub(crate) meaning: &'static str,
    /// Sets it from text, or says why the text is not a value.
    pub(crate) apply: fn(ConfigBuilder, &str) -> Result<ConfigBuilder, ConfigError>,
}

/// Where a setting comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// An attribute of MSM's manager.
    Msm,
    /// A Tomcat setting MSM relies on (context, connector, engine).
    Tomcat,
    /// This crate's own.
    ThisCrate,
}

#[cfg_attr(not(test), allow(dead_code))]
impl Origin {
    /// As the README's table says it.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Msm => "MSM",
            Self::Tomcat => "Tomcat",
            Self::ThisCrate => "—",
        }
    }
}

/// The settings, in the README's order.
pub(crate) const SETTINGS: &[Setting] = &[
    Setting {
        name: "memcachedNodes",
        aliases: &[],
        origin: Origin::Msm,
        method: "memcached_nodes",
        default: "none → embedded in-process store",
        default_text: None,
        meaning: "`n1:host:port,n2:host:port` (comma or whitespace separated; IPv6 as `n1:[::1]:11211`). A single `host:port` without id: ids carry no node id.",
        apply: |builder, value| Ok(builder.memcached_nodes(value)),
    },
    Setting {
        name: "failoverNodes",
        aliases: &[],
        origin: Origin::Msm,
        method: "failover_nodes",
        default: "none",
        default_text: Some(""),
        meaning: "Sticky mode only: node ids used only when no regular node is available (e.g. the memcached on the app's own host). Must exist; not all nodes; not with a single node; refused with `sticky=false` (as in MSM).",
        apply: |builder, value| Ok(builder.failover_nodes(value)),
    },
    Setting {
        name: "sticky",
        aliases: &[],
        origin: Origin::Msm,
        method: "sticky",
        default: "`true`",
        default_text: Some("true"),
        meaning: "Primary copy in process.",
        apply: |builder, value| Ok(builder.sticky(parse_bool("sticky", value)?)),
    },
    Setting {
        name: "sessionBackupAsync",
        aliases: &[],
        origin: Origin::Msm,
        method: "session_backup_async",
        default: "`true`",
        default_text: Some("true"),
        meaning: "Back up off the request path (bounded queue) or wait for it.",
        apply: |builder, value| Ok(builder.session_backup_async(parse_bool("sessionBackupAsync", value)?)),
    },
    Setting {
        name: "sessionBackupTimeout",
        aliases: &[],
        origin: Origin::Msm,
        method: "session_backup_timeout",
        default: "100 ms",
        default_text: Some("100"),
        meaning: "How long a sync backup may delay the response.",
        apply: |builder, value| Ok(builder.session_backup_timeout(parse_millis("sessionBackupTimeout", value)?)),
    },
    Setting {
        name: "operationTimeout",
        aliases: &[],
        origin: Origin::Msm,
        method: "operation_timeout",
        default: "1000 ms",
        default_text: Some("1000"),
        meaning: "Bound of every memcached operation.",
        apply: |builder, value| Ok(builder.operation_timeout(parse_millis("operationTimeout", value)?)),
    },
    Setting {
        name: "maxInactiveInterval",
        aliases: &[],
        origin: Origin::Tomcat,
        method: "max_inactive_interval_secs",
        default: "1800 s",
        default_text: Some("1800"),
        meaning: "Inactivity timeout; `0` or negative: never expires.",
        apply: |builder, value| {
            let secs = parse_int("maxInactiveInterval", value, "a whole number of seconds")?;
            Ok(builder.max_inactive_interval_secs(secs))
        },
    },
    Setting {
        name: "storageKeyPrefix",
        aliases: &[],
        origin: Origin::Msm,
        method: "storage_key_prefix",
        default: "empty",
        default_text: Some(""),
        meaning: "Prepended to every memcached key (≤ 64 printable ASCII, no spaces).",
        apply: |builder, value| Ok(builder.storage_key_prefix(value)),
    },
    Setting {
        name: "requestUriIgnorePattern",
        aliases: &[],
        origin: Origin::Msm,
        method: "request_uri_ignore_pattern",
        default: "none",
        default_text: None,
        meaning: "Requests whose path matches never touch memcached (see below).",
        apply: |builder, value| Ok(builder.request_uri_ignore_pattern(value)),
    },
    Setting {
        name: "route",
        aliases: &["jvmRoute"],
        origin: Origin::Tomcat,
        method: "route",
        default: "none",
        default_text: None,
        meaning: "This instance's name `[A-Za-z0-9_-]{1,64}`, appended to ids as `.route`.",
        apply: |builder, value| Ok(builder.route(value)),
    },
    Setting {
        name: "cookieName",
        aliases: &[],
        origin: Origin::Tomcat,
        method: "cookie_name",
        default: "`SESSIONID`",
        default_text: Some("SESSIONID"),
        meaning: "Session cookie name; `__Host-` (needs `cookieSecure`, path `/`, no domain) and `__Secure-` prefixes are checked.",
        apply: |builder, value| Ok(builder.cookie_name(value)),
    },
    Setting {
        name: "cookiePath",
        aliases: &[],
        origin: Origin::Tomcat,
        method: "cookie_path",
        default: "`/`",
        default_text: Some("/"),
        meaning: "Cookie `Path`.",
        apply: |builder, value| Ok(builder.cookie_path(value)),
    },
    Setting {
        name: "cookieDomain",
        aliases: &[],
        origin: Origin::Tomcat,
        method: "cookie_domain",
        default: "none",
        default_text: None,
        meaning: "Cookie `Domain`.",
        apply: |builder, value| Ok(builder.cookie_domain(value)),
    },
    Setting {
        name: "cookieSecure",
        aliases: &[],
        origin: Origin::Tomcat,
        method: "cookie_secure",
        default: "`false`",
        default_text: Some("false"),
        meaning: "Cookie `Secure`; set `true` in production behind TLS.",
        apply: |builder, value| Ok(builder.cookie_secure(parse_bool("cookieSecure", value)?)),
    },
    Setting {
        name: "cookieSameSite",
        aliases: &[],
        origin: Origin::Tomcat,
        method: "cookie_same_site",
        default: "`Lax`",
        default_text: Some("Lax"),
        meaning: "`Lax`, `Strict` or `None` (`None` requires `cookieSecure`).",
        apply: |builder, value| Ok(builder.cookie_same_site(parse_same_site(value)?)),
    },
    Setting {
        name: "enabled",
        aliases: &[],
        origin: Origin::Msm,
        method: "enabled",
        default: "`true`",
        default_text: Some("true"),
        meaning: "`false`: sessions only in process, no memcached (sticky only).",
        apply: |builder, value| Ok(builder.enabled(parse_bool("enabled", value)?)),
    },
    Setting {
        name: "lockingMode",
        aliases: &[],
        origin: Origin::Msm,
        method: "locking_mode",
        default: "`none`",
        default_text: Some("none"),
        meaning: "Non-sticky mode: `none`, `all`, `auto` (learns per route: method + path with id-like segments as `{}`, see [below](#sticky-or-non-sticky)), `uriPattern:REGEX`.",
        apply: |builder, value| Ok(builder.locking_mode(value)),
    },
    Setting {
        name: "lockExpiration",
        aliases: &[],
        origin: Origin::Msm,
        method: "lock_expiration",
        default: "5 s",
        default_text: Some("5000"),
        meaning: "Non-sticky mode: TTL of a session lock (renewed while held).",
        apply: |builder, value| Ok(builder.lock_expiration(parse_millis("lockExpiration", value)?)),
    },
    Setting {
        name: "lockFailure",
        aliases: &[],
        origin: Origin::ThisCrate,
        method: "lock_failure",
        default: "`fail`",
        default_text: Some("fail"),
        meaning: "Non-sticky mode: `fail` (503, nothing saved) or `proceed` (unlocked, warning) when the lock cannot be had.",
        apply: |builder, value| Ok(builder.lock_failure(LockFailure::parse(value)?)),
    },
    Setting {
        name: "maxSessionSize",
        aliases: &[],
        origin: Origin::ThisCrate,
        method: "max_session_size",
        default: "512 KiB",
        default_text: Some("524288"),
        meaning: "Largest serialized session; a bigger `insert` fails with `Error::SessionTooLarge`.",
        apply: |builder, value| {
            let bytes = parse_int("maxSessionSize", value, "a whole number of bytes")?;
            Ok(builder.max_session_size(bytes))
        },
    },
    Setting {
        name: "sessionEncryptionKeys",
        aliases: &[],
        origin: Origin::ThisCrate,
        method: "session_encryption_keys",
        default: "none",
        default_text: None,
        meaning: "Base64 32-byte keys: seal (encrypt + authenticate) every stored session; first seals, all open. See [Security](#security).",
        apply: |builder, value| Ok(builder.session_encryption_keys(value)),
    },
    Setting {
        name: "storageKeySecret",
        aliases: &[],
        origin: Origin::ThisCrate,
        method: "storage_key_secret",
        default: "none",
        default_text: None,
        meaning: "Base64 ≥ 16 bytes: memcached keys carry an HMAC of the id instead of the id.",
        apply: |builder, value| Ok(builder.storage_key_secret(value)),
    },
    Setting {
        name: "sessionIdHeader",
        aliases: &[],
        origin: Origin::ThisCrate,
        method: "session_id_header",
        default: "none",
        default_text: None,
        meaning: "Header carrying the id for API clients (e.g. `X-Session-Id`).",
        apply: |builder, value| Ok(builder.session_id_header(value)),
    },
    Setting {
        name: "cookieEnabled",
        aliases: &[],
        origin: Origin::ThisCrate,
        method: "cookie_enabled",
        default: "`true`",
        default_text: Some("true"),
        meaning: "`false`: ids travel only in `sessionIdHeader`.",
        apply: |builder, value| Ok(builder.cookie_enabled(parse_bool("cookieEnabled", value)?)),
    },
    Setting {
        name: "cookiePersistent",
        aliases: &[],
        origin: Origin::ThisCrate,
        method: "cookie_persistent",
        default: "`false`",
        default_text: Some("false"),
        meaning: "Send `Max-Age` = `maxInactiveInterval`, refreshed on every response with a session.",
        apply: |builder, value| Ok(builder.cookie_persistent(parse_bool("cookiePersistent", value)?)),
    },
    Setting {
        name: "backupQueueCapacity",
        aliases: &[],
        origin: Origin::ThisCrate,
        method: "backup_queue_capacity",
        default: "10 000",
        default_text: Some("10000"),
        meaning: "Sessions that may wait for an async backup; beyond that backups are dropped (counted) and retried by the session's next request.",
        apply: |builder, value| {
            let capacity = parse_int("backupQueueCapacity", value, "a whole number of sessions")?;
            Ok(builder.backup_queue_capacity(capacity))
        },
    },
    Setting {
        name: "backupConcurrency",
        aliases: &[],
        origin: Origin::ThisCrate,
        method: "backup_concurrency",
        default: "32",
        default_text: Some("32"),
        meaning: "Async backups in flight at once.",
        apply: |builder, value| {
            let concurrency = parse_int("backupConcurrency", value, "a whole number of backups")?;
            Ok(builder.backup_concurrency(concurrency))
        },
    },
    Setting {
        name: "nodeProbeInterval",
        aliases: &[],
        origin: Origin::ThisCrate,
        method: "node_probe_interval",
        default: "1 s",
        default_text: Some("1000"),
        meaning: "Node availability probe (MSM's 1 s availability cache).",
        apply: |builder, value| Ok(builder.node_probe_interval(parse_millis("nodeProbeInterval", value)?)),
    },
    Setting {
        name: "expirySweepInterval",
        aliases: &[],
        origin: Origin::ThisCrate,
        method: "expiry_sweep_interval",
        default: "10 s",
        default_text: Some("10000"),
        meaning: "How often idle sessions are expired from memory.",
        apply: |builder, value| Ok(builder.expiry_sweep_interval(parse_millis("expirySweepInterval", value)?)),
    },
];

/// The README's configuration table, rendered from [`SETTINGS`].
#[cfg(test)]
pub(crate) fn markdown_table() -> String {
    let mut table = String::from(
        "| setting (name for `set`) | from | builder method | default | meaning |\n|---|---|---|---|---|\n",
    );
    for setting in SETTINGS {
        let mut names = format!("`{}`", setting.name);
        for alias in setting.aliases {
            names.push_str(&format!(" / `{alias}`"));
        }
        table.push_str(&format!(
            "| {names} | {} | `{}` | {} | {} |\n",
            setting.origin.label(),
            setting.method,
            setting.default,
            setting.meaning
        ));
    }
    table
}

impl ConfigBuilder {
    /// Sets one setting by its name from text, as found in a properties
    /// file or an environment variable (the names are MSM's, plus this
    /// crate's own; the README's configuration table lists them all).
    /// Durations are whole milliseconds, except `maxInactiveInterval`
    /// (seconds).
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
        let setting = SETTINGS
            .iter()
            .find(|s| s.name == name || s.aliases.contains(&name))
            .ok_or_else(|| ConfigError::new("config", format!("{name:?} is not a known setting")))?;
        (setting.apply)(self, value)
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
