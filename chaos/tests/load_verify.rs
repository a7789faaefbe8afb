//! `load-verify` against real demo-app processes (embedded store, no
//! memcached): a clean run passes, and sessions that vanish are caught.

use std::path::PathBuf;
use std::process::{Command, Output};

use chaos::{AppInstance, demo_app_binary};

fn binary() -> PathBuf {
    // Always built first (a no-op when up to date): never a stale binary.
    demo_app_binary(None, true).expect("demo-app binary")
}

fn start_app(route: &str) -> AppInstance {
    let log = std::env::temp_dir()
        .join(format!("chaos-load-verify-test-{}", std::process::id()))
        .join(format!("{route}.log"));
    AppInstance::start(&binary(), route, &[], &log).expect("demo-app starts")
}

fn load_verify(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_load-verify"))
        .args(args)
        .output()
        .expect("load-verify runs")
}

fn json_summary(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = stdout
        .lines()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON summary in {stdout:?}"));
    serde_json::from_str(json).expect("summary JSON")
}

#[test]
fn clean_run_against_one_instance_passes() {
    let app = start_app("a1");
    let url = app.base_url();
    let output = load_verify(&[
        "--target",
        &url,
        "--duration",
        "1",
        "--users",
        "4",
        "--delay-ms",
        "1",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let first = stdout.lines().next().unwrap_or_default();
    assert!(first.starts_with("sessions=4 requests="), "{stdout}");
    let summary = json_summary(&output);
    assert_eq!(summary["sessions"], 4);
    assert_eq!(summary["lost_sessions"], 0);
    assert_eq!(summary["lost_updates"], 0);
    assert_eq!(summary["extra_updates"], 0);
    assert_eq!(summary["unverified"], 0);
    assert!(summary["ok"].as_u64().unwrap() > 8, "{summary}");
    assert_eq!(summary["ok"], summary["requests"], "{summary}");
}

#[test]
fn sessions_that_vanish_are_reported_and_fail_the_run() {
    // Two instances with separate embedded stores: a round-robin user's
    // session is unknown to the other instance, i.e. lost at once.
    let a1 = start_app("a1");
    let a2 = start_app("a2");
    let targets = format!("{},{}", a1.base_url(), a2.base_url());
    let output = load_verify(&[
        "--target",
        &targets,
        "--mode",
        "round-robin",
        "--requests",
        "40",
        "--users",
        "2",
        "--write-ratio",
        "1",
        "--json",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let summary = json_summary(&output);
    assert!(summary["lost_sessions"].as_u64().unwrap() > 0, "{summary}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("lost session"), "{stderr}");
}

#[test]
fn no_reachable_target_is_a_startup_error() {
    let port = integration_tests::free_port();
    let output = load_verify(&["--target", &format!("http://127.0.0.1:{port}"), "--requests", "5"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
}
