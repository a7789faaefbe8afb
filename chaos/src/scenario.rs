//! The chaos scenarios of `chaos-local`, and the window they document.
//!
//! Every scenario starts a fresh cluster — 3 memcached nodes `n1..n3` and 2
//! demo-app instances `a1`, `a2`, all on `127.0.0.1` at free ports, apps with
//! `--operation-timeout-ms 500` — runs the load engine against both
//! instances, injects one fault into `n1` or `a1` mid-run, keeps the load
//! running afterwards, then reads every session back.
//!
//! | scenario | fault |
//! |---|---|
//! | `memcached-kill` | `kill -9` of memcached `n1` |
//! | `memcached-freeze` | `SIGSTOP` of `n1`, `SIGCONT` about 2 s later |
//! | `memcached-restart-empty` | `n1` killed and started again, empty, on its port |
//! | `app-kill` | `kill -9` of instance `a1` |
//!
//! A quarter of the users only read once they have created their session:
//! in sticky mode an idle session is never backed up again, so a fault that
//! loses memcached data would hit exactly those sessions.
//!
//! Each runs in two modes:
//!
//! * **sticky** (`--sticky true`, async backup as by default): user `i`
//!   sticks to instance `i % 2` and moves to the other one when its
//!   instance refuses connections, like a load balancer failing over; the
//!   other instance then takes the session over from memcached.
//!   After the read-back, every session is read once more through the
//!   *other* instance (after a 1 s pause), which must take it over from
//!   memcached: this checks the backups, not only the in-memory copies.
//! * **non-sticky** (`--sticky false --locking-mode all`): users send each
//!   request to the next instance (round-robin), so memcached is the only
//!   copy that matters and the lock serializes the requests of a session.
//!   When an instance is killed while holding a session's lock, that
//!   session answers `503` until the lock expires (`lockExpiration`, 5 s by
//!   default): by design, no update is lost. The load runs 8 s with the
//!   fault at 2 s so such locks have expired before the read-back (which
//!   does not retry a `503`).
//!
//! # The window: async backup and `kill -9` of an app instance
//!
//! In sticky mode the primary copy of a session lives in the instance's
//! memory. With `--session-backup-async true` (the default) the backup to
//! memcached runs *after* the response: an update that was acknowledged to
//! the client but whose backup had not reached memcached when the instance
//! was killed is lost; the instance that takes the session over loads the
//! previous version. At most the last update(s) of each session in flight
//! at the moment of the kill are affected — usually none, since the backup
//! is sub-millisecond on loopback. A memcached fault cannot cause this (the
//! instance still holds the session and backs it up again), and neither can
//! an orderly shutdown (it flushes every pending backup).
//!
//! `--session-backup-async false` closes the window: the response waits for
//! the backup, so every acknowledged update is in memcached. The sticky
//! `app-kill` scenario therefore runs with synchronous backup and must lose
//! nothing, and `app-kill-async-backup` runs the same fault with async
//! backup as an informational line (`result=INFO`, never a failure) that
//! reports how many updates the window actually cost.
//!
//! Non-sticky mode has no such window: the session is written to memcached
//! before the response.

use std::fmt;
use std::time::Duration;

/// Sticky or non-sticky sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterMode {
    /// `--sticky true`; users stick to an instance.
    Sticky,
    /// `--sticky false --locking-mode all`; users round-robin.
    NonSticky,
}

impl fmt::Display for ClusterMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClusterMode::Sticky => "sticky",
            ClusterMode::NonSticky => "non-sticky",
        })
    }
}

/// The fault injected mid-run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of memcached node `n{0+1}`.
    KillMemcached(usize),
    /// `SIGSTOP` of memcached node `n{0+1}`, `SIGCONT` after the duration.
    FreezeMemcached(usize, Duration),
    /// Memcached node `n{0+1}` killed and restarted empty on its port.
    RestartMemcachedEmpty(usize),
    /// `kill -9` of app instance number `0` (`a{0+1}`).
    KillApp(usize),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillMemcached(node) => write!(f, "kill -9 memcached n{}", node + 1),
            Fault::FreezeMemcached(node, pause) => write!(
                f,
                "SIGSTOP memcached n{}, SIGCONT after {}ms",
                node + 1,
                pause.as_millis()
            ),
            Fault::RestartMemcachedEmpty(node) => {
                write!(f, "restart memcached n{} empty", node + 1)
            }
            Fault::KillApp(app) => write!(f, "kill -9 app a{}", app + 1),
        }
    }
}

/// One line of `chaos-local`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// Its name (`scenario=`).
    pub name: &'static str,
    /// Sticky or non-sticky.
    pub mode: ClusterMode,
    /// `--session-backup-async` (sticky mode only).
    pub backup_async: bool,
    /// What goes wrong.
    pub fault: Fault,
    /// Informational: reported as `result=INFO`, never a failure (unless it
    /// cannot run at all).
    pub informational: bool,
}

impl Scenario {
    /// The demo-app flags of this scenario (besides `--listen`/`--route`).
    pub fn app_args(&self, nodes: &str, operation_timeout_ms: u64) -> Vec<String> {
        let mut args = vec![
            "--memcached-nodes".to_owned(),
            nodes.to_owned(),
            "--operation-timeout-ms".to_owned(),
            operation_timeout_ms.to_string(),
        ];
        match self.mode {
            ClusterMode::Sticky => args.extend([
                "--sticky".to_owned(),
                "true".to_owned(),
                "--session-backup-async".to_owned(),
                self.backup_async.to_string(),
            ]),
            ClusterMode::NonSticky => args.extend([
                "--sticky".to_owned(),
                "false".to_owned(),
                "--locking-mode".to_owned(),
                "all".to_owned(),
            ]),
        }
        args
    }

    /// `sync` / `async` for sticky scenarios, `-` otherwise.
    pub fn backup_label(&self) -> &'static str {
        match (self.mode, self.backup_async) {
            (ClusterMode::NonSticky, _) => "-",
            (ClusterMode::Sticky, true) => "async",
            (ClusterMode::Sticky, false) => "sync",
        }
    }
}

/// Every scenario, in the order `chaos-local` runs them; `freeze` is how
/// long a frozen node stays stopped.
pub fn all(freeze: Duration) -> Vec<Scenario> {
    let mut scenarios = Vec::new();
    for mode in [ClusterMode::Sticky, ClusterMode::NonSticky] {
        let scenario = |name, fault, backup_async| Scenario {
            name,
            mode,
            backup_async,
            fault,
            informational: false,
        };
        scenarios.push(scenario("memcached-kill", Fault::KillMemcached(0), true));
        scenarios.push(scenario("memcached-freeze", Fault::FreezeMemcached(0, freeze), true));
        scenarios.push(scenario(
            "memcached-restart-empty",
            Fault::RestartMemcachedEmpty(0),
            true,
        ));
        // Sticky: synchronous backup closes the window (see the module docs).
        scenarios.push(scenario("app-kill", Fault::KillApp(0), false));
        if mode == ClusterMode::Sticky {
            scenarios.push(Scenario {
                informational: true,
                ..scenario("app-kill-async-backup", Fault::KillApp(0), true)
            });
        }
    }
    scenarios
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_has_both_modes_and_one_informational_line() {
        let scenarios = all(Duration::from_secs(2));
        assert_eq!(scenarios.len(), 9);
        let info: Vec<_> = scenarios.iter().filter(|s| s.informational).collect();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].mode, ClusterMode::Sticky);
        assert!(info[0].backup_async);
        let sticky_kill = scenarios
            .iter()
            .find(|s| s.name == "app-kill" && s.mode == ClusterMode::Sticky)
            .unwrap();
        assert!(!sticky_kill.backup_async, "the counted app-kill is sync");
        assert!(
            sticky_kill
                .app_args("n1:127.0.0.1:1", 500)
                .windows(2)
                .any(|w| w == ["--session-backup-async", "false"])
        );
    }

    #[test]
    fn non_sticky_locks_everything() {
        let scenario = all(Duration::from_secs(2))
            .into_iter()
            .find(|s| s.mode == ClusterMode::NonSticky)
            .unwrap();
        let args = scenario.app_args("n1:127.0.0.1:1", 500);
        assert!(args.windows(2).any(|w| w == ["--locking-mode", "all"]));
        assert!(args.windows(2).any(|w| w == ["--sticky", "false"]));
        assert_eq!(scenario.backup_label(), "-");
    }
}
