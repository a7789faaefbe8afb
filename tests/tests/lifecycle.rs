//! Session lifecycle against real memcached: expiry (issue 9), activity
//! keeping a session alive, invalidation (issue 10), `cycle_id` (issue 11)
//! and hostile or garbage cookies (issue 12).
//!
//! Two instances (routes `a` and `b`) share the nodes where "no instance
//! accepts the old cookie" is asserted. Backups are synchronous, so keys can
//! be checked right after each response.

use std::time::Duration;

use integration_tests::{
    Cluster, SessionClient, TestApp, eventually, fast_config, id_node, id_random, id_route, init_tracing,
    raw_http_status, session_keys,
};
use reqwest::header::HeaderValue;

async fn app(cluster: &Cluster, route: &str, max_inactive_secs: i64) -> TestApp {
    let config = fast_config(&cluster.spec())
        .route(route)
        .session_backup_async(false)
        .max_inactive_interval_secs(max_inactive_secs)
        .expiry_sweep_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    TestApp::start(config).await
}

fn all_session_keys(cluster: &Cluster) -> Vec<String> {
    cluster.nodes.iter().flat_map(session_keys).collect()
}

/// Asserts that `cookie` names no session on `app`: a read answers without
/// a session and without Set-Cookie.
async fn assert_no_session(app: &TestApp, cookie: &str) {
    let mut client = SessionClient::new(app.base_url());
    client.set_cookie(Some(cookie.to_owned()));
    let reply = client.get("/session").await.ok();
    assert_eq!(reply.id(), None, "cookie {cookie} still names a session");
    assert_eq!(reply.count(), 0);
    assert!(reply.set_cookie().is_none(), "{:?}", reply.session_cookies);
}

/// Issue 9: an idle session expires from memory (sweep) and its memcached
/// key is deleted; the expired cookie then yields no session, and the next
/// write starts a fresh one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_session_expires_locally_and_in_memcached() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app = app(&cluster, "a", 2).await;
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();
    let id = client.cookie().unwrap().to_owned();
    assert_eq!(cluster.locate(&id), vec![id_node(&id).unwrap().to_owned()]);
    assert_eq!(app.stats().local_sessions, 1);

    let waited = eventually(
        Duration::from_secs(6),
        "session expired locally and deleted from memcached",
        || app.stats().local_sessions == 0 && cluster.locate(&id).is_empty(),
    )
    .await;
    assert!(waited >= Duration::from_millis(1500), "expired too early: {waited:?}");
    assert_eq!(app.stats().counters.sessions_expired, 1);

    let reply = client.get("/session").await.ok();
    assert_eq!(reply.id(), None);
    assert_eq!(reply.count(), 0);
    assert!(reply.set_cookie().is_none());
    let reply = client.post("/incr").await.ok();
    assert_eq!(reply.count(), 1, "a fresh session");
    let fresh = reply.set_cookie().expect("new session, new cookie").value.clone();
    assert_ne!(id_random(&fresh), id_random(&id));
}

/// Read-only activity keeps a short-lived session alive, here and in
/// memcached (touches extend the TTL past the first write's expiry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_activity_keeps_session_and_backup_alive() {
    init_tracing();
    let cluster = Cluster::start(1);
    // Exact counts: a generous operationTimeout, so a busy CI machine never
    // makes the node look down (and a touch skipped or repeated).
    let config = fast_config(&cluster.spec())
        .route("a")
        .session_backup_async(false)
        .max_inactive_interval_secs(2)
        .expiry_sweep_interval(Duration::from_millis(200))
        .operation_timeout(Duration::from_secs(2))
        // No probes during the reads: their traffic and their verdicts
        // (a node briefly seen down) stay out of the counts.
        .node_probe_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let app = TestApp::start(config).await;
    let mut client = SessionClient::new(app.base_url());
    client.post("/incr").await.ok();
    let id = client.cookie().unwrap().to_owned();
    // The first write's TTL is 2 s + 1 s margin; read for 4 s. A touch is
    // due once the last access is more than margin / 2 = 0.5 s after the
    // last write or touch: every read, 0.8 s apart (at least), is one.
    // The one probe writes this instance's sentinel: wait for it, so the
    // counts below see only the reads.
    eventually(Duration::from_secs(5), "the first probe wrote the sentinel", || {
        cluster.nodes[0].keys().iter().any(|key| key.starts_with("msm-probe:"))
    })
    .await;
    let before = cluster.nodes[0].stats();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let reply = client.get("/session").await.ok();
        assert_eq!(reply.count(), 1);
        assert_eq!(reply.id().as_deref(), Some(id.as_str()));
    }
    let after = cluster.nodes[0].stats();
    // The prober's reads (`mg` without T) count as cmd_get, never as touches.
    assert_eq!(after.delta(&before, "cmd_touch"), 5, "one touch per read");
    assert_eq!(after.delta(&before, "touch_hits"), 5);
    assert_eq!(after.delta(&before, "cmd_set"), 0, "and no write");
    assert!(cluster.nodes[0].get_raw(&id).is_some(), "TTL was extended");
    assert_eq!(app.stats().counters.backups_touched, 5);
    assert_eq!(app.stats().counters.sessions_expired, 0);
}

/// Issue 10: invalidate deletes the memcached key and expires the cookie;
/// the old cookie no longer works on any instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_tombstones_key_and_deletes_cookie_everywhere() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app_a = app(&cluster, "a", 1800).await;
    let app_b = app(&cluster, "b", 1800).await;
    let mut client = SessionClient::new(app_a.base_url());
    client.post("/incr").await.ok();
    client.post("/put/secret").await.ok();
    let id = client.cookie().unwrap().to_owned();
    assert_eq!(cluster.locate(&id).len(), 1);

    let reply = client.post("/invalidate").await.ok();
    assert_eq!(reply.id(), None);
    let removal = reply.set_cookie().expect("the cookie is expired");
    assert!(removal.removal, "{}", removal.raw);
    assert_eq!(client.cookie(), None, "the client dropped the cookie");
    assert!(cluster.holds_tombstone(&id), "key replaced by a tombstone");
    assert_eq!(app_a.stats().counters.sessions_invalidated, 1);
    assert_eq!(app_a.stats().local_sessions, 0);

    assert_no_session(&app_a, &id).await;
    assert_no_session(&app_b, &id).await;
    assert_eq!(app_b.stats().counters.takeovers, 0);

    // Writing with the old cookie starts a brand-new session.
    let mut replay = SessionClient::new(app_a.base_url());
    replay.set_cookie(Some(id.clone()));
    let reply = replay.post("/incr").await.ok();
    assert_eq!(reply.count(), 1);
    assert_eq!(reply.json()["data"], serde_json::Value::Null);
    assert_ne!(id_random(replay.cookie().unwrap()), id_random(&id));
    assert!(
        all_session_keys(&cluster)
            .iter()
            .filter(|k| id_random(k) == id_random(&id))
            .all(|k| cluster.holds_tombstone(k)),
        "only the tombstone is left of the old session"
    );
}

/// Issue 11: `cycle_id` gives a new id (new random part, same node and
/// route), moves the key, keeps the data, and kills the old id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cycle_id_moves_the_key_and_tombstones_the_old_id() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app_a = app(&cluster, "a", 1800).await;
    let app_b = app(&cluster, "b", 1800).await;
    let mut client = SessionClient::new(app_a.base_url());
    client.post("/incr").await.ok();
    client.post("/put/kept").await.ok();
    let old = client.cookie().unwrap().to_owned();

    let reply = client.post("/cycle").await.ok();
    let new = reply.set_cookie().expect("new id sent").value.clone();
    assert_eq!(reply.id().as_deref(), Some(new.as_str()));
    assert_ne!(id_random(&new), id_random(&old), "new random part");
    assert_eq!(id_node(&new), id_node(&old), "node is up: same node");
    assert_eq!(id_route(&new), Some("a"));
    assert_eq!(reply.count(), 1);
    assert_eq!(reply.json()["data"], "kept");
    assert!(cluster.holds_tombstone(&old), "old key replaced by a tombstone");
    assert_eq!(cluster.locate(&new), vec![id_node(&new).unwrap().to_owned()]);
    assert_eq!(app_a.stats().counters.ids_cycled, 1);

    assert_no_session(&app_a, &old).await;
    assert_no_session(&app_b, &old).await;

    let reply = client.post("/incr").await.ok();
    assert_eq!(reply.count(), 2);
    assert!(reply.set_cookie().is_none());
}

/// Issue 12: garbage cookies are "no session": 200, never a 5xx, no
/// Set-Cookie on reads, a fresh id on writes, and nothing else in memcached
/// is touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_cookies_are_no_session() {
    init_tracing();
    let cluster = Cluster::start(2);
    let app = app(&cluster, "a", 1800).await;

    // A victim session and an unrelated key that must survive everything.
    let mut victim = SessionClient::new(app.base_url());
    for _ in 0..5 {
        victim.post("/incr").await.ok();
    }
    let victim_id = victim.cookie().unwrap().to_owned();
    cluster.nodes[0].set_raw("unrelated", b"keep me", 0);
    let keys_before = all_session_keys(&cluster);

    let random = "A".repeat(32);
    let victim_random = id_random(&victim_id);
    let mut cookies: Vec<Vec<u8>> = vec![
        b"SESSIONID=".to_vec(),
        b"SESSIONID".to_vec(),
        b"SESSIONID=;".to_vec(),
        format!("SESSIONID={}", "x".repeat(8192)).into_bytes(),
        b"SESSIONID=abc\tdef".to_vec(),
        b"SESSIONID=\xff\xfe\x80\x81garbage".to_vec(),
        format!("SESSIONID={random}-n9").into_bytes(), // unknown node
        format!("SESSIONID={random}-n1").into_bytes(), // nobody holds it
        format!("SESSIONID={random}-n2.a").into_bytes(),
        format!("SESSIONID={random}-n1.b").into_bytes(), // "foreign", but nowhere
        format!("SESSIONID={random}").into_bytes(),
        format!("SESSIONID={}-n1", &victim_random[..31]).into_bytes(),
        format!("SESSIONID={victim_id}x").into_bytes(),
        format!("SESSIONID={victim_id}.b").into_bytes(),
        format!("SESSIONID=\"{victim_id}\"x").into_bytes(),
        b"SESSIONID=x flush_all".to_vec(),
        b"SESSIONID=%0D%0Aflush_all%0D%0A".to_vec(),
        format!("SESSIONID={random}-n1 flush_all").into_bytes(),
        format!("SESSIONID={random}-n1%0d%0aflush_all").into_bytes(),
        b"SESSIONID=../../etc/passwd".to_vec(),
        b"SESSIONID=garbage; SESSIONID=more-garbage".to_vec(),
        b"other=1; SESSIONID=; SESSIONID=\"\"".to_vec(),
    ];
    cookies.push(format!("SESSIONID={}", "\u{e9}".repeat(100)).into_bytes());

    let probe = SessionClient::new(app.base_url());
    for cookie in &cookies {
        let shown = String::from_utf8_lossy(&cookie[..cookie.len().min(60)]).into_owned();
        let header = HeaderValue::from_bytes(cookie).expect("a sendable header value");
        let read = probe.get_with_cookie_header("/session", header.clone()).await;
        assert_eq!(read.status, 200, "GET with {shown:?}: {}", read.body);
        assert_eq!(read.id(), None, "GET with {shown:?} found a session");
        assert!(read.session_cookies.is_empty(), "GET with {shown:?} set a cookie");

        let write = probe.post_with_cookie_header("/incr", header).await;
        assert_eq!(write.status, 200, "POST with {shown:?}: {}", write.body);
        assert_eq!(write.count(), 1, "POST with {shown:?} reused data");
        let fresh = write.set_cookie().expect("a fresh session").value.clone();
        assert!(id_node(&fresh).is_some() && id_route(&fresh) == Some("a"), "{fresh}");
        assert_ne!(id_random(&fresh), random);
        assert_ne!(id_random(&fresh), victim_random);
    }

    // Two SESSIONID cookies where one is a real id: the first valid one
    // wins (documented in the manager's filter), so the session is found.
    let both = format!("SESSIONID=garbage; SESSIONID={victim_id}");
    let reply = probe
        .get_with_cookie_header("/session", HeaderValue::from_str(&both).unwrap())
        .await
        .ok();
    assert_eq!(reply.id().as_deref(), Some(victim_id.as_str()));

    // Control characters that HTTP itself forbids: the server may refuse the
    // request (400) but must never answer 5xx.
    for bad in [&b"\x01\x02"[..], b"\x7f", b"a\x00b"] {
        let mut request = b"GET /session HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: SESSIONID=".to_vec();
        request.extend_from_slice(bad);
        request.extend_from_slice(b"\r\n\r\n");
        let status = raw_http_status(app.addr(), &request).expect("an HTTP answer");
        assert!(status < 500, "control characters {bad:?} gave {status}");
    }

    // Nothing else was touched.
    let reply = victim.get("/session").await.ok();
    assert_eq!(reply.count(), 5);
    assert_eq!(reply.id().as_deref(), Some(victim_id.as_str()));
    assert_eq!(cluster.nodes[0].get_raw("unrelated").as_deref(), Some(&b"keep me"[..]));
    // Ids that name no stored session leave no takeover claim behind
    // (otherwise the same cookie would get 503 for the claim's lifetime).
    for node in &cluster.nodes {
        let claims: Vec<String> = node.keys().into_iter().filter(|k| k.contains("takeover:")).collect();
        assert!(claims.is_empty(), "leftover takeover claims: {claims:?}");
    }
    let keys_after = all_session_keys(&cluster);
    for key in &keys_before {
        assert!(keys_after.contains(key), "{key} disappeared");
    }
    let counters = app.stats().counters;
    assert_eq!(counters.invalid_session_ids, 30, "{counters:?}");
    assert_eq!(counters.takeovers, 0);
    assert_eq!(counters.decode_failures, 0);
}

/// Asserts that `ttl` is `expected` seconds, less at most a few seconds of
/// test time. (memcached's clock ticks once a second, so an absolute expiry
/// time can read up to a second longer than it was when sent.)
#[track_caller]
fn assert_ttl_about(ttl: Option<i64>, expected: i64, what: &str) {
    let ttl = ttl.unwrap_or_else(|| panic!("{what}: not stored (expired at once?)"));
    assert!(
        (expected - 10..=expected + 2).contains(&ttl),
        "{what}: memcached TTL {ttl} s, expected about {expected} s"
    );
}

/// memcached reads an expiration above 30 days as an absolute unix time: a
/// relative 40 days sent as is would be a date in 1970, and the item would
/// expire at once. A session with maxInactiveInterval = 40 days must live
/// about 40 days in memcached (sticky: + the 5 min margin; non-sticky: the
/// primary copy 40 days, slid by every read, its backup 1¼ × 40 = 50 days),
/// and 0 means never (-1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactivity_intervals_over_30_days_are_kept_that_long_in_memcached() {
    init_tracing();
    const DAY: i64 = 86_400;
    let cluster = Cluster::start(1);
    let node = &cluster.nodes[0];
    let sticky = app(&cluster, "a", 40 * DAY).await;
    let mut client = SessionClient::new(sticky.base_url());
    client.post("/incr").await.ok();
    let id = client.cookie().unwrap().to_owned();
    assert_ttl_about(node.remaining_ttl(&id), 40 * DAY + 300, "sticky session");
    // A read that extends the TTL: not due for a long time, so nothing changes.
    assert_eq!(client.get("/session").await.ok().count(), 1);
    assert_ttl_about(node.remaining_ttl(&id), 40 * DAY + 300, "sticky session after a read");

    // Two nodes: the primary copy and its backup on the other one.
    let pair = Cluster::start(2);
    let non_sticky = TestApp::start(
        fast_config(&pair.spec())
            .sticky(false)
            .max_inactive_interval_secs(40 * DAY)
            .build()
            .unwrap(),
    )
    .await;
    let mut client = SessionClient::new(non_sticky.base_url());
    client.post("/incr").await.ok();
    let id = client.cookie().unwrap().to_owned();
    let primary = pair.node(id_node(&id).unwrap());
    let backup = pair.nodes.iter().find(|n| n.port() != primary.port()).unwrap();
    let backup_key = format!("bak:{id}");
    assert_ttl_about(primary.remaining_ttl(&id), 40 * DAY, "non-sticky primary copy");
    assert_ttl_about(backup.remaining_ttl(&backup_key), 50 * DAY, "non-sticky backup copy");
    // The read that slides the primary's TTL (`mg … T`) sends the long TTL
    // too; a request carrying the id without using the session touches
    // both copies with them.
    assert_eq!(client.get("/session").await.ok().count(), 1);
    assert_ttl_about(primary.remaining_ttl(&id), 40 * DAY, "primary copy after a read");
    client.get("/plain").await.ok();
    assert_ttl_about(primary.remaining_ttl(&id), 40 * DAY, "primary copy after a touch");
    assert_ttl_about(backup.remaining_ttl(&backup_key), 50 * DAY, "backup copy after a touch");
    // A change rewrites both copies with the long TTLs.
    assert_eq!(client.post("/incr").await.ok().count(), 2);
    assert_ttl_about(primary.remaining_ttl(&id), 40 * DAY, "primary copy after a write");
    assert_ttl_about(backup.remaining_ttl(&backup_key), 50 * DAY, "backup copy after a write");

    let forever = app(&cluster, "c", 0).await;
    let mut client = SessionClient::new(forever.base_url());
    client.post("/incr").await.ok();
    assert_eq!(node.remaining_ttl(client.cookie().unwrap()), Some(-1), "0 means never");
}

/// Issue 11: a logout racing reads of the same session on the same
/// instance (async backup, the default) is final — 100 tries, each read
/// afterwards with the old cookie, here and on another instance, finds no
/// session. (A read that was still running could re-load the copy still
/// in memcached before its delete was written.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_racing_reads_is_final_every_time() {
    init_tracing();
    let cluster = Cluster::start(1);
    let start = |route: &'static str| {
        let config = fast_config(&cluster.spec())
            .route(route)
            .max_inactive_interval_secs(1800)
            .build()
            .unwrap();
        TestApp::start(config)
    };
    let app_a = start("a").await;
    let app_b = start("b").await;
    for round in 0..100 {
        let mut client = SessionClient::new(app_a.base_url());
        client.post("/incr").await.ok();
        let id = client.cookie().unwrap().to_owned();
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let mut reader = SessionClient::new(app_a.base_url());
                reader.set_cookie(Some(id.clone()));
                tokio::spawn(async move { reader.get("/session").await })
            })
            .collect();
        let logout = client.post("/invalidate").await.ok();
        assert_eq!(logout.id(), None, "round {round}");
        for reader in readers {
            reader.await.unwrap();
        }
        for app in [&app_a, &app_b] {
            let mut replay = SessionClient::new(app.base_url());
            replay.set_cookie(Some(id.clone()));
            let reply = replay.get("/session").await.ok();
            assert_eq!(
                (reply.id(), reply.count()),
                (None, 0),
                "round {round}: logged out stays so"
            );
        }
    }
}
