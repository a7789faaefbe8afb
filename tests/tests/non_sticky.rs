//! Non-sticky mode against real memcached, with two managers (two
//! instances) sharing the nodes: no lost update with locking, no stale
//! copy, backups on the next node, re-created copies, forward records of
//! relocated sessions, logout tombstones, expiring locks, and the exact
//! memcached operations of each request kind (storage format 2).

use std::time::Duration;

use integration_tests::{
    Cluster, SessionClient, Stats, TestApp, eventually, fast_config, id_node, id_random, init_tracing, wait_available,
};
use memcached_sessions::{ConfigBuilder, LockFailure};

fn non_sticky(cluster: &Cluster) -> ConfigBuilder {
    fast_config(&cluster.spec())
        .sticky(false)
        // Lock waits are bounded by operationTimeout: give queued requests time.
        .operation_timeout(Duration::from_secs(5))
}

async fn two_instances(cluster: &Cluster, locking: &str) -> (TestApp, TestApp) {
    let a = TestApp::start(non_sticky(cluster).locking_mode(locking).route("a").build().unwrap()).await;
    let b = TestApp::start(non_sticky(cluster).locking_mode(locking).route("b").build().unwrap()).await;
    (a, b)
}

/// Sends `n` parallel increments of the client's session, alternating
/// between `bases`; returns how many succeeded.
async fn parallel_increments(client: &SessionClient, bases: &[String], n: usize, delay_ms: u64) -> u64 {
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut c = SessionClient::new(bases[i % bases.len()].clone());
        c.set_cookie(client.cookie().map(str::to_owned));
        let path = format!("/incr?delay_ms={delay_ms}");
        tasks.push(tokio::spawn(async move { c.post(&path).await }));
    }
    let mut ok = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        ok += 1;
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_increments_on_two_instances_lose_nothing_with_locking_all() {
    init_tracing();
    let cluster = Cluster::start(2);
    let (a, b) = two_instances(&cluster, "all").await;
    let mut client = SessionClient::new(a.base_url());
    client.post("/incr").await.ok();
    let bases = [a.base_url(), b.base_url()];
    let ok = parallel_increments(&client, &bases, 20, 10).await;
    let count = client.get("/session").await.ok().count();
    assert_eq!(count, 1 + ok, "final count = number of requests");
    let (sa, sb) = (a.stats().counters, b.stats().counters);
    assert!(sa.locks_acquired > 0 && sb.locks_acquired > 0, "both instances locked");
    assert_eq!(sa.locks_acquired, sa.locks_released);
    assert_eq!(sb.locks_acquired, sb.locks_released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_locking_loses_nothing_once_a_route_is_known_to_modify() {
    init_tracing();
    let cluster = Cluster::start(2);
    let (a, b) = two_instances(&cluster, "auto").await;
    let mut client = SessionClient::new(a.base_url());
    client.post("/incr").await.ok(); // new session: POST /incr learned as modifying
    let mut on_b = SessionClient::new(b.base_url());
    on_b.set_cookie(client.cookie().map(str::to_owned));
    on_b.post("/incr").await.ok(); // b learns it too
    let ok = parallel_increments(&client, &[a.base_url(), b.base_url()], 20, 10).await;
    assert_eq!(client.get("/session").await.ok().count(), 2 + ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_locking_stops_locking_read_only_requests() {
    init_tracing();
    let cluster = Cluster::start(2);
    let (a, _b) = two_instances(&cluster, "auto").await;
    let mut client = SessionClient::new(a.base_url());
    client.post("/incr").await.ok();
    let locks = || a.stats().counters.locks_acquired;
    let before = locks();
    client.get("/session").await.ok();
    assert_eq!(locks(), before + 1, "the first read of a kind locks");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut c = SessionClient::new(a.base_url());
        c.set_cookie(client.cookie().map(str::to_owned));
        tasks.push(tokio::spawn(async move { c.get("/session").await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().count(), 1);
    }
    assert_eq!(
        locks(),
        before + 1,
        "learned read-only: reads take no lock and run in parallel"
    );
    assert_eq!(
        a.stats().counters.read_only_requests,
        9,
        "the first read and the eight parallel ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_instance_is_seen_by_the_next_read_on_the_other() {
    init_tracing();
    let cluster = Cluster::start(3);
    let (a, b) = two_instances(&cluster, "none").await;
    let mut client = SessionClient::new(a.base_url());
    for n in 1..=10u64 {
        let base = if n % 2 == 0 { b.base_url() } else { a.base_url() };
        client.set_base(base.clone());
        assert_eq!(client.post("/incr").await.ok().count(), n);
        let other = if base == a.base_url() {
            b.base_url()
        } else {
            a.base_url()
        };
        client.set_base(other);
        assert_eq!(client.get("/session").await.ok().count(), n, "no stale copy");
    }
    assert_eq!(
        a.stats().local_sessions + b.stats().local_sessions,
        0,
        "nothing kept in memory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_primary_node_serves_every_session_from_its_backup() {
    init_tracing();
    let mut cluster = Cluster::start(3);
    let (a, b) = two_instances(&cluster, "all").await;
    let mut clients = Vec::new();
    for i in 0..12u64 {
        let mut client = SessionClient::new(a.base_url());
        for _ in 0..=i {
            client.post("/incr").await.ok();
        }
        clients.push((client, i + 1));
    }
    // Kill the node holding the most sessions.
    let on = |node: &str| {
        clients
            .iter()
            .filter(|(c, _)| id_node(c.cookie().unwrap()) == Some(node))
            .count()
    };
    let victim = ["n1", "n2", "n3"].into_iter().max_by_key(|n| on(n)).unwrap().to_owned();
    let victims = on(&victim) as u64;
    assert!(victims > 0);
    cluster.node_mut(&victim).kill();
    for (client, expected) in &mut clients {
        client.set_base(b.base_url());
        let before = client.cookie().unwrap().to_owned();
        let reply = client.get("/session").await.ok();
        assert_eq!(reply.count(), *expected, "right data after the kill");
        let now = client.cookie().unwrap();
        assert_eq!(id_random(now), id_random(&before));
        assert_ne!(id_node(now), Some(victim.as_str()), "relocated off the dead node");
        *expected += 1;
        assert_eq!(client.post("/incr").await.ok().count(), *expected, "keeps working");
    }
    assert_eq!(
        b.stats().counters.relocations,
        victims,
        "each session on the dead node was relocated once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_empty_gets_its_copies_back_from_the_next_request() {
    init_tracing();
    let mut cluster = Cluster::start(2);
    let app = TestApp::start(non_sticky(&cluster).build().unwrap()).await;
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();
    client.post("/incr").await.ok();
    let id = client.cookie().unwrap().to_owned();
    let primary = id_node(&id).unwrap().to_owned();
    let backup = if primary == "n1" { "n2" } else { "n1" };
    cluster.node_mut(backup).restart_empty();
    // A read touches only the primary: it re-creates the backup once this
    // instance saw the node change (an outage, or its prober finding the
    // node empty and placing its sentinel again). Wait until it is seen up
    // with the sentinel back.
    wait_available(&app.manager, &["n1", "n2"], Duration::from_secs(5)).await;
    eventually(Duration::from_secs(5), "the prober saw the restarted node", || {
        cluster.node(backup).keys().iter().any(|k| k.starts_with("msm-probe:"))
    })
    .await;
    // The prober notes the change as soon as its sentinel's set returns;
    // give its answer time to arrive.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.get("/session").await.ok().count(), 2);
    assert!(
        cluster.node(backup).get_raw(&format!("bak:{id}")).is_some(),
        "backup re-created"
    );
    cluster.node_mut(&primary).restart_empty();
    assert_eq!(client.get("/session").await.ok().count(), 2, "read from the backup");
    assert!(cluster.node(&primary).get_raw(&id).is_some(), "primary re-created");
    assert!(cluster.node(backup).get_raw(&format!("bak:{id}")).is_some());
    assert_eq!(client.post("/incr").await.ok().count(), 3);
    assert_eq!(app.stats().counters.backups_recreated, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_requests_cause_no_memcached_operation() {
    init_tracing();
    let cluster = Cluster::start(2);
    let config = non_sticky(&cluster)
        .node_probe_interval(Duration::from_secs(3600))
        .request_uri_ignore_pattern("/static/.*")
        .build()
        .unwrap();
    let app = TestApp::start(config).await;
    for node in &cluster.nodes {
        eventually(Duration::from_secs(5), "sentinel placed", || {
            node.keys().iter().any(|k| k.starts_with("msm-probe:"))
        })
        .await;
    }
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();
    let snapshot = || cluster.nodes.iter().map(|n| n.stats()).collect::<Vec<_>>();
    let before = snapshot();
    for _ in 0..5 {
        client.get("/static/app.css").await.ok();
        client.post("/static/incr").await;
    }
    let after = snapshot();
    for (b, a) in before.iter().zip(&after) {
        for counter in ["cmd_get", "cmd_set", "cmd_touch", "delete_hits", "delete_misses"] {
            assert_eq!(a.delta(b, counter), 0, "{counter}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_left_by_a_crashed_instance_expires() {
    init_tracing();
    let cluster = Cluster::start(1);
    let config = non_sticky(&cluster)
        .locking_mode("all")
        .lock_expiration(Duration::from_secs(2));
    let app = TestApp::start(config.build().unwrap()).await;
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();
    let id = client.cookie().unwrap().to_owned();
    // An instance took the lock and died.
    cluster.nodes[0].set_raw(&format!("lock:{}", id_random(&id)), b"dead", 2);
    let started = std::time::Instant::now();
    let reply = client.post("/incr").await;
    assert_eq!(reply.status, 200, "the dead lock expired within operationTimeout");
    assert_eq!(reply.count(), 2);
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "it did wait for the expiry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_that_cannot_be_had_is_a_503_and_saves_nothing() {
    init_tracing();
    let cluster = Cluster::start(1);
    let config = fast_config(&cluster.spec())
        .sticky(false)
        .locking_mode("all")
        .lock_failure(LockFailure::Fail);
    let app = TestApp::start(config.build().unwrap()).await;
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();
    let id = client.cookie().unwrap().to_owned();
    cluster.nodes[0].set_raw(&format!("lock:{}", id_random(&id)), b"busy", 30);
    let reply = client.post("/incr").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    cluster.nodes[0].delete_raw(&format!("lock:{}", id_random(&id)));
    assert_eq!(
        client.get("/session").await.ok().count(),
        1,
        "the refused request changed nothing"
    );
}

/// memcached `stats` deltas of one node: (cmd_get, cmd_set, cmd_touch,
/// delete_hits). memcached counts the read of a session (`mg … v c T`, which
/// slides its TTL) as a touch, not as a get.
fn traffic(before: &Stats, after: &Stats) -> [i64; 4] {
    ["cmd_get", "cmd_set", "cmd_touch", "delete_hits"].map(|c| after.delta(before, c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_memcached_operations_per_request_kind() {
    init_tracing();
    let cluster = Cluster::start(2);
    let quiet = |locking: &str| {
        non_sticky(&cluster)
            .node_probe_interval(Duration::from_secs(3600))
            .locking_mode(locking)
            .build()
            .unwrap()
    };
    let app = TestApp::start(quiet("none")).await;
    let locked = TestApp::start(quiet("all")).await;
    // Both probers' first round (a get miss and a set each per node).
    for node in &cluster.nodes {
        eventually(Duration::from_secs(5), "sentinels placed", || {
            node.keys().iter().filter(|k| k.starts_with("msm-probe:")).count() == 2
        })
        .await;
    }
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();
    let id = client.cookie().unwrap().to_owned();
    let primary = cluster.node(id_node(&id).unwrap());
    let backup = cluster.nodes.iter().find(|n| n.port() != primary.port()).unwrap();
    let measure = |p0: &Stats, b0: &Stats| (traffic(p0, &primary.stats()), traffic(b0, &backup.stats()));

    let (p0, b0) = (primary.stats(), backup.stats());
    client.get("/session").await.ok();
    assert_eq!(
        measure(&p0, &b0),
        ([0, 0, 1, 0], [0, 0, 0, 0]),
        "read-only: one get-and-touch of the primary, nothing else"
    );

    let (p0, b0) = (primary.stats(), backup.stats());
    client.post("/incr").await.ok();
    assert_eq!(
        measure(&p0, &b0),
        ([0, 1, 1, 0], [0, 1, 0, 0]),
        "modifying: the read, then one set per node"
    );

    let (p0, b0) = (primary.stats(), backup.stats());
    client.get("/plain").await.ok();
    assert_eq!(
        measure(&p0, &b0),
        ([0, 0, 1, 0], [0, 0, 1, 0]),
        "id carried, session unused: 2 touches"
    );

    client.set_base(locked.base_url());
    let (p0, b0) = (primary.stats(), backup.stats());
    client.get("/session").await.ok();
    assert_eq!(
        measure(&p0, &b0),
        ([0, 1, 1, 1], [0, 0, 0, 0]),
        "locked read: + the lock's add and delete"
    );
    let (p0, b0) = (primary.stats(), backup.stats());
    client.post("/incr").await.ok();
    assert_eq!(
        measure(&p0, &b0),
        ([0, 2, 1, 1], [0, 1, 0, 0]),
        "locked write: lock add + read, primary set, lock delete; backup set"
    );
    assert_eq!(client.get("/session").await.ok().count(), 3);

    let single = Cluster::start(1);
    let one = TestApp::start(
        non_sticky(&single)
            .node_probe_interval(Duration::from_secs(3600))
            .build()
            .unwrap(),
    )
    .await;
    let node = &single.nodes[0];
    eventually(Duration::from_secs(5), "sentinel placed", || !node.keys().is_empty()).await;
    let mut client = SessionClient::new(one.base_url());
    client.post("/incr").await.ok();
    let s0 = node.stats();
    client.get("/session").await.ok();
    let s1 = node.stats();
    assert_eq!(traffic(&s0, &s1), [0, 0, 1, 0], "one node, read: one get-and-touch");
    client.post("/incr").await.ok();
    assert_eq!(
        traffic(&s1, &node.stats()),
        [0, 1, 1, 0],
        "one node, write: the read and exactly 1 write"
    );
}

/// A non-sticky tombstone as stored: the envelope's magic and its variant
/// `Gone` (index 3).
use integration_tests::TOMBSTONE;

/// A non-sticky forward record to `to` as stored: the magic, the variant
/// `Moved` (index 2) and the id as a postcard string.
fn forward_to(to: &str) -> Vec<u8> {
    assert!(to.len() < 128, "a one-byte length");
    let mut out = vec![0xA5, 0x53, 2, to.len() as u8];
    out.extend_from_slice(to.as_bytes());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_leaves_tombstones_and_deletes_the_lock() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app = TestApp::start(non_sticky(&cluster).locking_mode("all").build().unwrap()).await;
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();
    client.post("/incr").await.ok();
    let id = client.cookie().unwrap().to_owned();
    let session_keys = || {
        let mut keys = cluster
            .nodes
            .iter()
            .flat_map(|n| n.keys())
            .filter(|k| k.contains(id_random(&id)))
            .collect::<Vec<_>>();
        keys.sort();
        keys
    };
    let mut both = vec![id.clone(), format!("bak:{id}")];
    both.sort();
    assert_eq!(
        session_keys(),
        both,
        "the session and its backup (the lock is released)"
    );
    client.post("/invalidate").await.ok();
    assert_eq!(
        session_keys(),
        both,
        "lock deleted; the primary and backup keys hold tombstones"
    );
    let primary = cluster.node(id_node(&id).unwrap());
    assert_eq!(primary.get_raw(&id), Some(TOMBSTONE.to_vec()), "not a session");
    let backup_key = format!("bak:{id}");
    let backup = cluster
        .nodes
        .iter()
        .find(|n| n.get_raw(&backup_key).is_some())
        .expect("the backup slot");
    assert_eq!(
        backup.get_raw(&backup_key),
        Some(TOMBSTONE.to_vec()),
        "not a session either"
    );
    let mut replay = SessionClient::new(app.base_url());
    replay.set_cookie(Some(id.clone()));
    let reply = replay.get("/session").await.ok();
    assert_eq!((reply.id(), reply.count()), (None, 0), "no session under the old id");
    assert!(reply.set_cookie().is_none());
}

/// A request still carrying the id a session had before its node was
/// killed and it was relocated (in flight, or its response was lost)
/// finds the session through the forward record left in place of its old
/// backup, on any instance, and is answered with the new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_kill_the_old_id_finds_the_relocated_session_through_its_forward_record() {
    init_tracing();
    let mut cluster = Cluster::start(3);
    let (a, b) = two_instances(&cluster, "none").await;
    let mut client = SessionClient::new(a.base_url());
    for _ in 0..3 {
        client.post("/incr").await.ok();
    }
    let old_id = client.cookie().unwrap().to_owned();
    let old_node = id_node(&old_id).unwrap().to_owned();
    cluster.node_mut(&old_node).kill();

    let reply = client.post("/incr").await.ok();
    assert_eq!(reply.count(), 4, "read from the backup");
    let new_id = reply.set_cookie().expect("relocated: a new id").value.clone();
    assert_eq!(id_random(&new_id), id_random(&old_id));
    let new_node = id_node(&new_id).unwrap().to_owned();
    assert_ne!(new_node, old_node);
    assert_eq!(
        cluster.node(&new_node).get_raw(&format!("bak:{old_id}")),
        Some(forward_to(&new_id)),
        "the old backup copy became a forward record"
    );
    assert_eq!(a.stats().counters.relocations, 1);

    // The old id, on the other instance (which has not seen the kill).
    let mut stale = SessionClient::new(b.base_url());
    stale.set_cookie(Some(old_id.clone()));
    let reply = stale.get("/session").await.ok();
    assert_eq!(reply.count(), 4, "the session, not an empty one");
    assert_eq!(reply.id().as_deref(), Some(new_id.as_str()));
    assert_eq!(
        reply.set_cookie().map(|c| c.value.as_str()),
        Some(new_id.as_str()),
        "answered with the new id"
    );
    // A change made through the old id is kept.
    stale.set_cookie(Some(old_id.clone()));
    let reply = stale.post("/incr").await.ok();
    assert_eq!(reply.count(), 5);
    assert_eq!(reply.id().as_deref(), Some(new_id.as_str()));
    assert_eq!(b.stats().counters.forwards_followed, 2);
    assert_eq!(b.stats().counters.relocations, 0, "not relocated a second time");

    let reply = client.get("/session").await.ok();
    assert_eq!(reply.count(), 5, "the change made through the old id");
    assert_eq!(reply.id().as_deref(), Some(new_id.as_str()));
}
