//! The checker checks itself: `load-verify` against a test double of the
//! demo app's counter contract that is correct, or deliberately broken in
//! one way, must pass the correct one and catch each break with the right
//! counter — a checker that cannot fail proves nothing. The hang-up mode is
//! shown to act: the double sees its requests dropped mid-way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use warp::Filter;
use warp::http::{Response, StatusCode};

/// The one bug the double has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// None: a faithful counter with tokens.
    None,
    /// The 5th identified write is answered 200 (count incremented, token
    /// shown in the reply) but its token is never stored.
    DropsOneAcknowledgedToken,
    /// The 5th identified write is stored but answered 503 ("nothing saved").
    SavesWhileAnswering503,
    /// The 5th identified write is answered 500 (and not stored).
    Answers500Once,
}

#[derive(Debug, Default)]
struct Sessions {
    by_id: HashMap<String, (u64, Vec<String>)>,
    writes: u64,
    next_id: u64,
}

/// Counts the requests whose handler was dropped before it finished (the
/// client hung up).
#[derive(Debug, Default)]
struct Abandoned(AtomicU64);

/// Counts one abandoned request when dropped unless disarmed.
struct Guard(Arc<Abandoned>, bool);

impl Drop for Guard {
    fn drop(&mut self) {
        if self.1 {
            self.0.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Serves the double on a free loopback port from a background thread.
fn serve(bug: Bug) -> SocketAddr {
    serve_counting(bug).0
}

/// Like [`serve`], and counts requests abandoned mid-way. `delay_ms` in
/// the query holds a request that long before it is handled.
fn serve_counting(bug: Bug) -> (SocketAddr, Arc<Abandoned>) {
    let state = Arc::new(Mutex::new(Sessions::default()));
    let abandoned = Arc::new(Abandoned::default());
    let counted = Arc::clone(&abandoned);
    let health = warp::path!("health").map(|| "ok");
    let counter = warp::path!("counter")
        .and(warp::method())
        .and(warp::cookie::optional::<String>("SESSIONID"))
        .and(warp::query::<HashMap<String, String>>())
        .and_then(move |method, cookie, query: HashMap<String, String>| {
            let state = Arc::clone(&state);
            let guard = Guard(Arc::clone(&counted), true);
            async move {
                // Move the whole guard in (not just the field it disarms).
                let mut guard = guard;
                let delay = query.get("delay_ms").and_then(|d| d.parse().ok()).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                guard.1 = false;
                Ok::<_, std::convert::Infallible>(handle(bug, &state, &method, cookie, &query))
            }
        });
    let routes = health.or(counter);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            warp::serve(routes).incoming(listener).run().await;
        });
    });
    (addr, abandoned)
}

/// One request of the counter contract, with `bug`.
fn handle(
    bug: Bug,
    state: &Mutex<Sessions>,
    method: &warp::http::Method,
    cookie: Option<String>,
    query: &HashMap<String, String>,
) -> Response<String> {
    {
        {
            let mut sessions = state.lock().unwrap();
            let write = method == warp::http::Method::POST;
            let known = cookie.filter(|id| sessions.by_id.contains_key(id));
            let (id, created) = match known {
                Some(id) => (id, false),
                None if write => {
                    sessions.next_id += 1;
                    let id = format!("{:032}-n1.a1", sessions.next_id);
                    sessions.by_id.insert(id.clone(), (0, Vec::new()));
                    (id, true)
                }
                None => {
                    let body = json!({"count": 0, "session_id": null, "instance": "a1", "tokens": []});
                    return Response::builder().body(body.to_string()).unwrap();
                }
            };
            let mut status = StatusCode::OK;
            let mut shown_extra = None;
            if write {
                sessions.writes += 1;
                let fifth = sessions.writes == 5;
                let token = query.get("token").cloned();
                let entry = sessions.by_id.get_mut(&id).unwrap();
                match (bug, fifth) {
                    (Bug::DropsOneAcknowledgedToken, true) => {
                        entry.0 += 1;
                        shown_extra = token;
                    }
                    (Bug::SavesWhileAnswering503, true) => {
                        entry.0 += 1;
                        entry.1.extend(token);
                        status = StatusCode::SERVICE_UNAVAILABLE;
                    }
                    (Bug::Answers500Once, true) => status = StatusCode::INTERNAL_SERVER_ERROR,
                    _ => {
                        entry.0 += 1;
                        entry.1.extend(token);
                    }
                }
            }
            let (count, stored) = sessions.by_id[&id].clone();
            let mut tokens = stored;
            tokens.extend(shown_extra);
            let body = json!({"count": count, "session_id": id, "instance": "a1", "tokens": tokens});
            let mut response = Response::builder().status(status);
            if created {
                response = response.header("set-cookie", format!("SESSIONID={id}; Path=/"));
            }
            response.body(body.to_string()).unwrap()
        }
    }
}

fn load_verify(addr: SocketAddr, extra: &[&str]) -> (Output, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_load-verify"))
        .args(["--target", &format!("http://{addr}")])
        .args(["--users", "2", "--requests", "60", "--write-ratio", "0.7", "--json"])
        .args(extra)
        .output()
        .expect("load-verify runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = stdout
        .lines()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON summary; stderr: {}", String::from_utf8_lossy(&output.stderr)));
    let summary = serde_json::from_str(json).expect("summary JSON");
    (output, summary)
}

#[test]
fn a_faithful_server_passes() {
    let (output, summary) = load_verify(serve(Bug::None), &[]);
    assert_eq!(output.status.code(), Some(0), "{summary}");
    for counter in [
        "lost_updates",
        "phantom_writes",
        "server_errors",
        "extra_updates",
        "lost_sessions",
    ] {
        assert_eq!(summary[counter], 0, "{counter}: {summary}");
    }
}

#[test]
fn a_dropped_acknowledged_token_is_a_lost_update() {
    let (output, summary) = load_verify(serve(Bug::DropsOneAcknowledgedToken), &[]);
    assert_eq!(output.status.code(), Some(1), "{summary}");
    assert_eq!(summary["lost_updates"], 1, "{summary}");
    assert_eq!(summary["phantom_writes"], 0, "{summary}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1 acknowledged missing"), "{stderr}");
}

#[test]
fn a_write_saved_while_answering_503_is_a_phantom_write() {
    let (output, summary) = load_verify(serve(Bug::SavesWhileAnswering503), &[]);
    assert_eq!(output.status.code(), Some(1), "{summary}");
    assert_eq!(summary["phantom_writes"], 1, "{summary}");
    assert_eq!(summary["lost_updates"], 0, "{summary}");
}

#[test]
fn a_500_fails_the_run_unless_declared() {
    let addr = serve(Bug::Answers500Once);
    let (output, summary) = load_verify(addr, &[]);
    assert_eq!(output.status.code(), Some(1), "{summary}");
    assert_eq!(summary["server_errors"], 1, "{summary}");
    let (output, summary) = load_verify(addr, &["--allow-server-errors"]);
    assert_eq!(output.status.code(), Some(0), "{summary}");
}

#[test]
fn hang_ups_drop_requests_mid_way() {
    let (addr, abandoned) = serve_counting(Bug::None);
    let (output, summary) = load_verify(addr, &["--hangup-ratio", "0.5", "--delay-ms", "50"]);
    assert_eq!(output.status.code(), Some(0), "{summary}");
    let hangups = summary["errors"]["hangup"].as_u64().unwrap_or(0);
    assert!(hangups > 5, "{summary}");
    // Every hang-up the client counted dropped a request the server was
    // still holding (a reply that raced the hang-up is not counted).
    let seen = abandoned.0.load(Ordering::Relaxed);
    assert!(
        seen > 0 && seen <= hangups,
        "server saw {seen} abandoned, client hung up {hangups}: {summary}"
    );
}
