//! The peers, on the same two routes as this library's app:
//!
//! * axum 0.8 + tower-sessions 0.15 with the official Redis store
//!   (`tower-sessions-redis-store` 0.16.0, fred 10). That store is written
//!   against tower-sessions-core 0.14 — no release supports 0.15 — whose
//!   `SessionStore` trait is the same as 0.15's; [`RedisStore015`] passes
//!   each call through, converting the record (same fields) between the
//!   two crate versions.
//! * warp 0.4 + warp-sessions 1.0.22 with async-session's `MemoryStore`
//!   (the handler returns the session, which warp-sessions then stores).
//!
//! No tower-sessions memcached store is benchmarked: the only one found
//! (`tower-sessions-memcache-store` 0.1.0, a GitHub repository, not
//! published on crates.io) targets tower-sessions-core 0.13 and
//! `memcache-async` 0.8.

use std::fmt;
use std::net::SocketAddr;

use async_trait::async_trait;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tower_sessions::session::{Id, Record};
use tower_sessions::{SessionManagerLayer, session_store};
use tower_sessions_core_014 as core014;
use tower_sessions_redis_store::RedisStore;
use tower_sessions_redis_store::fred::prelude::{ClientLike, Config as RedisConfig, Pool as RedisPool};
use warp::{Filter, Rejection, Reply};
use warp_sessions::{MemoryStore, SessionWithStore};

use crate::apps::COUNT_KEY;
use crate::error::BenchError;

/// Connections in the fred pool (round-robin; fred pipelines on each).
const REDIS_POOL_SIZE: usize = 8;

/// The official Redis store, seen through tower-sessions-core 0.15's trait.
#[derive(Clone)]
pub(crate) struct RedisStore015 {
    inner: RedisStore<RedisPool>,
}

impl fmt::Debug for RedisStore015 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RedisStore015")
    }
}

impl RedisStore015 {
    /// Connects a fred pool to the redis server at `addr`.
    pub(crate) async fn connect(addr: SocketAddr) -> Result<Self, BenchError> {
        let config = RedisConfig::from_url(&format!("redis://{addr}"))
            .map_err(|e| BenchError::Setup(format!("redis config: {e}")))?;
        let pool = RedisPool::new(config, None, None, None, REDIS_POOL_SIZE)
            .map_err(|e| BenchError::Setup(format!("redis pool: {e}")))?;
        // The returned handle only reports when the connections end.
        drop(
            pool.init()
                .await
                .map_err(|e| BenchError::Setup(format!("redis connect: {e}")))?,
        );
        Ok(Self {
            inner: RedisStore::new(pool),
        })
    }
}

fn to_014(record: &Record) -> core014::session::Record {
    core014::session::Record {
        id: core014::session::Id(record.id.0),
        data: record.data.clone(),
        expiry_date: record.expiry_date,
    }
}

fn from_014(record: core014::session::Record) -> Record {
    Record {
        id: Id(record.id.0),
        data: record.data,
        expiry_date: record.expiry_date,
    }
}

fn error_from_014(error: core014::session_store::Error) -> session_store::Error {
    match error {
        core014::session_store::Error::Encode(e) => session_store::Error::Encode(e),
        core014::session_store::Error::Decode(e) => session_store::Error::Decode(e),
        core014::session_store::Error::Backend(e) => session_store::Error::Backend(e),
    }
}

#[async_trait]
impl session_store::SessionStore for RedisStore015 {
    async fn create(&self, record: &mut Record) -> session_store::Result<()> {
        let mut old = to_014(record);
        core014::SessionStore::create(&self.inner, &mut old)
            .await
            .map_err(error_from_014)?;
        record.id = Id(old.id.0);
        Ok(())
    }

    async fn save(&self, record: &Record) -> session_store::Result<()> {
        core014::SessionStore::save(&self.inner, &to_014(record))
            .await
            .map_err(error_from_014)
    }

    async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
        core014::SessionStore::load(&self.inner, &core014::session::Id(id.0))
            .await
            .map(|record| record.map(from_014))
            .map_err(error_from_014)
    }

    async fn delete(&self, id: &Id) -> session_store::Result<()> {
        core014::SessionStore::delete(&self.inner, &core014::session::Id(id.0))
            .await
            .map_err(error_from_014)
    }
}

/// axum + tower-sessions on `store`: `GET /counter` reads the counter,
/// `POST /counter` increments it.
pub(crate) fn tower_sessions_app<S: session_store::SessionStore + Clone>(store: S) -> Router {
    async fn read(session: tower_sessions::Session) -> Result<String, StatusCode> {
        let count: u64 = session
            .get(COUNT_KEY)
            .await
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
            .unwrap_or(0);
        Ok(count.to_string())
    }
    async fn increment(session: tower_sessions::Session) -> Result<String, StatusCode> {
        let count: u64 = session
            .get(COUNT_KEY)
            .await
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?
            .unwrap_or(0)
            + 1;
        session
            .insert(COUNT_KEY, count)
            .await
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        Ok(count.to_string())
    }
    Router::new()
        .route("/counter", get(read).post(increment))
        .layer(SessionManagerLayer::new(store).with_secure(false))
}

/// warp + warp-sessions on a `MemoryStore`, same routes.
pub(crate) fn warp_sessions_app(
    store: MemoryStore,
) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone + Send + Sync + 'static {
    let session = warp_sessions::request::with_session(store, None);
    let read = warp::path!("counter")
        .and(warp::get())
        .and(session.clone())
        .and_then(|with_store: SessionWithStore<MemoryStore>| async move {
            let count: u64 = with_store.session.get(COUNT_KEY).unwrap_or(0);
            Ok::<_, Rejection>((count.to_string(), with_store))
        })
        .untuple_one()
        .and_then(warp_sessions::reply::with_session);
    let increment = warp::path!("counter")
        .and(warp::post())
        .and(session)
        .and_then(|mut with_store: SessionWithStore<MemoryStore>| async move {
            let count = with_store.session.get::<u64>(COUNT_KEY).unwrap_or(0) + 1;
            with_store
                .session
                .insert(COUNT_KEY, count)
                .map_err(|_| warp::reject::reject())?;
            Ok::<_, Rejection>((count.to_string(), with_store))
        })
        .untuple_one()
        .and_then(warp_sessions::reply::with_session);
    read.or(increment)
}
