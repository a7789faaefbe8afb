//! Requests of one session that run at the same time on one instance share
//! one copy of it (non-sticky mode, real memcached): what one of them
//! acknowledges is already stored for every other instance, and an id the
//! session left (login, logout) is dead even for requests joining late.

use std::time::Duration;

use integration_tests::{Cluster, SessionClient, TestApp, fast_config, init_tracing};

async fn instance(cluster: &Cluster, locking: &str) -> TestApp {
    let config = fast_config(&cluster.spec())
        .sticky(false)
        .locking_mode(locking)
        .operation_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    TestApp::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledged_change_is_stored_while_another_request_still_runs() {
    init_tracing();
    let cluster = Cluster::start(2);
    let a = instance(&cluster, "none").await;
    let b = instance(&cluster, "none").await;
    let mut client = SessionClient::new(a.base_url());
    assert_eq!(client.post("/incr").await.ok().count(), 1);
    let cookie = client.cookie().map(str::to_owned);

    // A slow request holds the shared copy on instance a ...
    let mut slow = SessionClient::new(a.base_url());
    slow.set_cookie(cookie.clone());
    let held = tokio::spawn(async move { slow.post("/incr?delay_ms=1500").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ... while a quick one changes it and is acknowledged:
    assert_eq!(client.post("/put/quick").await.ok().status, 200);
    assert!(!held.is_finished(), "the slow request is still running");
    // Instance b (memcached) already sees the acknowledged change.
    let mut other = SessionClient::new(b.base_url());
    other.set_cookie(cookie);
    let seen = other.get("/session").await.ok();
    assert_eq!(seen.json()["data"], "quick", "acknowledged means stored");
    let slow = held.await.unwrap().ok();
    assert_eq!(slow.count(), 2);
    let last = other.get("/session").await.ok();
    assert_eq!((last.count(), last.json()["data"].clone()), (2, "quick".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycled_or_invalidated_id_is_dead_for_requests_joining_late() {
    init_tracing();
    let cluster = Cluster::start(2);
    let a = instance(&cluster, "none").await;
    for ending in ["/cycle", "/invalidate"] {
        let mut client = SessionClient::new(a.base_url());
        assert_eq!(client.post("/incr").await.ok().count(), 1);
        let old = client.cookie().map(str::to_owned);
        // A slow request keeps the copy shared under the old id ...
        let mut slow = SessionClient::new(a.base_url());
        slow.set_cookie(old.clone());
        let held = tokio::spawn(async move { slow.post("/incr?delay_ms=1200").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        // ... when login (new id) or logout ends the old id ...
        assert_eq!(client.post(ending).await.ok().status, 200);
        // ... a request still carrying it must not join the shared copy.
        let mut late = SessionClient::new(a.base_url());
        late.set_cookie(old.clone());
        let reply = late.get("/session").await.ok();
        assert_eq!(reply.id(), None, "{ending}: the old id names no session");
        assert!(reply.set_cookie().is_none(), "{ending}: and is never handed the new id");
        let _ = held.await.unwrap();
    }
}
