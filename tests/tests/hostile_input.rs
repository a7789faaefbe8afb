//! Hostile clients and a hostile or broken memcached, against real
//! memcached and real HTTP: corrupted or foreign stored data, injection
//! attempts through the id, memcached refusing writes, malformed requests,
//! and what a memcached dump reveals with the security options on.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use integration_tests::{
    Cluster, DemoApp, Memcached, SessionClient, TestApp, eventually, fast_config, id_node, id_random, init_tracing,
    raw_http_status,
};
use memcached_sessions::Config;

/// A session (count 3) created by instance a, and instance b to take it over.
async fn session_on_a(cluster: &Cluster, sticky: bool) -> (TestApp, TestApp, String) {
    let config = |route: &str| {
        fast_config(&cluster.spec())
            .sticky(sticky)
            .session_backup_async(false)
            .route(route)
    };
    let a = TestApp::start(config("a").build().unwrap()).await;
    let b = TestApp::start(config("b").build().unwrap()).await;
    let mut client = SessionClient::new(a.base_url());
    for _ in 0..3 {
        client.post("/incr").await.ok();
    }
    (a, b, client.cookie().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_or_foreign_stored_data_is_no_session_never_a_panic() {
    init_tracing();
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    for sticky in [true, false] {
        let (_a, b, id) = session_on_a(&cluster, sticky).await;
        let good = node.get_raw(&id).expect("stored");
        let mut newer_version = good.clone();
        newer_version[2] = 0x7f; // an envelope variant this version does not know
        let cases: [(&str, Vec<u8>); 5] = [
            ("garbage", b"\x00\xffgarbage\r\nEND".to_vec()),
            ("truncated", good[..good.len() / 2].to_vec()),
            ("newer version", newer_version),
            ("another app's value", br#"{"user":"mallory","admin":true}"#.to_vec()),
            ("trailing bytes", [good.as_slice(), b"x"].concat()),
        ];
        for (what, bytes) in cases {
            node.set_raw(&id, &bytes, 60);
            let failures = b.stats().counters.decode_failures;
            let mut client = SessionClient::new(b.base_url());
            client.set_cookie(Some(id.clone()));
            let reply = client.get("/session").await;
            assert_eq!(reply.status, 200, "{what} (sticky={sticky})");
            assert_eq!(reply.count(), 0, "{what}: no session (sticky={sticky})");
            assert_eq!(b.stats().counters.decode_failures, failures + 1, "{what}: counted");
            node.set_raw(&id, &good, 60);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_cannot_inject_commands_or_reach_other_keys() {
    init_tracing();
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let app = TestApp::start(
        fast_config(&cluster.spec())
            .session_id_header("X-Session-Id")
            .build()
            .unwrap(),
    )
    .await;
    let mut owner = SessionClient::new(app.base_url());
    owner.post("/incr").await.ok();
    node.set_raw("victim", b"still here", 0);
    let attempts = [
        "victim",
        "a b",
        "x\u{0}y",
        " flush_all",
        "flush_all",
        "delete victim",
        &format!("{}-n1 flush_all", &owner.cookie().unwrap()[..32]),
        &"k".repeat(300),
        &format!("{}\tflush_all", owner.cookie().unwrap()),
    ];
    for attempt in attempts {
        for header in ["Cookie: SESSIONID=", "X-Session-Id: "] {
            let request = format!(
                "POST /incr HTTP/1.1\r\nHost: x\r\n{header}{attempt}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let status = raw_http_status(app.addr(), request.as_bytes()).unwrap();
            assert!(status < 500, "{attempt:?} via {header:?}: {status}");
        }
    }
    // CR/LF cannot even reach the layer: HTTP itself rejects it.
    let split = "GET /session HTTP/1.1\r\nHost: x\r\nCookie: SESSIONID=a\rflush_all\r\n\r\n";
    assert!(raw_http_status(app.addr(), split.as_bytes()).unwrap() >= 400);
    assert_eq!(
        node.get_raw("victim").as_deref(),
        Some(&b"still here"[..]),
        "other keys survive"
    );
    assert_eq!(owner.get("/session").await.ok().count(), 1, "the real session survives");
    for key in node.keys() {
        assert!(
            !key.contains(' ') && !key.contains("flush") && key.len() <= 250,
            "{key:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_refusing_a_write_is_a_counted_failure_and_the_request_still_succeeds() {
    init_tracing();
    // 1 KiB item limit: a bigger session gets SERVER_ERROR.
    let node = Memcached::start_with_args(&["-I", "1k", "-o", "slab_chunk_max=1024"]);
    let config = Config::builder()
        .memcached_nodes(node.addr())
        .session_backup_async(false)
        .session_backup_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let app = TestApp::start(config).await;
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();
    let big = "x".repeat(2000);
    let reply = client.post(&format!("/put/{big}")).await;
    assert_eq!(reply.status, 200, "sticky: served from the primary copy");
    assert_eq!(app.stats().counters.backups_failed, 1, "the refused write is counted");
    let reply = client.get("/session").await.ok();
    assert_eq!(reply.json()["data"], big.as_str(), "nothing lost in the process");
    assert!(
        app.stats().available_nodes.len() == 1,
        "a SERVER_ERROR does not mark the node down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_sticky_says_so_when_a_change_could_not_be_saved() {
    init_tracing();
    let node = Memcached::start_with_args(&["-I", "1k", "-o", "slab_chunk_max=1024"]);
    let config = Config::builder()
        .memcached_nodes(node.addr())
        .sticky(false)
        .build()
        .unwrap();
    let app = TestApp::start(config).await;
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();
    let reply = client.post(&format!("/put/{}", "x".repeat(2000))).await;
    assert_eq!(reply.status, 500, "the change is not durable: say so");
    assert_eq!(reply.body, "the session could not be saved", "no store details leak");
    // memcached drops the stored value when it refuses an oversized set, so
    // the session is gone: keep maxSessionSize below memcached's item limit
    // (-I, 1 MiB by default; maxSessionSize defaults to 512 KiB).
    assert_eq!(
        node.get_raw(client.cookie().unwrap()),
        None,
        "memcached removed the old value"
    );
    assert_eq!(client.get("/session").await.ok().count(), 0);
    assert_eq!(app.stats().available_nodes.len(), 1, "the node stays in use");
    let mut fresh = SessionClient::new(app.base_url());
    assert_eq!(fresh.post("/incr").await.ok().count(), 1, "and keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_4xx_or_a_fresh_session_and_the_instance_keeps_serving() {
    init_tracing();
    let cluster = Cluster::start(1);
    let app = DemoApp::start(&["--memcached-nodes", &cluster.spec(), "--route", "a"]);
    let addr = format!("127.0.0.1:{}", app.port()).parse().unwrap();
    let mut client = SessionClient::new(app.base_url());
    client.post("/counter").await.ok();
    let id = client.cookie().unwrap().to_owned();
    let request = |cookie: &str| {
        format!(
            "POST /counter HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    let huge = format!("SESSIONID={}", "a".repeat(200_000));
    let many = (0..2000).map(|i| format!("c{i}=v")).collect::<Vec<_>>().join("; ");
    let two = format!("SESSIONID=garbage; SESSIONID={id}");
    let two_valid = format!("SESSIONID={id}; SESSIONID={}-n1.a", "B".repeat(32));
    for (what, cookie) in [
        ("huge", huge.as_str()),
        ("many", &many),
        ("two", &two),
        ("two valid", &two_valid),
    ] {
        let status = raw_http_status(addr, request(cookie).as_bytes()).unwrap();
        assert!((200..500).contains(&status), "{what}: {status}");
        if what.starts_with("two") {
            assert_eq!(status, 200, "{what}: the valid id is used");
        }
    }
    let mut non_utf8 = b"POST /counter HTTP/1.1\r\nHost: x\r\nCookie: SESSIONID=\xff\xfe\xfd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec();
    let status = raw_http_status(addr, &non_utf8).unwrap();
    assert!((200..500).contains(&status), "non-UTF-8: {status}");
    non_utf8.clear();
    assert_eq!(client.get("/health").await.status, 200, "still serving");
    assert_eq!(
        client.get("/counter").await.ok().count(),
        3,
        "the real session is intact, incremented by the two requests that carried its id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memcached_dump_reveals_neither_ids_nor_data_with_encryption_and_hashed_keys() {
    init_tracing();
    let cluster = Cluster::start(2);
    let secure = |route: &str| {
        fast_config(&cluster.spec())
            .route(route)
            .session_backup_async(false)
            .session_encryption_keys(STANDARD.encode([7u8; 32]))
            .storage_key_secret(STANDARD.encode([8u8; 16]))
            .build()
            .unwrap()
    };
    let a = TestApp::start(secure("a")).await;
    let mut client = SessionClient::new(a.base_url());
    client.post("/put/top-secret-value").await.ok();
    let id = client.cookie().unwrap().to_owned();
    let mut dumped = Vec::new();
    for node in &cluster.nodes {
        for key in node.keys() {
            assert!(!key.contains(id_random(&id)), "a key reveals the cookie: {key}");
            if let Some(value) = node.get_raw(&key) {
                dumped.push(value);
            }
        }
    }
    assert!(!dumped.is_empty());
    for value in &dumped {
        assert!(
            !value.windows(10).any(|w| w == b"top-secret"),
            "a value reveals the data"
        );
    }
    // Another instance with the same secrets takes the session over.
    let b = TestApp::start(secure("b")).await;
    client.set_base(b.base_url());
    assert_eq!(client.get("/session").await.ok().json()["data"], "top-secret-value");
    eventually(Duration::from_secs(2), "takeover counted", || {
        b.stats().counters.takeovers == 1
    })
    .await;
}

/// Instances sharing one encryption key, synchronous backups.
fn sealed(cluster: &Cluster, sticky: bool, route: &str) -> memcached_sessions::Config {
    fast_config(&cluster.spec())
        .sticky(sticky)
        .session_backup_async(false)
        .operation_timeout(Duration::from_secs(3))
        .session_encryption_keys(STANDARD.encode([7u8; 32]))
        .route(route)
        .build()
        .unwrap()
}

fn flipped(blob: &[u8], at: usize) -> Vec<u8> {
    let mut tampered = blob.to_vec();
    tampered[at] ^= 0x01;
    tampered
}

/// A sealed session read back through another instance: one flipped byte
/// anywhere (magic, key fingerprint, nonce, ciphertext, tag) is no
/// session, and so is session A's intact blob stored under session B's key
/// (the blob is bound to its key). The untouched blobs open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_moved_sealed_session_is_no_session() {
    init_tracing();
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let a = TestApp::start(sealed(&cluster, true, "a")).await;
    let b = TestApp::start(sealed(&cluster, true, "b")).await;
    let mut owner_a = SessionClient::new(a.base_url());
    let mut owner_b = SessionClient::new(a.base_url());
    for _ in 0..3 {
        owner_a.post("/incr").await.ok();
    }
    owner_b.post("/incr").await.ok();
    let (id_a, id_b) = (
        owner_a.cookie().unwrap().to_owned(),
        owner_b.cookie().unwrap().to_owned(),
    );
    let (blob_a, blob_b) = (node.get_raw(&id_a).unwrap(), node.get_raw(&id_b).unwrap());
    let read_on_b = |id: &str| {
        let mut client = SessionClient::new(b.base_url());
        client.set_cookie(Some(id.to_owned()));
        async move { client.get("/session").await }
    };

    let mut failures = 0;
    for at in [0, 3, 10, 31, blob_a.len() / 2 + 15, blob_a.len() - 1] {
        node.set_raw(&id_a, &flipped(&blob_a, at), 600);
        let reply = read_on_b(&id_a).await;
        assert_eq!(reply.status, 200, "byte {at} flipped: {}", reply.body);
        assert_eq!((reply.id(), reply.count()), (None, 0), "byte {at} flipped: no session");
        failures += 1;
        assert_eq!(b.stats().counters.decode_failures, failures);
    }
    node.set_raw(&id_b, &blob_a, 600);
    let reply = read_on_b(&id_b).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!((reply.id(), reply.count()), (None, 0), "a's blob does not open as b");
    assert_eq!(b.stats().counters.decode_failures, failures + 1);
    assert_eq!(b.stats().counters.takeovers, 0);

    // Control: the original blobs open (b takes both sessions over).
    node.set_raw(&id_a, &blob_a, 600);
    node.set_raw(&id_b, &blob_b, 600);
    assert_eq!(read_on_b(&id_a).await.ok().count(), 3);
    assert_eq!(read_on_b(&id_b).await.ok().count(), 1);
    assert_eq!(b.stats().counters.takeovers, 2);
}

/// Non-sticky: the backup copy (`bak:` on the next node) is sealed for its
/// own key. With the primary node killed, a backup with a flipped byte, or
/// another session's backup copied over it, is no session (200, never a
/// panic or a 5xx), while an intact backup on the same node is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_or_swapped_non_sticky_backup_is_no_session() {
    init_tracing();
    let mut cluster = Cluster::start(2);
    let app = TestApp::start(sealed(&cluster, false, "a")).await;
    // Three sessions on one primary (node choice is random).
    let mut on: [Vec<(String, u64)>; 2] = Default::default();
    let mut count = 0;
    while on.iter().all(|sessions| sessions.len() < 3) {
        count += 1;
        let mut client = SessionClient::new(app.base_url());
        for _ in 0..count {
            client.post("/incr").await.ok();
        }
        let id = client.cookie().unwrap().to_owned();
        on[usize::from(id_node(&id) == Some("n2"))].push((id, count));
    }
    let sessions = if on[0].len() == 3 { &on[0] } else { &on[1] };
    let [tampered, swapped, intact] = [0, 1, 2].map(|i| sessions[i].0.clone());
    let primary = id_node(&tampered).unwrap().to_owned();
    let backup = if primary == "n1" { "n2" } else { "n1" };
    let good = cluster.node(backup).get_raw(&format!("bak:{tampered}")).unwrap();
    cluster
        .node(backup)
        .set_raw(&format!("bak:{tampered}"), &flipped(&good, good.len() / 2), 600);
    cluster.node(backup).set_raw(&format!("bak:{swapped}"), &good, 600);
    cluster.node_mut(&primary).kill();

    let reader = TestApp::start(sealed(&cluster, false, "b")).await;
    for id in [&tampered, &swapped] {
        let mut client = SessionClient::new(reader.base_url());
        client.set_cookie(Some(id.clone()));
        let reply = client.get("/session").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!((reply.id(), reply.count()), (None, 0), "no session from a bad backup");
        assert!(reply.set_cookie().is_none());
    }
    assert_eq!(reader.stats().counters.decode_failures, 2);
    let mut client = SessionClient::new(reader.base_url());
    client.set_cookie(Some(intact.clone()));
    let reply = client.get("/session").await.ok();
    assert_eq!(reply.count(), sessions[2].1, "the intact backup opens");
    assert_eq!(
        id_node(client.cookie().unwrap()),
        Some(backup),
        "relocated to the backup node"
    );
    assert_eq!(reader.stats().counters.backup_node_loads, 1);
}

/// The demo answers malformed requests with the status of what is wrong,
/// the same in both frameworks (CI runs this with `FRAMEWORK=axum` too),
/// and before it touches the session: a bad query string is a 400 even
/// while memcached is down.
#[tokio::test]
async fn malformed_demo_requests_get_the_status_of_what_is_wrong() {
    init_tracing();
    let mut cluster = Cluster::start(1);
    let app = DemoApp::start(&[
        "--memcached-nodes",
        &cluster.spec(),
        "--route",
        "a",
        "--sticky",
        "false",
    ]);
    let addr = format!("127.0.0.1:{}", app.port()).parse().unwrap();
    let mut client = SessionClient::new(app.base_url());
    client.post("/counter").await.ok();
    let cookie = format!("SESSIONID={}", client.cookie().unwrap());
    let raw = |head: &str, body: &str| {
        format!(
            "{head} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    cluster.nodes[0].kill();
    for (what, request, expected) in [
        ("bad query", raw("POST /counter?delay_ms=x", ""), 400),
        ("HEAD of a GET route", raw("HEAD /counter", ""), 405),
        ("unknown path", raw("GET /nope", ""), 404),
        ("wrong method", raw("PUT /counter", ""), 405),
        ("bad JSON", raw("POST /login", "{nope"), 400),
        ("body too large", raw("POST /login", &"x".repeat(5000)), 413),
    ] {
        let status = raw_http_status(addr, request.as_bytes()).unwrap();
        assert_eq!(status, expected, "{what}");
    }
    let no_length = format!("POST /login HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n");
    assert_eq!(
        raw_http_status(addr, no_length.as_bytes()).unwrap(),
        411,
        "no Content-Length"
    );
    let wrong_type =
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    assert_eq!(raw_http_status(addr, wrong_type).unwrap(), 415, "not JSON");
}
