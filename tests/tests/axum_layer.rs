//! The tower `SessionLayer` and the axum `Session` extractor against real
//! memcached, driven with `tower::ServiceExt::oneshot` (no HTTP server):
//! sessions are created, backed up, found again by cookie, and finished
//! when the request is dropped; the layer's own answers (missing layer,
//! memcached unavailable) are the documented statuses.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::header::{COOKIE, RETRY_AFTER, SET_COOKIE};
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use integration_tests::{Cluster, Memcached, eventually, fast_config, init_tracing};
use memcached_sessions::{Config, Session, SessionManager};
use tower::ServiceExt;

/// `GET /` shows the count, `POST /` increments it after `delay_ms`.
fn router(manager: &SessionManager) -> Router {
    async fn read(session: Session) -> String {
        session.get::<u64>("count").unwrap().unwrap_or(0).to_string()
    }
    async fn increment(session: Session, body: String) -> String {
        let delay: u64 = body.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        session
            .update("count", |count: Option<u64>| count.unwrap_or(0) + 1)
            .unwrap()
            .to_string()
    }
    Router::new()
        .route("/", get(read).post(increment))
        .layer(manager.layer())
}

async fn send(router: &Router, method: &str, cookie: Option<&str>, body: &str) -> (StatusCode, Option<String>, String) {
    let mut request = Request::builder().method(method).uri("/");
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    let body = String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (status, cookie, body)
}

/// A non-sticky manager that locks every request (a 30 s lock, so one left
/// behind would block the next request past `operationTimeout`), its
/// router, and the cookie of a session whose count is 1.
async fn locking_non_sticky(cluster: &Cluster) -> (SessionManager, Router, String) {
    init_tracing();
    let config = fast_config(&cluster.spec())
        .sticky(false)
        .locking_mode("all")
        .lock_expiration(Duration::from_secs(30))
        .operation_timeout(Duration::from_secs(2));
    let manager = SessionManager::start(config.build().unwrap()).await.unwrap();
    let app = router(&manager);
    let (_, cookie, _) = send(&app, "POST", None, "").await;
    (manager, app, cookie.expect("a new session announces its id"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_are_backed_up_and_taken_over_by_another_instance() {
    init_tracing();
    let cluster = Cluster::start(2);
    let a = SessionManager::start(fast_config(&cluster.spec()).route("a").build().unwrap())
        .await
        .unwrap();
    let b = SessionManager::start(fast_config(&cluster.spec()).route("b").build().unwrap())
        .await
        .unwrap();
    let (on_a, on_b) = (router(&a), router(&b));
    let (status, cookie, body) = send(&on_a, "POST", None, "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "1"));
    let cookie = cookie.expect("a new session announces its id");
    assert_eq!(send(&on_a, "POST", Some(&cookie), "").await.2, "2");
    // The backup is in memcached: instance b takes the session over.
    let id = cookie.split_once('=').unwrap().1.to_owned();
    eventually(Duration::from_secs(5), "the backup reaches memcached", || {
        cluster
            .nodes
            .iter()
            .any(|node| node.keys().iter().any(|k| k.contains(&id[..8])))
    })
    .await;
    let (status, _, body) = send(&on_b, "POST", Some(&cookie), "").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "3"),
        "taken over with its count"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_sticky_requests_dropped_mid_handler_release_their_lock() {
    let cluster = Cluster::start(2);
    let (manager, app, cookie) = locking_non_sticky(&cluster).await;
    // A slow request holding the lock is dropped (a client hang-up).
    let slow = tokio::time::timeout(Duration::from_millis(300), send(&app, "POST", Some(&cookie), "5000")).await;
    assert!(slow.is_err(), "the slow request was cut off");
    // Without the release the next request would wait for the 30 s lock
    // and get 503 after operationTimeout (2 s).
    let (status, _, body) = send(&app, "POST", Some(&cookie), "").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "2"),
        "the dropped request saved nothing and let go"
    );
    let stats = manager.statistics().counters;
    assert_eq!(stats.locks_acquired, stats.locks_released);
    manager.shutdown().await;
}

/// A `SessionHandle` kept past its request (moved into a task, say) must not
/// open the session once the request is gone: nobody would release what it
/// took (a share of the session, its lock). Here the request is dropped
/// before its handler asked for the session; the kept handle then fails
/// with `RequestFinished`, and the session's next request is served at once
/// (no lock left behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_kept_from_a_dropped_request_cannot_open_the_session() {
    let cluster = Cluster::start(1);
    let (manager, app, cookie) = locking_non_sticky(&cluster).await;

    let kept = std::sync::Arc::new(std::sync::Mutex::new(None));
    let stash = kept.clone();
    let hangs = Router::new()
        .route(
            "/",
            get(move |request: Request<Body>| {
                let stash = stash.clone();
                async move {
                    let handle = request.extensions().get::<memcached_sessions::SessionHandle>().cloned();
                    *stash.lock().unwrap() = handle;
                    std::future::pending::<String>().await
                }
            }),
        )
        .layer(manager.layer());
    let request = Request::builder()
        .uri("/")
        .header(COOKIE, &cookie)
        .body(Body::empty())
        .unwrap();
    let dropped = tokio::time::timeout(Duration::from_millis(200), hangs.oneshot(request)).await;
    assert!(dropped.is_err(), "the request was cut off");
    let handle = kept.lock().unwrap().take().expect("the handler kept its handle");
    let late = handle.session().await;
    assert!(
        matches!(late, Err(memcached_sessions::Error::RequestFinished)),
        "a handle of a finished request opened the session: {late:?}"
    );
    let (status, _, body) = send(&app, "POST", Some(&cookie), "").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "2"),
        "no lock was left behind"
    );
    let stats = manager.statistics().counters;
    assert_eq!(stats.locks_acquired, stats.locks_released);
    manager.shutdown().await;
}

/// A `Session` kept past its answered request can still be read, but
/// cannot change anything: a new session made there would never be
/// announced nor stored, a change never written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_kept_past_its_request_reads_but_changes_nothing() {
    init_tracing();
    let cluster = Cluster::start(1);
    let manager = SessionManager::start(fast_config(&cluster.spec()).build().unwrap())
        .await
        .unwrap();
    let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stash = kept.clone();
    let app = Router::new()
        .route(
            "/",
            post(move |session: Session| {
                let stash = stash.clone();
                async move {
                    session.insert("count", &7u64).unwrap();
                    stash.lock().unwrap().push(session);
                    "kept".to_owned()
                }
            }),
        )
        .layer(manager.layer());
    let (status, cookie, _) = send(&app, "POST", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(cookie.is_some());
    let (status, _, _) = send(&app, "POST", None, "").await;
    assert_eq!(status, StatusCode::OK);
    let sessions = manager.statistics().local_sessions;
    let created = manager.statistics().counters.sessions_created;
    for late in kept.lock().unwrap().drain(..) {
        assert_eq!(late.get::<u64>("count").unwrap(), Some(7), "reads still work");
        assert!(matches!(
            late.insert("count", &8u64),
            Err(memcached_sessions::Error::RequestFinished)
        ));
        assert!(matches!(
            late.remove::<u64>("count"),
            Err(memcached_sessions::Error::RequestFinished)
        ));
        late.invalidate();
        assert_eq!(late.cycle_id(), None);
        assert_eq!(late.get::<u64>("count").unwrap(), Some(7), "nothing changed");
    }
    let after = manager.statistics();
    assert_eq!(after.local_sessions, sessions, "no session appeared or ended");
    assert_eq!(after.counters.sessions_created, created);
    assert_eq!(after.counters.sessions_invalidated, 0);
    manager.shutdown().await;
}

#[tokio::test]
async fn the_extractor_outside_the_layer_names_the_missing_layer() {
    init_tracing();
    let manager = SessionManager::start(Config::builder().build().unwrap()).await.unwrap();
    let unwrapped = Router::new().route(
        "/",
        post(|session: Session| async move { session.exists().to_string() }),
    );
    let response = unwrapped
        .oneshot(Request::post("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("manager.layer()"), "{body}");
    drop(manager);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_down_is_503_with_retry_after_never_a_new_session() {
    init_tracing();
    let mut memcached = Memcached::start();
    let config = fast_config(&format!("n1:{}", memcached.addr())).sticky(false);
    let manager = SessionManager::start(config.build().unwrap()).await.unwrap();
    let app = router(&manager);
    let (_, cookie, _) = send(&app, "POST", None, "").await;
    let cookie = cookie.unwrap();
    memcached.kill();
    let request = Request::get("/").header(COOKIE, &cookie).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers().get(RETRY_AFTER).unwrap(), "1");
    assert!(
        response.headers().get(SET_COOKIE).is_none(),
        "no new session handed out"
    );
    manager.shutdown().await;
}
