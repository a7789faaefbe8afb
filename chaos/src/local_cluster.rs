//! A scenario's processes: 3 memcached nodes and 2 demo-app instances.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::thread::sleep;

use integration_tests::Cluster;

use crate::app_instance::AppInstance;
use crate::error::Error;
use crate::scenario::{Fault, Scenario};

/// Memcached nodes per scenario (`n1..n3`).
pub const MEMCACHED_NODES: usize = 3;
/// App instances per scenario, by route.
pub const ROUTES: [&str; 2] = ["a1", "a2"];

/// Fresh memcached nodes and demo-app instances on loopback; everything is
/// killed when it is dropped.
#[derive(Debug)]
pub struct LocalCluster {
    memcached: Cluster,
    apps: Vec<AppInstance>,
}

impl LocalCluster {
    /// Starts the nodes, then the instances with the scenario's flags,
    /// logging to `log_dir/<route>.log`.
    ///
    /// # Errors
    ///
    /// [`Error::Harness`] if memcached does not start, and the errors of
    /// [`AppInstance::start`].
    pub fn start(
        scenario: &Scenario,
        binary: &Path,
        log_dir: &Path,
        operation_timeout_ms: u64,
    ) -> Result<LocalCluster, Error> {
        let memcached = harness(|| Cluster::start(MEMCACHED_NODES))?;
        let args = scenario.app_args(&memcached.spec(), operation_timeout_ms);
        let apps = ROUTES
            .iter()
            .map(|route| AppInstance::start(binary, route, &args, &log_dir.join(format!("{route}.log"))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(LocalCluster { memcached, apps })
    }

    /// The instances' base URLs, in route order.
    pub fn targets(&self) -> Vec<String> {
        self.apps.iter().map(AppInstance::base_url).collect()
    }

    /// The instances' log files.
    pub fn logs(&self) -> Vec<PathBuf> {
        self.apps.iter().map(|app| app.log().to_path_buf()).collect()
    }

    /// Injects `fault`; blocks for the freeze duration of a freeze.
    ///
    /// # Errors
    ///
    /// [`Error::Harness`] if the harness fails (e.g. the node is not
    /// running, or a restarted node does not come up), or if a killed app
    /// is still running.
    pub fn inject(&mut self, fault: Fault) -> Result<(), Error> {
        match fault {
            Fault::KillMemcached(node) => {
                let node = self.node(node)?;
                harness(|| node.kill())
            }
            Fault::FreezeMemcached(node, pause) => {
                let node = self.node(node)?;
                harness(|| node.freeze())?;
                sleep(pause);
                harness(|| node.thaw())
            }
            Fault::RestartMemcachedEmpty(node) => {
                let node = self.node(node)?;
                harness(|| node.restart_empty())
            }
            Fault::KillApp(index) => {
                let app = self
                    .apps
                    .get_mut(index)
                    .ok_or_else(|| Error::Harness(format!("no app instance #{index}")))?;
                app.kill();
                if app.is_running() {
                    return Err(Error::Harness(format!("{} survived kill -9", app.route())));
                }
                Ok(())
            }
        }
    }

    fn node(&mut self, index: usize) -> Result<&mut integration_tests::Memcached, Error> {
        self.memcached
            .nodes
            .get_mut(index)
            .ok_or_else(|| Error::Harness(format!("no memcached node n{}", index + 1)))
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
