//! A scenario's processes: 3 memcached nodes and 2 demo-app instances, the
//! instances reaching the nodes through fault proxies when the scenario
//! needs network faults.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use integration_tests::{Cluster, ProxyMesh, ProxyMode};

use crate::app_instance::AppInstance;
use crate::app_stats::AppStats;
use crate::error::Error;
use crate::scenario::{Fault, Scenario};

/// Memcached nodes per scenario (`n1..n3`).
pub const MEMCACHED_NODES: usize = 3;
/// App instances per scenario, by route.
pub const ROUTES: [&str; 2] = ["a1", "a2"];
/// Poll interval while watching a partition take effect.
const PARTITION_POLL: Duration = Duration::from_millis(50);

/// Fresh memcached nodes and demo-app instances on loopback; everything is
/// killed when it is dropped.
#[derive(Debug)]
pub struct LocalCluster {
    memcached: Cluster,
    /// Present when the instances reach the nodes through proxies.
    mesh: Option<ProxyMesh>,
    apps: Vec<AppInstance>,
    /// A partition was seen: the cut-off instance dropped the node while
    /// the other still had it.
    partition_seen: bool,
}

impl LocalCluster {
    /// Starts the nodes (and, for network faults, a proxy per instance and
    /// node), then the instances with the scenario's flags, logging to
    /// `log_dir/<route>.log`.
    ///
    /// # Errors
    ///
    /// [`Error::Harness`] if memcached or a proxy does not start, and the
    /// errors of [`AppInstance::start`].
    pub fn start(
        scenario: &Scenario,
        binary: &Path,
        log_dir: &Path,
        operation_timeout_ms: u64,
    ) -> Result<LocalCluster, Error> {
        let memcached = harness(|| Cluster::start(MEMCACHED_NODES))?;
        let mesh = if scenario.fault.needs_proxies() {
            Some(harness(|| ProxyMesh::start(&memcached, &ROUTES))?)
        } else {
            None
        };
        let apps = ROUTES
            .iter()
            .map(|route| {
                let nodes = mesh
                    .as_ref()
                    .map_or_else(|| memcached.spec(), |mesh| mesh.spec_for(route));
                let args = scenario.app_args(&nodes, operation_timeout_ms);
                AppInstance::start(binary, route, &args, &log_dir.join(format!("{route}.log")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LocalCluster {
            memcached,
            mesh,
            apps,
            partition_seen: false,
        })
    }

    /// The instances' base URLs, in route order.
    pub fn targets(&self) -> Vec<String> {
        self.apps.iter().map(AppInstance::base_url).collect()
    }

    /// The instances' log files.
    pub fn logs(&self) -> Vec<PathBuf> {
        self.apps.iter().map(|app| app.log().to_path_buf()).collect()
    }

    /// Whether [`Fault::Partition`] was seen to take effect.
    pub fn partition_seen(&self) -> bool {
        self.partition_seen
    }

    /// `/stats` of every running instance.
    ///
    /// # Errors
    ///
    /// The first instance that is running but does not answer.
    pub fn stats(&mut self) -> Result<Vec<AppStats>, String> {
        self.apps
            .iter_mut()
            .filter_map(|app| app.is_running().then(|| AppStats::fetch(app.addr())))
            .collect()
    }

    /// Injects `fault`; blocks while the fault lasts (freeze, outage,
    /// partition, restarts).
    ///
    /// # Errors
    ///
    /// [`Error::Harness`] if the harness fails (e.g. the node is not
    /// running, or a restarted node or instance does not come up), if a
    /// killed app is still running, or if the scenario lacks the proxies.
    pub fn inject(&mut self, fault: &Fault) -> Result<(), Error> {
        match fault {
            Fault::KillMemcached(nodes) => self.each_node(nodes, |node| node.kill()),
            Fault::KillMemcachedInTurn(nodes, gap) => {
                for (turn, node) in nodes.iter().enumerate() {
                    if turn > 0 {
                        sleep(*gap);
                    }
                    self.each_node(std::slice::from_ref(node), |node| node.kill())?;
                }
                Ok(())
            }
            Fault::FreezeMemcached(nodes, pause) => {
                self.each_node(nodes, |node| node.freeze())?;
                sleep(*pause);
                self.each_node(nodes, |node| node.thaw())
            }
            Fault::RestartMemcachedEmpty(nodes, down) => {
                if !down.is_zero() {
                    self.each_node(nodes, |node| node.kill())?;
                    sleep(*down);
                }
                self.each_node(nodes, |node| node.restart_empty())
            }
            Fault::KillApp(index) => self.kill_app(*index),
            Fault::RollingRestart => {
                for index in 0..self.apps.len() {
                    let app = self.app(index)?;
                    app.terminate()?;
                    app.restart()?;
                }
                Ok(())
            }
            Fault::KillAppDuringRestart => {
                self.app(1)?.terminate()?;
                self.kill_app(0)?;
                self.app(1)?.restart()?;
                self.app(0)?.restart()
            }
            Fault::Partition { app, node, duration } => self.partition(*app, *node, *duration),
            Fault::SlowNetwork { fixed, jitter } => {
                let mode = ProxyMode::Delay {
                    fixed: *fixed,
                    jitter: *jitter,
                };
                self.mesh()?.set_all(mode);
                Ok(())
            }
        }
    }

    /// Black-holes `node` for instance `app` only, watches for the
    /// instance to drop the node while the others keep it, and heals the
    /// partition after `duration`.
    fn partition(&mut self, app: usize, node: usize, duration: Duration) -> Result<(), Error> {
        let route = *ROUTES
            .get(app)
            .ok_or_else(|| Error::Harness(format!("no app #{app}")))?;
        let node_id = format!("n{}", node + 1);
        self.mesh()?.set(route, &node_id, ProxyMode::Blackhole);
        let until = Instant::now() + duration;
        while Instant::now() < until {
            let mut cut_off = false;
            let mut others_have_it = true;
            for (index, instance) in self.apps.iter().enumerate() {
                let Ok(stats) = AppStats::fetch(instance.addr()) else {
                    others_have_it = false;
                    continue;
                };
                if index == app {
                    cut_off = !stats.has_node(&node_id);
                } else {
                    others_have_it &= stats.has_node(&node_id);
                }
            }
            self.partition_seen |= cut_off && others_have_it;
            sleep(PARTITION_POLL);
        }
        self.mesh()?.set(route, &node_id, ProxyMode::Pass);
        Ok(())
    }

    fn mesh(&self) -> Result<&ProxyMesh, Error> {
        self.mesh
            .as_ref()
            .ok_or_else(|| Error::Harness("network fault without proxies".to_owned()))
    }

    fn kill_app(&mut self, index: usize) -> Result<(), Error> {
        let app = self.app(index)?;
        app.kill();
        if app.is_running() {
            return Err(Error::Harness(format!("{} survived kill -9", app.route())));
        }
        Ok(())
    }

    fn app(&mut self, index: usize) -> Result<&mut AppInstance, Error> {
        self.apps
            .get_mut(index)
            .ok_or_else(|| Error::Harness(format!("no app instance #{index}")))
    }

    fn each_node(&mut self, nodes: &[usize], action: impl Fn(&mut integration_tests::Memcached)) -> Result<(), Error> {
        for &index in nodes {
            let node = self
                .memcached
                .nodes
                .get_mut(index)
                .ok_or_else(|| Error::Harness(format!("no memcached node n{}", index + 1)))?;
            harness(|| action(node))?;
        }
        Ok(())
    }
}

/// Runs a harness call, turning its panic (how it reports failures) into
/// [`Error::Harness`].
fn harness<T>(call: impl FnOnce() -> T) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".to_owned());
        Error::Harness(message)
    })
}
