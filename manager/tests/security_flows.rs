//! Hostile input and the security options on in-process nodes: size
//! limits, header-borne ids, cookie prefixes and lifetimes, sealed and
//! authenticated blobs, hashed storage keys. (Against real memcached in
//! `tests/`.)

mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::*;
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
