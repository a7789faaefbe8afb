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
/// How long an orderly shutdown (SIGTERM) may take.
const TERM_TIMEOUT: Duration = Duration::from_secs(15);

/// A running `demo-app` on `127.0.0.1:<free port>`, killed (`SIGKILL`) and
/// reaped when dropped.
///
/// Unlike the harness's `DemoApp`, its stdout and stderr go to a log file,
/// so a chaos run's output stays readable and a failure can point at the
/// instance's log.
#[derive(Debug)]
pub struct AppInstance {
    binary: PathBuf,
    route: String,
    args: Vec<String>,
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
            let mut instance = AppInstance {
                binary: binary.to_path_buf(),
                route: route.to_owned(),
                args: args.to_vec(),
                port: integration_tests::free_port(),
                log: log.to_path_buf(),
                child: None,
            };
            instance.spawn()?;
            match instance.wait_healthy() {
                Ok(()) => return Ok(instance),
                Err(Some(exit)) => reason = format!("exited with {exit} (port {})", instance.port),
                Err(None) => {
                    return Err(instance.not_healthy(format!("no 200 from GET /health within {READY_TIMEOUT:?}")));
                }
            }
        }
        Err(Error::NotHealthy {
            route: route.to_owned(),
            reason,
            log: log.to_path_buf(),
        })
    }

    /// Starts the process again, on the same port with the same flags (the
    /// previous one must have exited), and waits until it is healthy.
    ///
    /// # Errors
    ///
    /// [`Error::Harness`] if it is still running; else as [`start`](Self::start)
    /// (the port is not changed: a load balancer knows it).
    pub fn restart(&mut self) -> Result<(), Error> {
        if self.is_running() {
            return Err(Error::Harness(format!("{} is still running", self.route)));
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.spawn()?;
            match self.wait_healthy() {
                Ok(()) => return Ok(()),
                // The port may still be held for a moment after the exit.
                Err(Some(_)) if Instant::now() < deadline => sleep(POLL),
                Err(Some(exit)) => return Err(self.not_healthy(format!("restart exited with {exit}"))),
                Err(None) => return Err(self.not_healthy("restart: no 200 from GET /health".to_owned())),
            }
        }
    }

    /// Orderly shutdown: `SIGTERM`, then waits for the exit.
    ///
    /// # Errors
    ///
    /// [`Error::Harness`] if it was not running, the signal failed, or it
    /// did not exit within 15 s (it is killed then) or exited unsuccessfully.
    pub fn terminate(&mut self) -> Result<(), Error> {
        let Some(mut child) = self.child.take() else {
            return Err(Error::Harness(format!("{} is not running", self.route)));
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        if let Err(error) = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Harness(format!("SIGTERM to {}: {error}", self.route)));
        }
        let deadline = Instant::now() + TERM_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(Error::Harness(format!(
                        "{} exited with {status} after SIGTERM",
                        self.route
                    )));
                }
                Ok(None) if Instant::now() < deadline => sleep(POLL),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Harness(format!(
                        "{} did not exit within {TERM_TIMEOUT:?} of SIGTERM",
                        self.route
                    )));
                }
            }
        }
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let output = open_log(&self.log)?;
        let errors = output.try_clone().map_err(|source| spawn_error(&self.log, source))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--route")
            .arg(&self.route)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        self.child = Some(command.spawn().map_err(|source| spawn_error(&self.binary, source))?);
        Ok(())
    }

    fn not_healthy(&self, reason: String) -> Error {
        Error::NotHealthy {
            route: self.route.clone(),
            reason,
            log: self.log.clone(),
        }
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

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
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
