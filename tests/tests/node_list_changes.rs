//! Changing the memcached node list at run time (issue 13, item 2):
//! `SessionManager::set_nodes` with real memcached processes. A node that
//! moves to another address, a node added, a node removed — in both modes,
//! with identifiable writes (each session's counter) checked after the
//! change and after the old address dies.

use std::time::Duration;

use integration_tests::{
    Cluster, ID_RANDOM_LEN, SessionClient, TestApp, eventually, fast_config, id_node, id_random, init_tracing,
    session_keys,
};
use memcached_sessions::Config;

const WAIT: Duration = Duration::from_secs(10);

async fn sticky_app(nodes: &str, route: &str) -> TestApp {
    TestApp::start(
        fast_config(nodes)
            .route(route)
            .session_backup_async(false)
            .build()
            .unwrap(),
    )
    .await
}

async fn non_sticky_app(nodes: &str) -> TestApp {
    TestApp::start(fast_config(nodes).sticky(false).build().unwrap()).await
}

/// `count` increments on a new session of `app`.
async fn session_with(app: &TestApp, count: u64) -> SessionClient {
    let mut client = SessionClient::new(app.base_url());
    for _ in 0..count {
        client.post("/incr").await.ok();
    }
    client
}

/// New sessions until `wanted` of them are on `node` (sessions pick a
/// live node at random); each with a distinct count. Sessions on other
/// nodes are kept too.
async fn sessions_on(app: &TestApp, node: &str, wanted: usize) -> Vec<(SessionClient, u64)> {
    let mut sessions = Vec::new();
    let mut on_node = 0;
    for count in 1..=200u64 {
        let client = session_with(app, count % 7 + 1).await;
        if id_node(client.cookie().unwrap()) == Some(node) {
            on_node += 1;
        }
        sessions.push((client, count % 7 + 1));
        if on_node == wanted {
            return sessions;
        }
    }
    panic!("no session landed on {node} in 200 tries");
}

/// The addresses of a three-node cluster's nodes.
fn addresses(cluster: &Cluster) -> [String; 3] {
    std::array::from_fn(|i| cluster.nodes[i].addr())
}

fn node_ids(app: &TestApp) -> Vec<(String, String, bool)> {
    app.manager
        .nodes()
        .into_iter()
        .map(|n| (n.id, n.address, n.available))
        .collect()
}

/// Sticky: n1 moves from A to C. The instance writes the sessions it holds
/// for n1 to C at once (no request needed), and after A dies every session
/// goes on — on this instance, and taken over by another instance that
/// knows n1 only at C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_follow_a_node_to_its_new_address() {
    init_tracing();
    let mut cluster = Cluster::start(3);
    let [a, b, c] = addresses(&cluster);
    let app = sticky_app(&format!("n1:{a},n2:{b}"), "a").await;
    let mut sessions = sessions_on(&app, "n1", 3).await;

    app.manager.set_nodes(&format!("n1:{c},n2:{b}"), "").await.unwrap();
    assert_eq!(
        node_ids(&app)
            .iter()
            .map(|(id, addr, _)| (id.as_str(), addr.as_str()))
            .collect::<Vec<_>>(),
        [("n1", c.as_str()), ("n2", b.as_str())]
    );
    let on_n1: Vec<String> = sessions
        .iter()
        .map(|(client, _)| client.cookie().unwrap().to_owned())
        .filter(|id| id_node(id) == Some("n1"))
        .collect();
    eventually(WAIT, "n1's sessions written to its new address", || {
        let keys = session_keys(&cluster.nodes[2]);
        on_n1.iter().all(|id| keys.contains(id))
    })
    .await;

    cluster.nodes[0].kill();
    let other = sticky_app(&format!("n1:{c},n2:{b}"), "b").await;
    for (i, (client, count)) in sessions.iter_mut().enumerate() {
        if i % 2 == 0 {
            let reply = client.post("/incr").await.ok();
            assert_eq!(reply.count(), *count + 1, "served on, after the old address died");
        } else {
            client.set_base(other.base_url());
            let reply = client.post("/incr").await.ok();
            assert_eq!(reply.count(), *count + 1, "taken over from the node's new address");
        }
    }
    assert_eq!(other.stats().counters.load_misses, 0);
}

/// Sticky: n2 is added, then n1 removed. New sessions use n2 once added;
/// once n1 is removed (and its memcached killed), each session held here
/// for it relocates to n2 at its next request — with the id its client
/// still has, however long after — and its backup on n2 lets another
/// instance take it over. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_nodes_added_and_removed() {
    init_tracing();
    let mut cluster = Cluster::start(2);
    let (a, b) = (cluster.nodes[0].addr(), cluster.nodes[1].addr());
    let app = sticky_app(&format!("n1:{a}"), "a").await;
    let mut sessions: Vec<(SessionClient, u64)> = Vec::new();
    for count in 1..=4 {
        sessions.push((session_with(&app, count).await, count));
    }

    app.manager.set_nodes(&format!("n1:{a},n2:{b}"), "").await.unwrap();
    assert_eq!(node_ids(&app).len(), 2);
    sessions.extend(sessions_on(&app, "n2", 1).await);

    app.manager.set_nodes(&format!("n2:{b}"), "").await.unwrap();
    assert_eq!(
        node_ids(&app).iter().map(|(id, _, _)| id.as_str()).collect::<Vec<_>>(),
        ["n2"],
        "a removed node is no longer listed"
    );
    cluster.nodes[0].kill();
    // Many prober rounds (100 ms each) pass: nothing depends on them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for (client, count) in &mut sessions {
        let before = client.cookie().unwrap().to_owned();
        let reply = client.post("/incr").await.ok();
        *count += 1;
        assert_eq!(reply.count(), *count);
        let now = client.cookie().unwrap();
        assert_eq!(id_node(now), Some("n2"), "{before} -> {now}");
        assert_eq!(id_random(now), id_random(&before));
    }
    let other = sticky_app(&format!("n2:{b}"), "b").await;
    for (client, count) in &mut sessions {
        client.set_base(other.base_url());
        assert_eq!(client.get("/session").await.ok().count(), *count, "taken over from n2");
    }
    for _ in 0..10 {
        let client = session_with(&app, 1).await;
        assert_eq!(id_node(client.cookie().unwrap()), Some("n2"), "new sessions avoid n1");
    }
}

/// Non-sticky: n1 moves from A to C (empty). A request for a session whose
/// primary was on n1 finds its backup copy and re-creates the primary at C;
/// after A dies every session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_sticky_sessions_follow_a_node_to_its_new_address() {
    init_tracing();
    let mut cluster = Cluster::start(3);
    let [a, b, c] = addresses(&cluster);
    let app = non_sticky_app(&format!("n1:{a},n2:{b}")).await;
    let mut sessions = sessions_on(&app, "n1", 3).await;

    app.manager.set_nodes(&format!("n1:{c},n2:{b}"), "").await.unwrap();
    for (client, count) in &mut sessions {
        let reply = client.post("/incr").await.ok();
        *count += 1;
        assert_eq!(reply.count(), *count, "found after the move");
    }
    cluster.nodes[0].kill();
    for (client, count) in &mut sessions {
        let reply = client.get("/session").await.ok();
        assert_eq!(reply.count(), *count, "and after the old address died");
    }
    assert!(app.stats().counters.backup_node_loads >= 3, "read from their backups");
}

/// Non-sticky: adding a node changes the ring — the last node's backups
/// were on the first node, the ring now says the new one. When the last
/// node then restarts empty, its sessions are still found (the ring is
/// searched while a node was added lately).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_sticky_backups_are_found_after_a_node_is_added() {
    init_tracing();
    let mut cluster = Cluster::start(3);
    let [a, b, c] = addresses(&cluster);
    let app = non_sticky_app(&format!("n1:{a},n2:{b}")).await;
    let sessions = sessions_on(&app, "n2", 3).await;
    let mut on_n2: Vec<(SessionClient, u64)> = sessions
        .into_iter()
        .filter(|(client, _)| id_node(client.cookie().unwrap()) == Some("n2"))
        .collect();

    app.manager
        .set_nodes(&format!("n1:{a},n2:{b},n3:{c}"), "")
        .await
        .unwrap();
    cluster.nodes[1].restart_empty();
    eventually(WAIT, "n2 seen empty and back", || {
        app.manager.nodes().iter().all(|n| n.available)
    })
    .await;
    for (client, count) in &mut on_n2 {
        let reply = client.post("/incr").await.ok();
        *count += 1;
        assert_eq!(reply.count(), *count, "its backup on n1 was found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_node_lists_change_nothing() {
    init_tracing();
    let cluster = Cluster::start(1);
    let a = cluster.nodes[0].addr();
    let app = sticky_app(&format!("n1:{a}"), "a").await;
    for (nodes, failover) in [
        ("n1:host", ""),
        ("", ""),
        (a.as_str(), ""),
        ("n1:h:1,n1:h:2", ""),
        ("n1:h:1", "n9"),
    ] {
        let error = app.manager.set_nodes(nodes, failover).await.unwrap_err();
        assert!(error.to_string().contains("Nodes"), "{nodes:?}: {error}");
    }
    assert_eq!(node_ids(&app), [("n1".to_owned(), a.clone(), true)]);

    let embedded = TestApp::start(Config::builder().build().unwrap()).await;
    assert!(embedded.manager.set_nodes(&format!("n1:{a}"), "").await.is_err());
}

/// Non-sticky: a node replaced by another (n2 removed, n4 added) leaves a
/// retired slot in the ring. An id the cluster does not know (expired, or
/// made up) naming n1 is still "no session" — not a 503 for as long as the
/// ring is searched after the addition — and a real session on n1 goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_sticky_unknown_ids_stay_unknown_after_a_node_is_replaced() {
    init_tracing();
    let cluster = Cluster::start(4);
    let addr = |i: usize| cluster.nodes[i].addr();
    let app = non_sticky_app(&format!("n1:{},n2:{},n3:{}", addr(0), addr(1), addr(2))).await;
    let mut sessions = sessions_on(&app, "n1", 2).await;

    app.manager
        .set_nodes(&format!("n1:{},n3:{},n4:{}", addr(0), addr(2), addr(3)), "")
        .await
        .unwrap();
    let mut stranger = SessionClient::new(app.base_url());
    stranger.set_cookie(Some(format!("{}-n1", "A".repeat(ID_RANDOM_LEN))));
    let reply = stranger.get("/session").await.ok();
    assert_eq!(reply.count(), 0, "an unknown id is no session: {}", reply.json());
    for (client, count) in sessions
        .iter_mut()
        .filter(|(c, _)| id_node(c.cookie().unwrap()) == Some("n1"))
    {
        let reply = client.post("/incr").await.ok();
        *count += 1;
        assert_eq!(reply.count(), *count);
    }
}
