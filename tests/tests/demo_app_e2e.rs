//! End to end with the real `demo-app` binary (issue 14) over real memcached:
//! the counter, memcached node failure, app-instance failure, login/logout,
//! `/stats`, `X-Instance`, the embedded store, and a SIGTERM restart.
//!
//! demo-app probes its nodes every second (the library default; the binary
//! has no flag for it) and backs up asynchronously unless started with
//! `--session-backup-async false`, so key assertions poll with a deadline.

use std::time::Duration;

use integration_tests::{
    Cluster, DemoApp, SessionClient, eventually, id_node, id_random, id_route, init_tracing, session_keys,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(8);

fn start(cluster: &Cluster, route: &str, extra: &[&str]) -> DemoApp {
    let spec = cluster.spec();
    let mut args = vec![
        "--memcached-nodes",
        spec.as_str(),
        "--route",
        route,
        "--operation-timeout-ms",
        "500",
    ];
    args.extend_from_slice(extra);
    DemoApp::start(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_increments_and_reads_create_nothing() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app = start(&cluster, "a", &[]);
    let mut client = SessionClient::new(app.base_url());

    let read = client.get("/counter").await.ok();
    assert_eq!(
        read.json(),
        json!({"count": 0, "session_id": null, "instance": "a", "tokens": []})
    );
    assert!(read.set_cookie().is_none(), "GET /counter never creates a session");
    assert_eq!(read.header("x-instance"), Some("a"));

    let first = client.post("/counter").await.ok();
    assert_eq!(first.count(), 1);
    let id = first.set_cookie().expect("new session").value.clone();
    assert_eq!(first.id().as_deref(), Some(id.as_str()));
    assert_eq!(id_route(&id), Some("a"));
    for expected in 2..=3 {
        let reply = client.post("/counter").await.ok();
        assert_eq!(reply.count(), expected);
        assert!(reply.set_cookie().is_none());
    }
    let reply = client.get("/counter").await.ok();
    assert_eq!(reply.count(), 3);
    assert_eq!(reply.json()["instance"], "a");

    let page = client.get("/").await.ok();
    assert!(page.body.contains(&id), "the page shows the id");
    assert_eq!(page.header("x-instance"), Some("a"));
    assert!(
        page.header("content-type").is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        page.headers
    );

    // X-Instance on every response, errors included.
    for (path, status) in [("/health", 200), ("/nope", 404)] {
        let reply = client.get(path).await;
        assert_eq!(reply.status, status);
        assert_eq!(reply.header("x-instance"), Some("a"), "{path}");
    }
    let bad = client.post_json("/login", &json!({"nope": 1})).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.header("x-instance"), Some("a"));

    eventually(WAIT, "session written to its node", || {
        cluster.locate(&id) == vec![id_node(&id).unwrap().to_owned()]
    })
    .await;
}

/// kill -9 of the memcached node holding the session: the count survives
/// and the session relocates to a live node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_survives_kill_of_its_memcached_node() {
    init_tracing();
    let mut cluster = Cluster::start(3);
    let app = start(&cluster, "a", &[]);
    let mut client = SessionClient::new(app.base_url());
    for _ in 0..3 {
        client.post("/counter").await.ok();
    }
    let id = client.cookie().unwrap().to_owned();
    let dead = id_node(&id).unwrap().to_owned();
    cluster.node_mut(&dead).kill();

    // Keep incrementing until the session has moved (at most ~1 probe
    // interval plus one failed backup); not a single increment is lost.
    let mut count = 3;
    let started = std::time::Instant::now();
    while client.cookie().and_then(id_node) == Some(dead.as_str()) {
        assert!(started.elapsed() < WAIT, "session never left the dead node");
        count += 1;
        assert_eq!(client.post("/counter").await.ok().count(), count);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let moved = client.cookie().unwrap().to_owned();
    assert_eq!(id_random(&moved), id_random(&id));
    let new_node = id_node(&moved).unwrap().to_owned();
    assert_ne!(new_node, dead);
    count += 1;
    let reply = client.post("/counter").await.ok();
    assert_eq!(reply.count(), count);
    assert!(reply.set_cookie().is_none());
    eventually(WAIT, "session written to the new node", || {
        cluster.locate(&moved) == vec![new_node.clone()]
    })
    .await;
}

/// Two demo-app instances (routes a and b) on shared nodes: kill -9 of
/// instance a; the session continues on b with its count.
///
/// Instance a runs with `--session-backup-async false`: each response is
/// sent only after the session was written to memcached, so the last
/// increment a answered is guaranteed to be there when a dies. With async
/// backups a crash can lose the changes of the last requests before it
/// (the backup queue dies with the process) — the documented trade-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_continues_on_the_other_instance_after_kill() {
    init_tracing();
    let cluster = Cluster::start(2);
    let mut app_a = start(&cluster, "a", &["--session-backup-async", "false"]);
    let app_b = start(&cluster, "b", &[]);
    let mut client = SessionClient::new(app_a.base_url());
    for _ in 0..4 {
        client.post("/counter").await.ok();
    }
    let old = client.cookie().unwrap().to_owned();
    app_a.kill();

    client.set_base(app_b.base_url());
    let reply = client.post("/counter").await.ok();
    assert_eq!(reply.count(), 5, "count continues on b");
    assert_eq!(reply.json()["instance"], "b");
    assert_eq!(reply.header("x-instance"), Some("b"));
    let new = reply.set_cookie().expect("route rewritten").value.clone();
    assert_eq!(id_route(&new), Some("b"));
    assert_eq!(id_random(&new), id_random(&old));
    eventually(WAIT, "old key deleted, new key written", || {
        cluster.locate(&old).is_empty() && cluster.locate(&new).len() == 1
    })
    .await;
    let stats = client.get("/stats").await.ok().json();
    assert_eq!(stats["takeovers"], 1);
}

/// Login stores the user and cycles the id (old key deleted); logout
/// removes the session and expires the cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cycles_the_id_and_logout_removes_the_session() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app = start(&cluster, "a", &[]);
    let mut client = SessionClient::new(app.base_url());
    client.post("/counter").await.ok();
    client.post("/counter").await.ok();
    let before = client.cookie().unwrap().to_owned();
    eventually(WAIT, "session written", || cluster.locate(&before).len() == 1).await;

    let reply = client.post_json("/login", &json!({"user": "alice"})).await.ok();
    let after = reply.set_cookie().expect("login sends the new id").value.clone();
    assert_ne!(id_random(&after), id_random(&before), "login cycles the id");
    assert_eq!(reply.json()["user"], "alice");
    assert_eq!(reply.count(), 2, "data kept across the id change");
    eventually(WAIT, "key moved to the new id", || {
        cluster.holds_tombstone(&before) && cluster.locate(&after).len() == 1
    })
    .await;
    let reply = client.get("/counter").await.ok();
    assert_eq!(reply.json()["user"], "alice");

    // The old id is dead.
    let mut stale = SessionClient::new(app.base_url());
    stale.set_cookie(Some(before.clone()));
    assert_eq!(
        stale.get("/counter").await.ok().json()["session_id"],
        serde_json::Value::Null
    );

    let reply = client.post("/logout").await.ok();
    let removal = reply.set_cookie().expect("logout expires the cookie");
    assert!(removal.removal, "{}", removal.raw);
    assert_eq!(client.cookie(), None);
    eventually(WAIT, "key replaced by a tombstone on logout", || {
        cluster.holds_tombstone(&after)
    })
    .await;
    let reply = client.get("/counter").await.ok();
    assert_eq!(
        reply.json(),
        json!({"count": 0, "session_id": null, "instance": "a", "tokens": []})
    );
    stale.set_cookie(Some(after));
    assert_eq!(stale.get("/counter").await.ok().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_are_json_with_flat_counters() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app = start(&cluster, "a", &["--session-backup-async", "false"]);
    let mut client = SessionClient::new(app.base_url());
    client.post("/counter").await.ok();
    client.get("/counter").await.ok();
    let reply = client.get("/stats").await.ok();
    assert!(
        reply.header("content-type").is_some_and(|c| c.contains("json")),
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.header("x-instance"), Some("a"));
    let stats = reply.json();
    for counter in [
        "backups_written",
        "backups_skipped",
        "relocations",
        "takeovers",
        "sessions_created",
        "local_sessions",
    ] {
        assert!(stats[counter].is_u64(), "{counter} missing in {stats}");
    }
    assert_eq!(stats["backups_written"], 1);
    assert_eq!(stats["backups_skipped"], 1);
    assert_eq!(stats["sessions_created"], 1);
    assert_eq!(stats["local_sessions"], 1);
    assert_eq!(stats["available_nodes"], json!(["n1", "n2"]));
}

/// Without `--memcached-nodes` the embedded in-process store is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_works_without_memcached_nodes() {
    init_tracing();
    let app = DemoApp::start(&["--route", "solo"]);
    let mut client = SessionClient::new(app.base_url());
    for expected in 1..=3 {
        assert_eq!(client.post("/counter").await.ok().count(), expected);
    }
    let reply = client.get("/counter").await.ok();
    assert_eq!(reply.count(), 3);
    assert_eq!(reply.header("x-instance"), Some("solo"));
    assert_eq!(id_node(client.cookie().unwrap()), None, "no node in the id");
    client.post("/logout").await.ok();
    assert_eq!(client.get("/counter").await.ok().count(), 0);

    // Without a route, the instance is called "default".
    let plain = DemoApp::start(&[]);
    let mut client = SessionClient::new(plain.base_url());
    let reply = client.post("/counter").await.ok();
    assert_eq!(reply.json()["instance"], "default");
    assert_eq!(id_route(client.cookie().unwrap()), None);
}

/// SIGTERM stops demo-app in order (pending async backups are written);
/// a new process with the same route continues the session.
///
/// Both nodes are frozen (SIGSTOP) while 40 sessions are changed — more than
/// the 32 backups demo-app runs at once — so backups are provably still
/// queued (`/stats` `backup_queue_len`) when SIGTERM arrives; the nodes are
/// thawed (SIGCONT) while the process shuts down, well within its
/// `operationTimeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_restart_keeps_sessions() {
    init_tracing();
    let cluster = Cluster::start(2);
    let spec = cluster.spec();
    let args = [
        "--memcached-nodes",
        spec.as_str(),
        "--route",
        "a",
        "--operation-timeout-ms",
        "10000",
    ];
    let mut app = DemoApp::start(&args);
    for node in &cluster.nodes {
        eventually(WAIT, "sentinel placed", || {
            node.keys().iter().any(|k| k.starts_with("msm-probe:"))
        })
        .await;
    }
    for node in &cluster.nodes {
        node.freeze();
    }
    let mut client = SessionClient::new(app.base_url());
    for _ in 0..5 {
        client.post("/counter").await.ok();
    }
    let mut ids = vec![client.cookie().unwrap().to_owned()];
    for _ in 0..39 {
        let mut other = SessionClient::new(app.base_url());
        other.post("/counter").await.ok();
        ids.push(other.cookie().unwrap().to_owned());
    }
    let pending = client.get("/stats").await.ok().json()["backup_queue_len"].clone();
    assert!(
        pending.as_u64().is_some_and(|n| n > 0),
        "backups are queued when SIGTERM arrives: {pending}"
    );
    let status = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            for node in &cluster.nodes {
                node.thaw();
            }
        });
        app.terminate()
    });
    let status = status.expect("demo-app exits on SIGTERM");
    assert!(status.success(), "{status}");
    for id in &ids {
        let node = id_node(id).unwrap();
        assert!(
            session_keys(cluster.node(node)).contains(id),
            "{id} was written before the process exited"
        );
    }

    let restarted = start(&cluster, "a", &[]);
    client.set_base(restarted.base_url());
    let reply = client.post("/counter").await.ok();
    assert_eq!(reply.count(), 6);
    assert!(reply.set_cookie().is_none(), "same route, same id");
}
