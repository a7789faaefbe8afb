//! An in-process app: a [`SessionManager`] and a handful of small warp
//! routes, served on `127.0.0.1:<random port>` by a spawned task.
//!
//! Routes (every session route answers the JSON
//! `{"id": <id or null>, "count": N, "data": <string or null>}`):
//!
//! | route                      | session use                                       |
//! |----------------------------|---------------------------------------------------|
//! | `GET /session`             | read-only (never creates a session)               |
//! | `POST /incr[?delay_ms=N]`  | waits N ms, then `count += 1` (`Session::update`; the reply's `count` is the value this request stored) |
//! | `POST /put/<value>`        | `insert("data", value)` (same value = no change)  |
//! | `POST /cycle`              | `cycle_id()`                                      |
//! | `POST /invalidate`         | `invalidate()`                                    |
//! | `GET /plain`               | no session filter at all (body `plain`)           |
//! | `GET /static/<any>`        | read-only, meant for `requestUriIgnorePattern`    |
//! | `POST /static/incr`        | `count += 1`, meant for `requestUriIgnorePattern` |

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use memcached_sessions::{Config, Session, SessionManager, Statistics};
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

/// Attribute holding the counter.
pub const COUNT_KEY: &str = "count";
/// Attribute holding the `PUT` data.
pub const DATA_KEY: &str = "data";

/// A [`SessionManager`] with the test routes, served on a random local port.
///
/// The server task is aborted when the handle is dropped (connections that
/// are already open may linger until the runtime ends; tests address a new
/// base URL after a "restart" anyway).
#[derive(Debug)]
pub struct TestApp {
    /// The manager serving the routes (for statistics and shutdown).
    pub manager: SessionManager,
    addr: SocketAddr,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    /// Starts a manager for `config` and serves the test routes with it.
    ///
    /// # Panics
    ///
    /// If the manager cannot start or no local port can be bound.
    pub async fn start(config: Config) -> TestApp {
        let manager = SessionManager::start(config)
            .await
            .expect("SessionManager::start failed");
        TestApp::serve(manager).await
    }

    /// Serves the test routes with an existing manager.
    ///
    /// # Panics
    ///
    /// If no local port can be bound.
    pub async fn serve(manager: SessionManager) -> TestApp {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let routes = test_routes(&manager);
        let server = tokio::spawn(warp::serve(routes).incoming(listener).run());
        TestApp {
            manager,
            addr,
            server: Some(server),
        }
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The address the app listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A statistics snapshot of the manager.
    pub fn stats(&self) -> Statistics {
        self.manager.statistics()
    }

    /// Stops accepting connections (like a crashed instance, as far as new
    /// connections go). The manager keeps running.
    pub fn stop_serving(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    /// Orderly stop: stops serving, then [`SessionManager::shutdown`]
    /// (pending backups are written).
    pub async fn shutdown(mut self) {
        self.stop_serving();
        self.manager.shutdown().await;
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop_serving();
    }
}

/// The routes described in the module docs, wrapped by `manager`.
fn test_routes(
    manager: &SessionManager,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let session = manager.session();
    let read = warp::path!("session")
        .and(warp::get())
        .and(session.clone())
        .map(|session: Session| session_reply(&session));
    let incr = warp::path!("incr")
        .and(warp::post())
        .and(warp::query::<HashMap<String, String>>())
        .and(session.clone())
        .and_then(|query: HashMap<String, String>, session: Session| async move {
            let delay = query.get("delay_ms").and_then(|d| d.parse::<u64>().ok()).unwrap_or(0);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            Ok::<_, warp::Rejection>(increment(&session))
        });
    let put =
        warp::path!("put" / String)
            .and(warp::post())
            .and(session.clone())
            .map(
                |value: String, session: Session| match session.insert(DATA_KEY, &value) {
                    Ok(()) => session_reply(&session),
                    Err(error) => error_reply(&error),
                },
            );
    let cycle = warp::path!("cycle")
        .and(warp::post())
        .and(session.clone())
        .map(|session: Session| {
            session.cycle_id();
            session_reply(&session)
        });
    let invalidate = warp::path!("invalidate")
        .and(warp::post())
        .and(session.clone())
        .map(|session: Session| {
            session.invalidate();
            session_reply(&session)
        });
    let plain = warp::path!("plain").and(warp::get()).map(|| "plain".into_response());
    let static_incr = warp::path!("static" / "incr")
        .and(warp::post())
        .and(session.clone())
        .map(|session: Session| increment(&session));
    let static_read = warp::path("static")
        .and(warp::path::tail())
        .and(warp::get())
        .and(session)
        .map(|_tail, session: Session| session_reply(&session));
    let routes = read
        .or(incr)
        .unify()
        .or(put)
        .unify()
        .or(cycle)
        .unify()
        .or(invalidate)
        .unify()
        .or(plain)
        .unify()
        .or(static_incr)
        .unify()
        .or(static_read)
        .unify();
    manager.wrap(routes)
}

/// `count += 1`; the reply shows the value this request stored (a
/// concurrent request of the same session may change it right after).
fn increment(session: &Session) -> Response {
    match session.update(COUNT_KEY, |count: Option<u64>| count.unwrap_or(0) + 1) {
        Ok(count) => reply_with(session, Ok(Some(count))),
        Err(error) => error_reply(&error),
    }
}

fn session_reply(session: &Session) -> Response {
    reply_with(session, session.get::<u64>(COUNT_KEY))
}

fn reply_with(session: &Session, count: Result<Option<u64>, memcached_sessions::Error>) -> Response {
    let data = session.get::<String>(DATA_KEY);
    match (count, data) {
        (Ok(count), Ok(data)) => warp::reply::json(&serde_json::json!({
            "id": session.id(),
            "count": count.unwrap_or(0),
            "data": data,
        }))
        .into_response(),
        (Err(error), _) | (_, Err(error)) => error_reply(&error),
    }
}

fn error_reply(error: &memcached_sessions::Error) -> Response {
    warp::reply::with_status(error.to_string(), StatusCode::INTERNAL_SERVER_ERROR).into_response()
}
