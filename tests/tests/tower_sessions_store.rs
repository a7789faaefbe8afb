//! `tower-sessions-memcached` against real memcached: the store's contract
//! (every JSON value kind round-trips, create never overwrites, expiry,
//! deletion marks, garbage) in process, and its example app — two
//! instances behind round-robin — through a node killed, frozen and
//! restarted empty under load, with identifiable writes: every user's
//! counter must go up by exactly one per answered request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::{Cluster, DemoApp, counter_example_binary, http_client_without_cookies};
use serde_json::{Value, json};
use time::OffsetDateTime;
use tower_sessions::SessionStore;
use tower_sessions::session::{Id, Record};
use tower_sessions_memcached::{Config, MemcachedStore};

/// The example app's session cookie.
const COOKIE: &str = "id";

async fn store(
    cluster: &Cluster,
    configure: impl FnOnce(tower_sessions_memcached::ConfigBuilder) -> tower_sessions_memcached::ConfigBuilder,
) -> MemcachedStore {
    let builder = Config::builder()
        .memcached_nodes(cluster.spec())
        .operation_timeout(Duration::from_millis(300))
        .node_probe_interval(Duration::from_millis(100));
    MemcachedStore::start(configure(builder).build().unwrap())
        .await
        .unwrap()
}

fn record(data: Value, lifetime: time::Duration) -> Record {
    let now = OffsetDateTime::now_utc();
    // Stored to the millisecond.
    let expiry_date = now.replace_millisecond(now.millisecond()).unwrap() + lifetime;
    let Value::Object(map) = data else {
        panic!("data must be an object")
    };
    Record {
        id: Id::default(),
        data: map.into_iter().collect(),
        expiry_date,
    }
}

/// Every kind of JSON value, at its edges.
fn every_json_value_kind() -> Value {
    json!({
        "null": null,
        "true": true,
        "false": false,
        "zero": 0,
        "negative": -1,
        "i64_min": i64::MIN,
        "u64_max": u64::MAX,
        "float": 1.5,
        "tiny": -2.25e-300,
        "huge": 1e300,
        "precise": 0.1 + 0.2,
        "empty": "",
        "unicode": "ünïcødé ✓ 𝄞 \u{0} \u{7f}",
        "escapes": "\"quoted\" \\ / \n\t\r",
        "array": [1, "a", [null, {}], [], true],
        "object": {"nested": {"deeper": [{"x": -0.5}]}, "": "empty key"},
        "empty_array": [],
        "empty_object": {},
        "clé ✓": "unicode key",
    })
}

#[tokio::test]
async fn every_json_value_kind_round_trips_sealed_or_not() {
    let cluster = Cluster::start(3);
    let plain = store(&cluster, |b| b).await;
    let sealed = store(&cluster, |b| {
        b.session_encryption_keys("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            .storage_key_prefix("sealed:")
    })
    .await;
    for store in [plain, sealed] {
        let mut written = record(every_json_value_kind(), time::Duration::hours(1));
        store.create(&mut written).await.unwrap();
        let read = store.load(&written.id).await.unwrap().expect("the record was stored");
        assert_eq!(read, written);
        assert_eq!(Value::Object(read.data.into_iter().collect()), every_json_value_kind());
        let key = store.replicated().storage_key(&written.id.to_string()).unwrap();
        assert_eq!(cluster.locate(&key).len(), 2, "two copies of {key}");
    }
}

#[tokio::test]
async fn create_never_overwrites_an_existing_id() {
    let cluster = Cluster::start(3);
    let store = store(&cluster, |b| b).await;
    let mut first = record(json!({"owner": "first"}), time::Duration::hours(1));
    store.create(&mut first).await.unwrap();
    let mut second = record(json!({"owner": "second"}), time::Duration::hours(1));
    second.id = first.id;
    store.create(&mut second).await.unwrap();
    assert_ne!(second.id, first.id, "the colliding create got a new id");
    assert_eq!(store.load(&first.id).await.unwrap().unwrap().data["owner"], "first");
    assert_eq!(store.load(&second.id).await.unwrap().unwrap().data["owner"], "second");
    assert_eq!(store.statistics().ids_taken, 1);
}

#[tokio::test]
async fn expiry_follows_the_record_and_dates_past_thirty_days_are_absolute() {
    let cluster = Cluster::start(2);
    let store = store(&cluster, |b| b).await;
    let mut short = record(json!({"k": 1}), time::Duration::seconds(2));
    store.create(&mut short).await.unwrap();
    let mut long = record(json!({"k": 2}), time::Duration::days(45));
    store.create(&mut long).await.unwrap();
    assert!(store.load(&short.id).await.unwrap().is_some());
    let key = store.replicated().storage_key(&long.id.to_string()).unwrap();
    let holder = cluster.locate(&key).first().cloned().expect("stored");
    let seconds = cluster.node(&holder).remaining_ttl(&key).expect("stored");
    assert!(
        (44 * 86_400..=45 * 86_400).contains(&seconds),
        "memcached keeps it 45 days: {seconds} s"
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(store.load(&short.id).await.unwrap(), None, "expired");
    assert!(store.load(&long.id).await.unwrap().is_some());
}

#[tokio::test]
async fn a_deleted_session_stays_deleted_when_a_frozen_replica_returns() {
    let cluster = Cluster::start(3);
    let store = store(&cluster, |b| b).await;
    let mut session = record(json!({"user": "ann"}), time::Duration::hours(1));
    store.create(&mut session).await.unwrap();
    let id = session.id.to_string();
    let key = store.replicated().storage_key(&id).unwrap();
    let frozen = store.replicated().replicas_of(&id)[0].clone();
    cluster.node(&frozen).freeze();
    store.delete(&session.id).await.unwrap();
    assert_eq!(store.load(&session.id).await.unwrap(), None);
    // The deletion marks live as long as the session would have (1 h).
    for node in cluster.ids().iter().filter(|n| **n != frozen) {
        let seconds = cluster.node(node).remaining_ttl(&key).expect("a mark");
        assert!((3500..=3600).contains(&seconds), "mark on {node}: {seconds} s");
    }
    cluster.node(&frozen).thaw();
    assert!(
        cluster.node(&frozen).get_raw(&key).is_some(),
        "the frozen node kept its old copy"
    );
    wait_until_all_available(&store, 3).await;
    assert_eq!(
        store.load(&session.id).await.unwrap(),
        None,
        "the deletion mark wins over the old copy"
    );
}

#[tokio::test]
async fn garbage_in_memcached_is_no_session_never_an_error() {
    let cluster = Cluster::start(2);
    let store = store(&cluster, |b| b).await;
    let mut session = record(json!({"k": 1}), time::Duration::hours(1));
    store.create(&mut session).await.unwrap();
    let key = store.replicated().storage_key(&session.id.to_string()).unwrap();
    // Garbage on one replica: the other copy is served and written over it.
    let good = cluster.node("n2").get_raw(&key).unwrap();
    cluster.node("n1").set_raw(&key, b"junk", 60);
    assert_eq!(store.load(&session.id).await.unwrap(), Some(session.clone()));
    assert_eq!(cluster.node("n1").get_raw(&key), Some(good), "the garbage was replaced");
    for garbage in [&b"junk"[..], b"\xa5\x53\x04\xff\xff\xff", b""] {
        for node in &cluster.nodes {
            node.set_raw(&key, garbage, 60);
        }
        assert_eq!(store.load(&session.id).await.unwrap(), None);
    }
    assert!(store.statistics().decode_failures >= 4);
}

async fn wait_until_all_available(store: &MemcachedStore, count: usize) {
    for _ in 0..100 {
        if store.nodes().iter().filter(|n| n.available).count() == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the nodes never all came back: {:?}", store.nodes());
}

// ---------------------------------------------------------------------------
// The example app, two instances behind round-robin
// ---------------------------------------------------------------------------

/// Two instances of the example app on `cluster`.
fn two_instances(cluster: &Cluster) -> Vec<DemoApp> {
    let binary = counter_example_binary();
    let spec = cluster.spec();
    let args = [
        "--memcached-nodes",
        spec.as_str(),
        "--set",
        "operationTimeout=300",
        "--set",
        "nodeProbeInterval=100",
    ];
    (0..2).map(|_| DemoApp::start_binary(&binary, &args, &[])).collect()
}

/// What the users saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    /// Non-200 answers and transport errors.
    failed: AtomicU64,
    /// Answers whose count was not the user's previous count + 1.
    lost: AtomicU64,
    /// Answered requests after the fault landed.
    after_fault: AtomicU64,
    /// The first problems seen, for the failure message.
    problems: Mutex<Vec<String>>,
}

impl Tally {
    fn problem(&self, problem: String) {
        let mut problems = self.problems.lock().unwrap();
        if problems.len() < 20 {
            problems.push(problem);
        }
    }
}

/// One user: a cookie and the count the app last answered.
struct User {
    cookie: Option<String>,
    count: u64,
}

/// `POST /counter` as `user` on the next instance (round-robin over all
/// requests), checking the answer is exactly one more than before.
async fn increment(
    client: &reqwest::Client,
    bases: &[String],
    next: &AtomicUsize,
    user: &mut User,
    tally: &Tally,
    faulted: bool,
) {
    let base = &bases[next.fetch_add(1, Ordering::Relaxed) % bases.len()];
    let mut request = client.post(format!("{base}/counter"));
    if let Some(cookie) = &user.cookie {
        request = request.header("cookie", format!("{COOKIE}={cookie}"));
    }
    tally.requests.fetch_add(1, Ordering::Relaxed);
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            tally.problem(format!("{base}: {error}"));
            return;
        }
    };
    let status = response.status();
    if let Some(set) = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix(&format!("{COOKIE}=")))
    {
        user.cookie = Some(set.split(';').next().unwrap_or_default().to_owned());
    }
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status != 200 {
        tally.failed.fetch_add(1, Ordering::Relaxed);
        tally.problem(format!("{base}: {status} {body}"));
        return;
    }
    let count = body["count"].as_u64().unwrap_or(0);
    if count != user.count + 1 {
        tally.lost.fetch_add(1, Ordering::Relaxed);
        tally.problem(format!(
            "{base}: count {count} after {} (cookie {:?})",
            user.count, user.cookie
        ));
    }
    user.count = count;
    if faulted {
        tally.after_fault.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs `users` users incrementing their counters round-robin over
/// `apps` until `stop`; `fault` flags when the fault has landed.
struct Load {
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    fault: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<User>>,
}

impl Load {
    fn start(apps: &[DemoApp], users: usize) -> Load {
        let bases: Arc<Vec<String>> = Arc::new(apps.iter().map(DemoApp::base_url).collect());
        let next = Arc::new(AtomicUsize::new(0));
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let fault = Arc::new(AtomicBool::new(false));
        let client = http_client_without_cookies();
        let tasks = (0..users)
            .map(|_| {
                let (bases, next, tally, stop, fault, client) = (
                    Arc::clone(&bases),
                    Arc::clone(&next),
                    Arc::clone(&tally),
                    Arc::clone(&stop),
                    Arc::clone(&fault),
                    client.clone(),
                );
                tokio::spawn(async move {
                    let mut user = User { cookie: None, count: 0 };
                    while !stop.load(Ordering::Relaxed) {
                        let faulted = fault.load(Ordering::Relaxed);
                        increment(&client, &bases, &next, &mut user, &tally, faulted).await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    user
                })
            })
            .collect();
        Load {
            tally,
            stop,
            fault,
            tasks,
        }
    }

    async fn finish(self) -> (Vec<User>, Arc<Tally>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut users = Vec::new();
        for task in self.tasks {
            users.push(task.await.unwrap());
        }
        (users, self.tally)
    }
}

/// `GET /store` of an app: `{"nodes": [...], "statistics": {...}}`.
async fn store_status(client: &reqwest::Client, app: &DemoApp) -> Value {
    client
        .get(app.url("/store"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_all_available(client: &reqwest::Client, apps: &[DemoApp], count: usize) {
    for _ in 0..100 {
        let mut all = true;
        for app in apps {
            let status = store_status(client, app).await;
            let available = status["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["available"] == true)
                .count();
            all &= available == count;
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the instances never saw all {count} nodes available");
}

async fn statistic(client: &reqwest::Client, apps: &[DemoApp], name: &str) -> u64 {
    let mut total = 0;
    for app in apps {
        total += store_status(client, app).await["statistics"][name].as_u64().unwrap();
    }
    total
}

/// Each user's final count, read back on every instance, is the count of
/// its answered increments; nothing failed, nothing was lost.
async fn assert_nothing_lost(client: &reqwest::Client, apps: &[DemoApp], users: &[User], tally: &Tally) {
    let problems = tally.problems.lock().unwrap().clone();
    assert_eq!(
        tally.failed.load(Ordering::Relaxed),
        0,
        "failed requests: {problems:#?}"
    );
    assert_eq!(
        tally.lost.load(Ordering::Relaxed),
        0,
        "lost or repeated updates: {problems:#?}"
    );
    for user in users {
        let cookie = user.cookie.as_ref().expect("every user got a session");
        for app in apps {
            let body: Value = client
                .get(app.url("/counter"))
                .header("cookie", format!("{COOKIE}={cookie}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(
                body["count"].as_u64(),
                Some(user.count),
                "{cookie} on {}",
                app.base_url()
            );
        }
    }
}

/// The memcached key of a user's session (the default storage key prefix).
fn key_of(user: &User) -> String {
    format!("doc:{}", user.cookie.as_ref().unwrap())
}

/// How many of `users`' sessions have a copy on `node`.
fn sessions_on(cluster: &Cluster, node: &str, users: &[User]) -> usize {
    let keys: HashMap<String, ()> = cluster.node(node).keys().into_iter().map(|k| (k, ())).collect();
    users
        .iter()
        .filter(|u| u.cookie.is_some() && keys.contains_key(&key_of(u)))
        .count()
}

const USERS: usize = 16;

/// Three nodes, two example-app instances and `USERS` users under way.
struct Scenario {
    cluster: Cluster,
    apps: Vec<DemoApp>,
    client: reqwest::Client,
    load: Option<Load>,
}

impl Scenario {
    /// Starts everything and lets the load run a while, so every node
    /// holds sessions.
    async fn start() -> Scenario {
        let cluster = Cluster::start(3);
        let apps = two_instances(&cluster);
        let load = Load::start(&apps, USERS);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Scenario {
            cluster,
            apps,
            client: http_client_without_cookies(),
            load: Some(load),
        }
    }

    /// How many sessions `node` holds, asserting it is enough for a fault
    /// there to land.
    fn sessions_held(&self, node: &str) -> usize {
        let held = self
            .cluster
            .node(node)
            .keys()
            .into_iter()
            .filter(|k| k.starts_with("doc:"))
            .count();
        assert!(
            held >= USERS / 3,
            "the fault must land: {node} holds only {held} sessions"
        );
        held
    }

    /// Counts the requests from now on as after the fault, lets the load
    /// run on for 2.5 s, stops it and checks that it went on after the
    /// fault and lost nothing.
    async fn run_on_after_fault(&mut self) -> Vec<User> {
        let load = self.load.take().expect("load under way");
        load.fault.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let (users, tally) = load.finish().await;
        assert!(
            tally.after_fault.load(Ordering::Relaxed) >= (USERS * 10) as u64,
            "the load went on after the fault"
        );
        assert_nothing_lost(&self.client, &self.apps, &users, &tally).await;
        users
    }

    async fn statistic(&self, name: &str) -> u64 {
        statistic(&self.client, &self.apps, name).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_app_survives_a_node_kill_under_load() {
    let mut scenario = Scenario::start().await;
    let held = scenario.sessions_held("n2");
    scenario.cluster.node_mut("n2").kill();
    let users = scenario.run_on_after_fault().await;
    // Every session is back to two copies, on the live nodes.
    for user in &users {
        assert_eq!(scenario.cluster.locate(&key_of(user)), ["n1", "n3"], "{}", key_of(user));
    }
    // Most displaced copies are re-created by a load (a request in flight
    // at the kill writes its copy past n2 with its save instead).
    let recreated = scenario.statistic("copies_recreated").await;
    assert!(recreated > 0 && recreated <= held as u64, "{recreated} of {held}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_app_refills_a_node_restarted_empty() {
    let mut scenario = Scenario::start().await;
    scenario.sessions_held("n1");
    scenario.cluster.node_mut("n1").restart_empty();
    let users = scenario.run_on_after_fault().await;
    assert!(scenario.statistic("copies_recreated").await > 0);
    // Once more with reads only: the loads alone refill it.
    let held = sessions_on(&scenario.cluster, "n1", &users);
    assert!(held >= USERS / 3, "n1 holds only {held} of the sessions");
    scenario.cluster.node_mut("n1").restart_empty();
    wait_all_available(&scenario.client, &scenario.apps, 3).await;
    let recreated = scenario.statistic("copies_recreated").await;
    assert_nothing_lost(&scenario.client, &scenario.apps, &users, &Tally::default()).await;
    assert_eq!(
        sessions_on(&scenario.cluster, "n1", &users),
        held,
        "n1 holds its sessions again, refilled by their loads"
    );
    assert_eq!(scenario.statistic("copies_recreated").await, recreated + held as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_app_keeps_the_newest_copy_when_a_frozen_node_returns() {
    let mut scenario = Scenario::start().await;
    let held = scenario.sessions_held("n3");
    scenario.cluster.node("n3").freeze();
    let users = scenario.run_on_after_fault().await;
    // n3 comes back holding the copies it had when it froze.
    scenario.cluster.node("n3").thaw();
    wait_all_available(&scenario.client, &scenario.apps, 3).await;
    let copies = |user: &User| -> Vec<Option<Vec<u8>>> {
        ["n1", "n2", "n3"]
            .iter()
            .map(|n| scenario.cluster.node(n).get_raw(&key_of(user)))
            .collect()
    };
    let on_n3: Vec<&User> = users.iter().filter(|u| copies(u)[2].is_some()).collect();
    assert!(
        on_n3.len() >= held.min(USERS / 3),
        "n3 kept its copies: {}",
        on_n3.len()
    );
    for user in &on_n3 {
        let [a, b, c] = <[Option<Vec<u8>>; 3]>::try_from(copies(user)).unwrap();
        assert!(
            c != a && c != b,
            "{}: n3's copy is stale (every session changed meanwhile)",
            key_of(user)
        );
    }
    // Reads alone (both instances, every user) must return the newest
    // count and replace every stale copy.
    let replaced_before = scenario.statistic("stale_copies_replaced").await;
    assert_nothing_lost(&scenario.client, &scenario.apps, &users, &Tally::default()).await;
    for user in &on_n3 {
        let all = copies(user);
        let held_by: Vec<&Vec<u8>> = all.iter().flatten().collect();
        assert!(
            held_by.len() >= 2 && held_by.iter().all(|c| *c == held_by[0]),
            "{}: copies agree",
            key_of(user)
        );
    }
    assert_eq!(
        scenario.statistic("stale_copies_replaced").await,
        replaced_before + on_n3.len() as u64,
        "each stale copy was read and replaced once"
    );
}
