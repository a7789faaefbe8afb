//! Exactly what a sticky instance sends to memcached (issue 8), counted with
//! memcached's own `stats` on a single node:
//!
//! * a new or modified session: exactly one `set` per request;
//! * a read-only request, or a "modification" that stores an equal value:
//!   no `set`, no `get` (the primary copy is in the process), no `touch`
//!   while the TTL margin is comfortable;
//! * a read once the TTL margin runs low: exactly one `touch`;
//! * requests matching `requestUriIgnorePattern`: no traffic at all.
//!
//! `sessionBackupAsync=false` makes the counts deterministic (the write is
//! done when the response arrives). The node prober is set to one probe per
//! hour, so its traffic is exactly the initial sentinel check: one `get`
//! miss and one `set`, which the tests wait for before counting.

use std::time::Duration;

use integration_tests::{Cluster, SessionClient, Stats, TestApp, eventually, init_tracing};
use memcached_sessions::Config;

/// Asserts the change of memcached's command counters between two snapshots.
#[track_caller]
fn assert_traffic(before: &Stats, after: &Stats, sets: i64, gets: i64, touches: i64) {
    assert_eq!(after.delta(before, "cmd_set"), sets, "cmd_set");
    assert_eq!(after.delta(before, "cmd_get"), gets, "cmd_get");
    assert_eq!(after.delta(before, "cmd_touch"), touches, "cmd_touch");
    let deletes = after.delta(before, "delete_hits") + after.delta(before, "delete_misses");
    assert_eq!(deletes, 0, "deletes");
}

/// One node, sync backups, the prober quiet after its first probe.
async fn quiet_app(cluster: &Cluster, max_inactive_secs: i64, ignore: &str) -> TestApp {
    let config = Config::builder()
        .memcached_nodes(cluster.spec())
        .route("a")
        .session_backup_async(false)
        .session_backup_timeout(Duration::from_secs(2))
        .node_probe_interval(Duration::from_secs(3600))
        .max_inactive_interval_secs(max_inactive_secs)
        .request_uri_ignore_pattern(ignore)
        .build()
        .unwrap();
    let app = TestApp::start(config).await;
    let node = &cluster.nodes[0];
    // The prober's first (and, here, only) round: `mg` miss + `ms` of the sentinel.
    eventually(Duration::from_secs(5), "sentinel placed", || {
        node.keys().iter().any(|k| k.starts_with("msm-probe:"))
    })
    .await;
    let stats = node.stats();
    assert_eq!(stats.cmd_set(), 1, "only the sentinel was written");
    assert_eq!(stats.cmd_get(), 1, "only the sentinel was read");
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_new_or_modified_sessions_are_written() {
    init_tracing();
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let app = quiet_app(&cluster, 1800, "").await;
    let mut client = SessionClient::new(app.base_url());

    // Without a cookie, a read creates no session and sends nothing.
    let s0 = node.stats();
    for _ in 0..3 {
        let reply = client.get("/session").await.ok();
        assert!(reply.id().is_none());
        assert!(reply.set_cookie().is_none());
    }
    assert_traffic(&s0, &node.stats(), 0, 0, 0);

    // New session: one set.
    let s1 = node.stats();
    client.post("/incr").await.ok();
    let id = client.cookie().unwrap().to_owned();
    let s2 = node.stats();
    assert_traffic(&s1, &s2, 1, 0, 0);
    assert!(node.get_raw(&id).is_some());
    let s2 = node.stats(); // get_raw above moved cmd_get

    // N read-only requests: nothing (not even a get: the primary copy is here).
    const READS: usize = 10;
    for _ in 0..READS {
        assert_eq!(client.get("/session").await.ok().count(), 1);
    }
    // Requests through a route without the session filter: nothing either.
    for _ in 0..3 {
        client.get("/plain").await.ok();
    }
    let s3 = node.stats();
    assert_traffic(&s2, &s3, 0, 0, 0);

    // M modifying requests: exactly one set each.
    const WRITES: i64 = 5;
    for expected in 2..=WRITES as u64 + 1 {
        assert_eq!(client.post("/incr").await.ok().count(), expected);
    }
    let s4 = node.stats();
    assert_traffic(&s3, &s4, WRITES, 0, 0);

    // Storing a new value is a change; storing the same value again is not.
    client.post("/put/x").await.ok();
    let s5 = node.stats();
    assert_traffic(&s4, &s5, 1, 0, 0);
    client.post("/put/x").await.ok();
    let s6 = node.stats();
    assert_traffic(&s5, &s6, 0, 0, 0);

    let counters = app.stats().counters;
    assert_eq!(counters.backups_written, 1 + WRITES as u64 + 1);
    assert_eq!(counters.backups_touched, 0);
    assert_eq!(
        counters.backups_skipped,
        READS as u64 + 1,
        "reads and the no-op put are skipped"
    );
    assert_eq!(counters.loads, 0);
}

/// A session that is only read gets its memcached TTL extended with one
/// `touch` once less than half the margin is left, never a `set`.
/// max_inactive 8 s → margin 2 s → a touch is due once the last access is
/// more than 1 s after the last write/touch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_requests_touch_only_when_the_margin_runs_low() {
    init_tracing();
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let app = quiet_app(&cluster, 8, "").await;
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();

    let s0 = node.stats();
    for _ in 0..3 {
        client.get("/session").await.ok();
    }
    let s1 = node.stats();
    assert_traffic(&s0, &s1, 0, 0, 0);

    // Let time pass so that the margin runs low (a fixed sleep: time itself
    // is what is being tested).
    tokio::time::sleep(Duration::from_millis(1300)).await;
    client.get("/session").await.ok();
    let s2 = node.stats();
    assert_traffic(&s1, &s2, 0, 0, 1);
    assert_eq!(s2.delta(&s1, "touch_hits"), 1);

    // Just touched: the next reads are free again.
    for _ in 0..3 {
        client.get("/session").await.ok();
    }
    let s3 = node.stats();
    assert_traffic(&s2, &s3, 0, 0, 0);
    assert_eq!(app.stats().counters.backups_touched, 1);
}

/// Requests matching `requestUriIgnorePattern` cause no memcached traffic,
/// even when the handler changes the session; the change is written by the
/// next request that is not ignored (one set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_requests_cause_no_memcached_traffic() {
    init_tracing();
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let app = quiet_app(&cluster, 1800, "/static/.*").await;
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();

    let s0 = node.stats();
    for _ in 0..3 {
        let reply = client.get("/static/app.css?v=3").await.ok();
        assert_eq!(reply.count(), 1, "the handler still sees the local session");
        assert!(reply.set_cookie().is_none());
    }
    let reply = client.post("/static/incr").await.ok();
    assert_eq!(reply.count(), 2);
    assert!(reply.set_cookie().is_none());
    // An ignored request without a cookie creates nothing either.
    let mut anonymous = SessionClient::new(app.base_url());
    anonymous.get("/static/logo.png").await.ok();
    let s1 = node.stats();
    assert_traffic(&s0, &s1, 0, 0, 0);
    assert_eq!(app.stats().counters.requests_ignored, 5);

    let reply = client.post("/incr").await.ok();
    assert_eq!(reply.count(), 3);
    let s2 = node.stats();
    assert_traffic(&s1, &s2, 1, 0, 0);
}
