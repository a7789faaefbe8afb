//! Memcached node failures under one sticky instance (MSM's "memcached
//! failover" scenarios): relocation after a node is killed, several nodes
//! down, all nodes down, failover nodes, a frozen node, and a node that
//! comes back empty.
//!
//! Every test runs against real memcached processes with fast failure
//! detection ([`fast_config`]: probe every 100 ms, operationTimeout 400 ms)
//! and, unless said otherwise, `sessionBackupAsync=false`, so that each
//! response is sent after its backup was written and key assertions need no
//! polling.

use std::collections::BTreeSet;
use std::time::Duration;

use integration_tests::{
    Cluster, SessionClient, TestApp, eventually, fast_config, id_node, id_random, id_route, init_tracing, session_keys,
    wait_available,
};

/// Generous bound for background detection (probe interval is 100 ms).
const DETECT: Duration = Duration::from_secs(5);

async fn sync_app(cluster: &Cluster, failover: &str, route: &str) -> TestApp {
    let config = fast_config(&cluster.spec())
        .failover_nodes(failover)
        .route(route)
        .session_backup_async(false)
        .build()
        .expect("valid config");
    TestApp::start(config).await
}

fn others<'a>(all: &'a [String], except: &[&str]) -> Vec<&'a str> {
    all.iter()
        .map(String::as_str)
        .filter(|id| !except.contains(id))
        .collect()
}

/// Issue 1: kill -9 the node named in the session id; the next request
/// relocates the session: same data, same random part, a live node's id,
/// the cookie re-sent exactly once, the key written to the new node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relocates_when_the_suffix_node_is_killed() {
    init_tracing();
    let mut cluster = Cluster::start(3);
    let app = sync_app(&cluster, "", "a").await;
    let mut client = SessionClient::new(app.base_url());

    let first = client.post("/incr").await.ok();
    let id = first.set_cookie().expect("a new session sets the cookie").value.clone();
    assert_eq!(first.id().as_deref(), Some(id.as_str()));
    assert_eq!(id_route(&id), Some("a"));
    let reply = client.post("/put/hello").await.ok();
    assert!(reply.set_cookie().is_none(), "unchanged id: no Set-Cookie");
    client.post("/incr").await.ok();
    let old_node = id_node(&id).expect("id names a node").to_owned();
    assert_eq!(cluster.locate(&id), vec![old_node.clone()]);

    cluster.node_mut(&old_node).kill();
    let ids = cluster.ids();
    let live = others(&ids, &[&old_node]);
    wait_available(&app.manager, &live, DETECT).await;

    // Even a read-only request relocates the session.
    let moved = client.get("/session").await.ok();
    let new_id = moved
        .set_cookie()
        .expect("relocation re-sends the cookie")
        .value
        .clone();
    assert_ne!(new_id, id);
    assert_eq!(id_random(&new_id), id_random(&id), "same random part");
    assert_eq!(id_route(&new_id), Some("a"));
    let new_node = id_node(&new_id).expect("relocated id names a node");
    assert!(live.contains(&new_node), "{new_node} is not a live node");
    assert_eq!(moved.id().as_deref(), Some(new_id.as_str()));
    assert_eq!(moved.count(), 2);
    assert_eq!(moved.json()["data"], "hello");
    assert_eq!(
        cluster.locate(&new_id),
        vec![new_node.to_owned()],
        "full write to the new node"
    );

    // Exactly once: later requests keep the new id without Set-Cookie.
    for _ in 0..3 {
        let reply = client.get("/session").await.ok();
        assert!(reply.set_cookie().is_none(), "cookie re-sent again");
        assert_eq!(reply.id().as_deref(), Some(new_id.as_str()));
    }
    let reply = client.post("/incr").await.ok();
    assert!(reply.set_cookie().is_none());
    assert_eq!(reply.count(), 3);
    assert_eq!(app.stats().counters.relocations, 1);
}

/// Issue 2: with 2 of 3 nodes killed, every session survives and ends up on
/// the remaining node; sessions already there keep their id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_nodes_killed_sessions_land_on_the_survivor() {
    init_tracing();
    let mut cluster = Cluster::start(3);
    let app = sync_app(&cluster, "", "a").await;

    // Create sessions until every node holds at least one (node choice is
    // random; 60 tries make a miss astronomically unlikely).
    let mut clients = Vec::new();
    let mut covered = BTreeSet::new();
    for _ in 0..60 {
        let mut client = SessionClient::new(app.base_url());
        let reply = client.post("/incr").await.ok();
        covered.insert(id_node(&reply.id().unwrap()).unwrap().to_owned());
        clients.push(client);
        if covered.len() == 3 && clients.len() >= 6 {
            break;
        }
    }
    assert_eq!(covered.len(), 3, "sessions on every node");

    cluster.node_mut("n1").kill();
    cluster.node_mut("n2").kill();
    wait_available(&app.manager, &["n3"], DETECT).await;

    let mut expected_relocations = 0;
    let mut current_ids = BTreeSet::new();
    for client in &mut clients {
        let old = client.cookie().unwrap().to_owned();
        let reply = client.post("/incr").await.ok();
        assert_eq!(reply.count(), 2, "session data survived");
        let id = client.cookie().unwrap().to_owned();
        assert_eq!(id_node(&id), Some("n3"));
        assert_eq!(id_random(&id), id_random(&old));
        if id_node(&old) == Some("n3") {
            assert!(reply.set_cookie().is_none(), "already on n3: no new cookie");
        } else {
            expected_relocations += 1;
            assert_eq!(reply.set_cookie().unwrap().value, id);
        }
        current_ids.insert(id);
    }
    let on_survivor: BTreeSet<String> = session_keys(cluster.node("n3")).into_iter().collect();
    assert_eq!(on_survivor, current_ids, "every session is stored on n3");
    assert_eq!(app.stats().counters.relocations, expected_relocations);
}

/// Issue 3: with every node down, requests are served from memory with an
/// unchanged id and no Set-Cookie churn; new sessions get an id without a
/// node. When a node comes back (empty), each session moves to it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_down_serves_from_memory_and_moves_once_a_node_is_back() {
    init_tracing();
    let mut cluster = Cluster::start(2);
    let app = sync_app(&cluster, "", "a").await;
    let mut old_client = SessionClient::new(app.base_url());
    old_client.post("/incr").await.ok();
    let id = old_client.cookie().unwrap().to_owned();
    let home = id_node(&id).unwrap().to_owned();
    let other = if home == "n1" { "n2" } else { "n1" };

    cluster.node_mut("n1").kill();
    cluster.node_mut("n2").kill();
    wait_available(&app.manager, &[], DETECT).await;

    for expected in 2..=4 {
        let reply = old_client.post("/incr").await.ok();
        assert_eq!(reply.count(), expected);
        assert!(reply.set_cookie().is_none(), "no cookie churn while all nodes are down");
        assert_eq!(reply.id().as_deref(), Some(id.as_str()), "id unchanged");
    }
    let reply = old_client.get("/session").await.ok();
    assert!(reply.set_cookie().is_none());

    // A session created while nothing is available: no node in its id,
    // the cookie is set once.
    let mut new_client = SessionClient::new(app.base_url());
    let reply = new_client.post("/incr").await.ok();
    let nodeless = reply.set_cookie().expect("new session sets the cookie").value.clone();
    assert_eq!(id_node(&nodeless), None, "{nodeless}");
    assert_eq!(id_route(&nodeless), Some("a"));
    for _ in 0..2 {
        let reply = new_client.post("/incr").await.ok();
        assert!(reply.set_cookie().is_none());
    }
    assert!(app.stats().counters.backups_deferred > 0);

    // The other node comes back (restarted, empty): both sessions move to
    // it, each with exactly one Set-Cookie.
    cluster.node_mut(other).restart_empty();
    wait_available(&app.manager, &[other], DETECT).await;
    for (client, count) in [(&mut old_client, 4), (&mut new_client, 3)] {
        let before = client.cookie().unwrap().to_owned();
        let reply = client.get("/session").await.ok();
        let moved = reply
            .set_cookie()
            .expect("moved to the node that is back")
            .value
            .clone();
        assert_eq!(id_node(&moved), Some(other));
        assert_eq!(id_random(&moved), id_random(&before));
        assert_eq!(reply.count(), count);
        assert_eq!(cluster.locate(&moved), vec![other.to_owned()]);
        for _ in 0..2 {
            let reply = client.get("/session").await.ok();
            assert!(reply.set_cookie().is_none(), "moved only once");
        }
    }

    // The home node coming back does not move anything again.
    cluster.node_mut(&home).restart_empty();
    wait_available(&app.manager, &["n1", "n2"], DETECT).await;
    let reply = old_client.post("/incr").await.ok();
    assert!(reply.set_cookie().is_none());
    assert_eq!(reply.count(), 5);
}

/// Issue 4: a failover node is used only while every regular node is down,
/// and sessions leave it again (one Set-Cookie, key moved) once a regular
/// node is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_node_used_only_while_regular_nodes_are_down() {
    init_tracing();
    let mut cluster = Cluster::start(3);
    let app = sync_app(&cluster, "n3", "a").await;

    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();
    for _ in 0..15 {
        let mut other = SessionClient::new(app.base_url());
        let id = other.post("/incr").await.ok().id().unwrap();
        assert_ne!(id_node(&id), Some("n3"), "failover node used while n1/n2 are up");
    }

    cluster.node_mut("n1").kill();
    cluster.node_mut("n2").kill();
    wait_available(&app.manager, &["n3"], DETECT).await;

    let reply = client.get("/session").await.ok();
    let on_failover = reply.set_cookie().expect("relocated").value.clone();
    assert_eq!(id_node(&on_failover), Some("n3"));
    assert_eq!(cluster.locate(&on_failover), vec!["n3".to_owned()]);
    let reply = client.post("/incr").await.ok();
    assert!(
        reply.set_cookie().is_none(),
        "stays on the failover node while n1/n2 are down"
    );
    assert_eq!(reply.count(), 2);

    let mut late = SessionClient::new(app.base_url());
    let late_id = late.post("/incr").await.ok().id().unwrap();
    assert_eq!(id_node(&late_id), Some("n3"), "new sessions use the failover node");

    // A regular node is back: sessions leave the failover node.
    cluster.node_mut("n2").restart_empty();
    wait_available(&app.manager, &["n2", "n3"], DETECT).await;
    for client in [&mut client, &mut late] {
        let before = client.cookie().unwrap().to_owned();
        let reply = client.get("/session").await.ok();
        let back = reply.set_cookie().expect("moved back to a regular node").value.clone();
        assert_eq!(id_node(&back), Some("n2"));
        assert_eq!(id_random(&back), id_random(&before));
        assert_eq!(cluster.locate(&back), vec!["n2".to_owned()]);
        let reply = client.get("/session").await.ok();
        assert!(reply.set_cookie().is_none(), "moved only once");
    }
    assert!(
        session_keys(cluster.node("n3")).is_empty(),
        "the failover copies were deleted: {:?}",
        session_keys(cluster.node("n3"))
    );
    for _ in 0..10 {
        let mut fresh = SessionClient::new(app.base_url());
        let id = fresh.post("/incr").await.ok().id().unwrap();
        assert_eq!(id_node(&id), Some("n2"));
    }
}

/// Issue 6: a frozen node (SIGSTOP) costs the request that hits it at most
/// about one operationTimeout; it is then considered down, the session
/// relocates, and later requests are fast. After the thaw the node is used
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_node_costs_at_most_one_operation_timeout() {
    init_tracing();
    let operation_timeout = Duration::from_millis(400);
    let cluster = Cluster::start(3);
    let app = sync_app(&cluster, "", "a").await;
    assert_eq!(app.manager.config().operation_timeout(), operation_timeout);
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();
    let id = client.cookie().unwrap().to_owned();
    let frozen = id_node(&id).unwrap().to_owned();

    cluster.node(&frozen).freeze();
    // A modifying request: its synchronous backup goes to the frozen node.
    let during = client.post("/incr").await.ok();
    assert_eq!(during.count(), 2);
    assert!(
        during.elapsed < operation_timeout + Duration::from_millis(1500),
        "request during the freeze took {:?}",
        during.elapsed
    );

    let ids = cluster.ids();
    let live = others(&ids, &[&frozen]);
    wait_available(&app.manager, &live, DETECT).await;

    let moved = client.post("/incr").await.ok();
    let new_id = moved
        .set_cookie()
        .expect("relocated away from the frozen node")
        .value
        .clone();
    assert_ne!(id_node(&new_id), Some(frozen.as_str()));
    assert_eq!(moved.count(), 3);
    let mut latencies = vec![moved.elapsed];
    for expected in 4..=8 {
        let reply = client.post("/incr").await.ok();
        assert!(reply.set_cookie().is_none());
        assert_eq!(reply.count(), expected);
        latencies.push(reply.elapsed);
    }
    for _ in 0..3 {
        latencies.push(client.get("/session").await.ok().elapsed);
    }
    let slowest = latencies.iter().max().unwrap();
    assert!(
        *slowest < operation_timeout,
        "requests after the relocation must not wait for the frozen node: {latencies:?}"
    );
    assert_eq!(cluster.locate(&new_id), vec![id_node(&new_id).unwrap().to_owned()]);

    // Thaw: the node is available again and serves new sessions.
    cluster.node(&frozen).thaw();
    wait_available(
        &app.manager,
        &cluster.ids().iter().map(String::as_str).collect::<Vec<_>>(),
        DETECT,
    )
    .await;
    let reply = client.post("/incr").await.ok();
    assert_eq!(reply.count(), 9);
    assert!(reply.set_cookie().is_none(), "no move back after the thaw");
    // The stale copy on the thawed node is cleaned up once it is reachable.
    eventually(DETECT, "old key deleted from the thawed node", || {
        !session_keys(cluster.node(&frozen)).contains(&id)
    })
    .await;
}

/// Issue 7: a node restarted empty gets its sessions back without any
/// request, via the per-instance sentinel key; the restored copy is a
/// complete session (another instance can take it over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_restarted_empty_gets_its_sessions_rewritten() {
    init_tracing();
    let mut cluster = Cluster::start(2);
    // Default async backups here: the restore path is the background queue.
    let config = fast_config(&cluster.spec()).route("a").build().unwrap();
    let app = TestApp::start(config).await;

    let mut clients = Vec::new();
    for i in 0..6 {
        let mut client = SessionClient::new(app.base_url());
        for _ in 0..=i {
            client.post("/incr").await.ok();
        }
        clients.push(client);
    }
    let ids: Vec<String> = clients.iter().map(|c| c.cookie().unwrap().to_owned()).collect();
    eventually(DETECT, "all sessions written", || {
        ids.iter()
            .all(|id| cluster.locate(id) == vec![id_node(id).unwrap().to_owned()])
    })
    .await;

    let target = id_node(&ids[0]).unwrap().to_owned();
    let on_target: BTreeSet<String> = ids
        .iter()
        .filter(|id| id_node(id) == Some(target.as_str()))
        .cloned()
        .collect();
    let restored_before = app.stats().counters.backups_restored;
    let written_before = app.stats().counters.backups_written;

    // A new, empty process on the same port (no "is empty" check here: the
    // prober may already have re-written the sessions by then).
    cluster.node_mut(&target).restart_empty();

    // No request is sent: the prober notices the missing sentinel.
    eventually(DETECT, "sessions re-written to the restarted node", || {
        let keys: BTreeSet<String> = session_keys(cluster.node(&target)).into_iter().collect();
        keys == on_target
    })
    .await;
    for id in &on_target {
        let raw = cluster.node(&target).get_raw(id).expect("restored value");
        assert!(!raw.is_empty());
    }
    // The counters move right after the writes the keys above show.
    let expected = (
        restored_before + on_target.len() as u64,
        written_before + on_target.len() as u64,
    );
    let counts = || {
        let counters = app.stats().counters;
        (counters.backups_restored, counters.backups_written)
    };
    eventually(DETECT, "restores counted", || counts() == expected).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(counts(), expected, "each session on the node re-written exactly once");

    // The restored copy is the real thing: instance b takes one over.
    let config_b = fast_config(&cluster.spec()).route("b").build().unwrap();
    let app_b = TestApp::start(config_b).await;
    let (index, id) = ids.iter().enumerate().find(|(_, id)| on_target.contains(*id)).unwrap();
    let mut client = SessionClient::new(app_b.base_url());
    client.set_cookie(Some(id.clone()));
    let reply = client.get("/session").await.ok();
    assert_eq!(reply.count(), index as u64 + 1, "restored data is complete");
    assert_eq!(id_route(client.cookie().unwrap()), Some("b"));
}

/// A node whose name does not resolve (a container not started yet) does
/// not stop the instance from starting: it is down, sessions go to the
/// nodes that answer, and the instance serves.
#[tokio::test]
async fn a_node_whose_name_does_not_resolve_is_down_and_the_others_serve() {
    init_tracing();
    let cluster = Cluster::start(1);
    let nodes = format!("n1:does-not-resolve.invalid:11211,n2:{}", cluster.nodes[0].addr());
    let config = fast_config(&nodes).session_backup_async(false).build().unwrap();
    let app = TestApp::start(config).await;
    eventually(DETECT, "n1 is seen down", || {
        app.stats().available_nodes == vec!["n2".to_owned()]
    })
    .await;
    let mut client = SessionClient::new(app.base_url());
    assert_eq!(client.post("/incr").await.ok().count(), 1);
    let id = client.cookie().unwrap().to_owned();
    assert_eq!(id_node(&id), Some("n2"), "the session lives on the node that answers");
    assert!(cluster.nodes[0].get_raw(&id).is_some(), "and is backed up there");
}
