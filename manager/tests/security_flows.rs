//! Hostile input and the security options on in-process nodes: size
//! limits, header-borne ids, cookie prefixes and lifetimes, sealed and
//! authenticated blobs, hashed storage keys. (Against real memcached in
//! `tests/`.)

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
use memcached_sessions::backend::{InMemoryNode, NodeBackend};
use memcached_sessions::{Config, Error, Session, SessionManager};
use warp::Filter;
use warp::http::StatusCode;

fn key(byte: u8) -> String {
    STANDARD.encode([byte; 32])
}

fn with_big_insert(
    manager: &SessionManager,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone + use<> {
    let big = warp::path!("big" / usize)
        .and(manager.session())
        .map(|len: usize, s: Session| match s.insert("blob", &vec![7u8; len]) {
            Ok(()) => "stored".to_owned(),
            Err(Error::SessionTooLarge { size, limit, .. }) => format!("too large: {size} > {limit}"),
            Err(other) => format!("other error: {other}"),
        });
    manager.wrap(big)
}

#[tokio::test]
async fn an_insert_over_the_size_limit_is_refused_and_changes_nothing() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(Config::builder().max_session_size(4096));
    let app = with_big_insert(&manager);
    let ok = warp::test::request().path("/big/3000").reply(&app).await;
    assert_eq!(ok.body(), "stored");
    let cookie = ok.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let refused = warp::test::request()
        .path("/big/5000")
        .header("cookie", &cookie)
        .reply(&app)
        .await;
    assert_eq!(refused.status(), StatusCode::OK, "the handler decides what to answer");
    let body = String::from_utf8_lossy(refused.body()).into_owned();
    assert!(body.starts_with("too large: ") && body.ends_with("> 4096"), "{body}");
    let id = cookie.trim_start_matches("SESSIONID=");
    let stored = cluster.nodes[0].keys().into_iter().find(|k| k == id);
    assert!(stored.is_some(), "the earlier version stays stored");
}

#[tokio::test]
async fn ids_can_travel_in_a_header_only() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(
        Config::builder()
            .session_id_header("X-Session-Id")
            .cookie_enabled(false),
    );
    let app = routes(&manager);
    let first = warp::test::request().method("POST").path("/count").reply(&app).await;
    assert!(
        first.headers().get("set-cookie").is_none(),
        "no cookie when cookies are off"
    );
    let id = first.headers()["x-session-id"].to_str().unwrap().to_owned();
    let second = warp::test::request()
        .method("POST")
        .path("/count")
        .header("x-session-id", &id)
        .reply(&app)
        .await;
    assert_eq!(second.body(), "2");
    assert!(
        second.headers().get("x-session-id").is_none(),
        "unchanged id: not repeated"
    );
    // A cookie is not accepted when cookies are off.
    let cookie = warp::test::request()
        .path("/count")
        .header("cookie", format!("SESSIONID={id}"))
        .reply(&app)
        .await;
    assert_eq!(cookie.body(), "0");
    let logout = warp::test::request()
        .path("/logout")
        .header("x-session-id", &id)
        .reply(&app)
        .await;
    assert_eq!(logout.headers()["x-session-id"], "", "invalidation empties the header");
}

#[tokio::test]
async fn the_header_is_checked_before_the_cookie() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(Config::builder().session_id_header("X-Session-Id"));
    let app = routes(&manager);
    let a = call(&manager, "POST", "/count", None)
        .await
        .cookie_id()
        .unwrap()
        .to_owned();
    let b = call(&manager, "POST", "/count", None)
        .await
        .cookie_id()
        .unwrap()
        .to_owned();
    call(&manager, "POST", "/count", Some(&b)).await;
    let reply = warp::test::request()
        .path("/count")
        .header("x-session-id", &a)
        .header("cookie", format!("SESSIONID={b}"))
        .reply(&app)
        .await;
    assert_eq!(reply.body(), "1", "session a (count 1), not b (count 2)");
}

#[tokio::test]
async fn persistent_cookies_slide_with_the_session() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(
        Config::builder()
            .cookie_persistent(true)
            .max_inactive_interval_secs(600)
            .cookie_name("__Host-sid")
            .cookie_secure(true),
    );
    let session = manager.session();
    let app = manager.wrap(
        warp::path!("count")
            .and(session)
            .map(|s: Session| s.update("n", |n: Option<u64>| n.unwrap_or(0) + 1).unwrap().to_string()),
    );
    let first = warp::test::request().path("/count").reply(&app).await;
    let set = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.starts_with("__Host-sid="), "{set}");
    for attribute in ["Max-Age=600", "Secure", "HttpOnly", "Path=/"] {
        assert!(set.contains(attribute), "{attribute} in {set}");
    }
    assert!(!set.contains("Domain"), "__Host- cookies have no domain");
    let cookie = set.split(';').next().unwrap().to_owned();
    let again = warp::test::request()
        .path("/count")
        .header("cookie", &cookie)
        .reply(&app)
        .await;
    let refreshed = again.headers()["set-cookie"].to_str().unwrap();
    assert!(
        refreshed.starts_with(&cookie) && refreshed.contains("Max-Age=600"),
        "re-sent to slide: {refreshed}"
    );
    let none = warp::test::request().path("/nothing").reply(&app).await;
    assert!(none.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn sealed_blobs_hide_the_data_and_reject_tampering() {
    let cluster = Cluster::new(1);
    let config = || Config::builder().session_encryption_keys(key(1)).route("a");
    let a = cluster.manager(config());
    let id = session_with_count(&a, 41).await;
    let stored = cluster.nodes[0]
        .keys()
        .into_iter()
        .find(|k| *k == id)
        .expect("stored under the id");
    assert_eq!(stored, id);
    // Another instance with the same key takes it over: the blob opens.
    let b = cluster.manager(
        Config::builder()
            .session_encryption_keys(format!("{},{}", key(2), key(1)))
            .route("b"),
    );
    assert_eq!(
        call(&b, "POST", "/count", Some(&id)).await.body,
        "42",
        "rotation: an older key still opens"
    );
    // A node holding a tampered or foreign blob yields no session.
    let c = cluster.manager(Config::builder().session_encryption_keys(key(1)).route("c"));
    let other = session_with_count(&c, 1).await;
    cluster.nodes[0].put_raw(&other, b"\xA5\x53 plain unsealed bytes");
    let d = cluster.manager(config().route("d"));
    assert_eq!(call(&d, "GET", "/count", Some(&other)).await.body, "0");
    assert_eq!(d.statistics().counters.decode_failures, 1);
}

/// The bytes stored under `key` on `node`.
async fn stored(node: &InMemoryNode, key: &str) -> Vec<u8> {
    node.get(key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{key} is stored"))
}

fn flipped(blob: &[u8], at: usize) -> Vec<u8> {
    let mut tampered = blob.to_vec();
    tampered[at] ^= 0x01;
    tampered
}

/// Positions of a sealed blob (`magic 2 | fingerprint 4 | nonce 24 |
/// ciphertext | tag 16`) worth flipping: each part once.
fn positions(blob: &[u8]) -> [usize; 6] {
    [0, 3, 10, 31, blob.len() / 2 + 15, blob.len() - 1]
}

#[tokio::test]
async fn a_sealed_blob_with_one_flipped_byte_is_no_session() {
    let cluster = Cluster::new(1);
    let node = &cluster.nodes[0];
    let config = |route: &str| Config::builder().session_encryption_keys(key(1)).route(route);
    let a = cluster.manager(config("a"));
    let id = session_with_count(&a, 3).await;
    let good = stored(node, &id).await;
    let b = cluster.manager(config("b"));
    for (case, at) in positions(&good).into_iter().enumerate() {
        node.put_raw(&id, &flipped(&good, at));
        let reply = call(&b, "GET", "/count", Some(&id)).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "0"),
            "byte {at} flipped: no session"
        );
        assert_eq!(b.statistics().counters.decode_failures, case as u64 + 1);
    }
    // The untampered blob opens for b: the failures above were the flips.
    node.put_raw(&id, &good);
    assert_eq!(call(&b, "GET", "/count", Some(&id)).await.body, "3");
    assert_eq!(b.statistics().counters.takeovers, 1);
}

#[tokio::test]
async fn a_sealed_blob_copied_under_another_sessions_key_is_no_session() {
    let cluster = Cluster::new(1);
    let node = &cluster.nodes[0];
    let config = |route: &str| Config::builder().session_encryption_keys(key(1)).route(route);
    let a = cluster.manager(config("a"));
    let session_a = session_with_count(&a, 1).await;
    let session_b = session_with_count(&a, 2).await;
    let blob_a = stored(node, &session_a).await;
    let blob_b = stored(node, &session_b).await;
    let c = cluster.manager(config("c"));
    node.put_raw(&session_b, &blob_a);
    let reply = call(&c, "GET", "/count", Some(&session_b)).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::OK, "0"),
        "a's blob does not open as b"
    );
    assert_eq!(c.statistics().counters.decode_failures, 1);
    node.put_raw(&session_b, &blob_b);
    assert_eq!(
        call(&c, "GET", "/count", Some(&session_b)).await.body,
        "2",
        "b's own blob opens"
    );
}

/// Non-sticky: the backup copy (`bak:` on the next node) is sealed for its
/// own key too. With the primary node down, a tampered backup, or another
/// session's backup copied over it, is no session (200, never a 5xx).
#[tokio::test]
async fn a_tampered_or_swapped_non_sticky_backup_is_no_session() {
    let cluster = Cluster::new(2);
    let config = || {
        Config::builder()
            .sticky(false)
            .operation_timeout(Duration::from_secs(3))
            .session_encryption_keys(key(1))
    };
    let manager = cluster.manager(config());
    // Three sessions on one primary (node choice is random).
    let mut on: [Vec<(String, u64)>; 2] = Default::default();
    let mut count = 0;
    while on.iter().all(|ids| ids.len() < 3) {
        count += 1;
        let id = session_with_count(&manager, count).await;
        on[usize::from(node_of(&id) == "n2")].push((id, count));
    }
    let primary_index = usize::from(on[1].len() == 3);
    let [tampered, swapped, intact] = [0, 1, 2].map(|i| on[primary_index][i].0.clone());
    let intact_count = on[primary_index][2].1;
    let primary = node_of(&tampered).to_owned();
    let backup = cluster.node(if primary == "n1" { "n2" } else { "n1" });
    let good = stored(backup, &format!("bak:{tampered}")).await;
    backup.put_raw(&format!("bak:{tampered}"), &flipped(&good, good.len() / 2));
    backup.put_raw(&format!("bak:{swapped}"), &good);
    cluster.node(&primary).set_down(true);

    let reader = cluster.manager(config());
    for id in [&tampered, &swapped] {
        let reply = call(&reader, "GET", "/count", Some(id)).await;
        assert_eq!(
            (reply.status, reply.body.as_str(), reply.set_cookie.as_deref()),
            (StatusCode::OK, "0", None),
            "no session from a tampered or foreign backup"
        );
    }
    assert_eq!(reader.statistics().counters.decode_failures, 2);
    // The intact backup of a session on the same dead primary is read.
    let reply = call(&reader, "GET", "/count", Some(&intact)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body, intact_count.to_string(), "the intact backup opens");
    assert!(reply.cookie_id().is_some(), "relocated to the backup node");
    assert_eq!(reader.statistics().counters.backup_node_loads, 1);
}

/// Postcard's unsigned varint.
fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Envelope variant of a sticky record.
const STICKY_V1: u8 = 0;
/// Envelope variant of a non-sticky record (format 2).
const NON_STICKY_V2: u8 = 1;

/// A well-formed stored record (magic, envelope `variant`) with a `count` of 7.
fn record(variant: u8, max_inactive_secs: u64) -> Vec<u8> {
    let mut out = vec![0xA5, 0x53, variant];
    for field in [1_700_000_000_000, 1_700_000_000_000, max_inactive_secs] {
        varint(&mut out, field);
    }
    out.extend_from_slice(&[1, 5]);
    out.extend_from_slice(b"count");
    out.extend_from_slice(&[1, 7]);
    out
}

/// A stored record whose inactivity interval is beyond the clock's range
/// (found by the `request_record` fuzz target: `Instant + Duration`
/// overflowed and panicked in the backup after a takeover). Such a session
/// is served and written back like any other, in both modes.
#[tokio::test]
async fn a_stored_record_with_an_absurd_inactivity_interval_is_served_without_a_panic() {
    for max_inactive_secs in [1 << 63, u64::MAX, (1 << 63) - 1, 1 << 62] {
        let cluster = Cluster::new(1);
        let node = &cluster.nodes[0];
        let sticky = cluster.manager(Config::builder().route("a"));
        let foreign = format!("{}-n1.b", "A".repeat(32));
        node.put_raw(&foreign, &record(STICKY_V1, max_inactive_secs));
        let reply = call(&sticky, "POST", "/count", Some(&foreign)).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "8"),
            "sticky takeover, max_inactive_secs = {max_inactive_secs}"
        );
        let taken = reply.cookie_id().expect("taken over").to_owned();
        assert!(node.contains(&taken), "written back");
        assert_eq!(call(&sticky, "GET", "/count", Some(&taken)).await.body, "8");
        sticky.shutdown().await;

        let non_sticky = cluster.manager(Config::builder().sticky(false));
        let id = format!("{}-n1", "B".repeat(32));
        node.put_raw(&id, &record(NON_STICKY_V2, max_inactive_secs));
        let reply = call(&non_sticky, "POST", "/count", Some(&id)).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "8"),
            "non-sticky, max_inactive_secs = {max_inactive_secs}"
        );
        assert_eq!(call(&non_sticky, "GET", "/count", Some(&id)).await.body, "8");
        // A record of the other mode (or of the earlier non-sticky format,
        // which was `V1` too) is no session: never misread.
        let other_mode = format!("{}-n1", "C".repeat(32));
        node.put_raw(&other_mode, &record(STICKY_V1, max_inactive_secs));
        let reply = call(&non_sticky, "GET", "/count", Some(&other_mode)).await;
        assert_eq!((reply.status, reply.body.as_str()), (StatusCode::OK, "0"));
    }
}

#[tokio::test]
async fn storage_keys_do_not_reveal_session_ids() {
    let cluster = Cluster::new(2);
    let secret = STANDARD.encode([9u8; 16]);
    let manager = cluster.manager(Config::builder().storage_key_secret(secret.clone()).route("a"));
    let id = session_with_count(&manager, 3).await;
    let keys = cluster.session_keys();
    assert_eq!(keys.len(), 1);
    assert!(!keys[0].contains(&id[..32]), "the random part never reaches memcached");
    assert!(keys[0].ends_with(&id[32..]), "node and route stay visible: {}", keys[0]);
    // Another instance with the same secret finds it.
    let other = cluster.manager(Config::builder().storage_key_secret(secret).route("b"));
    assert_eq!(call(&other, "GET", "/count", Some(&id)).await.body, "3");
}

#[tokio::test]
async fn two_session_cookies_take_the_first_valid_one_and_never_fail() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(Config::builder());
    let id = session_with_count(&manager, 5).await;
    let app = routes(&manager);
    let reply = warp::test::request()
        .path("/count")
        .header("cookie", format!("SESSIONID=garbage; other=1; SESSIONID={id}"))
        .reply(&app)
        .await;
    assert_eq!(reply.body(), "5");
    let many = (0..500).map(|i| format!("c{i}=v{i}")).collect::<Vec<_>>().join("; ");
    let reply = warp::test::request()
        .path("/count")
        .header("cookie", format!("{many}; SESSIONID={id}"))
        .reply(&app)
        .await;
    assert_eq!((reply.status(), reply.body().as_ref()), (StatusCode::OK, &b"5"[..]));
    let non_utf8 = warp::http::HeaderValue::from_bytes(b"SESSIONID=\xff\xfe").unwrap();
    let reply = warp::test::request()
        .path("/count")
        .header("cookie", non_utf8)
        .reply(&app)
        .await;
    assert_eq!((reply.status(), reply.body().as_ref()), (StatusCode::OK, &b"0"[..]));
}

#[tokio::test]
async fn a_client_chosen_id_is_never_adopted() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(Config::builder());
    // Well-formed, known node, but no such session: fixation attempt.
    let chosen = format!("{}-n1", "F".repeat(32));
    let reply = call(&manager, "POST", "/count", Some(&chosen)).await;
    let issued = reply.cookie_id().unwrap();
    assert_ne!(issued, chosen);
    assert_ne!(&issued[..32], &chosen[..32]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!cluster.nodes[0].contains(&chosen));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever bytes arrive as Cookie or id header: a 200 with no session
    /// or the client's own existing session, never a 5xx.
    #[test]
    fn any_cookie_or_header_bytes_are_no_session_never_an_error(
        cookie in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        header in proptest::collection::vec(proptest::num::u8::ANY, 0..100),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = runtime.block_on(async {
            let cluster = Cluster::new(1);
            let manager = cluster.manager(Config::builder().session_id_header("X-Session-Id"));
            let mut request = warp::test::request().method("POST").path("/count");
            if let Ok(value) = warp::http::HeaderValue::from_bytes(&cookie) {
                request = request.header("cookie", value);
            }
            if let Ok(value) = warp::http::HeaderValue::from_bytes(&header) {
                request = request.header("x-session-id", value);
            }
            let response = request.reply(&routes(&manager)).await;
            (response.status(), response.body().clone())
        });
        proptest::prop_assert_eq!(status.0, StatusCode::OK);
        proptest::prop_assert_eq!(&status.1[..], b"1", "a fresh session");
    }
}
