//! The memcached implementation of the storage boundary (`MemcachedNode`)
//! against a real memcached: the meta-protocol operations the session
//! manager relies on do what the trait says, and the client's shared
//! connections keep every caller's replies its own under concurrency,
//! cancellation, kill -9, SIGSTOP and broken connections.

use std::time::Duration;

use integration_tests::{FaultProxy, Memcached, ProxyMode, init_tracing};
use memcached_sessions::BackendError;
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

// -- the multiplexed client under concurrency and faults -------------------

/// A fault proxy in front of `memcached`, and a node client dialing the proxy.
async fn behind_a_proxy(memcached: &Memcached) -> (FaultProxy, MemcachedNode) {
    let proxy = FaultProxy::start(memcached.addr().parse().unwrap());
    let node = MemcachedNode::connect(&proxy.addr().to_string(), Duration::from_secs(5))
        .await
        .unwrap();
    (proxy, node)
}

/// 64 tasks share the node's few connections, each writing and reading
/// back values that name it and its round — small ones and 300 KB ones, so
/// replies span reads and writes span batches. Any reply handed to the
/// wrong caller shows as a mismatch. The connections are shared: memcached
/// sees no more than the pool's few.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_operations_share_connections_and_each_gets_its_own_reply() {
    init_tracing();
    let memcached = Memcached::start();
    let before = memcached.stats();
    let node = node(&memcached).await;
    let tasks: Vec<_> = (0..64)
        .map(|task| {
            let node = node.clone();
            tokio::spawn(async move {
                for round in 0..50 {
                    let key = format!("k{task}");
                    let mut value = format!("task {task} round {round};").into_bytes();
                    if (task + round) % 16 == 0 {
                        value.resize(300_000, b'x');
                    }
                    let expiry = Expiry::After(Duration::from_secs(60));
                    node.set(&key, &value, expiry).await.unwrap();
                    let read = node.get_and_touch(&key, expiry).await.unwrap().expect("just written");
                    assert_eq!(read.value, value, "task {task} round {round} got another's reply");
                    let item = Item {
                        key: &key,
                        value: &value,
                        expiry,
                    };
                    let WriteOutcome::Stored(_) = node.store_as(item, WriteMode::IfCas(read.cas)).await.unwrap() else {
                        panic!("task {task} round {round}: its own CAS token was refused");
                    };
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let opened = memcached.stats().delta(&before, "total_connections");
    // The pool's connections, plus one per `stats` call of the harness.
    assert!(opened <= 4, "{opened} connections opened for 64 concurrent users");
}

/// Callers that stop waiting (a request dropped mid-operation) leave the
/// shared connection aligned: their replies arrive later and are dropped,
/// and every later caller still gets its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_give_up_leave_the_connection_aligned() {
    init_tracing();
    let memcached = Memcached::start();
    let (proxy, node) = behind_a_proxy(&memcached).await;
    let expiry = Expiry::After(Duration::from_secs(60));
    for i in 0..20 {
        node.set(&format!("k{i}"), format!("v{i}").as_bytes(), expiry)
            .await
            .unwrap();
    }
    proxy.set_mode(ProxyMode::Delay {
        fixed: Duration::from_millis(30),
        jitter: Duration::ZERO,
    });
    let mut gave_up = 0;
    for i in 0..20 {
        let read = tokio::time::timeout(Duration::from_millis(5), node.get(&format!("k{i}"))).await;
        gave_up += usize::from(read.is_err());
    }
    assert_eq!(gave_up, 20, "every read was abandoned while its reply was on the way");
    let reads: Vec<_> = (0..20)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move { (i, node.get(&format!("k{i}")).await.unwrap()) })
        })
        .collect();
    for read in reads {
        let (i, value) = read.await.unwrap();
        assert_eq!(value, Some(format!("v{i}").into_bytes()), "k{i} got another reply");
    }
}

/// kill -9: operations fail fast as unreachable (not after the timeout);
/// after a restart on the same port the node is used again by itself.
#[tokio::test]
async fn a_killed_node_fails_fast_and_is_used_again_after_its_restart() {
    init_tracing();
    let mut memcached = Memcached::start();
    let node = node(&memcached).await;
    let expiry = Expiry::After(Duration::from_secs(60));
    node.set("k", b"before", expiry).await.unwrap();
    memcached.kill();
    let started = std::time::Instant::now();
    let error = node.get("k").await.expect_err("the node is gone");
    assert!(error.is_unavailable() && !error.is_timeout(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "failed fast: {:?}",
        started.elapsed()
    );
    memcached.restart_empty();
    assert_eq!(node.get("k").await.unwrap(), None, "the restarted node is empty");
    node.set("k", b"after", expiry).await.unwrap();
    assert_eq!(node.get("k").await.unwrap(), Some(b"after".to_vec()));
}

/// SIGSTOP: operations time out within the node's timeout; after the thaw
/// the replies to the abandoned ones are skipped and new ones are right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_times_out_and_answers_correctly_after_the_thaw() {
    init_tracing();
    let memcached = Memcached::start();
    let node = MemcachedNode::connect(&memcached.addr(), Duration::from_millis(300))
        .await
        .unwrap();
    let expiry = Expiry::After(Duration::from_secs(60));
    for i in 0..10 {
        node.set(&format!("k{i}"), format!("v{i}").as_bytes(), expiry)
            .await
            .unwrap();
    }
    let before = memcached.stats();
    memcached.freeze();
    let started = std::time::Instant::now();
    for i in 0..10 {
        let error = node.get(&format!("k{i}")).await.expect_err("frozen");
        assert!(error.is_timeout(), "{error:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    memcached.thaw();
    // The connection that answered nothing for a whole timeout was given
    // up: the client dialed again (counted once memcached runs again).
    node.get("k0").await.unwrap();
    let redials = memcached.stats().delta(&before, "total_connections") - 1;
    assert!(
        redials >= 1,
        "the silent connection was kept ({redials} new connections)"
    );
    for round in 0..3 {
        for i in (0..10).rev() {
            assert_eq!(
                node.get(&format!("k{i}")).await.unwrap(),
                Some(format!("v{i}").into_bytes()),
                "round {round}: k{i} after the thaw"
            );
        }
    }
}

/// A connection that breaks after a write was sent: the write's outcome is
/// unknown (ambiguous: it may have been applied), a read just failed
/// (unreachable). Then the proxy passes again and a new connection works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_under_a_write_makes_the_write_ambiguous() {
    init_tracing();
    let memcached = Memcached::start();
    let (proxy, node) = behind_a_proxy(&memcached).await;
    let expiry = Expiry::After(Duration::from_secs(60));
    node.set("k", b"v", expiry).await.unwrap();
    proxy.set_mode(ProxyMode::Blackhole);
    let write = tokio::spawn({
        let node = node.clone();
        async move { node.set("k", b"w", expiry).await }
    });
    let read = tokio::spawn({
        let node = node.clone();
        async move { node.get("k").await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set_mode(ProxyMode::Refuse);
    let write = write.await.unwrap().expect_err("the connection broke");
    assert!(write.may_have_been_applied() && !write.is_timeout(), "{write:?}");
    let read = read.await.unwrap().expect_err("the connection broke");
    assert!(read.is_unavailable() && !read.may_have_been_applied(), "{read:?}");
    proxy.set_mode(ProxyMode::Pass);
    node.set("k", b"x", expiry).await.unwrap();
    assert_eq!(node.get("k").await.unwrap(), Some(b"x".to_vec()));
}

/// Something that is not memcached on the port: its bytes are a protocol
/// error for the caller, never a panic, and never a value.
#[tokio::test]
async fn garbage_from_the_port_is_a_protocol_error() {
    init_tracing();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0; 1024];
                while socket.read(&mut buffer).await.is_ok_and(|n| n > 0) {
                    let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                }
            });
        }
    });
    let node = MemcachedNode::connect(&addr.to_string(), Duration::from_secs(2))
        .await
        .unwrap();
    for _ in 0..3 {
        let error = node.get("k").await.expect_err("not memcached");
        assert!(matches!(error, BackendError::Protocol(_)), "{error:?}");
        // A write was sent before the garbage came back: it may have been
        // carried out, so it must not read as "nothing saved".
        let error = node.set("k", b"v", Expiry::Never).await.expect_err("not memcached");
        assert!(error.may_have_been_applied(), "{error:?}");
    }
}

/// An expiry beyond January 2038 (here: the largest the trait can express)
/// is stored, not acknowledged and dropped: memcached reads absolute times
/// past `i32::MAX` as already expired.
#[tokio::test]
async fn a_very_long_expiry_is_stored() {
    init_tracing();
    let memcached = Memcached::start();
    let node = node(&memcached).await;
    let far = Expiry::After(Duration::from_secs(u64::from(u32::MAX)));
    node.set("far", b"v", far).await.unwrap();
    assert_eq!(node.get("far").await.unwrap(), Some(b"v".to_vec()));
    node.set("slid", b"v", Expiry::Never).await.unwrap();
    assert!(node.get_and_touch("slid", far).await.unwrap().is_some());
    assert_eq!(
        node.get("slid").await.unwrap(),
        Some(b"v".to_vec()),
        "a touch far ahead keeps it"
    );
}

/// Keys memcached cannot take are refused before they reach the wire.
#[tokio::test]
async fn an_invalid_key_is_refused_without_reaching_the_node() {
    init_tracing();
    let memcached = Memcached::start();
    let node = node(&memcached).await;
    let before = memcached.stats();
    for key in ["", "has space", "line\r\nmd other", &"k".repeat(251)] {
        let error = node.get(key).await.expect_err("invalid key");
        assert!(matches!(error, BackendError::Protocol(_)), "{error:?}");
        let outcomes = node
            .set_many(&[Item {
                key,
                value: b"v",
                expiry: Expiry::Never,
            }])
            .await;
        assert!(matches!(outcomes[0], Err(BackendError::Protocol(_))));
    }
    let after = memcached.stats();
    assert_eq!(
        (after.cmd_get() - before.cmd_get(), after.cmd_set() - before.cmd_set()),
        (0, 0)
    );
}
