//! Demo web app for `memcached-sessions`: a session counter, login and
//! logout, statistics and a small HTML page. Run several instances against
//! the same memcached nodes to watch failover.
//!
//! Every flag can also be given as an environment variable in
//! SCREAMING_SNAKE_CASE (`--memcached-nodes` ↔ `MEMCACHED_NODES`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use memcached_sessions::{Config, ConfigError, LockFailure, SessionManager};
use tokio::net::TcpListener;

mod axum_app;
mod handlers;
mod metrics;
mod warp_app;

/// Which web framework serves the routes (the same routes, statuses and
/// JSON either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Framework {
    /// warp, through `SessionManager::wrap` and `session()`.
    Warp,
    /// axum, through the tower `SessionLayer` and the `Session` extractor.
    Axum,
}

/// Command line and environment.
#[derive(Debug, Parser)]
#[command(version, about = "Demo app for memcached-backed sessions with failover")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Web framework serving the routes: warp or axum.
    #[arg(long, env = "FRAMEWORK", value_enum, default_value = "warp")]
    framework: Framework,
    /// memcachedNodes, e.g. `n1:127.0.0.1:11211,n2:127.0.0.1:11212`; absent
    /// or empty: the embedded in-process store.
    #[arg(long, env = "MEMCACHED_NODES", default_value = "")]
    memcached_nodes: String,
    /// failoverNodes: ids used only when no other node is available.
    #[arg(long, env = "FAILOVER_NODES", default_value = "")]
    failover_nodes: String,
    /// Sticky (primary copy in process) or non-sticky mode.
    #[arg(long, env = "STICKY", default_value = "true", action = clap::ArgAction::Set)]
    sticky: bool,
    /// Back sessions up off the request path.
    #[arg(long, env = "SESSION_BACKUP_ASYNC", default_value = "true", action = clap::ArgAction::Set)]
    session_backup_async: bool,
    /// Bound of every memcached operation, in milliseconds.
    #[arg(long, env = "OPERATION_TIMEOUT_MS", default_value_t = 1000)]
    operation_timeout_ms: u64,
    /// This instance's route (appended to session ids; shown as `instance`).
    #[arg(long, env = "ROUTE", default_value = "")]
    route: String,
    /// Session inactivity timeout in seconds; 0 or negative: never expires.
    #[arg(
        long,
        env = "MAX_INACTIVE_SECS",
        default_value_t = 1800,
        allow_negative_numbers = true
    )]
    max_inactive_secs: i64,
    /// Requests whose path matches this regex never touch memcached.
    #[arg(long, env = "REQUEST_URI_IGNORE_PATTERN", default_value = "")]
    request_uri_ignore_pattern: String,
    /// Non-sticky locking: none, all, auto or uriPattern:REGEX.
    #[arg(long, env = "LOCKING_MODE", default_value = "none")]
    locking_mode: String,
    /// Non-sticky: TTL of a session lock, in milliseconds (a crashed
    /// holder's lock is gone after this long).
    #[arg(long, env = "LOCK_EXPIRATION_MS", default_value_t = 5000)]
    lock_expiration_ms: u64,
    /// Non-sticky: what a request does when it cannot get its lock —
    /// `fail` (503, nothing saved) or `proceed` (without the lock).
    #[arg(long, env = "LOCK_FAILURE", default_value = "fail")]
    lock_failure: String,
}

impl Args {
    fn config(&self) -> Result<Config, ConfigError> {
        let mut builder = Config::builder()
            .failover_nodes(self.failover_nodes.as_str())
            .sticky(self.sticky)
            .session_backup_async(self.session_backup_async)
            .operation_timeout(Duration::from_millis(self.operation_timeout_ms))
            .route(self.route.as_str())
            .max_inactive_interval_secs(self.max_inactive_secs)
            .request_uri_ignore_pattern(self.request_uri_ignore_pattern.as_str())
            .locking_mode(self.locking_mode.as_str())
            .lock_expiration(Duration::from_millis(self.lock_expiration_ms))
            .lock_failure(LockFailure::parse(&self.lock_failure)?);
        if !self.memcached_nodes.trim().is_empty() {
            builder = builder.memcached_nodes(self.memcached_nodes.as_str());
        }
        builder.build()
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let config = match args.config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("demo-app: {error}");
            return ExitCode::from(2);
        }
    };
    // Before the manager starts: its metrics register with the recorder in place.
    let metrics = match metrics::install() {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("demo-app: cannot install the metrics recorder: {error}");
            return ExitCode::from(1);
        }
    };
    if config.nodes().is_none() {
        tracing::warn!("no --memcached-nodes: using the embedded in-process store (no failover between instances)");
    }
    let manager = match SessionManager::start(config).await {
        Ok(manager) => manager,
        Err(error) => {
            eprintln!("demo-app: {error}");
            return ExitCode::from(1);
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("demo-app: cannot listen on {}: {error}", args.listen);
            return ExitCode::from(1);
        }
    };
    let instance = if args.route.is_empty() {
        "default".to_owned()
    } else {
        args.route.clone()
    };
    tracing::info!(listen = %args.listen, %instance, framework = ?args.framework, "demo-app serving");
    match args.framework {
        Framework::Warp => {
            warp::serve(warp_app::app(manager.clone(), instance, metrics))
                .incoming(listener)
                .graceful(shutdown_signal())
                .run()
                .await;
        }
        Framework::Axum => {
            let served = axum::serve(listener, axum_app::app(manager.clone(), instance, metrics))
                .with_graceful_shutdown(shutdown_signal())
                .await;
            if let Err(error) = served {
                eprintln!("demo-app: {error}");
            }
        }
    }
    manager.shutdown().await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => return ctrl_c.await.unwrap_or_default(),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.unwrap_or_default();
    tracing::info!("shutting down");
}
