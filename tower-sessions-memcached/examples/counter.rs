//! An axum app with tower-sessions on the replicated memcached store: the
//! demo's `/counter` contract.
//!
//! ```text
//! cargo run -p tower-sessions-memcached --example counter -- \
//!     --listen 127.0.0.1:3000 --memcached-nodes n1:127.0.0.1:11211,n2:127.0.0.1:11212
//! ```
//!
//! | route | does |
//! |---|---|
//! | `GET /counter` | `{"count": N}` — the session's counter (0 without a session; creates none) |
//! | `POST /counter` | increments it (creating the session) and answers `{"count": N}` |
//! | `GET /store` | the nodes as this instance sees them, and the store's counters |
//! | `GET /health` | `ok` |
//!
//! Without `--memcached-nodes` the store is the embedded in-process one
//! (one process only). `--set name=value` passes any other setting by its
//! name (`--set operationTimeout=300`).

use std::net::SocketAddr;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Parser;
use serde_json::{Value, json};
use tower_sessions::{Expiry, Session, SessionManagerLayer};
use tower_sessions_memcached::{Config, MemcachedStore};

/// Flags (each also read from the environment variable named after it).
#[derive(Parser, Debug)]
#[command(about = "The /counter demo on tower-sessions with the replicated memcached store")]
struct Flags {
    /// Address to listen on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// `n1:host:port,n2:host:port`; none: the embedded in-process store.
    #[arg(long, env = "MEMCACHED_NODES")]
    memcached_nodes: Option<String>,
    /// Any other setting, as `name=value` (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    settings: Vec<String>,
}

const COUNT: &str = "count";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let flags = Flags::parse();
    let mut builder = Config::builder();
    if let Some(nodes) = &flags.memcached_nodes {
        builder = builder.memcached_nodes(nodes.as_str());
    }
    for setting in &flags.settings {
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("--set {setting:?}: expected NAME=VALUE"))?;
        builder = builder.set(name, value)?;
    }
    let store = MemcachedStore::start(builder.build()?).await?;
    let sessions = SessionManagerLayer::new(store.clone())
        .with_secure(false)
        .with_expiry(Expiry::OnInactivity(time::Duration::minutes(30)));
    let app = Router::new()
        .route("/counter", get(read_counter).post(increment_counter))
        .route("/store", get(store_status))
        .route("/health", get(|| async { "ok" }))
        .layer(sessions)
        .with_state(store);
    let listener = tokio::net::TcpListener::bind(flags.listen).await?;
    tracing::info!(listen = %flags.listen, "serving /counter");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn read_counter(session: Session) -> Result<Json<Value>, StatusCode> {
    let count: u64 = session.get(COUNT).await.map_err(internal)?.unwrap_or(0);
    Ok(Json(json!({ "count": count })))
}

async fn increment_counter(session: Session) -> Result<Json<Value>, StatusCode> {
    let count: u64 = session.get(COUNT).await.map_err(internal)?.unwrap_or(0) + 1;
    session.insert(COUNT, count).await.map_err(internal)?;
    Ok(Json(json!({ "count": count })))
}

async fn store_status(State(store): State<MemcachedStore>) -> Json<Value> {
    Json(json!({ "nodes": store.nodes(), "statistics": store.statistics() }))
}

fn internal(error: tower_sessions::session::Error) -> StatusCode {
    tracing::error!(%error, "session store failed");
    StatusCode::INTERNAL_SERVER_ERROR
}
