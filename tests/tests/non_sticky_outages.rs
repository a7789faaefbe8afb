//! Non-sticky answers under a whole-cluster outage, against real memcached:
//! a session that may exist is never answered as "no session", and a write
//! whose outcome memcached did not confirm is never answered `503` (which
//! promises that nothing was saved).

use std::time::Duration;

use integration_tests::{Cluster, SessionClient, TestApp, fast_config, init_tracing};

async fn app(cluster: &Cluster) -> TestApp {
    let config = fast_config(&cluster.spec())
        .sticky(false)
        .operation_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    TestApp::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_node_frozen_a_session_is_unavailable_not_gone() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app = app(&cluster).await;
    let mut client = SessionClient::new(app.base_url());
    assert_eq!(client.post("/incr").await.ok().count(), 1);
    for node in &cluster.nodes {
        node.freeze();
    }
    let cookie = client.cookie().map(str::to_owned);
    let read = client.get("/session").await;
    assert_eq!(read.status, 503, "the session may exist: 503, not 'no session'");
    assert!(read.header("retry-after").is_some());
    assert_eq!(client.cookie().map(str::to_owned), cookie, "the cookie is kept");
    for node in &cluster.nodes {
        node.thaw();
    }
    // Once the nodes are seen again, the session is there, unchanged.
    let mut count = None;
    for _ in 0..100 {
        let reply = client.get("/session").await;
        if reply.status == 200 {
            count = Some(reply.count());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count, Some(1), "the session survived the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_write_is_a_504_never_a_503() {
    init_tracing();
    let cluster = Cluster::start(1);
    let app = app(&cluster).await;
    let mut client = SessionClient::new(app.base_url());
    assert_eq!(client.post("/incr").await.ok().count(), 1);
    // The session is loaded, then the node freezes while the handler waits:
    // the write is sent but never confirmed.
    let mut slow = SessionClient::new(app.base_url());
    slow.set_cookie(client.cookie().map(str::to_owned));
    let write = tokio::spawn(async move { slow.post("/incr?delay_ms=300").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.nodes[0].freeze();
    let reply = write.await.unwrap();
    cluster.nodes[0].thaw();
    assert_eq!(reply.status, 504, "the change may have been saved: {}", reply.body);
}
