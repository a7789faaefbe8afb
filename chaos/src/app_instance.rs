//! One demo-app process with its log in a file.

use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::error::Error;

/// How long an instance may take until `GET /health` answers 200.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Fresh ports tried when the process exits before it is healthy.
const START_ATTEMPTS: usize = 3;
/// Poll interval while waiting for health.
const POLL: Duration = Duration::from_millis(50);

/// A running `demo-app` on `127.0.0.1:<free port>`, killed (`SIGKILL`) and
/// reaped when dropped.
///
/// Unlike the harness's `DemoApp`, its stdout and stderr go to a log file,
/// so a chaos run's output stays readable and a failure can point at the
/// instance's log.
#[derive(Debug)]
pub struct AppInstance {
    route: String,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl AppInstance {
    /// Starts `binary --listen 127.0.0.1:PORT --route ROUTE ARGS…`,
    /// appending its output to `log`, and waits until it is healthy.
    /// `RUST_LOG` defaults to `info`.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] if it cannot be started, [`Error::NotHealthy`] if it
    /// exits early on every attempt or does not become healthy in time.
    pub fn start(binary: &Path, route: &str, args: &[String], log: &Path) -> Result<AppInstance, Error> {
        let mut reason = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = integration_tests::free_port();
            let output = open_log(log)?;
            let errors = output.try_clone().map_err(|source| spawn_error(log, source))?;
            let mut command = Command::new(binary);
            command
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--route")
                .arg(route)
                .args(args)
                .stdin(Stdio::null())
                .stdout(output)
                .stderr(errors);
            if std::env::var_os("RUST_LOG").is_none() {
                command.env("RUST_LOG", "info");
            }
            let child = command.spawn().map_err(|source| spawn_error(binary, source))?;
            let mut instance = AppInstance {
                route: route.to_owned(),
                port,
                log: log.to_path_buf(),
                child: Some(child),
            };
            match instance.wait_healthy() {
                Ok(()) => return Ok(instance),
                Err(Some(exit)) => reason = format!("exited with {exit} (port {port})"),
                Err(None) => {
                    return Err(Error::NotHealthy {
                        route: route.to_owned(),
                        reason: format!("no 200 from GET /health within {READY_TIMEOUT:?}"),
                        log: log.to_path_buf(),
                    });
                }
            }
        }
        Err(Error::NotHealthy {
            route: route.to_owned(),
            reason,
            log: log.to_path_buf(),
        })
    }

    /// `Err(Some(status))` if the process exited, `Err(None)` on timeout.
    fn wait_healthy(&mut self) -> Result<(), Option<String>> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let request = format!(
            "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(Some(status.to_string()));
                }
            }
            if integration_tests::raw_http_status(addr, request.as_bytes()).is_ok_and(|s| s == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            sleep(POLL);
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The route (instance name) it was started with.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `true` until the process exited (reaps it then).
    pub fn is_running(&mut self) -> bool {
        let running = self
            .child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)));
        if !running {
            self.child = None;
        }
        running
    }

    /// `kill -9` and reap. No-op if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL; an error means it already exited, and wait reaps it.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for AppInstance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn open_log(log: &Path) -> Result<File, Error> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|source| spawn_error(log, source))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| spawn_error(log, source))
}

fn spawn_error(what: &Path, source: std::io::Error) -> Error {
    Error::Spawn {
        what: what.display().to_string(),
        source,
    }
}
