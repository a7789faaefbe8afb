//! The memcached implementation of the storage boundary (`MemcachedNode`)
//! against a real memcached: the meta-protocol operations the session
//! manager relies on do what the trait says.

use std::time::Duration;

use integration_tests::{Memcached, init_tracing};
use memcached_sessions::backend::{Expiry, Item, MemcachedNode, NodeBackend, WriteMode, WriteOutcome};

async fn node(memcached: &Memcached) -> MemcachedNode {
    MemcachedNode::connect(&memcached.addr(), Duration::from_secs(2))
        .await
        .unwrap()
}

#[tokio::test]
async fn get_with_ttl_reports_the_remaining_ttl() {
    init_tracing();
    let memcached = Memcached::start();
    let node = node(&memcached).await;
    node.set("k", b"v", Expiry::After(Duration::from_secs(100)))
        .await
        .unwrap();
    let (value, ttl) = node.get_with_ttl("k").await.unwrap().unwrap();
    assert_eq!(value, b"v");
    let ttl = ttl.expect("an expiring item");
    assert!(
        ttl <= Duration::from_secs(100) && ttl >= Duration::from_secs(98),
        "{ttl:?}"
    );
    node.set("forever", b"v", Expiry::Never).await.unwrap();
    assert_eq!(node.get_with_ttl("forever").await.unwrap(), Some((b"v".to_vec(), None)));
    assert_eq!(node.get_with_ttl("missing").await.unwrap(), None);
}

#[tokio::test]
async fn get_and_touch_reads_with_the_cas_token_and_slides_the_ttl() {
    init_tracing();
    let memcached = Memcached::start();
    let node = node(&memcached).await;
    let item = Item {
        key: "s",
        value: b"session",
        expiry: Expiry::After(Duration::from_secs(10)),
    };
    let WriteOutcome::Stored(cas) = node.store_as(item, WriteMode::Add).await.unwrap() else {
        panic!("added");
    };
    assert_eq!(
        node.store_as(item, WriteMode::Add).await.unwrap(),
        WriteOutcome::Refused
    );
    let read = node
        .get_and_touch("s", Expiry::After(Duration::from_secs(500)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (read.value.as_slice(), read.cas),
        (&b"session"[..], cas),
        "a touch keeps the token"
    );
    let (_, ttl) = node.get_with_ttl("s").await.unwrap().unwrap();
    assert!(ttl.unwrap() > Duration::from_secs(400), "slid to the new TTL");
    assert_eq!(
        node.store_as(item, WriteMode::IfCas(cas + 1)).await.unwrap(),
        WriteOutcome::Refused,
        "a stale token is refused"
    );
    assert!(matches!(
        node.store_as(item, WriteMode::IfCas(cas)).await.unwrap(),
        WriteOutcome::Stored(_)
    ));
    assert_eq!(node.get_and_touch("none", Expiry::Never).await.unwrap(), None);
}

#[tokio::test]
async fn a_pipelined_lock_add_and_read_reads_under_the_lock() {
    init_tracing();
    let memcached = Memcached::start();
    let node = node(&memcached).await;
    node.set("s", b"data", Expiry::After(Duration::from_secs(60)))
        .await
        .unwrap();
    let lock = Item {
        key: "lock:s",
        value: b"me",
        expiry: Expiry::After(Duration::from_secs(5)),
    };
    let expiry = Expiry::After(Duration::from_secs(60));
    let (taken, read) = node.add_then_get_and_touch(lock, "s", expiry).await.unwrap();
    let lock_cas = taken.expect("the lock was free");
    assert_eq!(read.unwrap().value, b"data");
    let (again, read) = node.add_then_get_and_touch(lock, "s", expiry).await.unwrap();
    assert_eq!(again, None, "held");
    assert!(read.is_some(), "the read still answers");
    assert!(
        node.delete_if_cas("lock:s", lock_cas).await.unwrap(),
        "released by its owner"
    );
    assert_eq!(memcached.stats().cmd_touch(), 2, "each read is one touching mg");
}
