//! Sticky-mode flows through the real warp layer, on in-process nodes that
//! can be switched off: deterministic tests of the failover decisions.
//! (The same behaviours are tested against real memcached in `tests/`.)

mod common;

use std::time::Duration;

use common::*;
use memcached_sessions::{Config, Session};
use warp::Filter;
use warp::http::StatusCode;

#[tokio::test]
async fn a_session_is_created_by_the_first_write_and_announced_once() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(Config::builder());
    let read = call(&manager, "GET", "/count", None).await;
    assert_eq!(
        (read.body.as_str(), read.set_cookie.as_deref()),
        ("0", None),
        "reads create nothing"
    );
    let first = call(&manager, "POST", "/count", None).await;
    let id = first.cookie_id().unwrap().to_owned();
    assert!(first.set_cookie.as_deref().unwrap().contains("HttpOnly"));
    assert!(first.set_cookie.as_deref().unwrap().contains("SameSite=Lax"));
    assert!(first.set_cookie.as_deref().unwrap().contains("Path=/"));
    let second = call(&manager, "POST", "/count", Some(&id)).await;
    assert_eq!(second.body, "2");
    assert_eq!(second.set_cookie, None);
    assert_eq!(cluster.session_keys(), vec![id.clone()]);
    assert!(cluster.node(node_of(&id)).contains(&id));
}

#[tokio::test]
async fn only_changed_sessions_are_written_and_reads_touch_nothing() {
    let cluster = Cluster::new(2);
    let manager = cluster.quiet_manager(Config::builder());
    let id = session_with_count(&manager, 1).await;
    cluster.wait_for_probes().await;
    let (sets, gets, touches) = (cluster.sets(), cluster.gets(), cluster.touches());
    for _ in 0..5 {
        assert_eq!(call(&manager, "GET", "/count", Some(&id)).await.body, "1");
    }
    assert_eq!(cluster.sets(), sets, "read-only requests write nothing");
    assert_eq!(cluster.gets(), gets, "nor read: the primary copy is here");
    assert_eq!(cluster.touches(), touches, "nor touch: the TTL margin is comfortable");
    for n in 2..=4 {
        assert_eq!(call(&manager, "POST", "/count", Some(&id)).await.body, n.to_string());
    }
    assert_eq!(cluster.sets() - sets, 3, "one write per modifying request");
    assert_eq!(cluster.gets(), gets);
    let stats = manager.statistics();
    assert_eq!(stats.counters.backups_skipped, 5, "one per read-only request");
}

#[tokio::test]
async fn a_session_moves_off_a_dead_node_with_its_data() {
    let cluster = Cluster::new(3);
    let manager = cluster.manager(Config::builder().route("a"));
    let id = session_with_count(&manager, 3).await;
    let dead = node_of(&id).to_owned();
    cluster.node(&dead).set_down(true);
    wait_until("the prober sees the node down", || {
        !manager.statistics().available_nodes.contains(&dead)
    })
    .await;
    let moved = call(&manager, "POST", "/count", Some(&id)).await;
    assert_eq!(moved.body, "4", "data survives the relocation");
    let new_id = moved.cookie_id().expect("relocation re-sets the cookie").to_owned();
    assert_ne!(node_of(&new_id), dead);
    assert_eq!(&new_id[..32], &id[..32], "same random part");
    assert!(new_id.ends_with(".a"));
    assert!(
        cluster.node(node_of(&new_id)).contains(&new_id),
        "forced backup on the new node"
    );
    let after = call(&manager, "GET", "/count", Some(&new_id)).await;
    assert_eq!(
        (after.body.as_str(), after.set_cookie.as_deref()),
        ("4", None),
        "no cookie churn"
    );
    let stale = call(&manager, "GET", "/count", Some(&id)).await;
    assert_eq!(stale.body, "4", "requests in flight with the old cookie still find it");
    assert_eq!(manager.statistics().counters.relocations, 1);
}

#[tokio::test]
async fn with_every_node_down_sessions_live_in_memory_without_cookie_churn() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(Config::builder());
    let id = session_with_count(&manager, 1).await;
    for node in &cluster.nodes {
        node.set_down(true);
    }
    wait_until("all nodes down", || manager.statistics().available_nodes.is_empty()).await;
    for n in 2..=4 {
        let reply = call(&manager, "POST", "/count", Some(&id)).await;
        assert_eq!((reply.body, reply.set_cookie), (n.to_string(), None));
    }
    let fresh = call(&manager, "POST", "/count", None).await;
    let fresh_id = fresh.cookie_id().unwrap().to_owned();
    assert_eq!(fresh_id.len(), 32, "no node available: no node suffix");
    assert_eq!(call(&manager, "POST", "/count", Some(&fresh_id)).await.set_cookie, None);

    cluster.nodes[1].set_down(false);
    wait_until("n2 back", || manager.statistics().available_nodes == ["n2"]).await;
    let moved = call(&manager, "GET", "/count", Some(&fresh_id)).await;
    let moved_id = moved.cookie_id().expect("gets a node once one is back").to_owned();
    assert!(moved_id.ends_with("-n2"));
    assert!(cluster.nodes[1].contains(&moved_id));
    assert_eq!(call(&manager, "GET", "/count", Some(&moved_id)).await.set_cookie, None);
}

#[tokio::test]
async fn failover_nodes_are_used_only_while_regular_nodes_are_down() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(Config::builder().failover_nodes("n2"));
    for _ in 0..10 {
        let id = session_with_count(&manager, 1).await;
        assert_eq!(node_of(&id), "n1");
    }
    let id = session_with_count(&manager, 1).await;
    cluster.nodes[0].set_down(true);
    wait_until("n1 down", || manager.statistics().available_nodes == ["n2"]).await;
    let on_failover = call(&manager, "POST", "/count", Some(&id)).await;
    let failover_id = on_failover.cookie_id().unwrap().to_owned();
    assert!(failover_id.ends_with("-n2"));
    assert_eq!(
        call(&manager, "GET", "/count", Some(&failover_id)).await.set_cookie,
        None
    );
    cluster.nodes[0].set_down(false);
    wait_until("n1 back", || manager.statistics().available_nodes.len() == 2).await;
    let back = call(&manager, "GET", "/count", Some(&failover_id)).await;
    let back_id = back.cookie_id().expect("leaves the failover node").to_owned();
    assert!(back_id.ends_with("-n1"));
    assert_eq!(back.body, "2");
    assert!(cluster.nodes[0].contains(&back_id));
}

#[tokio::test]
async fn another_instance_takes_a_session_over_once() {
    let cluster = Cluster::new(2);
    let a = cluster.manager(Config::builder().route("a"));
    let b = cluster.manager(Config::builder().route("b"));
    let id = session_with_count(&a, 5).await;
    assert!(id.ends_with(".a"));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (b, id) = (b.clone(), id.clone());
        tasks.push(tokio::spawn(async move { call(&b, "POST", "/count", Some(&id)).await }));
    }
    let mut bodies = Vec::new();
    let mut new_ids = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        bodies.push(reply.body.parse::<u64>().unwrap());
        new_ids.extend(reply.cookie_id().map(str::to_owned));
    }
    bodies.sort();
    assert_eq!(bodies, [6, 7, 8, 9], "every concurrent request saw one shared session");
    new_ids.dedup();
    assert_eq!(new_ids.len(), 1);
    let new_id = &new_ids[0];
    assert_eq!(&new_id[..new_id.len() - 2], &id[..id.len() - 2]);
    assert!(new_id.ends_with(".b"), "route rewritten");
    assert_eq!(b.statistics().counters.takeovers, 1);
    assert_eq!(
        cluster.session_keys(),
        vec![new_id.clone()],
        "old key deleted, new key written"
    );
}

#[tokio::test]
async fn a_concurrent_takeover_by_another_instance_is_refused_with_503() {
    let cluster = Cluster::new(1);
    let a = cluster.manager(Config::builder().route("a"));
    let b = cluster.manager(Config::builder().route("b"));
    let id = session_with_count(&a, 1).await;
    // Instance c already claimed it.
    cluster.nodes[0].put_raw(&format!("takeover:{id}"), b"elsewhere");
    let reply = call(&b, "POST", "/count", Some(&id)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(b.statistics().counters.takeover_conflicts, 1);
    assert!(cluster.nodes[0].contains(&id), "nothing was taken");
}

/// A tombstone as stored: the envelope's magic and its variant `Gone`.
const TOMBSTONE: [u8; 3] = [0xA5, 0x53, 3];

async fn stored(cluster: &Cluster, id: &str) -> Option<Vec<u8>> {
    use memcached_sessions::backend::NodeBackend;
    cluster.node(node_of(id)).get(id).await.unwrap()
}

#[tokio::test]
async fn invalidate_and_cycle_id_leave_tombstones_over_the_old_keys() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(Config::builder());
    let id = session_with_count(&manager, 2).await;
    let login = call(&manager, "POST", "/login", Some(&id)).await;
    let new_id = login.cookie_id().unwrap().to_owned();
    assert_ne!(new_id[..32], id[..32], "cycle_id draws a new random part");
    let mut both = vec![id.clone(), new_id.clone()];
    both.sort();
    wait_until("the old id's tombstone is written", || cluster.session_keys() == both).await;
    assert_eq!(stored(&cluster, &id).await, Some(TOMBSTONE.to_vec()));
    let old = call(&manager, "GET", "/count", Some(&id)).await;
    assert_eq!(old.body, "0", "the old id is dead at once");
    assert_eq!(call(&manager, "GET", "/count", Some(&new_id)).await.body, "2");

    let logout = call(&manager, "POST", "/logout", Some(&new_id)).await;
    assert_eq!(logout.cookie_id(), Some(""), "cookie removed");
    assert!(logout.set_cookie.unwrap().contains("Max-Age=0"));
    assert_eq!(stored(&cluster, &new_id).await, Some(TOMBSTONE.to_vec()));
    assert_eq!(call(&manager, "GET", "/count", Some(&new_id)).await.body, "0");
    let other = cluster.manager(Config::builder().route("b"));
    assert_eq!(
        call(&other, "GET", "/count", Some(&new_id)).await.body,
        "0",
        "no other instance takes a logged-out session over"
    );
}

/// The memcached copy of a logged-out session is still there (its delete
/// queued, dropped, or its node was down): the instance that ended it
/// never loads it again (a local tombstone).
#[tokio::test]
async fn a_session_ended_here_never_comes_back_here_even_if_its_copy_does() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(Config::builder().route("a"));
    let id = session_with_count(&manager, 3).await;
    let copy = stored(&cluster, &id).await.expect("backed up");
    let logout = call(&manager, "POST", "/logout", Some(&id)).await;
    assert_eq!(logout.status, StatusCode::OK);
    cluster.node(node_of(&id)).put_raw(&id, &copy);
    let replay = call(&manager, "GET", "/count", Some(&id)).await;
    assert_eq!(
        (replay.body.as_str(), replay.set_cookie),
        ("0", None),
        "still logged out"
    );
}

/// Logged out while the session's node was down: the tombstone waits as a
/// repair and is written when the node is back, so no other instance takes
/// the old copy over.
#[tokio::test]
async fn a_logout_while_the_node_is_down_is_final_once_it_is_back() {
    let cluster = Cluster::new(1);
    let a = cluster.manager(Config::builder().route("a"));
    let id = session_with_count(&a, 3).await;
    cluster.node(node_of(&id)).set_down(true);
    wait_until("a sees the node down", || a.statistics().available_nodes.is_empty()).await;
    let logout = call(&a, "POST", "/logout", Some(&id)).await;
    assert_eq!(logout.status, StatusCode::OK);
    cluster.node(node_of(&id)).set_down(false);
    wait_until("the tombstone was written by the repair", || {
        a.statistics().counters.repairs_done >= 1
    })
    .await;
    assert_eq!(stored(&cluster, &id).await, Some(TOMBSTONE.to_vec()));
    let b = cluster.manager(Config::builder().route("b"));
    assert_eq!(call(&b, "GET", "/count", Some(&id)).await.body, "0", "not taken over");
}

#[tokio::test]
async fn ignored_requests_never_touch_memcached() {
    let cluster = Cluster::new(1);
    let manager = cluster.quiet_manager(Config::builder().request_uri_ignore_pattern("/id"));
    let id = session_with_count(&manager, 1).await;
    cluster.wait_for_probes().await;
    let ops = || cluster.sets() + cluster.gets() + cluster.touches() + cluster.deletes();
    let before = ops();
    let reply = call(&manager, "GET", "/id", Some(&id)).await;
    assert_eq!(reply.body, id, "the local session is still visible");
    // A foreign id would need a load: not on an ignored path.
    let foreign = format!("{}.zz", &id);
    assert_eq!(call(&manager, "GET", "/id", Some(&foreign)).await.body, "");
    assert_eq!(ops(), before, "no memcached operation at all");
    assert_eq!(manager.statistics().counters.requests_ignored, 2);
}

#[tokio::test]
async fn garbage_cookies_mean_no_session() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(Config::builder());
    let valid_shape = format!("{}-n9", "A".repeat(32));
    for garbage in [
        "",
        "x",
        "%00",
        "a b",
        "\u{1}",
        &"z".repeat(8000),
        &valid_shape,
        "abc\r\nflush_all",
    ] {
        let mut request = warp::test::request().path("/count").method("POST");
        if let Ok(value) = warp::http::HeaderValue::from_str(&format!("SESSIONID={garbage}")) {
            request = request.header("cookie", value);
        }
        let response = request.reply(&routes(&manager)).await;
        assert_eq!(response.status(), StatusCode::OK, "{garbage:?}");
        assert_eq!(response.body(), "1", "a fresh session, never the client's id");
        let set = response.headers()["set-cookie"].to_str().unwrap();
        let issued = set.strip_prefix("SESSIONID=").unwrap().split(';').next().unwrap();
        assert!(
            issued.len() == 35 && issued.ends_with("-n1"),
            "a fresh id of ours: {issued}"
        );
        assert_ne!(issued, garbage);
    }
    // Two of the eight cannot even be sent as a header value (control characters).
    assert_eq!(manager.statistics().counters.invalid_session_ids, 6);
}

#[tokio::test]
async fn undecodable_stored_sessions_are_no_session() {
    let cluster = Cluster::new(1);
    let a = cluster.manager(Config::builder().route("a"));
    let b = cluster.manager(Config::builder().route("b"));
    let id = session_with_count(&a, 1).await;
    cluster.nodes[0].put_raw(&id, b"\xA5\x53garbage");
    let reply = call(&b, "GET", "/count", Some(&id)).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "0"));
    assert_eq!(b.statistics().counters.decode_failures, 1);
}

#[tokio::test]
async fn a_node_that_lost_its_data_gets_the_sessions_back_without_a_request() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(Config::builder());
    let id = session_with_count(&manager, 2).await;
    wait_until("the prober placed its sentinel", || cluster.nodes[0].keys().len() == 2).await;
    cluster.nodes[0].clear();
    wait_until("the session is re-written", || cluster.nodes[0].contains(&id)).await;
    assert_eq!(manager.statistics().counters.backups_restored, 1);
}

#[tokio::test]
async fn sessions_survive_an_orderly_restart() {
    let cluster = Cluster::new(2);
    let config = Config::builder().route("a");
    // A change waits at most 5 ms for the previous one's backup.
    let first = cluster.manager_async_waiting_at_most(config.clone().backup_concurrency(1), Duration::from_millis(5));
    cluster.wait_for_probes().await;
    // Slow nodes and one backup at a time: the backups are still queued
    // when shutdown starts.
    for node in &cluster.nodes {
        node.set_delay(Duration::from_millis(200));
    }
    let mut ids = Vec::new();
    for n in 1..=4 {
        ids.push((session_with_count(&first, n).await, n));
    }
    // Pending: in the queue or taken by its dispatcher for the next batch.
    assert!(
        cluster.session_keys().len() < ids.len(),
        "not everything is written yet"
    );
    first.shutdown().await;
    assert_eq!(first.statistics().backup_queue_len, 0);
    for (id, _) in &ids {
        assert!(cluster.node(node_of(id)).contains(id), "{id} written by shutdown");
    }
    for node in &cluster.nodes {
        node.set_delay(Duration::ZERO);
    }
    let second = cluster.manager(config);
    for (id, n) in &ids {
        let reply = call(&second, "GET", "/count", Some(id)).await;
        assert_eq!(
            (reply.body.as_str(), reply.set_cookie.as_deref()),
            (n.to_string().as_str(), None),
            "same route: same id, latest data"
        );
    }
    assert_eq!(second.statistics().counters.loads, 4);
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_expire_here_and_in_memcached() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(
        Config::builder()
            .max_inactive_interval_secs(60)
            .expiry_sweep_interval(Duration::from_secs(1)),
    );
    let id = session_with_count(&manager, 1).await;
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert_eq!(
        call(&manager, "GET", "/count", Some(&id)).await.body,
        "1",
        "reads keep it alive"
    );
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert!(
        cluster.nodes[0].contains(&id),
        "the memcached copy outlives the local session"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(manager.statistics().counters.sessions_expired, 1);
    assert_eq!(
        stored(&cluster, &id).await,
        Some(TOMBSTONE.to_vec()),
        "expiry replaces the memcached copy by a tombstone"
    );
    assert_eq!(call(&manager, "GET", "/count", Some(&id)).await.body, "0");
    let other = cluster.manager(Config::builder().route("b"));
    assert_eq!(
        call(&other, "GET", "/count", Some(&id)).await.body,
        "0",
        "no other instance revives it"
    );
}

/// Concurrent changes of one session while its backup is in flight are
/// coalesced into a few writes of the latest state. (Sequential changes
/// are not, when a backup takes longer than the gap between them: each is
/// answered only once the one before it is stored.)
#[tokio::test]
async fn async_backups_of_one_session_are_coalesced() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager_async(Config::builder().backup_concurrency(1));
    let id = session_with_count(&manager, 1).await;
    cluster.nodes[0].set_delay(Duration::from_millis(100));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let manager = manager.clone();
        let id = id.clone();
        requests.spawn(async move { call(&manager, "POST", "/count", Some(&id)).await.status.as_u16() });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    wait_until("the queue drained", || manager.statistics().backup_queue_len == 0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A range, not an exact count: how many of the 20 requests change the
    // session before the first delayed write serializes it depends on how
    // the executor interleaves them; what is tested is that the changes
    // are coalesced, not the interleaving.
    let written = manager.statistics().counters.backups_written;
    assert!(
        written <= 4,
        "20 changes while a write was in flight cost a few writes, not 20: {written}"
    );
    assert_eq!(manager.statistics().counters.backup_waits_timed_out, 0);
    cluster.nodes[0].set_delay(Duration::ZERO);
    let other = cluster.manager(Config::builder());
    assert_eq!(
        call(&other, "GET", "/count", Some(&id)).await.body,
        "21",
        "the latest state was written"
    );
}

#[tokio::test]
async fn a_full_backup_queue_drops_and_counts_but_loses_nothing() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager_async(Config::builder().backup_queue_capacity(1).backup_concurrency(1));
    cluster.nodes[0].set_delay(Duration::from_millis(50));
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(
            call(&manager, "POST", "/count", None)
                .await
                .cookie_id()
                .unwrap()
                .to_owned(),
        );
    }
    // Ranges: how many pushes find the one-slot queue full depends on when
    // the backup task gets to run between the requests (executor
    // interleaving), not on the behaviour under test.
    let dropped = manager.statistics().counters.backups_dropped;
    assert!(dropped >= 5, "a queue of one overflows under a burst: {dropped}");
    assert!(manager.statistics().backup_queue_len <= 1, "memory stays bounded");
    cluster.nodes[0].set_delay(Duration::ZERO);
    wait_until("the queue drained", || manager.statistics().backup_queue_len == 0).await;
    // The next request of each session queues its backup again.
    for id in &ids {
        call(&manager, "GET", "/count", Some(id)).await;
        wait_until("written", || cluster.nodes[0].contains(id)).await;
    }
}

#[tokio::test]
async fn the_session_filter_outside_the_layer_is_a_clear_500() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(Config::builder());
    let unwrapped = warp::path!("x")
        .and(manager.session())
        .map(|_s: Session| "unreachable")
        .recover(|r: warp::Rejection| async move { Ok::<_, std::convert::Infallible>(format!("{r:?}")) });
    let response = warp::test::request().path("/x").reply(&unwrapped).await;
    assert!(String::from_utf8_lossy(response.body()).contains("wrap the routes"));
    // Without a recover, warp's own 500 carries the same hint.
    let bare = warp::path!("x").and(manager.session()).map(|_s: Session| "unreachable");
    let response = warp::test::request().path("/x").reply(&bare).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(String::from_utf8_lossy(response.body()).contains("wrap the routes"));
}

#[tokio::test]
async fn backups_queued_together_are_written_together_and_each_is_accounted() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager_async(Config::builder().backup_concurrency(1));
    cluster.wait_for_probes().await;
    for node in &cluster.nodes {
        node.set_delay(Duration::from_millis(20));
    }
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let manager = manager.clone();
        tasks.push(tokio::spawn(
            async move { call(&manager, "POST", "/count", None).await },
        ));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap().cookie_id().unwrap().to_owned());
    }
    wait_until("every session is written", || {
        ids.iter().all(|id| cluster.node(node_of(id)).contains(id))
    })
    .await;
    let counters = manager.statistics().counters;
    assert_eq!((counters.backups_written, counters.backups_failed), (40, 0));
    // A session changed again after its batch is written again.
    for node in &cluster.nodes {
        node.set_delay(Duration::ZERO);
    }
    assert_eq!(call(&manager, "POST", "/count", Some(&ids[0])).await.body, "2");
    wait_until("rewritten", || manager.statistics().counters.backups_written == 41).await;
}

/// A takeover whose request is dropped after the claim was added (a client
/// hang-up while the session loads) releases its claim at once: another
/// instance is not kept from the session for the claim's 30 s.
#[tokio::test]
async fn a_cancelled_takeover_releases_its_claim() {
    let cluster = Cluster::new(1);
    let a = cluster.manager(Config::builder().route("a"));
    let b = cluster.manager(Config::builder().route("b"));
    let id = session_with_count(&a, 2).await;
    let node = cluster.node(node_of(&id));
    node.set_delay(Duration::from_millis(300));
    // The claim's add takes ~300 ms, the load another ~300 ms: hang up
    // in between.
    let cancelled = tokio::time::timeout(Duration::from_millis(450), call(&b, "GET", "/count", Some(&id))).await;
    assert!(cancelled.is_err(), "still loading when the client hung up");
    node.set_delay(Duration::ZERO);
    wait_until("the claim is released", || {
        !node.keys().iter().any(|k| k.starts_with("takeover:"))
    })
    .await;
    let c = cluster.manager(Config::builder().route("c"));
    let reply = call(&c, "GET", "/count", Some(&id)).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "2"),
        "taken over at once"
    );
}

/// Its instance died after the session went idle for longer than its
/// interval, but before memcached dropped the copy (the TTL carries a
/// margin): another instance loading it finds it expired, not revived —
/// while a session idle for less than its interval is taken over.
#[tokio::test(start_paused = true)]
async fn a_takeover_never_revives_a_session_idle_past_its_interval() {
    let cluster = Cluster::new(1);
    // a never sweeps: it plays an instance that died.
    let config = || {
        Config::builder()
            .max_inactive_interval_secs(60)
            .expiry_sweep_interval(Duration::from_secs(3600))
    };
    let a = cluster.manager(config().route("a"));
    let idle = session_with_count(&a, 1).await;
    tokio::time::sleep(Duration::from_secs(40)).await;
    let recent = session_with_count(&a, 2).await;
    // 70 s after `idle`'s last request (TTL 60 + 15 s margin: 5 s left,
    // less than half the margin), 30 s after `recent`'s.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(cluster.node(node_of(&idle)).contains(&idle), "its copy is still there");
    let b = cluster.manager(config().route("b"));
    let reply = call(&b, "GET", "/count", Some(&idle)).await;
    assert_eq!(
        (reply.body.as_str(), reply.set_cookie),
        ("0", None),
        "expired, not revived"
    );
    assert_eq!(b.statistics().counters.sessions_expired, 1);
    assert_eq!(call(&b, "GET", "/count", Some(&recent)).await.body, "2", "taken over");
}

/// A change made while the session's node was down (its backup failed or
/// was deferred) reaches memcached once the node is back, without another
/// request of the session: the instance can then die and lose nothing.
#[tokio::test]
async fn a_backup_that_failed_is_written_in_the_background_once_the_node_is_back() {
    let cluster = Cluster::new(1);
    let a = cluster.manager(Config::builder().route("a"));
    let id = session_with_count(&a, 1).await;
    let node = cluster.node(node_of(&id));
    node.set_down(true);
    let changed = call(&a, "POST", "/count", Some(&id)).await;
    assert_eq!((changed.status, changed.body.as_str()), (StatusCode::OK, "2"));
    assert!(a.statistics().unsynced_sessions >= 1, "its backup waits for a retry");
    node.set_down(false);
    wait_until("the backup was retried", || a.statistics().unsynced_sessions == 0).await;
    // a dies (it serves nothing more); b takes the session over.
    let b = cluster.manager(Config::builder().route("b"));
    let reply = call(&b, "GET", "/count", Some(&id)).await;
    assert_eq!(reply.body, "2", "the change made while the node was down is not lost");
}

/// A node restarted empty holding more sessions than the backup queue
/// takes: every one of them is written back (paced through the retries),
/// none is dropped for good.
#[tokio::test]
async fn a_restore_after_an_empty_restart_covers_more_sessions_than_the_queue_holds() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager_async(Config::builder().route("a").backup_queue_capacity(4));
    let mut ids = Vec::new();
    for _ in 0..40 {
        ids.push(session_with_count(&manager, 1).await);
    }
    let node = cluster.node(node_of(&ids[0]));
    wait_until("all backed up", || ids.iter().all(|id| node.contains(id))).await;
    node.clear();
    wait_until("every session restored", || ids.iter().all(|id| node.contains(id))).await;
    let other = cluster.manager(Config::builder().route("b"));
    for id in &ids {
        assert_eq!(call(&other, "GET", "/count", Some(id)).await.body, "1");
    }
}

/// A request dropped (client hang-up, outer timeout) while its synchronous
/// backup is on the way: the backup still completes, so another instance
/// finds the change. (The backup ran in the request's task and was
/// aborted with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_during_its_sync_backup_still_backs_up() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(Config::builder());
    let id = session_with_count(&manager, 1).await;
    cluster.node("n1").set_delay(Duration::from_millis(300));
    let dropped = tokio::time::timeout(Duration::from_millis(100), call(&manager, "POST", "/count", Some(&id))).await;
    assert!(dropped.is_err(), "the request was dropped during its backup");
    cluster.node("n1").set_delay(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other = cluster.manager(Config::builder());
    assert_eq!(
        call(&other, "GET", "/count", Some(&id)).await.body,
        "2",
        "the change reached memcached"
    );
}
