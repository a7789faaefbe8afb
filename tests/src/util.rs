//! Small helpers shared by the suites: polling with a deadline, session id
//! anatomy, session keys on a node, a fast test configuration.

use std::fmt::Display;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use memcached_sessions::{Config, ConfigBuilder, SessionManager};

use crate::Memcached;

/// Length of the random part of a session id.
pub const ID_RANDOM_LEN: usize = 32;

/// Interval between two polls of [`eventually`].
const EVENTUALLY_POLL: Duration = Duration::from_millis(25);

/// Polls `condition` every 25 ms until it holds; returns how long that took.
///
/// # Panics
///
/// If it does not hold within `timeout` (the message names `what`).
#[track_caller]
pub fn eventually_blocking(timeout: Duration, what: impl Display, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if condition() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        std::thread::sleep(EVENTUALLY_POLL);
    }
}

/// Async twin of [`eventually_blocking`]: sleeps with tokio between polls,
/// so tasks of the test's runtime keep running. `condition` may call the
/// blocking memcached helpers (use a multi-threaded runtime).
///
/// # Panics
///
/// If `condition` does not hold within `timeout`.
pub async fn eventually(timeout: Duration, what: impl Display, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if condition() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(EVENTUALLY_POLL).await;
    }
}

/// Waits until `manager` considers exactly the nodes `expected` available
/// (node ids, any order).
///
/// # Panics
///
/// After `timeout`.
pub async fn wait_available(manager: &SessionManager, expected: &[&str], timeout: Duration) {
    let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    eventually(timeout, format_args!("available nodes == {want:?}"), || {
        let mut now = manager.statistics().available_nodes;
        now.sort();
        now == want
    })
    .await;
}

/// The random part of a session id (its first 32 characters).
///
/// # Panics
///
/// If `id` is shorter.
pub fn id_random(id: &str) -> &str {
    &id[..ID_RANDOM_LEN]
}

/// The node id in a session id (`<random>-<node>[.<route>]`), if any.
pub fn id_node(id: &str) -> Option<&str> {
    let rest = id.get(ID_RANDOM_LEN..)?;
    let node_part = rest.split('.').next()?;
    node_part.strip_prefix('-').filter(|n| !n.is_empty())
}

/// The route in a session id, if any.
pub fn id_route(id: &str) -> Option<&str> {
    id.get(ID_RANDOM_LEN..)?.split_once('.').map(|(_, r)| r)
}

/// The keys on `node` that are session keys: everything except the
/// managers' sentinel keys (`msm-probe:`) and takeover claims (`takeover:`).
/// Nodes that do not answer count as holding nothing.
pub fn session_keys(node: &Memcached) -> Vec<String> {
    node.try_keys()
        .unwrap_or_default()
        .into_iter()
        .filter(|k| !k.contains("msm-probe:") && !k.contains("takeover:"))
        .collect()
}

/// A configuration for fast failure detection: probe every 100 ms,
/// `operationTimeout` 400 ms, `sessionBackupTimeout` 2 s (so a synchronous
/// backup to a live node always completes before the response).
pub fn fast_config(nodes: &str) -> ConfigBuilder {
    Config::builder()
        .memcached_nodes(nodes)
        .node_probe_interval(Duration::from_millis(100))
        .operation_timeout(Duration::from_millis(400))
        .session_backup_timeout(Duration::from_secs(2))
}

/// Sends `request` (raw bytes, a complete HTTP/1.1 request) to `addr` and
/// returns the status code of the reply.
///
/// # Errors
///
/// Connection and timeout errors, or a reply without a status line.
pub fn raw_http_status(addr: SocketAddr, request: &[u8]) -> io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(request)?;
    let mut status_line = String::new();
    BufReader::new(stream).read_line(&mut status_line)?;
    status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad HTTP status line: {status_line:?}"),
            )
        })
}
