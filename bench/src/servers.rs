//! The stores the benchmark starts for itself: memcached and redis-server
//! processes on free ports of 127.0.0.1, killed (SIGKILL) and reaped when
//! their handle is dropped, plus the raw protocol calls that read their
//! command counters (`stats`, `INFO`).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::error::BenchError;

/// How long a freshly spawned server may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound of one stats exchange.
const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// How many fresh ports a start tries (another process may take the port
/// between probing it and the server binding it).
const START_ATTEMPTS: usize = 5;

/// Which store a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreKind {
    /// `memcached`, counted with `stats`.
    Memcached,
    /// `redis-server`, counted with `INFO stats`.
    Redis,
}

/// One store process on 127.0.0.1.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    kind: StoreKind,
    addr: SocketAddr,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts memcached (`-m` MiB of item memory, one worker thread: the
    /// machine has two cores, shared with the app and the load client).
    pub(crate) async fn memcached(memory_mb: u32) -> Result<Self, BenchError> {
        let binary = find_binary("MEMCACHED_BIN", "memcached").ok_or_else(|| {
            BenchError::Setup(
                "memcached not found: install it (`apt-get install -y memcached`) or set MEMCACHED_BIN".into(),
            )
        })?;
        Self::start(StoreKind::Memcached, |port| {
            let mut command = Command::new(&binary);
            command.args([
                "-l",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-t",
                "1",
                "-c",
                "4096",
                "-m",
                &memory_mb.to_string(),
            ]);
            if running_as_root() {
                // memcached refuses to run as root without -u.
                command.args(["-u", "root"]);
            }
            command
        })
        .await
    }

    /// Starts redis-server without persistence. When it is missing and we
    /// run as root, installs Debian's `redis-server` package first.
    pub(crate) async fn redis() -> Result<Self, BenchError> {
        let binary = match find_binary("REDIS_SERVER_BIN", "redis-server") {
            Some(binary) => binary,
            None => install_redis()?,
        };
        Self::start(StoreKind::Redis, |port| {
            let mut command = Command::new(&binary);
            command.args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ]);
            command
        })
        .await
    }

    async fn start(kind: StoreKind, command: impl Fn(u16) -> Command) -> Result<Self, BenchError> {
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            let mut command = command(port);
            command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            let child = command
                .spawn()
                .map_err(|e| BenchError::Setup(format!("cannot spawn {kind:?}: {e}")))?;
            let mut server = ServerProcess {
                kind,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                child: Some(child),
            };
            match server.wait_ready().await {
                Ok(()) => return Ok(server),
                Err(e) => failures.push(format!("port {port}: {e}")),
            }
        }
        Err(BenchError::Setup(format!(
            "{kind:?} did not start: {}",
            failures.join("; ")
        )))
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("exited with {status}"));
            }
            if self.command_count().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err("no answer".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `127.0.0.1:PORT`.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL and reap (no-op when already dead).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Store commands served and connections accepted so far.
    ///
    /// Commands, memcached: `cmd_get + cmd_set + cmd_touch + delete_hits +
    /// delete_misses` (`stats` itself is not counted); redis:
    /// `total_commands_processed`, which counts a command after answering
    /// it: the difference of two readings includes the earlier `INFO`
    /// ([`StoreCounters::delta`] subtracts it). Connections: memcached
    /// `total_connections`, redis `total_connections_received` (both
    /// include the connection of the reading itself).
    pub(crate) async fn command_count(&self) -> Result<Counts, String> {
        tokio::time::timeout(STATS_TIMEOUT, async {
            match self.kind {
                StoreKind::Memcached => {
                    let stats = memcached_stats(self.addr).await?;
                    let field = |name: &str| stats.get(name).copied().unwrap_or(0);
                    Ok(Counts {
                        commands: field("cmd_get")
                            + field("cmd_set")
                            + field("cmd_touch")
                            + field("delete_hits")
                            + field("delete_misses"),
                        connections: field("total_connections"),
                    })
                }
                StoreKind::Redis => redis_counts(self.addr).await,
            }
        })
        .await
        .map_err(|_| "stats timed out".to_owned())?
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One store's counters.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    /// Data commands served.
    pub(crate) commands: u64,
    /// Connections accepted.
    pub(crate) connections: u64,
}

/// The counters of a set of stores at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct StoreCounters {
    counts: Vec<Option<Counts>>,
    redis_reads: u64,
}

impl StoreCounters {
    /// Reads every store's counter (a dead store reads as `None`).
    pub(crate) async fn read(stores: &[&ServerProcess]) -> Self {
        let mut counts = Vec::with_capacity(stores.len());
        let mut redis_reads = 0;
        for store in stores {
            counts.push(store.command_count().await.ok());
            if store.kind == StoreKind::Redis {
                redis_reads += 1;
            }
        }
        StoreCounters { counts, redis_reads }
    }

    /// Commands and connections between `earlier` and `self`, over the
    /// stores both could read, without those of the readings themselves.
    pub(crate) fn delta(&self, earlier: &StoreCounters) -> Counts {
        let mut total = Counts::default();
        for (now, then) in self.counts.iter().zip(&earlier.counts) {
            if let (Some(now), Some(then)) = (now, then) {
                total.commands += now.commands.saturating_sub(then.commands);
                // The later reading's own connection.
                total.connections += now.connections.saturating_sub(then.connections + 1);
            }
        }
        total.commands = total.commands.saturating_sub(self.redis_reads);
        total
    }
}

async fn memcached_stats(addr: SocketAddr) -> Result<HashMap<String, u64>, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.write_all(b"stats\r\n").await.map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut stats = HashMap::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await.map_err(|e| e.to_string())? == 0 {
            return Err("connection closed during stats".into());
        }
        let line = line.trim_end();
        if line == "END" {
            return Ok(stats);
        }
        let mut parts = line.split(' ');
        if let (Some("STAT"), Some(name), Some(value)) = (parts.next(), parts.next(), parts.next())
            && let Ok(value) = value.parse()
        {
            stats.insert(name.to_owned(), value);
        }
    }
}

async fn redis_counts(addr: SocketAddr) -> Result<Counts, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).await.map_err(|e| e.to_string())?;
    let length: usize = header
        .trim_end()
        .strip_prefix('$')
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("unexpected INFO reply {header:?}"))?;
    let mut body = vec![0; length + 2];
    reader.read_exact(&mut body).await.map_err(|e| e.to_string())?;
    let info = String::from_utf8_lossy(&body);
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| format!("no {name} in INFO"))
    };
    Ok(Counts {
        commands: field("total_commands_processed")?,
        connections: field("total_connections_received")?,
    })
}

fn free_port() -> Result<u16, BenchError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| BenchError::Setup(format!("cannot bind 127.0.0.1:0: {e}")))?;
    Ok(listener
        .local_addr()
        .map_err(|e| BenchError::Setup(e.to_string()))?
        .port())
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// `$VAR`, else `name` on PATH, else `/usr/bin/name`.
fn find_binary(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| Some(Path::new("/usr/bin").join(name)).filter(|p| p.is_file()))
}

/// Installs Debian's `redis-server` package (root only).
fn install_redis() -> Result<PathBuf, BenchError> {
    let missing = || {
        BenchError::Setup(
            "redis-server not found: install it (`apt-get install -y redis-server`), set REDIS_SERVER_BIN, \
             or pass --skip-peers"
                .into(),
        )
    };
    if !running_as_root() {
        return Err(missing());
    }
    eprintln!("bench: redis-server missing, running `apt-get install -y redis-server`");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "redis-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
    };
    let ok = install().is_ok_and(|s| s.success())
        || (Command::new("apt-get")
            .args(["update", "-q"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
            && install().is_ok_and(|s| s.success()));
    if !ok {
        return Err(missing());
    }
    // The package starts a system instance; we only want the binary.
    let _ = Command::new("systemctl")
        .args(["disable", "--now", "redis-server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    find_binary("REDIS_SERVER_BIN", "redis-server").ok_or_else(missing)
}
