//! The HTTP contenders, each served in-process on `127.0.0.1:0`.
//!
//! Every contender answers the same two routes:
//! `GET /counter` reads the counter from the session (never creates one),
//! `POST /counter` increments it (creating the session on first use).

use std::net::{Ipv4Addr, SocketAddr};

use memcached_sessions::{Config, Session, SessionManager};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use crate::error::BenchError;
use crate::peers;

/// The session attribute holding the counter.
pub(crate) const COUNT_KEY: &str = "count";
/// The route of both requests.
pub(crate) const COUNTER_PATH: &str = "/counter";

/// Which app serves a row.
#[derive(Debug, Clone)]
pub(crate) enum Contender {
    /// warp with no session at all (the ceiling).
    WarpPlain,
    /// This library, configured by the row.
    Ours(Box<Config>),
    /// axum + tower-sessions 0.15 + the Redis store.
    TowerSessionsRedis(SocketAddr),
    /// axum + tower-sessions 0.15 + this project's replicated memcached
    /// store on these `memcachedNodes`.
    TowerSessionsMemcached(String),
    /// warp + warp-sessions + async-session's memory store.
    WarpSessionsMemory,
}

/// A contender being served.
pub(crate) struct RunningApp {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// This library's manager, for the statistics and the shutdown.
    pub(crate) manager: Option<SessionManager>,
    server: JoinHandle<()>,
}

impl RunningApp {
    /// Starts `contender` on a fresh local port.
    pub(crate) async fn start(contender: &Contender) -> Result<Self, BenchError> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| BenchError::Setup(format!("bind 127.0.0.1:0: {e}")))?;
        let addr = listener.local_addr().map_err(|e| BenchError::Setup(e.to_string()))?;
        let mut manager = None;
        let server = match contender {
            Contender::WarpPlain => tokio::spawn(warp::serve(plain_routes()).incoming(listener).run()),
            Contender::Ours(config) => {
                let started = SessionManager::start((**config).clone())
                    .await
                    .map_err(|e| BenchError::Setup(format!("SessionManager::start: {e}")))?;
                let routes = our_routes(&started);
                manager = Some(started);
                tokio::spawn(warp::serve(routes).incoming(listener).run())
            }
            Contender::TowerSessionsRedis(redis) => {
                let app = peers::tower_sessions_app(peers::RedisStore015::connect(*redis).await?);
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                })
            }
            Contender::TowerSessionsMemcached(nodes) => {
                let config = Config::builder()
                    .memcached_nodes(nodes.as_str())
                    .build()
                    .map_err(|e| BenchError::Setup(e.to_string()))?;
                let store = tower_sessions_memcached::MemcachedStore::start(config)
                    .await
                    .map_err(|e| BenchError::Setup(format!("MemcachedStore::start: {e}")))?;
                let app = peers::tower_sessions_app(store);
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                })
            }
            Contender::WarpSessionsMemory => {
                let routes = peers::warp_sessions_app(warp_sessions::MemoryStore::new());
                tokio::spawn(warp::serve(routes).incoming(listener).run())
            }
        };
        Ok(RunningApp { addr, manager, server })
    }

    /// Stops serving; this library's manager writes pending backups.
    pub(crate) async fn stop(self) {
        self.server.abort();
        let _ = self.server.await;
        if let Some(manager) = self.manager {
            manager.shutdown().await;
        }
    }
}

fn plain_routes() -> impl Filter<Extract = (impl Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let read = warp::path!("counter").and(warp::get()).map(|| "0");
    let write = warp::path!("counter").and(warp::post()).map(|| "1");
    read.or(write)
}

/// This library's app: the two routes wrapped by `manager`, plus
/// `POST /blob` (stores a 1 KiB attribute: the memory measurement).
pub(crate) fn our_routes(
    manager: &SessionManager,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let session = manager.session();
    let read = warp::path!("counter")
        .and(warp::get())
        .and(session.clone())
        .map(|session: Session| match session.get::<u64>(COUNT_KEY) {
            Ok(count) => count.unwrap_or(0).to_string().into_response(),
            Err(error) => failure(&error),
        });
    let increment = warp::path!("counter")
        .and(warp::post())
        .and(session.clone())
        .map(
            |session: Session| match session.update(COUNT_KEY, |n: Option<u64>| n.unwrap_or(0) + 1) {
                Ok(count) => count.to_string().into_response(),
                Err(error) => failure(&error),
            },
        );
    let blob = warp::path!("blob")
        .and(warp::post())
        .and(session)
        .map(
            |session: Session| match session.insert("blob", &crate::memory::payload()) {
                Ok(()) => "ok".into_response(),
                Err(error) => failure(&error),
            },
        );
    manager.wrap(read.or(increment).unify().or(blob).unify())
}

fn failure(error: &memcached_sessions::Error) -> warp::reply::Response {
    warp::reply::with_status(error.to_string(), StatusCode::INTERNAL_SERVER_ERROR).into_response()
}
