//! The demo app's identifiable writes (`POST /counter?token=T`), which the
//! chaos tools rely on: tokens are validated, kept in order, bounded to the
//! last 512, shown by every counter reply, and survive a takeover through
//! memcached.

use integration_tests::{Cluster, DemoApp, SessionClient, init_tracing};

fn tokens(reply: &integration_tests::Reply) -> Vec<String> {
    serde_json::from_value(reply.json()["tokens"].clone()).expect("a tokens array")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_appended_in_order_and_bounded() {
    init_tracing();
    let app = DemoApp::start(&[]);
    let mut client = SessionClient::new(app.base_url());
    assert!(tokens(&client.get("/counter").await.ok()).is_empty());
    let first = client.post("/counter?token=w-0").await.ok();
    assert_eq!(first.count(), 1);
    assert_eq!(tokens(&first), ["w-0"]);
    // A write without a token still counts, and adds no token.
    assert_eq!(client.post("/counter").await.ok().count(), 2);
    for i in 1..600 {
        client.post(&format!("/counter?token=w-{i}")).await.ok();
    }
    let read = client.get("/counter").await.ok();
    assert_eq!(read.count(), 601);
    let kept = tokens(&read);
    let expected: Vec<String> = (88..600).map(|i| format!("w-{i}")).collect();
    assert_eq!(kept, expected, "the last 512, oldest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tokens_are_a_400_and_change_nothing() {
    init_tracing();
    let app = DemoApp::start(&[]);
    let mut client = SessionClient::new(app.base_url());
    client.post("/counter?token=ok_1").await.ok();
    let too_long = "a".repeat(33);
    for bad in ["", "a%20b", "a.b", "a/b", "%C3%A4", too_long.as_str()] {
        let reply = client.post(&format!("/counter?token={bad}")).await;
        assert_eq!(reply.status, 400, "token {bad:?}");
    }
    let read = client.get("/counter").await.ok();
    assert_eq!(read.count(), 1);
    assert_eq!(tokens(&read), ["ok_1"]);
    assert_eq!(
        client
            .post(&format!("/counter?token={}", "Z".repeat(32)))
            .await
            .ok()
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_survive_a_takeover_through_memcached() {
    init_tracing();
    let cluster = Cluster::start(2);
    let spec = cluster.spec();
    let args = |route| {
        vec![
            "--memcached-nodes".to_owned(),
            spec.clone(),
            "--route".to_owned(),
            route,
            "--session-backup-async".to_owned(),
            "false".to_owned(),
        ]
    };
    let a1_args = args("a1".to_owned());
    let a2_args = args("a2".to_owned());
    let a1 = DemoApp::start(&a1_args.iter().map(String::as_str).collect::<Vec<_>>());
    let a2 = DemoApp::start(&a2_args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut client = SessionClient::new(a1.base_url());
    for i in 0..3 {
        client.post(&format!("/counter?token=t{i}")).await.ok();
    }
    client.set_base(a2.base_url());
    let read = client.get("/counter").await.ok();
    assert_eq!(read.json()["instance"], "a2");
    assert_eq!(tokens(&read), ["t0", "t1", "t2"]);
}
