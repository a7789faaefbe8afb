//! Errors that keep a load run or a chaos scenario from starting.

use std::path::PathBuf;

/// Why a run could not start (exit code 2 for `load-verify`; a failed
/// scenario for `chaos-local`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `--target` is not an `http://host:port` URL.
    #[error("invalid target {target:?}: {reason}")]
    InvalidTarget {
        /// The text given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The options contradict each other or are out of range.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// No target answered `GET /health` before the run.
    #[error("no target is reachable (GET /health failed on {targets}); is the app running?")]
    NoTargetReachable {
        /// The targets tried, comma-separated.
        targets: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The demo-app binary does not exist.
    #[error(
        "demo-app binary not found at {}: build it with `cargo build -p demo-app` \
         (same profile) or pass --demo-app PATH / set DEMO_APP_BIN",
        path.display()
    )]
    DemoAppMissing {
        /// Where it was expected.
        path: PathBuf,
    },
    /// `cargo build -p demo-app` failed.
    #[error("`cargo build -p demo-app` failed ({status}); see its output above")]
    DemoAppBuild {
        /// The exit status of cargo.
        status: String,
    },
    /// A process (memcached, demo-app, cargo) could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// What was being started.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A demo-app instance exited or did not become healthy.
    #[error("demo-app {route} did not become healthy: {reason} (log: {})", log.display())]
    NotHealthy {
        /// The instance's route.
        route: String,
        /// Exit status or timeout.
        reason: String,
        /// Its log file.
        log: PathBuf,
    },
    /// A prerequisite of every scenario is missing (e.g. the demo-app binary).
    #[error("cannot start: {0}")]
    NotStarted(String),
    /// The test harness failed (it reports by panicking).
    #[error("harness failure: {0}")]
    Harness(String),
}

impl Error {
    /// `true` if the error is the caller's to fix (bad options or targets).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::InvalidTarget { .. } | Error::InvalidOptions(_))
    }
}
