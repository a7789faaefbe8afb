//! Lifecycle listeners (`SessionManager::on_session_event`): created,
//! invalidated, expired and taken over, each with the session's id and its
//! attributes; a panicking listener stops nothing.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, call, session_with_count, wait_until};
use memcached_sessions::{Config, SessionEventKind, SessionManager};

/// Every event seen, as (kind, id, count attribute).
type Seen = Arc<Mutex<Vec<(SessionEventKind, String, Option<u64>)>>>;

fn record(manager: &SessionManager) -> Seen {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    manager.on_session_event(move |event| {
        let count = event.get::<u64>("count").unwrap();
        sink.lock().unwrap().push((event.kind(), event.id(), count));
    });
    seen
}

#[tokio::test]
async fn sticky_sessions_report_creation_logout_expiry_and_takeover() {
    let cluster = Cluster::new(2);
    let a = cluster.manager(Config::builder().route("a"));
    let b = cluster.manager(Config::builder().route("b"));
    let on_a = record(&a);
    let on_b = record(&b);

    let id = session_with_count(&a, 2).await;
    assert_eq!(*on_a.lock().unwrap(), [(SessionEventKind::Created, id.clone(), None)]);

    // Instance b takes it over (its route is a's).
    let taken = call(&b, "POST", "/count", Some(&id)).await;
    assert_eq!(taken.body, "3");
    let new_id = taken.cookie_id().expect("a new route, a new cookie").to_owned();
    assert_eq!(
        *on_b.lock().unwrap(),
        [(SessionEventKind::TakenOver, new_id.clone(), Some(2))],
        "the event shows the session as it was taken over"
    );

    call(&b, "POST", "/logout", Some(&new_id)).await;
    assert_eq!(
        on_b.lock().unwrap().last(),
        Some(&(SessionEventKind::Invalidated, new_id.clone(), Some(3)))
    );

    // Expiry, found by the sweep.
    let short = cluster.manager(
        Config::builder()
            .route("c")
            .max_inactive_interval_secs(1)
            .expiry_sweep_interval(Duration::from_millis(50)),
    );
    let on_short = record(&short);
    let expiring = session_with_count(&short, 1).await;
    wait_until("the session expired", || {
        on_short.lock().unwrap().last() == Some(&(SessionEventKind::Expired, expiring.clone(), Some(1)))
    })
    .await;
    assert_eq!(on_short.lock().unwrap().len(), 2, "created, then expired, once");
}

#[tokio::test]
async fn non_sticky_sessions_report_creation_and_logout() {
    let cluster = Cluster::new(2);
    let manager = cluster.manager(Config::builder().sticky(false));
    let seen = record(&manager);
    let id = session_with_count(&manager, 2).await;
    call(&manager, "POST", "/logout", Some(&id)).await;
    let kinds: Vec<SessionEventKind> = seen.lock().unwrap().iter().map(|(kind, ..)| *kind).collect();
    assert_eq!(kinds, [SessionEventKind::Created, SessionEventKind::Invalidated]);
}

#[tokio::test]
async fn a_panicking_listener_stops_nothing() {
    let cluster = Cluster::new(1);
    let manager = cluster.manager(
        Config::builder()
            .max_inactive_interval_secs(1)
            .expiry_sweep_interval(Duration::from_millis(50)),
    );
    manager.on_session_event(|_| panic!("a listener bug"));
    let seen = record(&manager);
    let id = session_with_count(&manager, 2).await;
    assert_eq!(call(&manager, "GET", "/count", Some(&id)).await.body, "2");
    // The sweep survives the panics and expires the session.
    wait_until("the session expired", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(kind, ..)| *kind == SessionEventKind::Expired)
    })
    .await;
    let another = session_with_count(&manager, 1).await;
    assert_ne!(another, id, "requests go on");
}
