//! Integration-test harness for the memcached session manager.
//!
//! This crate spawns and controls **real processes** for end-to-end tests:
//!
//! * [`Memcached`] — one real `memcached` server on `127.0.0.1` at a random
//!   free port, with helpers to kill, freeze (`SIGSTOP`), thaw (`SIGCONT`) and
//!   restart it, plus raw ASCII-protocol helpers ([`Memcached::stats`],
//!   [`Memcached::get_raw`], [`Memcached::set_raw`], [`Memcached::keys`], …)
//!   to inspect what the code under test did to the server.
//! * [`Cluster`] — several [`Memcached`] nodes with ids `n1..nN` and a
//!   [`Cluster::spec`] string suitable for `--memcached-nodes`.
//! * [`DemoApp`] — the real `demo-app` binary listening on a random port,
//!   started and health-checked (`GET /health`).
//! * [`http_client`] / [`http_client_without_cookies`] — `reqwest` clients
//!   that never use a proxy.
//! * [`free_port`] and [`init_tracing`].
//! * [`FaultProxy`] / [`ProxyMesh`] — TCP proxies in front of memcached nodes
//!   that pass, delay, black-hole or refuse traffic ([`ProxyMode`]), one per
//!   (app instance, node) pair, to partition one instance from a node.
//!
//! And for the in-process suites:
//!
//! * [`TestApp`] — a [`memcached_sessions::SessionManager`] with small test
//!   routes, served by `warp` on `127.0.0.1:<random port>` in a spawned task.
//! * [`SessionClient`] — an HTTP client with a one-cookie jar that reports
//!   every `Set-Cookie` of the session cookie ([`Reply::set_cookie`]).
//! * [`eventually`] / [`wait_available`] (polling with a deadline instead of
//!   fixed sleeps), session-id anatomy ([`id_node`], [`id_route`],
//!   [`id_random`]), [`session_keys`] of a node and [`fast_config`].
//!
//! Every process started here is killed (and reaped) when its handle is
//! dropped, including when a test panics, so no process is left behind.
//!
//! The memcached binary is taken from the `MEMCACHED_BIN` environment
//! variable, else `memcached` on `PATH`, else `/usr/bin/memcached`
//! (install it with `apt-get install memcached`). The demo-app binary is
//! taken from `DEMO_APP_BIN`, else `target/<profile>/demo-app` next to the
//! running test executable, which is built (`cargo build -p demo-app`, once
//! per test process) before its first use.
//!
//! All process- and protocol-level helpers are synchronous (blocking, with
//! short timeouts); they can be called from `#[tokio::test]` functions too,
//! since the servers they talk to are separate processes.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

mod app;
mod client;
mod fault_proxy;
mod util;

pub use crate::app::{COUNT_KEY, DATA_KEY, TestApp};
pub use crate::client::{COOKIE_NAME, Reply, SessionClient, SetCookie};
pub use crate::fault_proxy::{FaultProxy, ProxyMesh, ProxyMode};
pub use crate::util::{
    ID_RANDOM_LEN, eventually, eventually_blocking, fast_config, id_node, id_random, id_route, raw_http_status,
    session_keys, wait_available,
};

/// Connect/read/write timeout of the raw memcached protocol helpers.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a freshly spawned memcached may take to answer.
const MEMCACHED_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// How many fresh ports [`Memcached::start`] tries.
const MEMCACHED_START_ATTEMPTS: usize = 5;
/// How long [`Memcached::restart_empty`] keeps retrying to bind the old port.
const MEMCACHED_REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the demo app may take until `GET /health` returns 200.
const DEMO_APP_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How many fresh ports [`DemoApp::start`] tries if the process exits early.
const DEMO_APP_START_ATTEMPTS: usize = 3;
/// How long [`DemoApp::terminate`] waits after `SIGTERM`.
const DEMO_APP_TERM_TIMEOUT: Duration = Duration::from_secs(10);
/// Total request timeout of the HTTP clients.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll interval while waiting for processes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

// ---------------------------------------------------------------------------
// Generic helpers
// ---------------------------------------------------------------------------

/// Returns a TCP port on `127.0.0.1` that was free a moment ago.
///
/// Binds a listener on `127.0.0.1:0`, reads the port the kernel picked and
/// closes the listener again. Another process could grab the port before the
/// caller binds it; the process starters in this crate retry with a new port
/// when that happens.
///
/// # Panics
///
/// If no port on `127.0.0.1` can be bound.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("failed to bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("failed to read the local address of a bound listener")
        .port()
}

/// A tombstone as stored (unsealed): the envelope's magic and its variant
/// `Gone`.
pub const TOMBSTONE: [u8; 3] = [0xA5, 0x53, 3];

/// Installs a `tracing_subscriber` fmt subscriber for test output.
///
/// The filter comes from `RUST_LOG` (default `info`) and output goes through
/// the libtest-aware test writer. Calling it more than once (or after another
/// subscriber was installed) is harmless: the error is ignored.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Returns an HTTP client with its own cookie store.
///
/// The client never uses a proxy (environment proxy settings are ignored)
/// and has a total request timeout of 10 s. Redirects are followed with
/// reqwest's default policy. Each call returns a client with a fresh, empty
/// cookie jar, i.e. a separate "browser".
///
/// # Panics
///
/// If reqwest fails to build the client.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .expect("failed to build the reqwest client")
}

/// Returns an HTTP client like [`http_client`] but without a cookie store.
///
/// `Set-Cookie` response headers are ignored and no `Cookie` header is sent
/// unless the test adds one itself.
///
/// # Panics
///
/// If reqwest fails to build the client.
pub fn http_client_without_cookies() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(HTTP_TIMEOUT)
        .build()
        .expect("failed to build the reqwest client")
}

/// Sends `sig` to the (not yet reaped) child.
fn send_signal(child: &Child, sig: Signal) -> nix::Result<()> {
    let pid = i32::try_from(child.id()).expect("child pid does not fit in pid_t");
    signal::kill(Pid::from_raw(pid), sig)
}

/// Sends `SIGCONT` and `SIGKILL` to the child (unless it already exited) and
/// reaps it.
///
/// Signals are only sent while the child is not reaped yet, so its pid
/// cannot have been reused by another process.
fn kill_and_reap(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // A stopped process would not die from SIGKILL any later, but continue it
    // anyway so that nothing is ever left in the stopped state.
    let _ = send_signal(child, Signal::SIGCONT);
    let _ = send_signal(child, Signal::SIGKILL);
    child.wait().ok()
}

/// Polls `child.try_wait()` until it exits or `timeout` elapses.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => sleep(POLL_INTERVAL),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// `true` if `child` is still running; reaps it (and clears the slot) if not.
fn child_running(slot: &mut Option<Child>) -> bool {
    let running = match slot.as_mut() {
        None => return false,
        Some(child) => matches!(child.try_wait(), Ok(None)),
    };
    if !running {
        *slot = None;
    }
    running
}

/// Finds `name` as an executable file in one of the `PATH` directories.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Reads an environment variable holding a binary path; panics if it is set
/// but does not point to a file.
fn binary_from_env(var: &str) -> Option<PathBuf> {
    let value: OsString = std::env::var_os(var).filter(|v| !v.is_empty())?;
    let path = PathBuf::from(value);
    assert!(
        path.is_file(),
        "{var} is set to {}, but that file does not exist",
        path.display()
    );
    Some(path)
}

// ---------------------------------------------------------------------------
// memcached
// ---------------------------------------------------------------------------

/// Locates the memcached binary.
///
/// Order: `MEMCACHED_BIN`, `memcached` on `PATH`, `/usr/bin/memcached`.
///
/// # Panics
///
/// If no binary is found (the message says to install memcached).
pub fn memcached_binary() -> PathBuf {
    if let Some(path) = binary_from_env("MEMCACHED_BIN") {
        return path;
    }
    if let Some(path) = find_on_path("memcached") {
        return path;
    }
    let fallback = PathBuf::from("/usr/bin/memcached");
    assert!(
        fallback.is_file(),
        "memcached binary not found: set MEMCACHED_BIN, put `memcached` on PATH \
         or install it (Debian/Ubuntu: `apt-get install memcached`)"
    );
    fallback
}

/// One real memcached server process on `127.0.0.1` at a random free port.
///
/// Started with `-l 127.0.0.1 -p PORT -U 0 -m 64 -t 2` (plus `-u root` when
/// the tests run as root, because memcached refuses to run as root without
/// `-u`). The process is killed and reaped when the handle is dropped.
///
/// The raw protocol helpers ([`stats`](Self::stats), [`get_raw`](Self::get_raw),
/// …) open a new TCP connection per call with a 2 s connect/read/write
/// timeout and panic on any I/O or protocol error, except the `try_*`
/// variants and [`version`](Self::version), which return the error.
///
/// Note that the data helpers are ordinary memcached commands and therefore
/// move the server's statistics (see [`Stats`] for exactly how);
/// [`keys`](Self::keys) and [`stats`](Self::stats) do not move any of the
/// command/hit/miss counters.
#[derive(Debug)]
pub struct Memcached {
    binary: PathBuf,
    port: u16,
    /// Extra command-line arguments, kept for restarts.
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl Memcached {
    /// Starts a memcached process on a random free port and waits (up to
    /// ~5 s) until it accepts connections, answers `version`, and its
    /// `stats` report the pid of the process just spawned (so a different
    /// server that happens to own the port is never mistaken for ours).
    ///
    /// If the process exits (e.g. the port was taken in the meantime) or does
    /// not become ready, it is retried a few times with a new port.
    ///
    /// # Panics
    ///
    /// If memcached is not installed or no attempt succeeded.
    pub fn start() -> Memcached {
        Memcached::start_with_args(&[])
    }

    /// Like [`start`](Self::start), with extra memcached arguments (e.g.
    /// `["-I", "1k", "-o", "slab_chunk_max=1024"]` for a 1 KiB item limit), also used by
    /// [`restart_empty`](Self::restart_empty).
    ///
    /// # Panics
    ///
    /// If memcached is not installed or no attempt succeeded.
    pub fn start_with_args(extra_args: &[&str]) -> Memcached {
        let extra_args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        let binary = memcached_binary();
        let mut errors = Vec::new();
        for _ in 0..MEMCACHED_START_ATTEMPTS {
            let port = free_port();
            match launch_memcached(&binary, port, &extra_args) {
                Ok(child) => {
                    return Memcached {
                        binary,
                        port,
                        extra_args,
                        child: Some(child),
                    };
                }
                Err(err) => errors.push(format!("port {port}: {err}")),
            }
        }
        panic!(
            "failed to start memcached ({}) after {MEMCACHED_START_ATTEMPTS} attempts:\n{}",
            binary.display(),
            errors.join("\n")
        );
    }

    /// The TCP port the server listens on (stays the same across
    /// [`restart_empty`](Self::restart_empty)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server address as `"127.0.0.1:PORT"`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The pid of the current process, or `None` after [`kill`](Self::kill)
    /// (or once [`is_running`](Self::is_running) noticed that it exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process with `SIGKILL` (works even while frozen) and reaps
    /// it. Afterwards connections to the port are refused. No-op if it is
    /// not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Freezes the server with `SIGSTOP`.
    ///
    /// Returns once every thread of the process is in the stopped state (read
    /// from `/proc`, at most ~1 s). While frozen the kernel still completes
    /// TCP handshakes (the listen backlog), so connecting succeeds, but no
    /// request is answered: reads time out.
    ///
    /// # Panics
    ///
    /// If the process is not running.
    pub fn freeze(&self) {
        let child = self.child.as_ref().expect("freeze: memcached is not running");
        send_signal(child, Signal::SIGSTOP).expect("failed to send SIGSTOP to memcached");
        wait_until_stopped(child.id(), Duration::from_secs(1));
    }

    /// Resumes a frozen server with `SIGCONT`; requests that were pending
    /// while it was frozen are processed now.
    ///
    /// # Panics
    ///
    /// If the process is not running.
    pub fn thaw(&self) {
        let child = self.child.as_ref().expect("thaw: memcached is not running");
        send_signal(child, Signal::SIGCONT).expect("failed to send SIGCONT to memcached");
    }

    /// Kills the server if it is running and starts a new, empty one on the
    /// **same** port, waiting until it is ready.
    ///
    /// Binding is retried for up to ~5 s (memcached sets `SO_REUSEADDR`, so
    /// `TIME_WAIT` connections do not block it; the retry covers other
    /// transient conflicts).
    ///
    /// # Panics
    ///
    /// If the new process does not come up on the same port in time.
    pub fn restart_empty(&mut self) {
        self.kill();
        let deadline = Instant::now() + MEMCACHED_REBIND_TIMEOUT;
        loop {
            match launch_memcached(&self.binary, self.port, &self.extra_args) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(err) if Instant::now() >= deadline => {
                    panic!("failed to restart memcached on port {}: {err}", self.port)
                }
                Err(_) => sleep(Duration::from_millis(100)),
            }
        }
    }

    /// `true` while the process has not exited (a frozen process counts as
    /// running). Reaps the process if it exited on its own.
    pub fn is_running(&mut self) -> bool {
        child_running(&mut self.child)
    }

    // -- raw protocol --------------------------------------------------------

    fn connect(&self) -> io::Result<Connection> {
        Connection::open(self.port)
    }

    /// Sends `version` and returns the version string (e.g. `"1.6.18"`).
    ///
    /// Returns the I/O error instead of panicking, so it doubles as a
    /// liveness probe: it fails with `ConnectionRefused` when the server is
    /// killed and with a timeout (`WouldBlock`/`TimedOut`) after ~2 s while
    /// it is frozen.
    ///
    /// # Errors
    ///
    /// Connection, timeout and protocol errors (`InvalidData`).
    pub fn version(&self) -> io::Result<String> {
        let mut conn = self.connect()?;
        conn.send(b"version\r\n")?;
        let line = conn.read_line()?;
        line.strip_prefix("VERSION ")
            .map(str::to_owned)
            .ok_or_else(|| protocol_error(format!("unexpected reply to version: {line:?}")))
    }

    /// Fetches `stats` (general statistics); see [`Stats`].
    ///
    /// # Panics
    ///
    /// On I/O or protocol errors.
    pub fn stats(&self) -> Stats {
        self.try_stats()
            .unwrap_or_else(|err| panic!("memcached {}: stats failed: {err}", self.addr()))
    }

    /// Like [`stats`](Self::stats) but returns errors.
    ///
    /// # Errors
    ///
    /// Connection, timeout and protocol errors (`InvalidData`).
    pub fn try_stats(&self) -> io::Result<Stats> {
        let mut conn = self.connect()?;
        conn.send(b"stats\r\n")?;
        let mut values = HashMap::new();
        loop {
            let line = conn.read_line()?;
            if line == "END" {
                return Ok(Stats { values });
            }
            let mut parts = line.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("STAT"), Some(name), Some(value)) => {
                    values.insert(name.to_owned(), value.to_owned());
                }
                _ => return Err(protocol_error(format!("unexpected stats line: {line:?}"))),
            }
        }
    }

    /// Sends one meta (or any single-reply) command and reads its reply.
    ///
    /// `command` is the command line without the trailing `\r\n`, e.g.
    /// `"mg foo v T30"`; `data` is the data block for `ms` (the `\r\n` after
    /// it is added here). A reply starting with `VA <size>` has its value
    /// block read into [`MetaReply::value`]. Error replies (`CLIENT_ERROR …`,
    /// `SERVER_ERROR …`, `ERROR`) are returned as ordinary replies.
    ///
    /// The command must produce exactly one reply line (plus value): do not
    /// use the quiet flag `q` (a suppressed reply would make this wait for
    /// the 2 s timeout).
    ///
    /// # Panics
    ///
    /// On I/O or protocol errors, or if `command` contains `\r` or `\n`.
    pub fn meta(&self, command: &str, data: Option<&[u8]>) -> MetaReply {
        self.try_meta(command, data)
            .unwrap_or_else(|err| panic!("memcached {}: {command:?} failed: {err}", self.addr()))
    }

    /// The remaining TTL memcached reports for `key` (`mg <key> t`):
    /// `None` on a miss, `Some(-1)` for "never expires".
    ///
    /// # Panics
    ///
    /// On I/O errors or an unexpected reply.
    pub fn remaining_ttl(&self, key: &str) -> Option<i64> {
        let reply = self.meta(&format!("mg {key} t"), None);
        match reply.code() {
            "EN" => None,
            "HD" => reply
                .header
                .split(' ')
                .find_map(|flag| flag.strip_prefix('t'))
                .map(|t| t.parse().unwrap_or_else(|_| panic!("bad TTL in {:?}", reply.header))),
            _ => panic!("unexpected reply to mg {key} t: {:?}", reply.header),
        }
    }

    /// Like [`meta`](Self::meta) but returns I/O and protocol errors.
    ///
    /// # Errors
    ///
    /// Connection, timeout and protocol errors (`InvalidData`); error
    /// replies from the server are *not* errors here.
    ///
    /// # Panics
    ///
    /// If `command` contains `\r` or `\n`.
    pub fn try_meta(&self, command: &str, data: Option<&[u8]>) -> io::Result<MetaReply> {
        assert!(
            !command.contains(['\r', '\n']),
            "memcached command must be a single line: {command:?}"
        );
        let mut request = Vec::with_capacity(command.len() + 4 + data.map_or(0, <[u8]>::len));
        request.extend_from_slice(command.as_bytes());
        request.extend_from_slice(b"\r\n");
        if let Some(data) = data {
            request.extend_from_slice(data);
            request.extend_from_slice(b"\r\n");
        }
        let mut conn = self.connect()?;
        conn.send(&request)?;
        let header = conn.read_line()?;
        let value = match header.strip_prefix("VA ") {
            Some(rest) => {
                let size: usize = rest
                    .split(' ')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| protocol_error(format!("bad VA reply: {header:?}")))?;
                Some(conn.read_block(size)?)
            }
            None => None,
        };
        Ok(MetaReply { header, value })
    }

    /// Reads `key` with `mg <key> v`; `None` if it is missing (or expired).
    ///
    /// Counts as `cmd_get` + `get_hits`/`get_misses` (see [`Stats`]).
    ///
    /// # Panics
    ///
    /// On I/O errors, unexpected replies, or keys that are not valid ASCII
    /// protocol keys (empty, longer than 250 bytes, whitespace or control
    /// characters).
    pub fn get_raw(&self, key: &str) -> Option<Vec<u8>> {
        self.try_get_raw(key)
            .unwrap_or_else(|err| panic!("memcached {}: get {key:?} failed: {err}", self.addr()))
    }

    /// Like [`get_raw`](Self::get_raw) but returns I/O and protocol errors
    /// (e.g. a timeout while the server is frozen).
    ///
    /// # Errors
    ///
    /// Connection and timeout errors, and `InvalidData` for replies other
    /// than `VA`/`EN`.
    ///
    /// # Panics
    ///
    /// On invalid keys.
    pub fn try_get_raw(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        check_key(key);
        let reply = self.try_meta(&format!("mg {key} v"), None)?;
        match reply.code() {
            "VA" => Ok(reply.value),
            "EN" => Ok(None),
            _ => Err(protocol_error(format!("unexpected reply to mg: {:?}", reply.header))),
        }
    }

    /// Stores `value` under `key` with `ms <key> <len> T<ttl_secs>` (client
    /// flags 0). `ttl_secs == 0` means "never expires"; like all memcached
    /// expiry times, values above 30 days are absolute Unix timestamps.
    ///
    /// Counts as `cmd_set` (+ `total_items`).
    ///
    /// # Panics
    ///
    /// On I/O errors, invalid keys, or if the server does not reply `HD`.
    pub fn set_raw(&self, key: &str, value: &[u8], ttl_secs: u32) {
        check_key(key);
        let reply = self.meta(&format!("ms {key} {} T{ttl_secs}", value.len()), Some(value));
        assert_eq!(reply.header, "HD", "memcached {}: set {key:?} failed", self.addr());
    }

    /// Deletes `key` with `md <key>`; returns `true` if it existed.
    ///
    /// Counts as `delete_hits`/`delete_misses` (no `cmd_*` counter).
    ///
    /// # Panics
    ///
    /// On I/O errors, invalid keys, or unexpected replies.
    pub fn delete_raw(&self, key: &str) -> bool {
        check_key(key);
        let reply = self.meta(&format!("md {key}"), None);
        match reply.code() {
            "HD" => true,
            "NF" => false,
            _ => panic!(
                "memcached {}: delete {key:?}: unexpected reply {:?}",
                self.addr(),
                reply.header
            ),
        }
    }

    /// Invalidates all items with `flush_all`.
    ///
    /// Flushed items are immediately invisible to reads and to
    /// [`keys`](Self::keys), but `curr_items` may keep counting them until
    /// memcached reclaims their memory lazily.
    ///
    /// # Panics
    ///
    /// On I/O errors or if the reply is not `OK`.
    pub fn flush_all(&self) {
        let reply = self.meta("flush_all", None);
        assert_eq!(reply.header, "OK", "memcached {}: flush_all failed", self.addr());
    }

    /// Lists all live keys, sorted, using `lru_crawler metadump all`.
    ///
    /// Does not move `cmd_get`/`get_hits`/… (it does not fetch the items).
    /// The URL-encoded `key=` field of each line is decoded (invalid UTF-8 is
    /// replaced lossily).
    ///
    /// Verified against memcached 1.6.18: an item written immediately before
    /// the dump is always listed (300/300 write-then-dump trials); expired
    /// and `flush_all`-ed items are *not* listed even though they may still
    /// be counted in `curr_items`; items marked stale with `md <key> I` are
    /// still listed. Only one crawler request can run at a time — memcached
    /// answers `BUSY currently processing crawler request` to a concurrent
    /// dump — so this retries on `BUSY` for up to ~2 s.
    ///
    /// # Panics
    ///
    /// On I/O or protocol errors, or if the crawler stays busy.
    pub fn keys(&self) -> Vec<String> {
        self.try_keys()
            .unwrap_or_else(|err| panic!("memcached {}: metadump failed: {err}", self.addr()))
    }

    /// Like [`keys`](Self::keys) but returns errors.
    ///
    /// # Errors
    ///
    /// Connection, timeout and protocol errors; `TimedOut` if the crawler
    /// stays busy for ~2 s.
    pub fn try_keys(&self) -> io::Result<Vec<String>> {
        let deadline = Instant::now() + IO_TIMEOUT;
        loop {
            let mut conn = self.connect()?;
            conn.send(b"lru_crawler metadump all\r\n")?;
            let mut keys = Vec::new();
            let mut line = conn.read_line()?;
            if line.starts_with("BUSY") {
                if Instant::now() >= deadline {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, line));
                }
                sleep(POLL_INTERVAL);
                continue;
            }
            loop {
                if line == "END" {
                    keys.sort();
                    return Ok(keys);
                }
                let encoded = line
                    .split(' ')
                    .find_map(|field| field.strip_prefix("key="))
                    .ok_or_else(|| protocol_error(format!("unexpected metadump line: {line:?}")))?;
                keys.push(percent_decode(encoded));
                line = conn.read_line()?;
            }
        }
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns memcached on `port` and waits until it is ready; kills it on
/// failure.
fn launch_memcached(binary: &Path, port: u16, extra_args: &[String]) -> Result<Child, String> {
    let port_arg = port.to_string();
    let mut command = Command::new(binary);
    command.args(["-l", "127.0.0.1", "-p", &port_arg, "-U", "0", "-m", "64", "-t", "2"]);
    command.args(extra_args);
    if nix::unistd::geteuid().is_root() {
        // memcached refuses to start as root without -u.
        command.args(["-u", "root"]);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|err| format!("failed to spawn {}: {err}", binary.display()))?;
    match wait_memcached_ready(&mut child, port) {
        Ok(()) => Ok(child),
        Err(err) => {
            kill_and_reap(&mut child);
            Err(err)
        }
    }
}

fn wait_memcached_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + MEMCACHED_READY_TIMEOUT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            return Err(format!("memcached exited early ({status}): {}", stderr.trim()));
        }
        let last_error = match probe_memcached(port) {
            Ok(pid) if pid == child.id() => return Ok(()),
            Ok(pid) => format!("port {port} is served by another memcached (pid {pid})"),
            Err(err) => err.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "memcached did not become ready on port {port} within {MEMCACHED_READY_TIMEOUT:?}: {last_error}"
            ));
        }
        sleep(POLL_INTERVAL);
    }
}

/// Checks that the server on `port` answers `version` and returns the pid
/// from its `stats`.
fn probe_memcached(port: u16) -> io::Result<u32> {
    let mut conn = Connection::open(port)?;
    conn.send(b"version\r\nstats\r\n")?;
    let version = conn.read_line()?;
    if !version.starts_with("VERSION ") {
        return Err(protocol_error(format!("unexpected reply to version: {version:?}")));
    }
    let mut pid = None;
    loop {
        let line = conn.read_line()?;
        if line == "END" {
            break;
        }
        if let Some(value) = line.strip_prefix("STAT pid ") {
            pid = value.parse().ok();
        }
    }
    pid.ok_or_else(|| protocol_error("stats without pid".to_owned()))
}

/// Waits until all threads of `pid` are in the stopped state (`T`/`t` in
/// `/proc/<pid>/task/*/stat`), or `timeout` elapses.
fn wait_until_stopped(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let task_dir = PathBuf::from(format!("/proc/{pid}/task"));
    while Instant::now() < deadline {
        let Ok(entries) = std::fs::read_dir(&task_dir) else {
            return; // no procfs: nothing to wait for
        };
        let all_stopped = entries.flatten().all(|entry| {
            std::fs::read_to_string(entry.path().join("stat"))
                .ok()
                .and_then(|stat| {
                    // "tid (comm) S ..." — comm may contain spaces/parens.
                    let after = &stat[stat.rfind(')')? + 1..];
                    after.trim_start().chars().next()
                })
                .is_some_and(|state| state == 'T' || state == 't')
        });
        if all_stopped {
            return;
        }
        sleep(Duration::from_millis(5));
    }
}

fn check_key(key: &str) {
    assert!(
        !key.is_empty() && key.len() <= 250 && !key.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()),
        "invalid memcached key {key:?}: must be 1..=250 bytes without whitespace or control characters"
    );
}

fn protocol_error(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Decodes `%XX` escapes (as used by `lru_crawler metadump`).
fn percent_decode(input: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One client connection with timeouts, used by the raw protocol helpers.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(port: u16) -> io::Result<Connection> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            reader: BufReader::new(stream),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Reads one line and strips the `\r\n` (or bare `\n`, which metadump
    /// uses for its item lines).
    fn read_line(&mut self) -> io::Result<String> {
        let mut buf = Vec::new();
        let n = self.reader.read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "memcached closed the connection",
            ));
        }
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Reads a `size`-byte data block followed by `\r\n`.
    fn read_block(&mut self, size: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; size + 2];
        self.reader.read_exact(&mut buf)?;
        if !buf.ends_with(b"\r\n") {
            return Err(protocol_error("data block not terminated by \\r\\n".to_owned()));
        }
        buf.truncate(size);
        Ok(buf)
    }
}

/// The reply to a command sent with [`Memcached::meta`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaReply {
    /// The reply line without `\r\n`, e.g. `"HD"`, `"EN"`, `"VA 3 t59"`.
    pub header: String,
    /// The value block of a `VA` reply.
    pub value: Option<Vec<u8>>,
}

impl MetaReply {
    /// The status code: the first word of [`header`](Self::header)
    /// (`"HD"`, `"VA"`, `"EN"`, `"NF"`, `"NS"`, `"EX"`, `"CLIENT_ERROR"`, …).
    pub fn code(&self) -> &str {
        self.header.split(' ').next().unwrap_or("")
    }
}

/// A snapshot of memcached's general `stats`.
///
/// # How commands move the counters (verified on memcached 1.6.18)
///
/// Each row is one command sent on its own; counters not listed are
/// unchanged. The meta protocol shares the classic counters:
///
/// | command                                  | result | counters moved (+1 each)                  |
/// |------------------------------------------|--------|-------------------------------------------|
/// | `ms <k> <n> [T<ttl>]` (new or existing)  | `HD`   | `cmd_set`, `total_items` (`curr_items` +1 only if `<k>` was new) |
/// | `ms` that is not stored (`NS`/`EX`, e.g. `ME` add on an existing key, `MA` append on a missing key, bad `C<cas>`) | `NS`/`EX` | `cmd_set` only (`cas_badval` too for `EX`) |
/// | `mg <k>` / `mg <k> v` (any flags without `T`), hit  | `VA`/`HD` | `cmd_get`, `get_hits`           |
/// | `mg <k> …` (with or without `T`), miss   | `EN`   | `cmd_get`, `get_misses`                   |
/// | `mg <k> … T<ttl>`, hit                   | `VA`/`HD` | `cmd_touch`, `touch_hits` — **not** `cmd_get`/`get_hits` |
/// | `mg <k> … T<ttl>` on an expired item     | `EN`   | `cmd_get`, `get_misses`, `get_expired` (`curr_items` −1) |
/// | `md <k>`, hit                            | `HD`   | `delete_hits` (`curr_items` −1) — **no** `cmd_*` counter |
/// | `md <k>`, miss                           | `NF`   | `delete_misses`                           |
/// | `md <k> I` (mark stale), hit             | `HD`   | nothing at all                            |
/// | `mg <k> v N<ttl>` (autovivify), miss     | `VA … W` | `cmd_get`, `get_hits` (sic), `curr_items`, `total_items` |
/// | classic `get k1 k2 …`                    |        | `cmd_get` +1 **per key**, `get_hits`/`get_misses` per key |
/// | classic `touch`/`gat`, hit / miss        |        | `cmd_touch` + `touch_hits` / `touch_misses` |
/// | `stats`, `version`, `mn`, `lru_crawler metadump all` |  | nothing                          |
///
/// Notable asymmetry: `mg` with `T` counts as a *touch* on a hit, but as a
/// *get miss* on a miss — `touch_misses` is never moved by `mg`. The quiet
/// flag `q` does not change the accounting. `curr_items` is not reduced by
/// `flush_all` or by expiry until the items are reclaimed (lazily), so
/// prefer [`Memcached::keys`] to check which items are live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// All `STAT <name> <value>` pairs, values unparsed.
    pub values: HashMap<String, String>,
}

impl Stats {
    /// The raw value of stat `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The value of stat `name` as an integer.
    ///
    /// # Panics
    ///
    /// If the stat is missing or not an unsigned integer.
    pub fn get_u64(&self, name: &str) -> u64 {
        let raw = self
            .get(name)
            .unwrap_or_else(|| panic!("memcached stat {name:?} is missing"));
        raw.parse()
            .unwrap_or_else(|_| panic!("memcached stat {name:?} is not an integer: {raw:?}"))
    }

    /// `self[name] - earlier[name]` for counter `name` (may be negative for
    /// gauges such as `curr_items`).
    ///
    /// # Panics
    ///
    /// Like [`get_u64`](Self::get_u64).
    pub fn delta(&self, earlier: &Stats, name: &str) -> i64 {
        let now = i128::from(self.get_u64(name));
        let before = i128::from(earlier.get_u64(name));
        i64::try_from(now - before).expect("stat delta out of range")
    }

    /// `cmd_get`: `get`/`gets` keys and `mg` commands, except `mg … T` hits.
    pub fn cmd_get(&self) -> u64 {
        self.get_u64("cmd_get")
    }

    /// `cmd_set`: every storage command (`set`/`add`/…/`ms`), stored or not.
    pub fn cmd_set(&self) -> u64 {
        self.get_u64("cmd_set")
    }

    /// `cmd_touch`: `touch`/`gat`/`gats` and `mg … T<ttl>` **hits**.
    pub fn cmd_touch(&self) -> u64 {
        self.get_u64("cmd_touch")
    }

    /// `get_hits`: successful reads (`get`, `mg` without `T`).
    pub fn get_hits(&self) -> u64 {
        self.get_u64("get_hits")
    }

    /// `get_misses`: reads of missing/expired keys (also `mg … T` misses).
    pub fn get_misses(&self) -> u64 {
        self.get_u64("get_misses")
    }

    /// `get_expired`: reads that found an expired item.
    pub fn get_expired(&self) -> u64 {
        self.get_u64("get_expired")
    }

    /// `delete_hits`: `delete`/`md` of an existing key.
    pub fn delete_hits(&self) -> u64 {
        self.get_u64("delete_hits")
    }

    /// `delete_misses`: `delete`/`md` of a missing key.
    pub fn delete_misses(&self) -> u64 {
        self.get_u64("delete_misses")
    }

    /// `touch_hits`: `touch`/`gat` and `mg … T<ttl>` hits.
    pub fn touch_hits(&self) -> u64 {
        self.get_u64("touch_hits")
    }

    /// `touch_misses`: `touch`/`gat` misses (never moved by `mg`).
    pub fn touch_misses(&self) -> u64 {
        self.get_u64("touch_misses")
    }

    /// `curr_items`: items currently stored (see the note on lazy reclaim).
    pub fn curr_items(&self) -> u64 {
        self.get_u64("curr_items")
    }

    /// `total_items`: items ever stored (each successful store counts).
    pub fn total_items(&self) -> u64 {
        self.get_u64("total_items")
    }
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

/// Several independent memcached nodes, identified as `n1..nN`.
///
/// `nodes[0]` is `n1`, `nodes[1]` is `n2`, and so on.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes, in id order (`n1` first).
    pub nodes: Vec<Memcached>,
}

impl Cluster {
    /// Starts `n` memcached nodes.
    pub fn start(n: usize) -> Cluster {
        Cluster {
            nodes: (0..n).map(|_| Memcached::start()).collect(),
        }
    }

    /// The node list for `--memcached-nodes`:
    /// `"n1:127.0.0.1:P1,n2:127.0.0.1:P2,..."`.
    pub fn spec(&self) -> String {
        let mut spec = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if i > 0 {
                spec.push(',');
            }
            let _ = write!(spec, "n{}:{}", i + 1, node.addr());
        }
        spec
    }

    /// The node ids, `["n1", …, "nN"]`.
    pub fn ids(&self) -> Vec<String> {
        (1..=self.nodes.len()).map(|i| format!("n{i}")).collect()
    }

    /// The node with id `id` (`"n1"`…).
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub fn node(&self, id: &str) -> &Memcached {
        &self.nodes[self.index_of(id)]
    }

    /// The node with id `id` (`"n1"`…), mutably (to kill/restart it).
    ///
    /// # Panics
    ///
    /// If there is no such node.
    pub fn node_mut(&mut self, id: &str) -> &mut Memcached {
        let index = self.index_of(id);
        &mut self.nodes[index]
    }

    /// Whether `key` holds an (unsealed) tombstone: the envelope's magic and
    /// its variant `Gone`, as a logout, an expiry or a cycled id leaves.
    pub fn holds_tombstone(&self, key: &str) -> bool {
        self.nodes
            .iter()
            .any(|node| node.get_raw(key).is_some_and(|bytes| bytes == TOMBSTONE))
    }

    /// The ids of the nodes that currently hold `key`, using
    /// [`Memcached::keys`] (so no get/hit/miss counter moves). Nodes that
    /// are not answering are skipped.
    pub fn locate(&self, key: &str) -> Vec<String> {
        self.ids()
            .into_iter()
            .zip(&self.nodes)
            .filter(|(_, node)| node.try_keys().is_ok_and(|keys| keys.iter().any(|k| k == key)))
            .map(|(id, _)| id)
            .collect()
    }

    fn index_of(&self, id: &str) -> usize {
        id.strip_prefix('n')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| (1..=self.nodes.len()).contains(n))
            .map(|n| n - 1)
            .unwrap_or_else(|| {
                panic!(
                    "unknown memcached node id {id:?}; this cluster has n1..n{}",
                    self.nodes.len()
                )
            })
    }
}

// ---------------------------------------------------------------------------
// demo-app
// ---------------------------------------------------------------------------

/// Locates the `demo-app` binary, building it first.
///
/// Order: the `DEMO_APP_BIN` environment variable (used as is, never
/// built), else `demo-app` in the cargo profile directory of the running
/// test executable (the test runs from `target/<profile>/deps/<test>-<hash>`,
/// so this is `target/<profile>/demo-app`). In the second case
/// `cargo build -p demo-app` for that profile and target directory runs
/// first, once per test process (a no-op when it is up to date), so a test
/// never runs a binary older than its source.
///
/// # Panics
///
/// If the build fails or the binary does not exist afterwards.
pub fn demo_app_binary() -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    built_binary("DEMO_APP_BIN", &BUILT, &["-p", "demo-app"], Path::new("demo-app"))
}

/// Locates the tower-sessions example app (`tower-sessions-memcached`'s
/// `counter` example, the demo's `/counter` contract on tower-sessions with
/// the replicated store), building it first — like [`demo_app_binary`],
/// with `COUNTER_EXAMPLE_BIN` and `target/<profile>/examples/counter`.
///
/// # Panics
///
/// If the build fails or the binary does not exist afterwards.
pub fn counter_example_binary() -> PathBuf {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    built_binary(
        "COUNTER_EXAMPLE_BIN",
        &BUILT,
        &["-p", "tower-sessions-memcached", "--example", "counter"],
        Path::new("examples/counter"),
    )
}

/// The binary at `relative` in the profile directory of the running test,
/// built with `cargo build <target>` once per process (`built` remembers
/// the outcome) — or the path in the environment variable `env`, unbuilt.
fn built_binary(env: &str, built: &OnceLock<Result<(), String>>, target: &[&str], relative: &Path) -> PathBuf {
    if let Some(path) = binary_from_env(env) {
        return path;
    }
    let exe = std::env::current_exe().expect("cannot determine the current test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has no parent directory")
        .to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    let mut path = dir.join(relative);
    path.as_mut_os_string().push(std::env::consts::EXE_SUFFIX);
    if let Err(error) = built.get_or_init(|| build_target(&dir, target)) {
        panic!("{error}");
    }
    assert!(
        path.is_file(),
        "{} not found after building it: build it with `cargo build {}` (same profile as the tests) or set {env}",
        path.display(),
        target.join(" ")
    );
    path
}

/// Runs `cargo build <target>` into `profile_dir` (`<target>/<profile>`).
fn build_target(profile_dir: &Path, target: &[&str]) -> Result<(), String> {
    let what = format!("`cargo build {}`", target.join(" "));
    match cargo_build(profile_dir, target) {
        Ok(Some(status)) if status.success() => Ok(()),
        Ok(Some(status)) => Err(format!(
            "{what} into {} failed ({status}); see its output above, or set the binary's environment variable",
            profile_dir.display()
        )),
        Ok(None) => Err(format!("cannot tell the cargo profile of {}", profile_dir.display())),
        Err(err) => Err(format!("cannot run {what}: {err}")),
    }
}

/// Runs `cargo build --quiet -p demo-app` for the cargo profile whose
/// output directory is `profile_dir` (`<target>/<profile>`, as the
/// running test or tool executable finds it), with this workspace's
/// manifest. `Ok(None)`: not run — no profile can be told from the
/// directory, or the workspace sources are not there. Otherwise cargo's
/// exit status (its output goes to this process's stdout and stderr).
///
/// # Errors
///
/// When cargo cannot be started (`$CARGO`, else `cargo` on `PATH`).
pub fn cargo_build_demo_app(profile_dir: &Path) -> io::Result<Option<ExitStatus>> {
    cargo_build(profile_dir, &["-p", "demo-app"])
}

/// [`cargo_build_demo_app`] for any build target (`-p <package> …`).
fn cargo_build(profile_dir: &Path, target: &[&str]) -> io::Result<Option<ExitStatus>> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let (Some(profile), Some(target_dir)) = (
        profile_dir.file_name().and_then(|name| name.to_str()),
        profile_dir.parent(),
    ) else {
        return Ok(None);
    };
    if !manifest.is_file() {
        return Ok(None);
    }
    // The `dev` profile builds into `debug/`; every other profile into its name.
    let profile = if profile == "debug" { "dev" } else { profile };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(&cargo)
        .args(["build", "--quiet"])
        .args(target)
        .args(["--profile", profile])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .status()
        .map(Some)
}

/// The real `demo-app` binary, running as a child process on
/// `127.0.0.1:<random port>`.
///
/// The child inherits stdout and stderr so its logs appear in the test
/// output; `RUST_LOG` defaults to `info` unless the test process has it set.
/// The process is killed (`SIGKILL`) and reaped when dropped.
#[derive(Debug)]
pub struct DemoApp {
    port: u16,
    child: Option<Child>,
}

impl DemoApp {
    /// Starts [`demo_app_binary`] with `--listen 127.0.0.1:PORT` followed by
    /// `args` and waits (up to 15 s) until `GET /health` returns 200.
    ///
    /// # Panics
    ///
    /// If the binary is missing, if the process exits before it is healthy
    /// (after a few attempts with fresh ports; the message includes the exit
    /// status), or if it does not become healthy in time.
    pub fn start(args: &[&str]) -> DemoApp {
        DemoApp::start_with_env(args, &[])
    }

    /// Like [`start`](Self::start), additionally setting the environment
    /// variables `env` for the child (they override `RUST_LOG` too).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> DemoApp {
        DemoApp::start_binary(&demo_app_binary(), args, env)
    }

    /// Like [`start_with_env`](Self::start_with_env) with an explicit
    /// binary (e.g. a stub server implementing the same flags).
    ///
    /// # Panics
    ///
    /// Like [`start`](Self::start).
    pub fn start_binary(binary: &Path, args: &[&str], env: &[(&str, &str)]) -> DemoApp {
        let mut failures = Vec::new();
        for _ in 0..DEMO_APP_START_ATTEMPTS {
            let port = free_port();
            let mut command = Command::new(binary);
            command
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit());
            if std::env::var_os("RUST_LOG").is_none() {
                command.env("RUST_LOG", "info");
            }
            command.envs(env.iter().copied());
            let child = command
                .spawn()
                .unwrap_or_else(|err| panic!("failed to spawn {}: {err}", binary.display()));
            let mut app = DemoApp {
                port,
                child: Some(child),
            };
            match app.wait_healthy() {
                Ok(()) => return app,
                // Exited early: maybe the port was taken; retry with a new one.
                Err(Some(status)) => failures.push(format!("port {port}: exited with {status}")),
                Err(None) => panic!(
                    "{} {args:?} did not answer GET /health with 200 within {DEMO_APP_READY_TIMEOUT:?}",
                    binary.display()
                ),
            }
        }
        panic!(
            "{} {args:?} exited before becoming healthy ({DEMO_APP_START_ATTEMPTS} attempts): {}",
            binary.display(),
            failures.join("; ")
        );
    }

    /// `Err(Some(status))` if the process exited, `Err(None)` on timeout.
    fn wait_healthy(&mut self) -> Result<(), Option<ExitStatus>> {
        let deadline = Instant::now() + DEMO_APP_READY_TIMEOUT;
        loop {
            let child = self.child.as_mut().expect("demo-app child missing");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(Some(status));
            }
            if http_get_status(self.port, "/health").is_ok_and(|status| status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(None);
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT` followed by `path` (a `/` is inserted if
    /// `path` does not start with one).
    pub fn url(&self, path: &str) -> String {
        if path.starts_with('/') || path.is_empty() {
            format!("{}{path}", self.base_url())
        } else {
            format!("{}/{path}", self.base_url())
        }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port the app listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pid of the process, or `None` once it was killed/terminated.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `true` while the process has not exited; reaps it if it has.
    pub fn is_running(&mut self) -> bool {
        child_running(&mut self.child)
    }

    /// Kills the process with `SIGKILL` and reaps it. No-op if not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Sends `SIGTERM` and waits up to 10 s for the process to exit.
    ///
    /// Returns the exit status, or `None` if it did not exit in time (it is
    /// then killed with `SIGKILL`) or was not running.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = send_signal(&child, Signal::SIGTERM);
        let status = wait_with_timeout(&mut child, DEMO_APP_TERM_TIMEOUT);
        if status.is_none() {
            kill_and_reap(&mut child);
        }
        status
    }
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Minimal blocking `GET` over HTTP/1.1 returning the status code.
fn http_get_status(port: u16, path: &str) -> io::Result<u16> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    util::raw_http_status(addr, request.as_bytes())
}
