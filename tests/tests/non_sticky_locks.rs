//! Non-sticky locks never leak and never outlive their owner's claim,
//! against real memcached: a request cancelled at any await point releases
//! its lock at once (not after `lockExpiration`), and a renewal never
//! extends a lock that is no longer ours.

use std::time::Duration;

use integration_tests::{
    COOKIE_NAME, Cluster, ProxyMesh, ProxyMode, SessionClient, TestApp, eventually, fast_config, init_tracing,
};

/// Every `lock:` key on every node.
fn lock_keys(cluster: &Cluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .flat_map(|node| node.keys())
        .filter(|key| key.starts_with("lock:"))
        .collect()
}

/// Takes a lock for a request through a network where every round trip
/// takes >= 500 ms, hangs the client up after `hang_up_after`, and checks
/// that no lock is left: the lock and the load share one round trip
/// (until ~500 ms), the primary write runs until ~1000 ms. The count
/// after is `expected_count` (a range: a write cut off on the wire may or
/// may not have landed — its client never got an answer).
async fn cancelled_request_leaves_no_lock(hang_up_after: Duration, expected_count: std::ops::RangeInclusive<u64>) {
    init_tracing();
    let cluster = Cluster::start(2);
    let mesh = ProxyMesh::start(&cluster, &["a"]);
    let config = fast_config(&mesh.spec_for("a"))
        .sticky(false)
        .locking_mode("all")
        .lock_expiration(Duration::from_secs(6))
        .operation_timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let app = TestApp::start(config).await;
    let mut client = SessionClient::new(app.base_url());
    assert_eq!(client.post("/incr").await.ok().count(), 1);
    let cookie = client.cookie().expect("a session").to_owned();

    mesh.set_all(ProxyMode::Delay {
        fixed: Duration::from_millis(250),
        jitter: Duration::ZERO,
    });
    let request = integration_tests::http_client_without_cookies()
        .post(format!("{}/incr", app.base_url()))
        .header("cookie", format!("{COOKIE_NAME}={cookie}"))
        .send();
    assert!(
        tokio::time::timeout(hang_up_after, request).await.is_err(),
        "the request must still be running when the client hangs up"
    );
    eventually(Duration::from_secs(2), "the lock was taken", || {
        app.stats().counters.locks_acquired >= 1
    })
    .await;
    mesh.set_all(ProxyMode::Pass);
    // Well before lockExpiration (6 s): only a release explains it.
    eventually(Duration::from_secs(3), "the cancelled request's lock is gone", || {
        lock_keys(&cluster).is_empty()
    })
    .await;
    let after = client.post("/incr").await;
    assert_eq!(after.status, 200, "the session is not left locked");
    assert!(
        expected_count.contains(&after.count()),
        "count {} not in {expected_count:?}",
        after.count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_its_lock_is_being_added_leaves_no_lock() {
    // Cancelled before the handler ran: its change never happened.
    cancelled_request_leaves_no_lock(Duration::from_millis(250), 2..=2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_while_writing_releases_its_lock_at_once() {
    // Cancelled with its write on the wire: it may have landed.
    cancelled_request_leaves_no_lock(Duration::from_millis(750), 2..=3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_never_extends_a_lock_that_is_no_longer_ours() {
    init_tracing();
    let cluster = Cluster::start(1);
    let config = fast_config(&cluster.spec())
        .sticky(false)
        .locking_mode("all")
        .lock_expiration(Duration::from_secs(1))
        .operation_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let app = TestApp::start(config).await;
    let mut client = SessionClient::new(app.base_url());
    assert_eq!(client.post("/incr").await.ok().count(), 1);

    // A slow request holds the lock (renewed every ~333 ms) ...
    let mut slow = SessionClient::new(app.base_url());
    slow.set_cookie(client.cookie().map(str::to_owned));
    let held = tokio::spawn(async move { slow.post("/incr?delay_ms=2000").await });
    let node = &cluster.nodes[0];
    let mut key = String::new();
    eventually(
        Duration::from_secs(2),
        "the slow request holds the lock",
        || match lock_keys(&cluster).pop() {
            Some(found) => {
                key = found;
                true
            }
            None => false,
        },
    )
    .await;
    // ... when it expires and somebody else takes it (played here by
    // replacing the item: a new CAS token and another owner's value).
    node.set_raw(&key, b"someone-else", 30);
    let reply = held.await.unwrap();
    assert_eq!(
        reply.status, 503,
        "a request that lost its lock saves nothing and says so"
    );
    assert_eq!(
        node.get_raw(&key).as_deref(),
        Some(&b"someone-else"[..]),
        "the other owner's lock was neither extended over nor deleted"
    );
    assert_eq!(app.stats().counters.locks_lost, 1);
    node.delete_raw(&key);
    assert_eq!(
        client.get("/session").await.ok().count(),
        1,
        "the lost request's change was not saved"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_add_timed_out_is_removed_when_it_lands() {
    init_tracing();
    let cluster = Cluster::start(1);
    let config = fast_config(&cluster.spec())
        .sticky(false)
        .locking_mode("all")
        .lock_expiration(Duration::from_secs(8))
        .operation_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let app = TestApp::start(config).await;
    let mut client = SessionClient::new(app.base_url());
    assert_eq!(client.post("/incr").await.ok().count(), 1);
    // The node freezes: the lock's add is sent but not answered in time.
    cluster.nodes[0].freeze();
    assert_eq!(client.post("/incr").await.status, 503);
    // It thaws: memcached now carries out the add nobody waits for.
    cluster.nodes[0].thaw();
    // Well before lockExpiration (8 s) the lock is gone again, and the
    // session answers.
    eventually(Duration::from_secs(4), "the late lock is removed", || {
        lock_keys(&cluster).is_empty()
    })
    .await;
    let mut count = None;
    for _ in 0..40 {
        let reply = client.post("/incr").await;
        if reply.status == 200 {
            count = Some(reply.count());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count, Some(2), "the session is not left locked");
}
