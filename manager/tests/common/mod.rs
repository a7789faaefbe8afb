//! Shared helpers of the flow tests: in-process nodes that can be switched
//! off or slowed down, a small app, and a cookie-aware request helper.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use memcached_sessions::backend::{InMemoryNode, NodeBackend};
use memcached_sessions::{ConfigBuilder, Session, SessionManager};
use warp::Filter;
use warp::http::StatusCode;

pub struct Cluster {
    pub nodes: Vec<Arc<InMemoryNode>>,
}

impl Cluster {
    pub fn new(n: usize) -> Self {
        Self {
            nodes: (0..n).map(|_| Arc::new(InMemoryNode::new())).collect(),
        }
    }

    pub fn spec(&self) -> String {
        (1..=self.nodes.len())
            .map(|i| format!("n{i}:127.0.0.1:{i}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A manager with synchronous backups (deterministic writes).
    pub fn manager(&self, builder: ConfigBuilder) -> SessionManager {
        self.manager_async(builder.session_backup_async(false))
    }

    /// A manager with the builder's backup mode (async by default).
    pub fn manager_async(&self, builder: ConfigBuilder) -> SessionManager {
        self.manager_probing_every(builder, Duration::from_millis(20))
    }

    /// A manager with synchronous backups whose prober runs once at start
    /// (placing its sentinels, see [`wait_for_probes`](Self::wait_for_probes))
    /// and then not again for an hour: operation counts are exact.
    pub fn quiet_manager(&self, builder: ConfigBuilder) -> SessionManager {
        self.manager_probing_every(builder.session_backup_async(false), Duration::from_secs(3600))
    }

    /// [`manager_async`](Self::manager_async) whose changes wait at most
    /// `backup_timeout` for the previous change's backup.
    pub fn manager_async_waiting_at_most(&self, builder: ConfigBuilder, backup_timeout: Duration) -> SessionManager {
        self.manager_with(builder, Duration::from_millis(20), backup_timeout)
    }

    fn manager_probing_every(&self, builder: ConfigBuilder, probe_interval: Duration) -> SessionManager {
        self.manager_with(builder, probe_interval, Duration::from_secs(2))
    }

    fn manager_with(
        &self,
        builder: ConfigBuilder,
        probe_interval: Duration,
        backup_timeout: Duration,
    ) -> SessionManager {
        let config = builder
            .memcached_nodes(self.spec())
            .node_probe_interval(probe_interval)
            .session_backup_timeout(backup_timeout)
            .build()
            .unwrap();
        let backends = self.nodes.iter().map(|n| n.clone() as Arc<dyn NodeBackend>).collect();
        SessionManager::with_backends(config, backends).expect("one backend per node")
    }

    pub fn node(&self, id: &str) -> &InMemoryNode {
        let index: usize = id[1..].parse().unwrap();
        &self.nodes[index - 1]
    }

    pub fn sets(&self) -> u64 {
        self.nodes.iter().map(|n| n.counts().sets.load(Ordering::SeqCst)).sum()
    }

    pub fn touches(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.counts().touches.load(Ordering::SeqCst))
            .sum()
    }

    pub fn deletes(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.counts().deletes.load(Ordering::SeqCst))
            .sum()
    }

    /// Every live key on every node, except the probes' sentinels.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|n| n.keys())
            .filter(|k| !k.starts_with("msm-probe:"))
            .collect();
        keys.sort();
        keys
    }

    /// Waits until every prober placed its sentinels (their `set`s would
    /// otherwise blur operation counts).
    pub async fn wait_for_probes(&self) {
        wait_until("sentinels placed", || {
            self.nodes
                .iter()
                .all(|n| n.keys().iter().any(|k| k.starts_with("msm-probe:")))
        })
        .await;
    }

    pub fn gets(&self) -> u64 {
        self.nodes.iter().map(|n| n.counts().gets.load(Ordering::SeqCst)).sum()
    }

    /// Keys that are sessions (not probe sentinels or claims).
    pub fn session_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|n| n.keys())
            .filter(|k| !k.contains(':'))
            .collect();
        keys.sort();
        keys
    }
}

pub fn routes(
    manager: &SessionManager,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone + use<> {
    let session = manager.session();
    let get = warp::path!("count")
        .and(warp::get())
        .and(session.clone())
        .map(|s: Session| s.get::<u64>("count").unwrap().unwrap_or(0).to_string());
    let incr = warp::path!("count")
        .and(warp::post())
        .and(warp::query::<HashMap<String, u64>>())
        .and(session.clone())
        .and_then(|query: HashMap<String, u64>, s: Session| async move {
            if let Some(ms) = query.get("delay_ms") {
                tokio::time::sleep(Duration::from_millis(*ms)).await;
            }
            let n = s.update("count", |c: Option<u64>| c.unwrap_or(0) + 1).unwrap();
            Ok::<_, std::convert::Infallible>(n.to_string())
        });
    let id = warp::path!("id")
        .and(session.clone())
        .map(|s: Session| s.id().unwrap_or_default());
    let logout = warp::path!("logout").and(session.clone()).map(|s: Session| {
        s.invalidate();
        String::new()
    });
    let login = warp::path!("login")
        .and(session)
        .map(|s: Session| s.cycle_id().unwrap_or_default());
    let plain = warp::path!("plain").map(String::new);
    manager.wrap(get.or(incr).or(id).or(logout).or(login).or(plain))
}

pub struct Reply {
    pub status: StatusCode,
    pub body: String,
    pub set_cookie: Option<String>,
}

impl Reply {
    /// The session id from `Set-Cookie`, `Some("")` for a removal.
    pub fn cookie_id(&self) -> Option<&str> {
        let header = self.set_cookie.as_deref()?;
        let value = header.strip_prefix("SESSIONID=")?;
        Some(value.split(';').next().unwrap())
    }
}

pub async fn call(manager: &SessionManager, method: &str, path: &str, cookie: Option<&str>) -> Reply {
    let mut request = warp::test::request().method(method).path(path);
    if let Some(id) = cookie {
        request = request.header("cookie", format!("SESSIONID={id}"));
    }
    let response = request.reply(&routes(manager)).await;
    Reply {
        status: response.status(),
        body: String::from_utf8_lossy(response.body()).into_owned(),
        set_cookie: response
            .headers()
            .get("set-cookie")
            .map(|v| v.to_str().unwrap().to_owned()),
    }
}

/// A session with `count = n`, returning its id.
pub async fn session_with_count(manager: &SessionManager, n: u64) -> String {
    let first = call(manager, "POST", "/count", None).await;
    let id = first.cookie_id().expect("new session sets a cookie").to_owned();
    for _ in 1..n {
        call(manager, "POST", "/count", Some(&id)).await;
    }
    id
}

pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..200 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting until {what}");
}

pub fn node_of(id: &str) -> &str {
    let suffix = &id[32..];
    suffix.trim_start_matches('-').split('.').next().unwrap()
}
