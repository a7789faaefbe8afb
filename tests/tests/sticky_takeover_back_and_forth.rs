//! Sticky takeovers back and forth (a rolling restart moves sessions
//! a1 → a2 → a1 → a2 within seconds), against real memcached: an instance
//! never waits on a takeover claim it left itself, while a claim of
//! another instance still keeps two takeovers of one id apart.

use integration_tests::{Cluster, SessionClient, TestApp, fast_config, id_route, init_tracing};

async fn instance(cluster: &Cluster, route: &str) -> TestApp {
    let config = fast_config(&cluster.spec())
        .route(route)
        .session_backup_async(false)
        .build()
        .unwrap();
    TestApp::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_moves_a_session_back_and_forth() {
    init_tracing();
    let cluster = Cluster::start(2);
    let mut running = instance(&cluster, "a1").await;
    let mut client = SessionClient::new(running.base_url());
    assert_eq!(client.post("/incr").await.ok().count(), 1);
    let mut expected = 1;
    // Each hop: the instance holding the session stops (orderly) and the
    // other one, started anew as in a rolling restart, takes the session
    // over — well within the 30 s of the claims the hops before left.
    for (hop, route) in ["a2", "a1", "a2", "a1"].into_iter().enumerate() {
        running.shutdown().await;
        running = instance(&cluster, route).await;
        client.set_base(running.base_url());
        expected += 1;
        let reply = client.post("/incr").await;
        assert_eq!(reply.status, 200, "hop {hop} to {route}: {}", reply.body);
        assert_eq!(reply.count(), expected, "hop {hop}: nothing lost");
        assert_eq!(id_route(client.cookie().unwrap()), Some(route), "hop {hop}: taken over");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_s_claim_still_keeps_takeovers_apart() {
    init_tracing();
    let cluster = Cluster::start(1);
    let a1 = instance(&cluster, "a1").await;
    let a2 = instance(&cluster, "a2").await;
    let mut client = SessionClient::new(a1.base_url());
    client.post("/incr").await.ok();
    let id = client.cookie().unwrap().to_owned();
    // A third instance (a3) is taking it over right now: its claim is there.
    let claim = cluster.nodes[0]
        .keys()
        .into_iter()
        .find(|key| key.starts_with("takeover:"));
    assert!(claim.is_none(), "no claim before any takeover");
    let claim_key = format!("takeover:{id}");
    let other = format!("{}.a3", id.rsplit_once('.').unwrap().0);
    cluster.nodes[0].set_raw(&claim_key, other.as_bytes(), 30);
    client.set_base(a2.base_url());
    let reply = client.get("/session").await;
    assert_eq!(reply.status, 503, "a2 waits for a3's takeover");
    assert_eq!(a2.stats().counters.takeover_conflicts, 1);
}
