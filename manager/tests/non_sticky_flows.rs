//! Non-sticky flows on in-process nodes: per-request load and store, the
//! validity record, backups on the next node, locking. (Against real
//! memcached in `tests/`.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use memcached_sessions::backend::{Expiry, NodeBackend};
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

fn delta(after: [u64; 4], before: [u64; 4]) -> [u64; 4] {
    [0, 1, 2, 3].map(|i| after[i] - before[i])
}

fn random_part(id: &str) -> &str {
    &id[..32]
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
    let keys = cluster.keys();
    assert_eq!(keys.len(), 4, "session + validity, and their backups: {keys:?}");
    assert!(cluster.node(primary).contains(&id));
    assert!(cluster.node(primary).contains(&format!("validity:{id}")));
}

#[tokio::test]
async fn memcached_operations_per_request_kind() {
    let cluster = Cluster::new(3);
    // The probers run once at start (their sentinels are awaited), then
    // not again: every operation below is the request's own.
    let manager = cluster.quiet_manager(non_sticky().request_uri_ignore_pattern("/id"));
    let id = session_with_count(&manager, 1).await;
    cluster.wait_for_probes().await;

    let before = ops(&cluster);
    call(&manager, "GET", "/count", Some(&id)).await;
    let read = delta(ops(&cluster), before);
    assert_eq!(read, [1, 0, 2, 0], "read-only: get + 2 touches, no write");

    let before = ops(&cluster);
    call(&manager, "POST", "/count", Some(&id)).await;
    assert_eq!(delta(ops(&cluster), before), [1, 4, 2, 0], "modifying: + 4 sets");

    let before = ops(&cluster);
    call(&manager, "GET", "/id", Some(&id)).await;
    assert_eq!(delta(ops(&cluster), before), [0, 0, 0, 0], "ignored: nothing");

    let single = Cluster::new(1);
    let manager = single.quiet_manager(non_sticky());
    let id = session_with_count(&manager, 1).await;
    single.wait_for_probes().await;
    let before = ops(&single);
    call(&manager, "GET", "/count", Some(&id)).await;
    assert_eq!(delta(ops(&single), before), [1, 0, 1, 0], "one node: get + 1 touch");
    let before = ops(&single);
    call(&manager, "POST", "/count", Some(&id)).await;
    assert_eq!(delta(ops(&single), before), [1, 2, 1, 0], "one node: exactly 2 writes");

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
    assert_eq!(delta(ops(&single), before), [1, 3, 1, 1], "locking: + add and delete");
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
    // The backup copy holds b's writes, not a's refused one (which was
    // sent to it in parallel): read it with the primary gone.
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
    assert!(
        cluster.session_keys().is_empty(),
        "nothing of it is stored: {:?}",
        cluster.session_keys()
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
    let new_primary = node_of(&new_id).to_owned();
    assert_ne!(new_primary, primary);
    assert!(cluster.node(&new_primary).contains(&new_id));
    assert!(cluster.node(&new_primary).contains(&format!("validity:{new_id}")));
    let backups: Vec<_> = cluster
        .keys()
        .into_iter()
        .filter(|k| k == &format!("bak:{new_id}"))
        .collect();
    assert_eq!(backups.len(), 1, "a new backup on the next live node");
    assert_eq!(call(&manager, "POST", "/count", Some(&new_id)).await.body, "5");
    let stats = manager.statistics().counters;
    assert_eq!((stats.backup_node_loads, stats.relocations), (1, 1));
}

#[tokio::test]
async fn copies_lost_by_a_restarted_node_are_recreated_by_the_next_request() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(non_sticky());
    let id = session_with_count(&manager, 2).await;
    let primary = node_of(&id).to_owned();
    let backup = if primary == "n1" { "n2" } else { "n1" };
    cluster.node(backup).clear();
    assert_eq!(call(&manager, "GET", "/count", Some(&id)).await.body, "2");
    assert!(
        cluster.node(backup).contains(&format!("bak:{id}")),
        "backup re-created by a read"
    );
    cluster.node(&primary).clear();
    assert_eq!(
        call(&manager, "GET", "/count", Some(&id)).await.body,
        "2",
        "read from the backup"
    );
    assert!(cluster.node(&primary).contains(&id), "primary re-created");
    assert!(cluster.node(&primary).contains(&format!("validity:{id}")));
    assert_eq!(manager.statistics().counters.backups_recreated, 2);
}

#[tokio::test]
async fn invalidate_deletes_every_key_and_the_lock() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(non_sticky().locking_mode("all"));
    let id = session_with_count(&manager, 1).await;
    assert_eq!(cluster.keys().len(), 4);
    let reply = call(&manager, "POST", "/logout", Some(&id)).await;
    assert_eq!(reply.cookie_id(), Some(""));
    assert_eq!(
        cluster.keys(),
        Vec::<String>::new(),
        "data, validity, both backups and the lock are gone"
    );
    assert_eq!(call(&manager, "GET", "/count", Some(&id)).await.body, "0");
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
    let keys = cluster.keys();
    assert_eq!(keys.len(), 4);
    assert!(keys.iter().all(|k| k.ends_with(&new_id)), "{keys:?}");
    assert_eq!(call(&manager, "GET", "/count", Some(&new_id)).await.body, "2");
    assert_eq!(call(&manager, "GET", "/count", Some(&id)).await.body, "0");
}

/// The session data's TTL is 2 × maxInactive (4 s here) and is not slid by
/// reads: an unchanged session survives past it only because every read at
/// least maxInactive / 2 after the last write re-writes it. Real time (not
/// paused): the rewrite is due by wall-clock (`SystemTime`) milliseconds.
#[tokio::test]
async fn the_validity_record_is_the_inactivity_clock_and_unchanged_data_is_rewritten() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(non_sticky().max_inactive_interval_secs(2));
    let id = session_with_count(&manager, 1).await;
    let written_at = tokio::time::Instant::now();
    // Every read comes >= 1.2 s after the previous write (>= the 1 s
    // rewrite threshold, well within the 2 s validity): each one is due.
    for read in 1..=4 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let before = ops(&cluster);
        assert_eq!(
            call(&manager, "GET", "/count", Some(&id)).await.body,
            "1",
            "read {read} keeps it alive"
        );
        assert_eq!(
            delta(ops(&cluster), before)[1],
            2,
            "read {read}: the unchanged session and its validity are re-written"
        );
    }
    assert!(
        written_at.elapsed() > Duration::from_secs(4),
        "past the data TTL of the first write"
    );
    assert!(
        cluster.nodes[0].contains(&id),
        "the data outlived its first write's TTL: it was re-written"
    );
    assert_eq!(manager.statistics().counters.backups_written, 5);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(call(&manager, "GET", "/count", Some(&id)).await.body, "0", "expired");
    assert!(!cluster.nodes[0].contains(&id), "its data is deleted");
}

#[tokio::test]
async fn every_request_carrying_the_id_slides_the_validity() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(non_sticky());
    let id = session_with_count(&manager, 1).await;
    let before = cluster.touches();
    // `/plain` does not use the session.
    call(&manager, "GET", "/plain", Some(&id)).await;
    assert_eq!(cluster.touches() - before, 1);
}

#[allow(dead_code)]
fn assert_send_sync(manager: SessionManager) -> Arc<dyn Send + Sync> {
    Arc::new(manager)
}
