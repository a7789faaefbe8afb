//! `GET /metrics` of the real `demo-app` binary (issue 13): the library's
//! metrics in Prometheus text, with `node` labels, and a killed memcached
//! node seen as `memcached_sessions_node_up{node="…"} 0` within 2 s; and
//! nodes by name: the app starts while one node's name does not resolve
//! and another does not answer yet, and uses the latter once it does.

use std::time::{Duration, Instant};

use integration_tests::{Cluster, DemoApp, Memcached, SessionClient, id_node, init_tracing};

/// The value of the sample `series` (name with labels, as rendered), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_traffic_by_node_and_a_killed_node_within_two_seconds() {
    init_tracing();
    let mut cluster = Cluster::start(2);
    let spec = cluster.spec();
    let app = DemoApp::start(&["--memcached-nodes", spec.as_str(), "--route", "a"]);
    let mut client = SessionClient::new(app.base_url());
    for _ in 0..3 {
        client.post("/counter").await.ok();
    }
    let node = id_node(client.cookie().expect("a session"))
        .expect("a node in the id")
        .to_owned();
    let other = cluster.ids().into_iter().find(|id| *id != node).expect("two nodes");

    // Counters and gauges are exported every second; the backup is async.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let reply = client.get("/metrics").await.ok();
        let content_type = reply.header("content-type").unwrap_or_default().to_owned();
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        let text = reply.body;
        let written = sample(
            &text,
            &format!("memcached_sessions_backups_total{{node=\"{node}\",result=\"written\"}}"),
        );
        if written.is_some_and(|n| n >= 1.0) && sample(&text, "memcached_sessions_sessions_created_total") == Some(1.0)
        {
            break text;
        }
        assert!(Instant::now() < deadline, "metrics never showed the traffic:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for id in [&node, &other] {
        assert_eq!(
            sample(&text, &format!("memcached_sessions_node_up{{node=\"{id}\"}}")),
            Some(1.0),
            "{id} up"
        );
    }
    assert_eq!(sample(&text, "memcached_sessions_active"), Some(1.0));
    assert!(
        sample(
            &text,
            &format!(
                "memcached_sessions_store_operation_duration_seconds_count{{node=\"{node}\",op=\"set\",result=\"ok\"}}"
            )
        )
        .is_some_and(|n| n >= 1.0),
        "per-operation histogram by node:\n{text}"
    );
    assert!(
        text.contains("memcached_sessions_size_bytes_bucket{le="),
        "a real histogram:\n{text}"
    );
    assert!(
        text.contains("# HELP memcached_sessions_sessions_created_total Sessions created."),
        "described:\n{text}"
    );
    assert!(!text.contains(client.cookie().unwrap()), "no session id in any label");

    let killed = Instant::now();
    cluster.node_mut(&node).kill();
    let series = format!("memcached_sessions_node_up{{node=\"{node}\"}}");
    loop {
        let text = client.get("/metrics").await.ok().body;
        if sample(&text, &series) == Some(0.0) {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "{series} still not 0 two seconds after the kill:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = client.get("/metrics").await.ok().body;
    assert_eq!(
        sample(&text, &format!("memcached_sessions_node_up{{node=\"{other}\"}}")),
        Some(1.0),
        "the other node stays up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_starts_while_nodes_are_missing_and_uses_one_once_it_answers() {
    init_tracing();
    let mut late = Memcached::start();
    late.kill(); // its port, with nobody listening yet
    let live = Memcached::start();
    let nodes = format!(
        "n1:does-not-resolve.invalid:11211,n2:{},n3:localhost:{}",
        live.addr(),
        late.port()
    );
    let app = DemoApp::start(&["--memcached-nodes", nodes.as_str(), "--route", "a"]);
    // The first probe (at start) finds n1 and n3 down.
    let mut client = SessionClient::new(app.base_url());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = client.get("/metrics").await.ok().body;
        let up = |node: &str| sample(&text, &format!("memcached_sessions_node_up{{node=\"{node}\"}}"));
        if (up("n1"), up("n2"), up("n3")) == (Some(0.0), Some(1.0), Some(0.0)) {
            break;
        }
        assert!(Instant::now() < deadline, "n1 and n3 never seen down, n2 up:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..5 {
        let mut client = SessionClient::new(app.base_url());
        assert_eq!(client.post("/counter").await.ok().count(), 1);
        assert_eq!(
            client.cookie().and_then(id_node),
            Some("n2"),
            "sessions go to the node that answers"
        );
    }

    // n3's memcached comes up (on the port its name and port point at).
    late.restart_empty();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = client.get("/metrics").await.ok().body;
        if sample(&text, "memcached_sessions_node_up{node=\"n3\"}") == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "n3 never came up:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // New sessions now go to n2 or n3 at random: some land on n3.
    let mut on_n3 = 0;
    for _ in 0..40 {
        let mut client = SessionClient::new(app.base_url());
        assert_eq!(client.post("/counter").await.ok().count(), 1);
        if client.cookie().and_then(id_node) == Some("n3") {
            on_n3 += 1;
        }
    }
    assert!(on_n3 > 0, "no new session used the node that came up");
}
