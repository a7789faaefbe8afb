//! `lockingMode=auto` in non-sticky mode: what counts as modifying a
//! session, on in-process nodes.

mod common;

use std::time::Duration;

use common::*;
use memcached_sessions::{Config, ConfigBuilder, SessionManager};
use warp::http::StatusCode;

fn auto() -> ConfigBuilder {
    Config::builder()
        .sticky(false)
        .locking_mode("auto")
        .operation_timeout(Duration::from_secs(3))
}

fn locks(manager: &SessionManager) -> u64 {
    manager.statistics().counters.locks_acquired
}

#[tokio::test]
async fn invalidate_counts_as_modifying() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(auto());
    let first = session_with_count(&manager, 1).await;
    let second = session_with_count(&manager, 1).await;
    call(&manager, "GET", "/logout", Some(&first)).await;
    assert_eq!(locks(&manager), 1);
    let reply = call(&manager, "GET", "/logout", Some(&second)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(locks(&manager), 2, "a logout route is never learned as read-only");
}

#[tokio::test]
async fn cycle_id_counts_as_modifying() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(auto());
    let id = session_with_count(&manager, 1).await;
    let cycled = call(&manager, "GET", "/login", Some(&id)).await;
    let new_id = cycled.cookie_id().expect("new id").to_owned();
    assert_ne!(new_id, id);
    assert_eq!(locks(&manager), 1);
    call(&manager, "GET", "/login", Some(&new_id)).await;
    assert_eq!(locks(&manager), 2, "a login route is never learned as read-only");
}

#[tokio::test]
async fn a_relocation_is_not_a_change_of_the_request() {
    let cluster = Cluster::new(3);
    let manager = cluster.manager(auto());
    let id = session_with_count(&manager, 1).await;
    call(&manager, "GET", "/count", Some(&id)).await;
    call(&manager, "GET", "/count", Some(&id)).await;
    assert_eq!(locks(&manager), 1, "learned read-only");
    cluster.node(node_of(&id)).set_down(true);
    let relocated = call(&manager, "GET", "/count", Some(&id)).await;
    assert_eq!(relocated.body, "1");
    let new_id = relocated.cookie_id().expect("relocated").to_owned();
    assert_eq!(new_id[..32], id[..32]);
    call(&manager, "GET", "/count", Some(&new_id)).await;
    assert_eq!(locks(&manager), 1, "still read-only after the relocation");
}
