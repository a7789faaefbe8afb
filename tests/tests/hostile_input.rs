//! Hostile clients and a hostile or broken memcached, against real
//! memcached and real HTTP: corrupted or foreign stored data, injection
//! attempts through the id, memcached refusing writes, malformed requests,
//! and what a memcached dump reveals with the security options on.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use integration_tests::{
    Cluster, DemoApp, Memcached, SessionClient, TestApp, eventually, fast_config, id_random, init_tracing,
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
    }
    let mut non_utf8 = b"POST /counter HTTP/1.1\r\nHost: x\r\nCookie: SESSIONID=\xff\xfe\xfd\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec();
    let status = raw_http_status(addr, &non_utf8).unwrap();
    assert!((200..500).contains(&status), "non-UTF-8: {status}");
    non_utf8.clear();
    assert_eq!(client.get("/health").await.status, 200, "still serving");
    assert!(
        client.get("/counter").await.ok().count() >= 1,
        "the real session is intact"
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
