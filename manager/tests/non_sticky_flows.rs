//! Non-sticky flows on in-process nodes: per-request load and store, the
//! primary copy's TTL as the inactivity clock, backups on the next node,
//! forward records and tombstones, locking. (Against real memcached in
//! `tests/`.)

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use memcached_sessions::backend::{Expiry, InMemoryNode, NodeBackend};
use memcached_sessions::{Config, ConfigBuilder, LockFailure, SessionManager};
use warp::http::StatusCode;

fn non_sticky() -> ConfigBuilder {
    Config::builder()
        .sticky(false)
        .operation_timeout(Duration::from_secs(3))
}

/// Operations served so far: (gets, sets, touches, deletes).
fn ops(cluster: &Cluster) -> [u64; 4] {
    [cluster.gets(), cluster.sets(), cluster.touches(), cluster.deletes()]
}

/// Operations one node served so far: (gets, sets, touches, deletes).
fn node_ops(node: &InMemoryNode) -> [u64; 4] {
    let counts = node.counts();
    [&counts.gets, &counts.sets, &counts.touches, &counts.deletes].map(|c| c.load(Ordering::SeqCst))
}

fn delta(after: [u64; 4], before: [u64; 4]) -> [u64; 4] {
    [0, 1, 2, 3].map(|i| after[i] - before[i])
}

fn random_part(id: &str) -> &str {
    &id[..32]
}

/// The node after `node` in the ring of `n` nodes (`n1`, `n2`, … wrapping).
fn next_node(node: &str, n: usize) -> String {
    let index: usize = node[1..].parse().unwrap();
    format!("n{}", index % n + 1)
}

/// The bytes stored under `key` on `node` (one `get`).
async fn stored(node: &InMemoryNode, key: &str) -> Option<Vec<u8>> {
    node.get(key).await.unwrap()
}

/// A non-sticky tombstone as stored: the envelope's magic and its variant
/// `Gone` (index 3).
const TOMBSTONE: [u8; 3] = [0xA5, 0x53, 3];

/// A non-sticky forward record to `to` as stored: the magic, the variant
/// `Moved` (index 2) and the id as a postcard string.
fn forward_to(to: &str) -> Vec<u8> {
    assert!(to.len() < 128, "a one-byte length");
    let mut out = vec![0xA5, 0x53, 2, to.len() as u8];
    out.extend_from_slice(to.as_bytes());
    out
}

#[tokio::test]
async fn every_instance_sees_the_latest_write() {
    let cluster = Cluster::new(3);
    let a = cluster.manager(non_sticky().route("a"));
    let b = cluster.manager(non_sticky().route("b"));
    let id = session_with_count(&a, 1).await;
    for n in 2..=6u64 {
        let instance = if n % 2 == 0 { &b } else { &a };
        let reply = call(instance, "POST", "/count", Some(&id)).await;
        assert_eq!(reply.body, n.to_string(), "no stale copy");
        assert_eq!(reply.set_cookie, None, "no takeover, no id change in non-sticky mode");
    }
    assert_eq!(call(&a, "GET", "/count", Some(&id)).await.body, "6");
    assert_eq!(
        a.statistics().local_sessions,
        0,
        "dropped from memory after each request"
    );
    let primary = node_of(&id);
    let mut expected = vec![id.clone(), format!("bak:{id}")];
    expected.sort();
    assert_eq!(cluster.keys(), expected, "the session and its backup, nothing else");
    assert!(cluster.node(primary).contains(&id));
    assert!(
        cluster.node(&next_node(primary, 3)).contains(&format!("bak:{id}")),
        "the backup on the next node"
    );
}

#[tokio::test]
async fn memcached_operations_per_request_kind() {
    let cluster = Cluster::new(3);
    // The probers run once at start (their sentinels are awaited), then
    // not again: every operation below is the request's own.
    let manager = cluster.quiet_manager(non_sticky().request_uri_ignore_pattern("/id"));
    let id = session_with_count(&manager, 1).await;
    cluster.wait_for_probes().await;

    // (gets, sets, touches, deletes); the in-memory node counts
    // `get_and_touch` (`mg … v c T`) as a touch.
    let before = ops(&cluster);
    call(&manager, "GET", "/count", Some(&id)).await;
    let read = delta(ops(&cluster), before);
    assert_eq!(read, [0, 0, 1, 0], "read-only: one get-and-touch, nothing else");

    let before = ops(&cluster);
    call(&manager, "POST", "/count", Some(&id)).await;
    assert_eq!(
        delta(ops(&cluster), before),
        [0, 2, 1, 0],
        "modifying: the read, the primary and the backup"
    );

    let before = ops(&cluster);
    call(&manager, "GET", "/plain", Some(&id)).await;
    assert_eq!(
        delta(ops(&cluster), before),
        [0, 0, 2, 0],
        "id carried, session unused: a touch of each copy"
    );

    let before = ops(&cluster);
    call(&manager, "GET", "/id", Some(&id)).await;
    assert_eq!(delta(ops(&cluster), before), [0, 0, 0, 0], "ignored: nothing");
    assert_eq!(call(&manager, "GET", "/count", Some(&id)).await.body, "2");

    let single = Cluster::new(1);
    let manager = single.quiet_manager(non_sticky());
    let id = session_with_count(&manager, 1).await;
    single.wait_for_probes().await;
    let before = ops(&single);
    call(&manager, "GET", "/count", Some(&id)).await;
    assert_eq!(delta(ops(&single), before), [0, 0, 1, 0], "one node: one get-and-touch");
    let before = ops(&single);
    call(&manager, "POST", "/count", Some(&id)).await;
    assert_eq!(
        delta(ops(&single), before),
        [0, 1, 1, 0],
        "one node: the read and exactly 1 write"
    );

    let locked = single.quiet_manager(non_sticky().locking_mode("all"));
    wait_until("the second prober's sentinel", || {
        single.nodes[0]
            .keys()
            .iter()
            .filter(|k| k.starts_with("msm-probe:"))
            .count()
            == 2
    })
    .await;
    let before = ops(&single);
    call(&locked, "POST", "/count", Some(&id)).await;
    assert_eq!(
        delta(ops(&single), before),
        [0, 2, 1, 1],
        "one node, locking: + the lock's add and delete"
    );
}

/// lockingMode=all: the lock's `add` goes with the read to the primary,
/// the primary is written, then the backup is written while the lock is
/// deleted — 5 operations for a change, 3 for a read.
#[tokio::test]
async fn memcached_operations_per_request_with_locking_all() {
    let cluster = Cluster::new(3);
    let manager = cluster.quiet_manager(non_sticky().locking_mode("all"));
    let id = session_with_count(&manager, 1).await;
    cluster.wait_for_probes().await;
    let primary = node_of(&id).to_owned();
    let backup = next_node(&primary, 3);
    let other = next_node(&backup, 3);
    let per_node = || [&primary, &backup, &other].map(|n| node_ops(cluster.node(n)));
    let deltas = |before: [[u64; 4]; 3]| {
        let after = per_node();
        [0, 1, 2].map(|i| delta(after[i], before[i]))
    };

    let before = per_node();
    assert_eq!(call(&manager, "POST", "/count", Some(&id)).await.body, "2");
    assert_eq!(
        deltas(before),
        [[0, 2, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]],
        "locked change: primary lock add + read, primary set, lock delete; backup set"
    );
    assert_eq!(
        ops(&cluster).iter().sum::<u64>() - before.iter().flatten().sum::<u64>(),
        5
    );

    let before = per_node();
    assert_eq!(call(&manager, "GET", "/count", Some(&id)).await.body, "2");
    assert_eq!(
        deltas(before),
        [[0, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]],
        "locked read: lock add + read, lock delete; no write"
    );
    assert!(
        cluster.keys().iter().all(|k| !k.starts_with("lock:")),
        "the lock is gone: {:?}",
        cluster.keys()
    );
    let stats = manager.statistics().counters;
    assert_eq!((stats.locks_acquired, stats.locks_released), (2, 2));
}

#[tokio::test]
async fn parallel_increments_across_two_instances_lose_nothing_with_locking() {
    let cluster = Cluster::new(2);
    let a = cluster.manager(non_sticky().locking_mode("all").route("a"));
    let b = cluster.manager(non_sticky().locking_mode("all").route("b"));
    let id = session_with_count(&a, 1).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let manager = if i % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            call(&manager, "POST", "/count?delay_ms=5", Some(&id)).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(
        call(&a, "GET", "/count", Some(&id)).await.body,
        "17",
        "every increment counted"
    );
    let stats = a.statistics().counters;
    assert_eq!(stats.locks_acquired, stats.locks_released);
}

#[tokio::test]
async fn without_locking_a_write_based_on_older_data_is_refused_not_lost() {
    // Without a lock two instances can change one session at once; the
    // write based on the older copy is refused (503, nothing saved)
    // instead of silently overwriting the newer one.
    let cluster = Cluster::new(2);
    let a = cluster.manager(non_sticky().route("a"));
    let b = cluster.manager(non_sticky().route("b"));
    let id = session_with_count(&a, 1).await;
    let slow = tokio::spawn({
        let (a, id) = (a.clone(), id.clone());
        async move { call(&a, "POST", "/count?delay_ms=300", Some(&id)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(call(&b, "POST", "/count", Some(&id)).await.body, "2");
    assert_eq!(call(&b, "POST", "/count", Some(&id)).await.body, "3");
    let slow = slow.await.unwrap();
    assert_eq!(
        slow.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a loaded 1 before b wrote: refused"
    );
    assert_eq!(call(&a, "GET", "/count", Some(&id)).await.body, "3", "b's updates kept");
    assert_eq!(a.statistics().counters.write_conflicts, 1);
    // The backup copy holds b's writes, not a's refused one (the backup is
    // written only once the primary kept a write): read it with the
    // primary gone.
    cluster.node(node_of(&id)).set_down(true);
    assert_eq!(
        call(&b, "GET", "/count", Some(&id)).await.body,
        "3",
        "the backup kept b's updates"
    );
}

#[tokio::test]
async fn a_refused_write_never_brings_a_logged_out_session_back() {
    // a loads the session, b logs it out, a's change is refused: its
    // copy must not reach the backup, or a failover would revive it.
    let cluster = Cluster::new(2);
    let a = cluster.manager(non_sticky().route("a"));
    let b = cluster.manager(non_sticky().route("b"));
    let id = session_with_count(&a, 1).await;
    let slow = tokio::spawn({
        let (a, id) = (a.clone(), id.clone());
        async move { call(&a, "POST", "/count?delay_ms=300", Some(&id)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(call(&b, "POST", "/logout", Some(&id)).await.status, StatusCode::OK);
    assert_eq!(slow.await.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);
    let mut tombstones = vec![id.clone(), format!("bak:{id}")];
    tombstones.sort();
    assert_eq!(cluster.keys(), tombstones, "only the logout's tombstones");
    assert_eq!(
        stored(cluster.node(&next_node(node_of(&id), 2)), &format!("bak:{id}")).await,
        Some(TOMBSTONE.to_vec()),
        "the refused write did not replace the backup slot's tombstone"
    );
    assert_eq!(
        stored(cluster.node(node_of(&id)), &id).await,
        Some(TOMBSTONE.to_vec()),
        "the refused write did not replace the tombstone"
    );
    assert_eq!(
        call(&b, "GET", "/count", Some(&id)).await.body,
        "0",
        "logged out stays logged out"
    );
    cluster.node(node_of(&id)).set_down(true);
    assert_eq!(
        call(&b, "GET", "/count", Some(&id)).await.body,
        "0",
        "also from the backup node"
    );
}

#[tokio::test]
async fn concurrent_requests_on_one_instance_share_one_session() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(non_sticky());
    let id = session_with_count(&manager, 1).await;
    let loads = || manager.statistics().counters.loads;
    let before = loads();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (manager, id) = (manager.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            call(&manager, "POST", "/count?delay_ms=100", Some(&id)).await
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        call(&manager, "GET", "/count", Some(&id)).await.body,
        "9",
        "shared, so nothing lost"
    );
    assert_eq!(loads() - before, 2, "one load for the eight, one for the check");
}

#[tokio::test]
async fn auto_locking_learns_read_only_requests() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(non_sticky().locking_mode("auto"));
    let id = session_with_count(&manager, 1).await;
    let locks = || manager.statistics().counters.locks_acquired;
    call(&manager, "GET", "/count", Some(&id)).await;
    assert_eq!(locks(), 1, "the first request of a kind locks");
    call(&manager, "GET", "/count", Some(&id)).await;
    call(&manager, "GET", "/count", Some(&id)).await;
    assert_eq!(locks(), 1, "learned read-only: no more locks");
    call(&manager, "POST", "/count", Some(&id)).await;
    call(&manager, "POST", "/count", Some(&id)).await;
    assert_eq!(locks(), 3, "modifying requests always lock");
}

#[tokio::test]
async fn a_lock_left_by_a_crashed_instance_expires() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(non_sticky().locking_mode("all").lock_expiration(Duration::from_secs(1)));
    let id = session_with_count(&manager, 1).await;
    let lock_key = format!("lock:{}", random_part(&id));
    cluster.nodes[0]
        .add(&lock_key, b"crashed", Expiry::After(Duration::from_secs(1)))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let reply = call(&manager, "POST", "/count", Some(&id)).await;
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "2"));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_lock_that_cannot_be_had_fails_or_proceeds_as_configured() {
    let cluster = Cluster::new(1);
    let strict = cluster.manager(
        non_sticky()
            .locking_mode("all")
            .operation_timeout(Duration::from_millis(200)),
    );
    let id = session_with_count(&strict, 1).await;
    let lock_key = format!("lock:{}", random_part(&id));
    cluster.nodes[0]
        .add(&lock_key, b"other", Expiry::After(Duration::from_secs(30)))
        .await
        .unwrap();
    let refused = call(&strict, "POST", "/count", Some(&id)).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        call(&strict, "GET", "/count", Some(&id)).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(strict.statistics().counters.lock_failures, 2);

    let lenient = cluster.manager(
        non_sticky()
            .locking_mode("all")
            .operation_timeout(Duration::from_millis(200))
            .lock_failure(LockFailure::Proceed),
    );
    let proceeded = call(&lenient, "POST", "/count", Some(&id)).await;
    assert_eq!((proceeded.status, proceeded.body.as_str()), (StatusCode::OK, "2"));
}

#[tokio::test]
async fn a_long_request_keeps_its_lock() {
    let cluster = Cluster::new(1);
    let config = || non_sticky().locking_mode("all").lock_expiration(Duration::from_secs(1));
    let a = cluster.manager(config());
    let b = cluster.manager(config().operation_timeout(Duration::from_millis(500)));
    let id = session_with_count(&a, 1).await;
    let slow = tokio::spawn({
        let (a, id) = (a.clone(), id.clone());
        async move { call(&a, "POST", "/count?delay_ms=2500", Some(&id)).await }
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Past the lock's TTL, but it was renewed: b cannot take it.
    let blocked = call(&b, "POST", "/count", Some(&id)).await;
    assert_eq!(blocked.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(slow.await.unwrap().body, "2");
    assert_eq!(call(&b, "POST", "/count", Some(&id)).await.body, "3");
}

#[tokio::test]
async fn a_dead_primary_is_replaced_by_its_backup() {
    let cluster = Cluster::new(3);
    let manager = cluster.manager(non_sticky());
    let id = session_with_count(&manager, 3).await;
    let primary = node_of(&id).to_owned();
    cluster.node(&primary).set_down(true);
    let reply = call(&manager, "POST", "/count", Some(&id)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, "4", "read from the backup with the right data");
    let new_id = reply.cookie_id().expect("relocated").to_owned();
    assert_eq!(
        random_part(&new_id),
        random_part(&id),
        "relocation keeps the random part"
    );
    let new_primary = node_of(&new_id).to_owned();
    assert_eq!(new_primary, next_node(&primary, 3), "moved where its backup was");
    assert!(cluster.node(&new_primary).contains(&new_id));
    let new_backup = next_node(&new_primary, 3);
    assert!(
        cluster.node(&new_backup).contains(&format!("bak:{new_id}")),
        "a new backup on the next live node"
    );
    assert_eq!(
        stored(cluster.node(&new_primary), &format!("bak:{id}")).await,
        Some(forward_to(&new_id)),
        "the old backup became a forward record"
    );
    assert_eq!(call(&manager, "POST", "/count", Some(&new_id)).await.body, "5");
    let stats = manager.statistics().counters;
    assert_eq!((stats.backup_node_loads, stats.relocations), (1, 1));
}

/// A request still carrying the id a session had before it was relocated
/// (in flight during the relocation, or its response was lost) finds the
/// session through the forward record left in place of the old backup, is
/// answered with the new id, and its change is kept.
#[tokio::test]
async fn a_relocated_session_is_found_with_its_old_id_through_the_forward_record() {
    let cluster = Cluster::new(3);
    let a = cluster.manager(non_sticky().route("a"));
    let b = cluster.manager(non_sticky().route("b"));
    let old_id = session_with_count(&a, 3).await;
    cluster.node(node_of(&old_id)).set_down(true);
    let relocated = call(&a, "POST", "/count", Some(&old_id)).await;
    assert_eq!((relocated.status, relocated.body.as_str()), (StatusCode::OK, "4"));
    let new_id = relocated.cookie_id().expect("relocated").to_owned();
    assert_ne!(node_of(&new_id), node_of(&old_id));

    // Another instance, which has not seen the node die, gets the old id.
    let read = call(&b, "GET", "/count", Some(&old_id)).await;
    assert_eq!(
        (read.status, read.body.as_str()),
        (StatusCode::OK, "4"),
        "the session, not an empty one"
    );
    assert_eq!(read.cookie_id(), Some(new_id.as_str()), "answered with the new id");
    let changed = call(&b, "POST", "/count", Some(&old_id)).await;
    assert_eq!((changed.status, changed.body.as_str()), (StatusCode::OK, "5"));
    assert_eq!(changed.cookie_id(), Some(new_id.as_str()));
    assert_eq!(b.statistics().counters.forwards_followed, 2);
    assert_eq!(b.statistics().counters.relocations, 0, "not relocated a second time");

    // The change made through the old id is in the session under its new id.
    let reply = call(&a, "GET", "/count", Some(&new_id)).await;
    assert_eq!((reply.body.as_str(), reply.set_cookie), ("5", None));
    assert_eq!(call(&b, "GET", "/count", Some(&new_id)).await.body, "5");
}

/// The node a session was relocated off comes back with its stale copy
/// before the relocating instance could overwrite it: another instance,
/// which saw the node go and come back, checks the backup slot of a copy
/// written before that change, finds the forward record and follows it —
/// and replaces the stale copy by the forward itself.
#[tokio::test]
async fn a_stale_copy_on_a_returning_node_is_recognised_by_its_backup_slot() {
    let cluster = Cluster::new(3);
    // Its prober never runs again: its repair stays queued.
    let a = cluster.quiet_manager(non_sticky().route("a"));
    let b = cluster.manager(non_sticky().route("b"));
    let old_id = session_with_count(&a, 3).await;
    let old_primary = node_of(&old_id).to_owned();
    cluster.node(&old_primary).set_down(true);
    let relocated = call(&a, "POST", "/count", Some(&old_id)).await;
    assert_eq!((relocated.status, relocated.body.as_str()), (StatusCode::OK, "4"));
    let new_id = relocated.cookie_id().expect("relocated").to_owned();
    wait_until("b saw the node go", || {
        !b.statistics().available_nodes.contains(&old_primary)
    })
    .await;
    cluster.node(&old_primary).set_down(false);
    wait_until("b saw the node come back", || {
        b.statistics().available_nodes.contains(&old_primary)
    })
    .await;
    assert_eq!(
        stored(cluster.node(&old_primary), &old_id)
            .await
            .map(|bytes| bytes.starts_with(&[0xA5, 0x53, 1])),
        Some(true),
        "the stale copy is back (a format-2 session record)"
    );
    let read = call(&b, "GET", "/count", Some(&old_id)).await;
    assert_eq!(
        (read.status, read.body.as_str(), read.cookie_id()),
        (StatusCode::OK, "4", Some(new_id.as_str())),
        "the current session under its new id, not the stale copy"
    );
    assert_eq!(
        stored(cluster.node(&old_primary), &old_id).await,
        Some(forward_to(&new_id)),
        "the stale copy was replaced by the forward"
    );
}

/// The session's node dies while a request that changed it runs: its
/// write fails with the node, so the session is written where it moves
/// (the next node) and the request answers 200 with the new id, instead
/// of 504 — and the old id still finds it.
#[tokio::test]
async fn a_change_whose_node_dies_under_the_write_is_relocated_not_failed() {
    let cluster = Cluster::new(3);
    let manager = cluster.manager(non_sticky());
    let id = session_with_count(&manager, 3).await;
    let primary = node_of(&id).to_owned();
    let slow = tokio::spawn({
        let (manager, id) = (manager.clone(), id.clone());
        async move { call(&manager, "POST", "/count?delay_ms=300", Some(&id)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.node(&primary).set_down(true);
    let reply = slow.await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "4"));
    let new_id = reply.cookie_id().expect("answered with the new id").to_owned();
    assert_eq!(random_part(&new_id), random_part(&id));
    assert_eq!(node_of(&new_id), next_node(&primary, 3));
    assert_eq!(call(&manager, "GET", "/count", Some(&new_id)).await.body, "4");
    let other = cluster.manager(non_sticky().route("b"));
    let via_old = call(&other, "GET", "/count", Some(&id)).await;
    assert_eq!(
        (via_old.body.as_str(), via_old.cookie_id()),
        ("4", Some(new_id.as_str())),
        "the old id finds it through the forward record"
    );
}

#[tokio::test]
async fn copies_lost_by_a_restarted_node_are_recreated_by_the_next_request() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(non_sticky());
    let id = session_with_count(&manager, 2).await;
    cluster.wait_for_probes().await;
    let primary = node_of(&id).to_owned();
    let backup = next_node(&primary, 2);
    cluster.node(&backup).clear();
    // A read does not look at the backup; it re-creates it once this
    // instance saw the node change (here its prober finds the node empty
    // and places its sentinel again).
    wait_until("the prober saw the backup node restarted empty", || {
        cluster.node(&backup).keys().iter().any(|k| k.starts_with("msm-probe:"))
    })
    .await;
    assert_eq!(call(&manager, "GET", "/count", Some(&id)).await.body, "2");
    assert!(
        cluster.node(&backup).contains(&format!("bak:{id}")),
        "backup re-created by a read"
    );
    cluster.node(&primary).clear();
    assert_eq!(
        call(&manager, "GET", "/count", Some(&id)).await.body,
        "2",
        "read from the backup"
    );
    assert!(cluster.node(&primary).contains(&id), "primary re-created");
    assert!(cluster.node(&backup).contains(&format!("bak:{id}")));
    assert_eq!(manager.statistics().counters.backups_recreated, 2);
    assert_eq!(call(&manager, "POST", "/count", Some(&id)).await.body, "3");
}

/// A logout replaces the primary and backup copies by tombstones and
/// deletes the lock: no session is left under the id.
#[tokio::test]
async fn invalidate_leaves_a_tombstone_and_deletes_the_backup_and_the_lock() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(non_sticky().locking_mode("all"));
    let id = session_with_count(&manager, 1).await;
    let mut both = vec![id.clone(), format!("bak:{id}")];
    both.sort();
    assert_eq!(cluster.keys(), both);
    let reply = call(&manager, "POST", "/logout", Some(&id)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.cookie_id(), Some(""));
    assert_eq!(
        cluster.keys(),
        both,
        "the lock is gone; the primary and backup keys hold tombstones"
    );
    assert_eq!(stored(cluster.node(node_of(&id)), &id).await, Some(TOMBSTONE.to_vec()));
    assert_eq!(
        stored(cluster.node(&next_node(node_of(&id), 2)), &format!("bak:{id}")).await,
        Some(TOMBSTONE.to_vec())
    );
    let read = call(&manager, "GET", "/count", Some(&id)).await;
    assert_eq!((read.body.as_str(), read.set_cookie), ("0", None), "no session");
    let write = call(&manager, "POST", "/count", Some(&id)).await;
    assert_eq!(write.body, "1", "a fresh session");
    assert_ne!(random_part(write.cookie_id().unwrap()), random_part(&id));
}

/// The tombstone keeps a logged-out session dead even when its backup
/// copy could not be deleted (its node was unreachable at logout) and
/// comes back: the primary is read first and says "logged out".
#[tokio::test]
async fn a_logout_whose_backup_delete_failed_never_comes_back() {
    let cluster = Cluster::new(3);
    let manager = cluster.manager(non_sticky());
    let id = session_with_count(&manager, 5).await;
    let primary = node_of(&id).to_owned();
    let backup = next_node(&primary, 3);
    let backup_key = format!("bak:{id}");
    // The backup's node does not answer during the logout (frozen, say: it
    // comes back with its data).
    cluster.node(&backup).set_down(true);
    let reply = call(&manager, "POST", "/logout", Some(&id)).await;
    assert_eq!((reply.status, reply.cookie_id()), (StatusCode::OK, Some("")));
    assert!(
        cluster.node(&backup).contains(&backup_key),
        "the delete could not be done"
    );
    assert!(manager.statistics().repair_queue_len >= 1, "so it waits as a repair");
    cluster.node(&backup).set_down(false);
    wait_until(
        "the repair replaced the backup copy by a tombstone once its node answered",
        || manager.statistics().counters.repairs_done >= 1,
    )
    .await;
    assert_eq!(
        stored(cluster.node(&backup), &backup_key).await,
        Some(TOMBSTONE.to_vec())
    );
    assert!(manager.statistics().counters.repairs_done >= 1);
    let read = call(&manager, "GET", "/count", Some(&id)).await;
    assert_eq!(
        (read.status, read.body.as_str(), read.set_cookie),
        (StatusCode::OK, "0", None),
        "logged out stays logged out"
    );
    let other = cluster.manager(non_sticky().route("b"));
    assert_eq!(
        call(&other, "GET", "/count", Some(&id)).await.body,
        "0",
        "on any instance"
    );
    // Then the primary (with the tombstone) dies: a failover finds no
    // backup to revive the session from.
    cluster.node(&primary).set_down(true);
    let after_failover = call(&other, "GET", "/count", Some(&id)).await;
    assert_eq!(
        (after_failover.status, after_failover.body.as_str()),
        (StatusCode::OK, "0"),
        "not revived by a failover"
    );
    let write = call(&manager, "POST", "/count", Some(&id)).await;
    assert_eq!(write.body, "1", "a fresh session");
    assert_ne!(random_part(write.cookie_id().unwrap()), random_part(&id));
}

/// The node a session was relocated off comes back with its (now stale)
/// copy — it was frozen, or unreachable from the relocating instance only:
/// the relocating instance overwrites that copy with a forward record as
/// soon as the node answers, so a request still carrying the old id gets
/// the current session, never the stale copy.
#[tokio::test]
async fn a_relocated_sessions_old_node_coming_back_never_serves_its_stale_copy() {
    let cluster = Cluster::new(3);
    let a = cluster.manager(non_sticky().route("a"));
    let old_id = session_with_count(&a, 3).await;
    let old_primary = node_of(&old_id).to_owned();
    cluster.node(&old_primary).set_down(true);
    let relocated = call(&a, "POST", "/count", Some(&old_id)).await;
    assert_eq!((relocated.status, relocated.body.as_str()), (StatusCode::OK, "4"));
    let new_id = relocated.cookie_id().expect("relocated").to_owned();
    assert!(a.statistics().repair_queue_len >= 1, "the old primary's forward waits");
    cluster.node(&old_primary).set_down(false);
    wait_until("the old primary copy became a forward record", || {
        a.statistics().repair_queue_len == 0
    })
    .await;
    assert_eq!(
        stored(cluster.node(&old_primary), &old_id).await,
        Some(forward_to(&new_id)),
        "the stale copy is gone"
    );
    let b = cluster.manager(non_sticky().route("b"));
    let read = call(&b, "POST", "/count", Some(&old_id)).await;
    assert_eq!(
        (read.status, read.body.as_str(), read.cookie_id()),
        (StatusCode::OK, "5", Some(new_id.as_str())),
        "the current session under its new id, not the stale copy"
    );
    assert_eq!(call(&a, "GET", "/count", Some(&new_id)).await.body, "5");
}

#[tokio::test]
async fn cycle_id_moves_every_key() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(non_sticky());
    let id = session_with_count(&manager, 2).await;
    let new_id = call(&manager, "POST", "/login", Some(&id))
        .await
        .cookie_id()
        .unwrap()
        .to_owned();
    assert_ne!(random_part(&new_id), random_part(&id));
    let mut expected = vec![id.clone(), new_id.clone(), format!("bak:{new_id}"), format!("bak:{id}")];
    expected.sort();
    assert_eq!(
        cluster.keys(),
        expected,
        "the new id's copies, and the old id's tombstones"
    );
    assert_eq!(
        stored(cluster.node(&next_node(node_of(&id), 2)), &format!("bak:{id}")).await,
        Some(TOMBSTONE.to_vec())
    );
    assert_eq!(stored(cluster.node(node_of(&id)), &id).await, Some(TOMBSTONE.to_vec()));
    assert!(
        cluster
            .node(&next_node(node_of(&new_id), 2))
            .contains(&format!("bak:{new_id}"))
    );
    assert_eq!(call(&manager, "GET", "/count", Some(&new_id)).await.body, "2");
    let old = call(&manager, "GET", "/count", Some(&id)).await;
    assert_eq!((old.body.as_str(), old.set_cookie), ("0", None), "the old id is dead");
}

/// The primary copy's memcached TTL is the inactivity clock: maxInactive
/// (3 s here), slid by every read, and the backup's 1¼ × maxInactive from
/// its last write. An unchanged session is rewritten (both copies) by the
/// first read a quarter interval (0.75 s) after its last write. Real time
/// (not paused): the rewrite is due by wall-clock (`SystemTime`)
/// milliseconds.
#[tokio::test]
async fn the_primary_ttl_is_the_inactivity_clock_and_unchanged_data_is_rewritten() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(non_sticky().max_inactive_interval_secs(3));
    let id = session_with_count(&manager, 1).await;
    let written_at = tokio::time::Instant::now();
    let primary = cluster.node(node_of(&id));
    let backup = cluster.node(&next_node(node_of(&id), 2));
    let backup_key = format!("bak:{id}");

    // A read before a quarter interval: it slides the primary's TTL and
    // writes nothing.
    tokio::time::sleep_until(written_at + Duration::from_millis(350)).await;
    let before = ops(&cluster);
    assert_eq!(call(&manager, "GET", "/count", Some(&id)).await.body, "1");
    assert_eq!(delta(ops(&cluster), before)[1..], [0, 1, 0], "one touch, no write");
    tokio::time::sleep_until(written_at + Duration::from_millis(3100)).await;
    assert!(
        primary.contains(&id),
        "past the TTL of the write: alive because the read slid it"
    );
    assert!(backup.contains(&backup_key), "the backup lives 1¼ intervals");

    // Each read a quarter interval or more after the last write rewrites
    // both copies.
    for read in 1..=3 {
        if read > 1 {
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
        let before = ops(&cluster);
        assert_eq!(
            call(&manager, "GET", "/count", Some(&id)).await.body,
            "1",
            "read {read} keeps it alive"
        );
        assert_eq!(
            delta(ops(&cluster), before)[1..],
            [2, 1, 0],
            "read {read}: the read, and the unchanged session rewritten on both nodes"
        );
    }
    assert!(
        written_at.elapsed() > Duration::from_millis(3750),
        "past the backup TTL of the first write"
    );
    assert!(backup.contains(&backup_key), "the backup was rewritten");
    assert_eq!(manager.statistics().counters.backups_written, 4);

    // Idle for longer than the backup's 1¼ intervals: both copies expired.
    tokio::time::sleep(Duration::from_millis(4300)).await;
    assert!(!primary.contains(&id) && !backup.contains(&backup_key));
    assert_eq!(call(&manager, "GET", "/count", Some(&id)).await.body, "0", "expired");
}

/// A request carrying the id without using the session slides both
/// copies' TTLs (a touch each). Paused time: the in-memory nodes expire
/// items by tokio's clock.
#[tokio::test(start_paused = true)]
async fn every_request_carrying_the_id_slides_both_ttls() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(non_sticky().max_inactive_interval_secs(2));
    let id = session_with_count(&manager, 1).await;
    let written_at = tokio::time::Instant::now();
    let primary = cluster.node(node_of(&id));
    let backup = cluster.node(&next_node(node_of(&id), 2));
    let backup_key = format!("bak:{id}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ops(&cluster);
    // `/plain` does not use the session.
    call(&manager, "GET", "/plain", Some(&id)).await;
    assert_eq!(delta(ops(&cluster), before)[1..], [0, 2, 0], "a touch of each copy");
    // Written with TTLs of 2 s and 2.5 s; slid 0.3 s later.
    tokio::time::sleep_until(written_at + Duration::from_millis(2150)).await;
    assert!(primary.contains(&id), "the primary's TTL was slid");
    tokio::time::sleep_until(written_at + Duration::from_millis(2650)).await;
    assert!(backup.contains(&backup_key), "the backup's TTL was slid");
    assert!(
        !primary.contains(&id),
        "the primary expired maxInactive after the touch"
    );
}

#[allow(dead_code)]
fn assert_send_sync(manager: SessionManager) -> Arc<dyn Send + Sync> {
    Arc::new(manager)
}
