//! demo-app's lock flags: bad values are refused at start with a message
//! naming the setting; good ones start the app.

use std::process::Command;

use integration_tests::{DemoApp, demo_app_binary};

fn refused(args: &[&str]) -> String {
    let output = Command::new(demo_app_binary())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("demo-app runs");
    assert_eq!(output.status.code(), Some(2), "{args:?} must be refused");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_lock_flags_are_refused_naming_the_setting() {
    let message = refused(&["--sticky", "false", "--lock-failure", "sometimes"]);
    assert!(message.contains("lockFailure"), "{message}");
    let message = refused(&["--sticky", "false", "--lock-expiration-ms", "10"]);
    assert!(message.contains("lockExpiration"), "{message}");
}

#[test]
fn good_lock_flags_start_the_app() {
    let mut app = DemoApp::start(&[
        "--sticky",
        "false",
        "--locking-mode",
        "all",
        "--lock-expiration-ms",
        "2000",
        "--lock-failure",
        "proceed",
    ]);
    assert!(app.is_running());
}
