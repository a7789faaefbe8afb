//! App-instance failover (MSM's "Tomcat failover", issue 5) and orderly
//! restarts (issue 13), with several in-process managers on shared real
//! memcached nodes. Each manager has its own route; a session id carries
//! the route of the instance holding its primary copy, so handing a cookie
//! to another instance plays a load balancer failing over.
//!
//! Backups are synchronous unless said otherwise, so the instance that
//! created a session has written its last change before the response.

use std::time::Duration;

use integration_tests::{
    Cluster, FaultProxy, ProxyMode, Reply, SessionClient, TestApp, eventually, fast_config, id_node, id_random,
    id_route, init_tracing, wait_available,
};
use tokio::time::Instant;

async fn instance(cluster: &Cluster, route: &str) -> TestApp {
    let config = fast_config(&cluster.spec())
        .route(route)
        .session_backup_async(false)
        .build()
        .unwrap();
    TestApp::start(config).await
}

fn takeover_claims(cluster: &Cluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .flat_map(|n| n.keys())
        .filter(|k| k.starts_with("takeover:"))
        .collect()
}

/// Async backup through `proxy` (slowed by the test), with room for
/// backups that take hundreds of milliseconds.
fn slow_async_config(proxy: &FaultProxy, route: &str) -> memcached_sessions::Config {
    fast_config(&format!("n1:{}", proxy.addr()))
        .route(route)
        .session_backup_async(true)
        .session_backup_timeout(Duration::from_secs(5))
        .operation_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

/// Once the probers of `instances` instances have placed their sentinels
/// on the single node, delays every chunk through `proxy` by 150 ms (a
/// backup through it takes at least 300 ms).
async fn slow_down_once_probed(cluster: &Cluster, proxy: &FaultProxy, instances: usize) {
    eventually(Duration::from_secs(5), "sentinels placed", || {
        cluster.nodes[0]
            .keys()
            .iter()
            .filter(|k| k.starts_with("msm-probe:"))
            .count()
            == instances
    })
    .await;
    proxy.set_mode(ProxyMode::Delay {
        fixed: Duration::from_millis(150),
        jitter: Duration::ZERO,
    });
}

/// A client with a session on `app` holding `count` increments and data "x".
async fn session_on(app: &TestApp, count: u64) -> SessionClient {
    let mut client = SessionClient::new(app.base_url());
    for _ in 0..count {
        client.post("/incr").await.ok();
    }
    client.post("/put/x").await.ok();
    client
}

/// The second instance takes the session over: route rewritten, same
/// random part and node, data intact, old key deleted, new key written,
/// cookie re-sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_instance_takes_the_session_over() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app_a = instance(&cluster, "a").await;
    let app_b = instance(&cluster, "b").await;
    let mut client = session_on(&app_a, 3).await;
    let old = client.cookie().unwrap().to_owned();
    let node = id_node(&old).unwrap().to_owned();
    assert_eq!(id_route(&old), Some("a"));

    client.set_base(app_b.base_url());
    let reply = client.get("/session").await.ok();
    let new = reply
        .set_cookie()
        .expect("the takeover re-sends the cookie")
        .value
        .clone();
    assert_eq!(id_route(&new), Some("b"), "route rewritten");
    assert_eq!(id_random(&new), id_random(&old));
    assert_eq!(id_node(&new), Some(node.as_str()));
    assert_eq!(reply.count(), 3);
    assert_eq!(reply.json()["data"], "x");
    assert!(cluster.locate(&old).is_empty(), "old key deleted");
    assert_eq!(cluster.locate(&new), vec![node.clone()], "new key written");
    assert_eq!(takeover_claims(&cluster), vec![format!("takeover:{old}")]);

    let reply = client.post("/incr").await.ok();
    assert_eq!(reply.count(), 4);
    assert!(reply.set_cookie().is_none(), "cookie sent once");
    let counters = app_b.stats().counters;
    assert_eq!(counters.takeovers, 1);
    assert_eq!(counters.loads, 1);
    assert_eq!(counters.takeover_conflicts, 0);
}

/// Two concurrent requests with the old cookie on the same new instance:
/// one takeover; the other request waits for it and shares the session.
/// Both succeed (200) and no increment is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_on_one_instance_take_over_once() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app_a = instance(&cluster, "a").await;
    let app_b = instance(&cluster, "b").await;
    let mut client = session_on(&app_a, 2).await;
    let old = client.cookie().unwrap().to_owned();
    client.set_base(app_b.base_url());

    let requests: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.post("/incr?delay_ms=100").await })
        })
        .collect();
    let mut replies: Vec<Reply> = Vec::new();
    for request in requests {
        replies.push(request.await.unwrap());
    }
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.body);
        let set = reply.set_cookie().expect("both answer with the new id");
        assert_eq!(id_route(&set.value), Some("b"));
        assert_eq!(id_random(&set.value), id_random(&old));
    }
    let mut counts: Vec<u64> = replies.iter().map(Reply::count).collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![3, 4], "no lost update");
    let mut after = client.clone();
    assert_eq!(after.get("/session").await.ok().count(), 4);
    let counters = app_b.stats().counters;
    assert_eq!(counters.takeovers, 1, "taken over once");
    assert_eq!(counters.takeover_conflicts, 0);
    assert_eq!(counters.loads, 1);
}

/// Two *instances* receive the old cookie at the same time: exactly one
/// takes the session over; the other answers `503` with `Retry-After: 1`
/// (its claim `add` failed). The loser serves the session normally once the
/// client comes back with the winner's cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_takeover_by_two_instances_has_one_winner() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app_a = instance(&cluster, "a").await;
    let app_b = instance(&cluster, "b").await;
    let app_c = instance(&cluster, "c").await;
    let client = session_on(&app_a, 2).await;
    let old = client.cookie().unwrap().to_owned();

    let spawn_on = |app: &TestApp| {
        let mut client = client.clone();
        client.set_base(app.base_url());
        tokio::spawn(async move {
            let reply = client.post("/incr").await;
            (reply, client)
        })
    };
    let (to_b, to_c) = (spawn_on(&app_b), spawn_on(&app_c));
    let (reply_b, client_b) = to_b.await.unwrap();
    let (reply_c, client_c) = to_c.await.unwrap();

    let mut statuses = [reply_b.status, reply_c.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 503], "b: {}, c: {}", reply_b.body, reply_c.body);
    let (winner_reply, winner_client, loser_reply, loser_app, winner_app) = if reply_b.status == 200 {
        (reply_b, client_b, reply_c, &app_c, &app_b)
    } else {
        (reply_c, client_c, reply_b, &app_b, &app_c)
    };
    assert_eq!(loser_reply.header("retry-after"), Some("1"));
    assert!(loser_reply.set_cookie().is_none());
    assert_eq!(winner_reply.count(), 3);
    let takeovers = app_b.stats().counters.takeovers + app_c.stats().counters.takeovers;
    let conflicts = app_b.stats().counters.takeover_conflicts + app_c.stats().counters.takeover_conflicts;
    assert_eq!((takeovers, conflicts), (1, 1));
    assert_eq!(winner_app.stats().counters.takeovers, 1);

    let new = winner_client.cookie().unwrap().to_owned();
    assert!(cluster.locate(&old).is_empty());
    assert_eq!(cluster.locate(&new).len(), 1);

    // The client retries on the loser, now with the winner's cookie: the
    // loser takes the session over from the winner, data intact.
    let mut retry = winner_client.clone();
    retry.set_base(loser_app.base_url());
    let reply = retry.post("/incr").await.ok();
    assert_eq!(reply.count(), 4);
    assert_eq!(id_route(retry.cookie().unwrap()), loser_app.manager.config().route());
}

/// A → B → A: the first instance still holds a stale copy, but a cookie
/// naming B makes it take the *newer* data over from memcached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_back_to_the_first_instance_takes_the_newer_data() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app_a = instance(&cluster, "a").await;
    let app_b = instance(&cluster, "b").await;
    let mut client = session_on(&app_a, 2).await;

    client.set_base(app_b.base_url());
    for expected in 3..=5 {
        assert_eq!(client.post("/incr").await.ok().count(), expected);
    }
    let on_b = client.cookie().unwrap().to_owned();

    client.set_base(app_a.base_url());
    let reply = client.get("/session").await.ok();
    assert_eq!(reply.count(), 5, "A served its stale copy");
    let back = reply.set_cookie().expect("route rewritten to a").value.clone();
    assert_eq!(id_route(&back), Some("a"));
    assert!(cluster.locate(&on_b).is_empty());
    assert_eq!(cluster.locate(&back).len(), 1);
    assert_eq!(client.post("/incr").await.ok().count(), 6);
    assert_eq!(app_a.stats().local_sessions, 1, "the stale copy was replaced");
}

/// A takeover whose memcached node is down cannot load anything: the
/// session is lost, but the answer is "no session", never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_from_a_dead_node_is_no_session() {
    init_tracing();
    let mut cluster = Cluster::start(2);
    let app_a = instance(&cluster, "a").await;
    let app_b = instance(&cluster, "b").await;
    let mut client = session_on(&app_a, 2).await;
    let node = id_node(client.cookie().unwrap()).unwrap().to_owned();
    let other = if node == "n1" { "n2" } else { "n1" };
    cluster.node_mut(&node).kill();
    wait_available(&app_b.manager, &[other], Duration::from_secs(5)).await;

    client.set_base(app_b.base_url());
    let reply = client.get("/session").await.ok();
    assert_eq!(reply.id(), None);
    assert!(reply.set_cookie().is_none());
    let reply = client.post("/incr").await.ok();
    assert_eq!(reply.count(), 1, "a new session");
    assert_eq!(id_node(client.cookie().unwrap()), Some(other));
}

/// Issue 13: sessions survive an orderly restart. With async backups (the
/// default), `shutdown()` writes every pending backup; a new manager with
/// the same route loads the sessions (same ids: no Set-Cookie).
///
/// Both nodes are frozen (SIGSTOP) while the sessions are created, and
/// backups run one at a time, so backups are provably still queued when
/// shutdown starts; the nodes are thawed (SIGCONT) while it waits, well
/// within `operationTimeout`. Each change after a session's first waits
/// `sessionBackupTimeout` (50 ms) for the write of the previous one, then
/// is answered anyway (`backup_waits_timed_out`); those writes land once
/// the nodes are thawed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_an_orderly_restart() {
    init_tracing();
    let cluster = Cluster::start(2);
    let config = || {
        fast_config(&cluster.spec())
            .route("a")
            .operation_timeout(Duration::from_secs(5))
            // A change waits this long for the previous one's backup (it
            // cannot land while the nodes are frozen).
            .session_backup_timeout(Duration::from_millis(50))
            .backup_concurrency(1)
            .build()
            .unwrap()
    };
    let app = TestApp::start(config()).await;
    for node in &cluster.nodes {
        eventually(Duration::from_secs(5), "sentinel placed", || {
            node.keys().iter().any(|k| k.starts_with("msm-probe:"))
        })
        .await;
    }
    for node in &cluster.nodes {
        node.freeze();
    }
    let mut clients = Vec::new();
    for n in 1..=4u64 {
        let mut client = SessionClient::new(app.base_url());
        for _ in 0..n {
            client.post("/incr").await.ok();
        }
        clients.push((client, n));
    }
    let pending = app.stats().backup_queue_len;
    assert!(pending > 0, "backups are queued at shutdown: {pending}");
    let manager = app.manager.clone();
    let shutdown = tokio::spawn(async move { manager.shutdown().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!shutdown.is_finished(), "shutdown waits for the pending backups");
    for node in &cluster.nodes {
        node.thaw();
    }
    shutdown.await.unwrap();
    drop(app);
    for (client, _) in &clients {
        let id = client.cookie().unwrap();
        assert_eq!(cluster.locate(id), vec![id_node(id).unwrap().to_owned()]);
    }
    let sets = cluster.nodes.iter().map(|n| n.stats().cmd_set()).sum::<u64>();
    assert!(
        sets <= 2 + 10,
        "the two sentinels, then at most one write per change (10 changes): {sets}"
    );

    let restarted = TestApp::start(config()).await;
    for (client, n) in &mut clients {
        let id = client.cookie().unwrap().to_owned();
        client.set_base(restarted.base_url());
        let reply = client.get("/session").await.ok();
        assert_eq!(reply.count(), *n);
        assert_eq!(reply.id().as_deref(), Some(id.as_str()));
        assert!(reply.set_cookie().is_none(), "same route, same id");
        let reply = client.post("/incr").await.ok();
        assert_eq!(reply.count(), *n + 1);
        assert!(reply.set_cookie().is_none());
    }
    let counters = restarted.stats().counters;
    assert_eq!(counters.loads, 4);
    assert_eq!(counters.takeovers, 0);
    assert!(takeover_claims(&cluster).is_empty(), "own sessions need no claim");
}

/// With async backup (the default), a `kill -9` of an instance loses at
/// most each session's last answered change: a change is answered only
/// once the change answered before it is in memcached.
///
/// Instance a reaches its node through a proxy that delays every chunk by
/// 150 ms, so each of its backups takes at least 300 ms. Right after a
/// answers the second change, instance b takes the session over straight
/// from the node — what b would find if a were killed at that moment — and
/// must find at least the first change. A read, and a change whose
/// predecessor is stored, are answered without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_backup_answers_a_change_once_the_previous_one_is_stored() {
    init_tracing();
    let cluster = Cluster::start(1);
    let proxy = FaultProxy::start(cluster.nodes[0].addr().parse().unwrap());
    let config = slow_async_config(&proxy, "a");
    let app_a = TestApp::start(config).await;
    let app_b = instance(&cluster, "b").await;
    slow_down_once_probed(&cluster, &proxy, 2).await;

    let mut client = SessionClient::new(app_a.base_url());
    let started = Instant::now();
    assert_eq!(client.post("/incr").await.ok().count(), 1);
    assert_eq!(client.get("/session").await.ok().count(), 1);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "the first change and a read are answered at once: {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(client.post("/incr").await.ok().count(), 2);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "the second change waited for the first one's backup: {waited:?}"
    );

    // Instance a "dies" now: b finds what memcached holds.
    let mut moved = SessionClient::new(app_b.base_url());
    moved.set_cookie(client.cookie().map(str::to_owned));
    let reply = moved.get("/session").await.ok();
    assert!(
        reply.count() >= 1,
        "the answered change before the last one is in memcached: {}",
        reply.json()
    );
    assert_eq!(app_b.stats().counters.takeovers, 1);
    assert_eq!(app_a.stats().counters.backup_waits_timed_out, 0);

    // Once a's backups caught up, a change is answered at once again.
    proxy.set_mode(ProxyMode::Pass);
    let mut fresh = SessionClient::new(app_a.base_url());
    fresh.post("/incr").await.ok();
    eventually(Duration::from_secs(5), "first change stored", || {
        !cluster.locate(fresh.cookie().unwrap()).is_empty()
    })
    .await;
    let started = Instant::now();
    assert_eq!(fresh.post("/incr").await.ok().count(), 2);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

/// Async backup: an answer that hands the client a new id — `cycle_id`
/// (login) or a takeover — waits until the session is stored under that
/// id, so an instance killed right after it loses at most that answer,
/// never the session. The answering instance reaches its node through a
/// proxy that delays every chunk by 150 ms; a third instance reads the
/// new id straight from the node right after the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_backup_stores_a_new_id_before_handing_it_out() {
    init_tracing();
    let cluster = Cluster::start(1);
    let proxy = FaultProxy::start(cluster.nodes[0].addr().parse().unwrap());
    let app_a = TestApp::start(slow_async_config(&proxy, "a")).await;
    let app_b = TestApp::start(slow_async_config(&proxy, "b")).await;
    let reader = instance(&cluster, "r").await;
    slow_down_once_probed(&cluster, &proxy, 3).await;

    // cycle_id on a: the answer carries the new id.
    let mut client = SessionClient::new(app_a.base_url());
    assert_eq!(client.post("/incr").await.ok().count(), 1);
    let first = client.cookie().unwrap().to_owned();
    eventually(Duration::from_secs(5), "the change stored", || {
        !cluster.locate(&first).is_empty()
    })
    .await;
    client.post("/cycle").await.ok();
    let cycled = client.cookie().unwrap().to_owned();
    assert_ne!(cycled, first);
    let mut probe = SessionClient::new(reader.base_url());
    probe.set_cookie(Some(cycled.clone()));
    let reply = probe.get("/session").await.ok();
    assert_eq!(
        reply.count(),
        1,
        "the cycled id is in memcached when handed out: {}",
        reply.json()
    );

    // A takeover by b: the answer carries b's id for the session.
    let mut client = SessionClient::new(app_a.base_url());
    client.post("/incr").await.ok();
    assert_eq!(client.post("/incr").await.ok().count(), 2);
    let on_a = client.cookie().unwrap().to_owned();
    eventually(Duration::from_secs(5), "a's copy stored", || {
        !cluster.locate(&on_a).is_empty()
    })
    .await;
    client.set_base(app_b.base_url());
    let reply = client.get("/session").await.ok();
    assert_eq!(reply.count(), 2);
    let on_b = client.cookie().unwrap().to_owned();
    assert_eq!(id_route(&on_b), Some("b"));
    let mut probe = SessionClient::new(reader.base_url());
    probe.set_cookie(Some(on_b));
    let reply = probe.get("/session").await.ok();
    assert_eq!(
        reply.count(),
        2,
        "b's id is in memcached when handed out: {}",
        reply.json()
    );
}
