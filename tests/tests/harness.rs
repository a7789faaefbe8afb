//! Tests of the integration-test harness itself, against real memcached.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::{
    Cluster, DemoApp, Memcached, Stats, free_port, http_client, http_client_without_cookies, init_tracing,
};

/// Asserts the exact change of the get/set/touch/delete counters.
#[track_caller]
fn assert_counters(before: &Stats, after: &Stats, expected: &[(&str, i64)]) {
    const COUNTERS: &[&str] = &[
        "cmd_get",
        "cmd_set",
        "cmd_touch",
        "get_hits",
        "get_misses",
        "get_expired",
        "delete_hits",
        "delete_misses",
        "touch_hits",
        "touch_misses",
        "curr_items",
        "total_items",
    ];
    for name in COUNTERS {
        let want = expected.iter().find(|(n, _)| n == name).map_or(0, |(_, d)| *d);
        assert_eq!(after.delta(before, name), want, "delta of {name}");
    }
}

#[test]
fn start_set_get_roundtrip() {
    init_tracing();
    let mut mc = Memcached::start();
    assert!(mc.is_running());
    assert!(mc.pid().is_some());
    assert_eq!(mc.addr(), format!("127.0.0.1:{}", mc.port()));
    assert!(mc.version().expect("version").starts_with("1."));

    let value = b"binary\r\nvalue\0\xff";
    mc.set_raw("session:abc", value, 60);
    assert_eq!(mc.get_raw("session:abc").as_deref(), Some(&value[..]));
    mc.set_raw("empty", b"", 0);
    assert_eq!(mc.get_raw("empty"), Some(Vec::new()));
    assert_eq!(mc.get_raw("missing"), None);

    assert!(mc.delete_raw("session:abc"));
    assert!(!mc.delete_raw("session:abc"));
    assert_eq!(mc.get_raw("session:abc"), None);

    mc.flush_all();
    assert_eq!(mc.get_raw("empty"), None);
}

#[test]
fn stats_count_meta_commands_exactly() {
    let mc = Memcached::start();
    let s0 = mc.stats();
    assert_eq!(s0.cmd_get(), 0);
    assert_eq!(s0.cmd_set(), 0);
    assert_eq!(s0.curr_items(), 0);

    // ms: cmd_set, and a new item.
    assert_eq!(mc.meta("ms k 3 T60", Some(b"abc")).header, "HD");
    let s1 = mc.stats();
    assert_counters(&s0, &s1, &[("cmd_set", 1), ("curr_items", 1), ("total_items", 1)]);

    // ms over an existing item: cmd_set + total_items, curr_items unchanged.
    assert_eq!(mc.meta("ms k 3 T60", Some(b"xyz")).header, "HD");
    let s2 = mc.stats();
    assert_counters(&s1, &s2, &[("cmd_set", 1), ("total_items", 1)]);

    // mg hit without T: cmd_get + get_hits.
    let reply = mc.meta("mg k v", None);
    assert_eq!(reply.code(), "VA");
    assert_eq!(reply.value.as_deref(), Some(&b"xyz"[..]));
    let s3 = mc.stats();
    assert_counters(&s2, &s3, &[("cmd_get", 1), ("get_hits", 1)]);

    // mg miss: cmd_get + get_misses.
    assert_eq!(mc.meta("mg nope v", None).header, "EN");
    let s4 = mc.stats();
    assert_counters(&s3, &s4, &[("cmd_get", 1), ("get_misses", 1)]);

    // mg hit with T: a touch, NOT a get.
    assert_eq!(mc.meta("mg k v T120", None).code(), "VA");
    let s5 = mc.stats();
    assert_counters(&s4, &s5, &[("cmd_touch", 1), ("touch_hits", 1)]);

    // mg miss with T: a get miss, NOT a touch miss.
    assert_eq!(mc.meta("mg nope v T120", None).header, "EN");
    let s6 = mc.stats();
    assert_counters(&s5, &s6, &[("cmd_get", 1), ("get_misses", 1)]);

    // md hit / miss: only delete_hits / delete_misses, no cmd_* counter.
    assert_eq!(mc.meta("md k", None).header, "HD");
    let s7 = mc.stats();
    assert_counters(&s6, &s7, &[("delete_hits", 1), ("curr_items", -1)]);
    assert_eq!(mc.meta("md k", None).header, "NF");
    let s8 = mc.stats();
    assert_counters(&s7, &s8, &[("delete_misses", 1)]);

    // Inspection helpers do not move any counter.
    let _ = mc.keys();
    let _ = mc.version().expect("version");
    let s9 = mc.stats();
    assert_counters(&s8, &s9, &[]);

    // The *_raw helpers are meta commands with the same accounting.
    mc.set_raw("r", b"1", 0);
    let _ = mc.get_raw("r");
    let _ = mc.get_raw("r-missing");
    mc.delete_raw("r");
    let s10 = mc.stats();
    assert_counters(
        &s9,
        &s10,
        &[
            ("cmd_set", 1),
            ("total_items", 1),
            ("cmd_get", 2),
            ("get_hits", 1),
            ("get_misses", 1),
            ("delete_hits", 1),
        ],
    );
    assert_eq!(s10.cmd_get(), 5);
    assert_eq!(s10.cmd_set(), 3);
    assert_eq!(s10.cmd_touch(), 1);
    assert_eq!(s10.get_hits(), 2);
    assert_eq!(s10.get_misses(), 3);
    assert_eq!(s10.touch_hits(), 1);
    assert_eq!(s10.touch_misses(), 0);
    assert_eq!(s10.delete_hits(), 2);
    assert_eq!(s10.delete_misses(), 1);
    assert_eq!(s10.get_expired(), 0);
    assert_eq!(s10.total_items(), 3);
    assert_eq!(s10.curr_items(), 0);
}

#[test]
fn keys_lists_written_keys() {
    let mc = Memcached::start();
    assert!(mc.keys().is_empty());

    // Characters that metadump URL-encodes.
    let odd = "sess:a/b%c+d=e&f~é";
    mc.set_raw(odd, b"v", 60);
    mc.set_raw("plain", b"v", 0);
    assert_eq!(mc.keys(), vec!["plain".to_owned(), odd.to_owned()]);

    // A key written immediately before the dump is listed.
    for i in 0..20 {
        let key = format!("fresh{i}");
        mc.set_raw(&key, b"x", 60);
        assert!(mc.keys().contains(&key), "{key} missing from metadump");
    }

    mc.delete_raw("plain");
    assert!(!mc.keys().contains(&"plain".to_owned()));
    mc.flush_all();
    assert!(mc.keys().is_empty());
}

#[test]
fn kill_makes_connections_refused() {
    let mut mc = Memcached::start();
    let addr = mc.addr();
    assert!(TcpStream::connect(&addr).is_ok());
    mc.kill();
    assert!(!mc.is_running());
    assert_eq!(mc.pid(), None);
    let err = TcpStream::connect(&addr).expect_err("connect after kill");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    assert_eq!(
        mc.version().expect_err("version after kill").kind(),
        ErrorKind::ConnectionRefused
    );
    mc.kill(); // idempotent
}

#[test]
fn restart_empty_comes_back_empty_on_the_same_port() {
    let mut mc = Memcached::start();
    let port = mc.port();
    let old_pid = mc.pid();
    mc.set_raw("k", b"v", 0);
    // Leave a client connection open so the old port has live/TIME_WAIT state.
    let _held = TcpStream::connect(mc.addr()).expect("connect");
    assert_eq!(mc.get_raw("k").as_deref(), Some(&b"v"[..]));

    mc.restart_empty();
    assert!(mc.is_running());
    assert_eq!(mc.port(), port);
    assert_ne!(mc.pid(), old_pid);
    let stats = mc.stats();
    assert_eq!(stats.get("pid"), mc.pid().map(|p| p.to_string()).as_deref());
    assert_eq!(stats.total_items(), 0);
    assert_eq!(mc.get_raw("k"), None);
    assert!(mc.keys().is_empty());

    // Also works after an explicit kill.
    mc.kill();
    mc.restart_empty();
    assert_eq!(mc.port(), port);
    assert!(mc.version().is_ok());
}

#[test]
fn freeze_times_out_and_thaw_recovers() {
    let mut mc = Memcached::start();
    mc.set_raw("k", b"v", 0);
    mc.freeze();
    assert!(mc.is_running(), "a frozen process is still running");
    let started = Instant::now();
    let err = mc.try_get_raw("k").expect_err("read while frozen");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "unexpected error kind {:?}: {err}",
        err.kind()
    );
    assert!(started.elapsed() >= Duration::from_millis(1500));
    mc.thaw();
    assert_eq!(mc.get_raw("k").as_deref(), Some(&b"v"[..]));
}

#[test]
fn drop_kills_frozen_process() {
    let mc = Memcached::start();
    let pid = mc.pid().expect("pid");
    mc.freeze();
    drop(mc);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "memcached {pid} still exists after drop"
    );
}

#[test]
fn cluster_spec_and_nodes() {
    let mut cluster = Cluster::start(3);
    let expected = (1..=3)
        .map(|i| format!("n{i}:127.0.0.1:{}", cluster.nodes[i - 1].port()))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(cluster.spec(), expected);
    assert_eq!(cluster.ids(), vec!["n1", "n2", "n3"]);
    assert_eq!(cluster.node("n2").port(), cluster.nodes[1].port());

    cluster.node("n3").set_raw("where", b"here", 0);
    assert_eq!(cluster.locate("where"), vec!["n3".to_owned()]);
    cluster.node_mut("n3").kill();
    assert!(cluster.locate("where").is_empty());
    assert!(cluster.node("n1").version().is_ok());

    let unknown = std::panic::catch_unwind(|| {
        let _ = cluster.node("n4");
    });
    assert!(unknown.is_err());
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind the free port");
}

// The DemoApp handle is exercised with the real `demo-app` binary, which
// `demo_app_binary()` builds (once per test process) before its first use.

/// Every source file of demo-app (and of the library it links) that was
/// last changed before this test started is older than the binary the
/// harness hands out: a test never runs a stale demo-app. (Files edited
/// while the test runs are not held against it. Under nextest each test is
/// its own process, so the build happens inside this test.)
#[test]
fn demo_app_binary_is_never_older_than_its_source() {
    if std::env::var_os("DEMO_APP_BIN").is_some_and(|v| !v.is_empty()) {
        return; // an explicit binary is used as is
    }
    let started = std::time::SystemTime::now();
    let binary = integration_tests::demo_app_binary();
    let built = std::fs::metadata(&binary).and_then(|m| m.modified()).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut pending = vec![
        root.join("demo-app/src"),
        root.join("demo-app/Cargo.toml"),
        root.join("manager/src"),
        root.join("manager/Cargo.toml"),
    ];
    let mut checked = 0;
    while let Some(path) = pending.pop() {
        let metadata = std::fs::metadata(&path).unwrap();
        if metadata.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let changed = metadata.modified().unwrap();
        if changed < started {
            assert!(
                changed <= built,
                "{} is newer than {}: a stale demo-app would be tested",
                path.display(),
                binary.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 5, "found the sources ({checked} files)");
}

#[tokio::test]
async fn demo_app_start_health_and_terminate() {
    let mut app = DemoApp::start(&["--route", "a"]);
    assert!(app.is_running());
    assert!(app.pid().is_some());
    assert_eq!(app.base_url(), format!("http://127.0.0.1:{}", app.port()));
    assert_eq!(app.url("/x"), format!("{}/x", app.base_url()));
    assert_eq!(app.url("x"), format!("{}/x", app.base_url()));

    let client = http_client();
    let health = client.get(app.url("/health")).send().await.expect("health");
    assert_eq!(health.status(), 200);
    let body = http_client_without_cookies()
        .get(app.url("/counter"))
        .send()
        .await
        .expect("counter")
        .text()
        .await
        .expect("body");
    assert!(body.contains("\"instance\":\"a\""), "{body}");

    let status = app.terminate().expect("exited after SIGTERM");
    assert!(status.success(), "orderly shutdown exits 0: {status}");
    assert_eq!(app.pid(), None);
    assert!(!app.is_running());
    assert!(client.get(app.url("/health")).send().await.is_err());
}

#[test]
fn demo_app_kill_and_early_exit() {
    let mut app = DemoApp::start_with_env(&[], &[("RUST_LOG", "debug")]);
    let pid = app.pid().expect("pid");
    app.kill();
    assert_eq!(app.pid(), None);
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    // An invalid configuration makes demo-app exit with status 2.
    let early = std::panic::catch_unwind(|| DemoApp::start(&["--memcached-nodes", "n1:host"]));
    let message = early
        .expect_err("start must panic when the app exits")
        .downcast::<String>()
        .expect("string panic");
    assert!(message.contains("exit status: 2"), "{message}");
}
