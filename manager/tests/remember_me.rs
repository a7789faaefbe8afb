//! A session's own inactivity interval (`Session::set_max_inactive_interval`,
//! "remember me"): honoured in this process, in memcached, through a
//! takeover, a relocation and a restart of its instance, and by a
//! persistent cookie's `Max-Age`. Time is paused: the configured interval
//! is 60 s, the remembered one 10 minutes.

mod common;

use std::time::Duration;

use common::Cluster;
use memcached_sessions::backend::NodeBackend;
use memcached_sessions::{Config, ConfigBuilder, Error, Session, SessionManager};
use warp::Filter;

const REMEMBERED: Duration = Duration::from_secs(600);

/// `POST /remember` starts a session with `count = 1` and a 10-minute
/// interval; `POST /plain` starts one with `count = 1` only; `GET /count`
/// reads the count (0 without a session).
async fn call(manager: &SessionManager, method: &str, path: &str, id: Option<&str>) -> (String, Option<String>) {
    let session = manager.session();
    let remember = warp::path!("remember").and(session.clone()).map(|s: Session| {
        s.insert("count", &1u64).unwrap();
        match s.set_max_inactive_interval(Some(REMEMBERED)) {
            Ok(()) => "ok".to_owned(),
            Err(Error::PerSessionIntervalNeedsStickyMode) => "sticky only".to_owned(),
            Err(other) => panic!("{other}"),
        }
    });
    let plain = warp::path!("plain").and(session.clone()).map(|s: Session| {
        s.insert("count", &1u64).unwrap();
        "ok".to_owned()
    });
    let count = warp::path!("count")
        .and(session)
        .map(|s: Session| s.get::<u64>("count").unwrap().unwrap_or(0).to_string());
    let routes = manager.wrap(remember.or(plain).unify().or(count).unify());
    let mut request = warp::test::request().method(method).path(path);
    if let Some(id) = id {
        request = request.header("cookie", format!("SESSIONID={id}"));
    }
    let response = request.reply(&routes).await;
    let set_cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    (String::from_utf8_lossy(response.body()).into_owned(), set_cookie)
}

fn config(route: &str) -> ConfigBuilder {
    Config::builder()
        .route(route)
        .max_inactive_interval_secs(60)
        .expiry_sweep_interval(Duration::from_secs(1))
}

async fn new_session(manager: &SessionManager, path: &str) -> String {
    let (body, cookie) = call(manager, "POST", path, None).await;
    assert_eq!(body, "ok");
    let cookie = cookie.expect("a new session sets its cookie");
    cookie["SESSIONID=".len()..].split(';').next().unwrap().to_owned()
}

async fn count(manager: &SessionManager, id: &str) -> String {
    call(manager, "GET", "/count", Some(id)).await.0
}

#[tokio::test(start_paused = true)]
async fn a_remembered_session_outlives_the_configured_interval_here_and_in_memcached() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(config("a"));
    let remembered = new_session(&manager, "/remember").await;
    let plain = new_session(&manager, "/plain").await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(count(&manager, &plain).await, "0", "the plain one expired after 60 s");
    assert_eq!(count(&manager, &remembered).await, "1", "the remembered one did not");
    let (_, ttl) = cluster.nodes[0]
        .get_with_ttl(&remembered)
        .await
        .unwrap()
        .expect("its copy is in memcached");
    assert!(
        ttl.unwrap() > Duration::from_secs(400),
        "its memcached TTL follows its own interval: {ttl:?}"
    );
    // And it does expire, after its own interval.
    tokio::time::sleep(REMEMBERED + Duration::from_secs(5)).await;
    assert_eq!(count(&manager, &remembered).await, "0");
}

#[tokio::test(start_paused = true)]
async fn the_interval_survives_a_takeover_a_relocation_and_a_restart() {
    let cluster = Cluster::new(2);
    let a = cluster.manager(config("a"));
    let id = new_session(&a, "/remember").await;

    // Instance a is restarted: a new manager with the same route finds it
    // in memcached after longer than the configured interval.
    a.shutdown().await;
    drop(a);
    tokio::time::sleep(Duration::from_secs(120)).await;
    let a2 = cluster.manager(config("a"));
    assert_eq!(count(&a2, &id).await, "1", "restart");

    // Instance b takes it over after another idle stretch, and keeps it
    // for longer than the configured interval too.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let b = cluster.manager(config("b"));
    let (body, cookie) = call(&b, "GET", "/count", Some(&id)).await;
    assert_eq!(body, "1", "takeover");
    let on_b = cookie.expect("a new route")["SESSIONID=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(count(&b, &on_b).await, "1", "b keeps the interval");

    // Its node dies: relocated to the other one, interval and all.
    let node = if on_b.contains("-n1") { 0 } else { 1 };
    cluster.nodes[node].set_down(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (body, cookie) = call(&b, "GET", "/count", Some(&on_b)).await;
    assert_eq!(body, "1");
    let moved = cookie.expect("relocated")["SESSIONID=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, ttl) = cluster.nodes[1 - node]
        .get_with_ttl(&moved)
        .await
        .unwrap()
        .expect("written to the live node");
    assert!(
        ttl.unwrap() > Duration::from_secs(400),
        "relocated with its interval: {ttl:?}"
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(count(&b, &moved).await, "1", "still alive after the relocation");
}

#[tokio::test]
async fn a_persistent_cookie_lives_as_long_as_the_session() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(config("a").cookie_persistent(true));
    let (_, cookie) = call(&manager, "POST", "/remember", None).await;
    assert!(cookie.unwrap().contains("Max-Age=600"));
    let (_, cookie) = call(&manager, "POST", "/plain", None).await;
    assert!(cookie.unwrap().contains("Max-Age=60"));
}

#[tokio::test]
async fn non_sticky_mode_says_it_is_not_supported() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(config("a").sticky(false));
    assert_eq!(call(&manager, "POST", "/remember", None).await.0, "sticky only");
}
