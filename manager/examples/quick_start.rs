//! The README's quick start: a counter and a login on memcached-backed
//! sessions. Run two memcached processes, then
//! `cargo run -p memcached-sessions --example quick_start`.

use memcached_sessions::{Config, Session, SessionManager};
use warp::Filter;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::builder()
        .memcached_nodes("n1:127.0.0.1:11211,n2:127.0.0.1:11212")
        .failover_nodes("n2")
        .route("app1") // this instance's name, for sticky load balancing
        .build()?;
    let sessions = SessionManager::start(config).await?;

    // 1. Extract the session where you need it.
    let counter = warp::path("counter")
        .and(warp::post())
        .and(sessions.session())
        .map(|session: Session| {
            let n: u64 = session.update("count", |n: Option<u64>| n.unwrap_or(0) + 1).unwrap();
            n.to_string()
        });
    let login = warp::path("login")
        .and(warp::post())
        .and(sessions.session())
        .map(|session: Session| {
            session.insert("user", "alice").unwrap();
            session.cycle_id(); // new id on login: no session fixation
            "welcome"
        });

    // 2. Wrap all routes once: this finishes each request (backup + Set-Cookie).
    let app = sessions.wrap(counter.or(login));
    warp::serve(app).run(([127, 0, 0, 1], 8080)).await;
    sessions.shutdown().await; // writes pending backups, keeps sessions in memcached
    Ok(())
}
