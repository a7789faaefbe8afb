//! The chaos scenarios of `chaos-local`, the effects they assert, and the
//! window they document.
//!
//! Every scenario starts a fresh cluster — 3 memcached nodes `n1..n3` and 2
//! demo-app instances `a1`, `a2`, all on `127.0.0.1` at free ports, apps with
//! `--operation-timeout-ms 500` — runs the load engine against both
//! instances (every write identifiable by its token, a quarter of the users
//! readers that idle between reads), injects its fault mid-run, keeps the
//! load running afterwards, reads every session back, and then checks that
//! the fault **had its effect**: figures read from every running
//! instance's `GET /stats` before teardown (relocations, takeovers,
//! restored backups, node state changes) or seen by the clients (sessions
//! that moved, hang-ups, refused connections). A scenario whose fault did
//! nothing fails, however clean its load looked.
//!
//! Network faults go through a TCP proxy per (instance, node) pair
//! (`integration_tests::ProxyMesh`): a **partition** black-holes one node
//! for one instance only, a **slow network** delays every byte both ways.
//!
//! | scenario | fault | effect asserted |
//! |---|---|---|
//! | `memcached-kill` | `kill -9` of `n1` | relocations, sessions seen relocated |
//! | `memcached-freeze` | `SIGSTOP` of `n1`, `SIGCONT` 2 s later | node state changes |
//! | `memcached-restart-empty` | `n1` restarted empty on its port | restored or relocated (sticky) / re-created, backup-read or relocated (non-sticky) copies |
//! | `two-nodes-kill` | `kill -9` of `n1` and `n2` | relocations |
//! | `all-nodes-freeze` | `SIGSTOP` of all nodes, `SIGCONT` 2 s later | node state changes |
//! | `all-nodes-outage` | all nodes killed, restarted empty 2 s later (sticky) | restored backups |
//! | `failover-node-kill` | `--failover-nodes n3`, `kill -9` of `n1` (sticky) | relocations |
//! | `app-kill` | `kill -9` of `a1` | takeovers, sessions moved (sticky); refused connections (non-sticky) |
//! | `app-kill-async-backup` | the same with async backup (sticky) | as `app-kill`; at most 1 lost update per user |
//! | `rolling-restart` | `a1` then `a2`: SIGTERM, exit, start again | takeovers, sessions moved (sticky); refused connections |
//! | `app-kill-during-restart` | SIGTERM of `a2`, `kill -9` of `a1` while `a2` is down, both started again | takeovers (sticky); refused connections |
//! | `partition` | `n1` black-holed for `a1` only, 2 s | `a1` lost `n1` while `a2` still had it |
//! | `slow-network-hangups` | every proxy delays 20 ms ± 10 ms, clients hang up on 20 % of requests | hang-ups, slow replies |
//!
//! Each runs in the modes listed by `chaos-local --list`:
//!
//! * **sticky** (`--sticky true`): user `i` sticks to instance `i % 2` and
//!   moves to the other one when its instance refuses connections, like a
//!   load balancer failing over; the other instance then takes the
//!   session over from memcached. After the read-back, every session is
//!   read once more through the *other* instance (after a 1 s pause),
//!   which must take it over from memcached: this checks the backups, not
//!   only the in-memory copies.
//! * **non-sticky** (`--sticky false --locking-mode all`, and `none` for the
//!   `*-lock-none` scenarios): users send each
//!   request to the next instance (round-robin), so memcached is the only
//!   copy that matters and the lock serializes the requests of a session.
//!
//! A scenario marked **pending** names the issue whose fix it waits for: it
//! exposes a known violation of the README's guarantees, is listed by
//! `--list`, runs with `--only NAME` (or `--pending`), and is not part of
//! the default run until that issue lands its fix.
//!
//! # The window: async backup and `kill -9` of an app instance
//!
//! In sticky mode the primary copy of a session lives in the instance's
//! memory. With `--session-backup-async true` (the default) the backup to
//! memcached runs *after* the response: an update that was acknowledged to
//! the client but whose backup had not reached memcached when the instance
//! was killed is lost; the instance that takes the session over loads the
//! previous version. At most the last update of each session is affected —
//! the library answers a change only once the change answered before it
//! is stored — and `app-kill-async-backup` fails if any user lost more
//! than one. A memcached fault cannot cause this (the
//! instance still holds the session and backs it up again), and neither can
//! an orderly shutdown (it flushes every pending backup: `rolling-restart`
//! runs with async backup and must lose nothing).
//!
//! `--session-backup-async false` closes the window: the response waits for
//! the backup, so every acknowledged update is in memcached; the sticky
//! `app-kill` scenarios run that way and must lose nothing.

use std::fmt;
use std::time::Duration;

use crate::summary::Tolerance;

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

/// The fault injected mid-run. Node and app numbers are 0-based (`n1` is 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9` of these memcached nodes.
    KillMemcached(Vec<usize>),
    /// `kill -9` of these memcached nodes one after the other, this long
    /// apart.
    KillMemcachedInTurn(Vec<usize>, Duration),
    /// `SIGSTOP` of these memcached nodes, `SIGCONT` after the duration.
    FreezeMemcached(Vec<usize>, Duration),
    /// These memcached nodes killed and restarted empty on their ports
    /// after the duration (zero: at once).
    RestartMemcachedEmpty(Vec<usize>, Duration),
    /// `kill -9` of this app instance.
    KillApp(usize),
    /// Every app instance in turn: SIGTERM, wait for its exit, start it
    /// again on its port, wait until it is healthy.
    RollingRestart,
    /// SIGTERM of the second instance and, while it is down, `kill -9` of
    /// the first; then both are started again.
    KillAppDuringRestart,
    /// The node black-holed for this instance only, for the duration.
    Partition {
        /// The instance that loses the node.
        app: usize,
        /// The node it loses.
        node: usize,
        /// How long.
        duration: Duration,
    },
    /// Every proxy delays every byte by `fixed` plus up to `jitter`, from
    /// the fault to the end of the load.
    SlowNetwork {
        /// Fixed one-way delay.
        fixed: Duration,
        /// Added uniformly random delay.
        jitter: Duration,
    },
}

impl Fault {
    /// Whether the instances must reach memcached through the proxy mesh.
    pub fn needs_proxies(&self) -> bool {
        matches!(self, Fault::Partition { .. } | Fault::SlowNetwork { .. })
    }
}

fn node_list(nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|n| format!("n{}", n + 1))
        .collect::<Vec<_>>()
        .join("+")
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::KillMemcached(nodes) => write!(f, "kill -9 memcached {}", node_list(nodes)),
            Fault::KillMemcachedInTurn(nodes, gap) => write!(
                f,
                "kill -9 memcached {} one by one, {}ms apart",
                node_list(nodes),
                gap.as_millis()
            ),
            Fault::FreezeMemcached(nodes, pause) => write!(
                f,
                "SIGSTOP memcached {}, SIGCONT after {}ms",
                node_list(nodes),
                pause.as_millis()
            ),
            Fault::RestartMemcachedEmpty(nodes, down) => write!(
                f,
                "restart memcached {} empty after {}ms",
                node_list(nodes),
                down.as_millis()
            ),
            Fault::KillApp(app) => write!(f, "kill -9 app a{}", app + 1),
            Fault::RollingRestart => f.write_str("rolling SIGTERM + restart of every app"),
            Fault::KillAppDuringRestart => f.write_str("SIGTERM a2, kill -9 a1 while a2 is down, restart both"),
            Fault::Partition { app, node, duration } => write!(
                f,
                "black-hole n{} for a{} only, {}ms",
                node + 1,
                app + 1,
                duration.as_millis()
            ),
            Fault::SlowNetwork { fixed, jitter } => write!(
                f,
                "slow network {}ms ± {}ms, clients hanging up",
                fixed.as_millis(),
                jitter.as_millis()
            ),
        }
    }
}

/// What a scenario's fault must have done, checked after the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Sum of `/stats` counter `.0` over the running instances is > 0.
    StatsCounter(&'static str),
    /// Sum of these `/stats` counters over the running instances is > 0.
    AnyStatsCounter(&'static [&'static str]),
    /// At least one session was served by another instance than before.
    ClientMoved,
    /// At least one session id moved to another memcached node.
    ClientRelocated,
    /// The clients saw at least one refused connection (an instance was
    /// really down).
    ClientRefused,
    /// The clients hung up on at least one request.
    ClientHangUps,
    /// Some instance took at least `.1` µs for one memcached exchange in
    /// one of these `/stats` probes (the network really was slow).
    StatsProbeMaxAtLeast(&'static [&'static str], u64),
    /// The partitioned instance stopped listing the node among its
    /// available nodes while the other instance still listed it (observed
    /// during the fault).
    PartitionSeen,
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::StatsCounter(name) => write!(f, "{name}>0"),
            Effect::AnyStatsCounter(names) => write!(f, "{}>0", names.join("+")),
            Effect::ClientMoved => f.write_str("moved>0"),
            Effect::ClientRelocated => f.write_str("relocated>0"),
            Effect::ClientRefused => f.write_str("refused>0"),
            Effect::ClientHangUps => f.write_str("hangups>0"),
            Effect::StatsProbeMaxAtLeast(names, at_least) => {
                write!(f, "max({})>={at_least}us", names.join(","))
            }
            Effect::PartitionSeen => f.write_str("partition seen"),
        }
    }
}

/// One line of `chaos-local`.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Its name (`scenario=`).
    pub name: &'static str,
    /// Sticky or non-sticky.
    pub mode: ClusterMode,
    /// `--session-backup-async` (sticky mode only).
    pub backup_async: bool,
    /// What goes wrong.
    pub fault: Fault,
    /// What the fault must have done.
    pub effects: Vec<Effect>,
    /// What the run may lose and still pass (nothing, by default).
    pub tolerance: Tolerance,
    /// Extra demo-app flags.
    pub extra_args: Vec<&'static str>,
    /// Share of requests the clients hang up on.
    pub hangup_ratio: f64,
    /// `delay_ms` of every write, overriding the run's setting.
    pub delay_ms: Option<u64>,
    /// The issue whose fix this scenario waits for (not run by default).
    pub pending: Option<&'static str>,
    /// `--locking-mode` of a non-sticky cluster (`all` unless the scenario
    /// checks the lock-free path).
    pub locking_mode: &'static str,
}

impl Scenario {
    fn new(name: &'static str, mode: ClusterMode, fault: Fault, effects: Vec<Effect>) -> Scenario {
        Scenario {
            name,
            mode,
            backup_async: true,
            fault,
            effects,
            tolerance: Tolerance::NONE,
            extra_args: Vec::new(),
            hangup_ratio: 0.0,
            delay_ms: None,
            pending: None,
            locking_mode: "all",
        }
    }

    /// The same scenario on a non-sticky cluster without locks, named
    /// `<name>-lock-none`: every write is still conditional on the version
    /// it read, so nothing may be lost there either.
    fn without_locks(mut self, name: &'static str) -> Scenario {
        self.name = name;
        self.locking_mode = "none";
        self
    }

    fn sync_backup(mut self) -> Scenario {
        self.backup_async = false;
        self
    }

    fn pending(mut self, issue: &'static str) -> Scenario {
        self.pending = Some(issue);
        self
    }

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
                self.locking_mode.to_owned(),
            ]),
        }
        args.extend(self.extra_args.iter().map(|&arg| arg.to_owned()));
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

const TWO_SECONDS: Duration = Duration::from_secs(2);
/// Not an issue: a limit of the design, documented in the README.
const ONE_BACKUP_COPY: &str = "limit: one backup copy (README, Limits)";

/// Every scenario, in the order `chaos-local` runs them; `freeze` is how
/// long a frozen node stays stopped (and a partition lasts).
pub fn all(freeze: Duration) -> Vec<Scenario> {
    use ClusterMode::{NonSticky, Sticky};
    use Effect::*;
    let mut scenarios = Vec::new();
    for mode in [Sticky, NonSticky] {
        let sticky = mode == Sticky;
        let new = |name, fault, effects| Scenario::new(name, mode, fault, effects);
        scenarios.push(new(
            "memcached-kill",
            Fault::KillMemcached(vec![0]),
            vec![StatsCounter("relocations"), ClientRelocated],
        ));
        scenarios.push(new(
            "memcached-freeze",
            Fault::FreezeMemcached(vec![0], freeze),
            vec![StatsCounter("node_state_changes")],
        ));
        scenarios.push(new(
            "memcached-restart-empty",
            Fault::RestartMemcachedEmpty(vec![0], Duration::ZERO),
            // Seen as empty (sentinel gone) the instance restores what it
            // holds; seen down for a moment first, it relocates instead.
            vec![if sticky {
                AnyStatsCounter(&["backups_restored", "relocations"])
            } else {
                AnyStatsCounter(&["backups_recreated", "backup_node_loads", "relocations"])
            }],
        ));
        let two_nodes_kill = new(
            "two-nodes-kill",
            Fault::KillMemcached(vec![0, 1]),
            vec![StatsCounter("relocations")],
        );
        let all_nodes_freeze = new(
            "all-nodes-freeze",
            Fault::FreezeMemcached(vec![0, 1, 2], freeze),
            vec![StatsCounter("node_state_changes")],
        );
        scenarios.push(all_nodes_freeze);
        if sticky {
            scenarios.push(two_nodes_kill);
        } else {
            // One node after the other: n1's sessions are relocated, and
            // n3's sessions, whose backups were on n1, get new backups (on
            // n2) at their next read — readers included — before n3 goes.
            scenarios.push(new(
                "two-nodes-kill-in-turn",
                Fault::KillMemcachedInTurn(vec![0, 2], TWO_SECONDS),
                vec![StatsCounter("relocations"), StatsCounter("backups_recreated")],
            ));
            // At once: a session whose primary and backup copies are both
            // on the killed nodes is gone (one backup copy; README
            // "Limits"). Its requests answer 503, never a wrong session.
            scenarios.push(two_nodes_kill.pending(ONE_BACKUP_COPY));
        }
        let app_kill_effects = if sticky {
            vec![StatsCounter("takeovers"), ClientMoved]
        } else {
            vec![ClientRefused]
        };
        // Sticky: synchronous backup closes the window (see the module docs).
        scenarios.push(new("app-kill", Fault::KillApp(0), app_kill_effects.clone()).sync_backup());
        let rolling = new("rolling-restart", Fault::RollingRestart, app_kill_effects.clone());
        let kill_during_restart = new(
            "app-kill-during-restart",
            Fault::KillAppDuringRestart,
            app_kill_effects.clone(),
        )
        .sync_backup();
        scenarios.push(rolling);
        scenarios.push(kill_during_restart);
        let partition = new(
            "partition",
            Fault::Partition {
                app: 0,
                node: 0,
                duration: freeze,
            },
            vec![PartitionSeen],
        );
        let slow = Scenario {
            hangup_ratio: 0.2,
            delay_ms: Some(50),
            ..new(
                "slow-network-hangups",
                Fault::SlowNetwork {
                    fixed: Duration::from_millis(20),
                    jitter: Duration::from_millis(10),
                },
                // Every exchange crosses the proxy twice: at least 2 × 20 ms.
                vec![
                    ClientHangUps,
                    StatsProbeMaxAtLeast(&["backup_time_us", "load_time_us", "lock_acquire_time_us"], 40_000),
                ],
            )
        };
        if sticky {
            scenarios.push(partition);
            scenarios.push(slow);
            scenarios.push(Scenario {
                tolerance: Tolerance {
                    lost_updates_per_user: 1,
                    ..Tolerance::NONE
                },
                ..new("app-kill-async-backup", Fault::KillApp(0), app_kill_effects)
            });
            scenarios.push(new(
                "all-nodes-outage",
                Fault::RestartMemcachedEmpty(vec![0, 1, 2], TWO_SECONDS),
                vec![StatsCounter("backups_restored")],
            ));
            scenarios.push(Scenario {
                extra_args: vec!["--failover-nodes", "n3"],
                ..new(
                    "failover-node-kill",
                    Fault::KillMemcached(vec![0]),
                    vec![StatsCounter("relocations"), ClientRelocated],
                )
            });
        } else {
            scenarios.push(partition.clone());
            scenarios.push(slow);
            // The lock-free path (lockingMode=none) under the faults that
            // move or cut off a session's copies.
            scenarios.push(
                new(
                    "memcached-kill",
                    Fault::KillMemcached(vec![0]),
                    vec![StatsCounter("relocations"), ClientRelocated],
                )
                .without_locks("memcached-kill-lock-none"),
            );
            scenarios.push(
                new(
                    "memcached-freeze",
                    Fault::FreezeMemcached(vec![0], freeze),
                    vec![StatsCounter("node_state_changes")],
                )
                .without_locks("memcached-freeze-lock-none"),
            );
            scenarios.push(partition.without_locks("partition-lock-none"));
        }
    }
    scenarios
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_mode_and_every_scenario_asserts_an_effect() {
        let scenarios = all(Duration::from_secs(2));
        for scenario in &scenarios {
            assert!(!scenario.effects.is_empty(), "{} asserts nothing", scenario.name);
            let same = scenarios
                .iter()
                .filter(|s| s.name == scenario.name && s.mode == scenario.mode)
                .count();
            assert_eq!(same, 1, "{} twice", scenario.name);
        }
    }

    #[test]
    fn the_counted_app_kill_is_sync_and_the_async_one_is_bounded() {
        let scenarios = all(Duration::from_secs(2));
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
        let async_kill = scenarios.iter().find(|s| s.name == "app-kill-async-backup").unwrap();
        assert!(async_kill.backup_async);
        assert_eq!(async_kill.tolerance.lost_updates_per_user, 1);
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

    #[test]
    fn extra_flags_reach_the_app() {
        let scenario = all(Duration::from_secs(2))
            .into_iter()
            .find(|s| s.name == "failover-node-kill")
            .unwrap();
        let args = scenario.app_args("n1:127.0.0.1:1", 500);
        assert!(args.windows(2).any(|w| w == ["--failover-nodes", "n3"]));
    }
}
