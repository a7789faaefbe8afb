//! The demo page in a real browser (issue 13): headless Chromium (Debian's
//! `chromium` package; `CHROMIUM_BIN` overrides the path) loads `/`, clicks
//! Increment and reads the counter from the DOM. Then the memcached node
//! holding the session is killed: the page, refreshing by itself, shows
//! that node down; the next click relocates the session to the other node,
//! the counter goes on, and the page's history says what happened.
//!
//! Runs in both modes and against both builds of the demo (`FRAMEWORK`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use headless_chrome::{Browser, LaunchOptions, Tab};
use integration_tests::{Cluster, DemoApp, init_tracing};

/// Long enough for the prober (1 s) to see a killed node and the page to
/// refresh (1 s) on a loaded machine.
const WAIT: Duration = Duration::from_secs(15);

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM_BIN").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: install Debian's chromium package (apt-get install chromium) or set CHROMIUM_BIN",
        path.display()
    );
    path
}

fn browser() -> Browser {
    let options = LaunchOptions::default_builder()
        .path(Some(chromium()))
        .headless(true)
        // Root in CI containers: Chromium's sandbox needs user namespaces.
        .sandbox(false)
        .idle_browser_timeout(Duration::from_secs(120))
        .build()
        .expect("chromium launch options");
    Browser::new(options).expect("chromium starts")
}

/// The text of the element `selector` ("" when there is none), read in
/// the page in one step: the page re-renders its node table every second,
/// so an element handle could go stale between finding and reading it.
fn text_of(tab: &Tab, selector: &str) -> String {
    let selector = serde_json::to_string(selector).expect("a string serializes");
    let expression = format!("(document.querySelector({selector}) || {{}}).textContent || ''");
    tab.evaluate(&expression, false)
        .ok()
        .and_then(|result| result.value)
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Waits until the text of `selector` satisfies `condition`; returns it.
#[track_caller]
fn wait_for_text(tab: &Tab, selector: &str, what: &str, condition: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = text_of(tab, selector);
        if condition(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {selector} shows {text:?} after {WAIT:?}; the page's error line: {:?}",
            text_of(tab, "#error")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn click(tab: &Tab, selector: &str) {
    tab.find_element(selector)
        .unwrap_or_else(|error| panic!("{selector}: {error}"))
        .click()
        .unwrap_or_else(|error| panic!("clicking {selector}: {error}"));
}

fn node_state(tab: &Tab, node: &str) -> String {
    text_of(tab, &format!("#nodes tr[data-node='{node}'] td.state"))
}

fn failover_in_the_browser(sticky: bool) {
    init_tracing();
    let mut cluster = Cluster::start(2);
    let spec = cluster.spec();
    let app = DemoApp::start(&[
        "--memcached-nodes",
        &spec,
        "--route",
        "a1",
        "--sticky",
        if sticky { "true" } else { "false" },
        "--operation-timeout-ms",
        "500",
    ]);
    let browser = browser();
    let tab = browser.new_tab().expect("a tab");
    tab.navigate_to(&app.url("/"))
        .and_then(|tab| tab.wait_until_navigated())
        .expect("the page loads");

    // The cluster table fills in from /cluster.
    for node in ["n1", "n2"] {
        let deadline = Instant::now() + WAIT;
        while node_state(&tab, node) != "up" {
            assert!(Instant::now() < deadline, "{node} shown up");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(text_of(&tab, "#instance"), "a1");
    assert_eq!(text_of(&tab, "#mode"), if sticky { "sticky" } else { "non-sticky" });
    assert_eq!(
        text_of(&tab, "#session"),
        "(none)",
        "no session before the first change"
    );

    click(&tab, "#increment");
    wait_for_text(&tab, "#count", "first click", |t| t == "1");
    click(&tab, "#increment");
    wait_for_text(&tab, "#count", "second click", |t| t == "2");
    let id = text_of(&tab, "#session");
    let node = text_of(&tab, "#node");
    assert!(
        id.ends_with(&format!("-{node}.a1")),
        "{id} names node {node} and instance a1"
    );
    assert_eq!(text_of(&tab, "#holder"), "a1");
    let other = if node == "n1" { "n2" } else { "n1" };
    if !sticky {
        assert_eq!(
            text_of(&tab, "#backup"),
            other,
            "non-sticky: the second copy is on the other node"
        );
    }

    // Kill the session's node: the page shows it down without a click.
    let index: usize = node[1..].parse().unwrap();
    cluster.nodes[index - 1].kill();
    wait_for_text(
        &tab,
        &format!("#nodes tr[data-node='{node}'] td.state"),
        "killed node shown down",
        |t| t == "down",
    );
    wait_for_text(
        &tab,
        &format!("#nodes tr[data-node='{other}'] td.state"),
        "other node still up",
        |t| t == "up",
    );

    // The next click relocates the session; nothing is lost.
    click(&tab, "#increment");
    wait_for_text(&tab, "#count", "click after the kill", |t| t == "3");
    wait_for_text(&tab, "#node", "session relocated", |t| t == other);
    let history = wait_for_text(&tab, "#history", "history mentions the relocation", |t| {
        t.contains(&format!("relocated from node {node} to node {other}"))
    });
    assert!(
        history.contains("session "),
        "history starts with the session: {history}"
    );
    let relocated = text_of(&tab, "#session");
    assert!(relocated.ends_with(&format!("-{other}.a1")), "{relocated}");
    assert_eq!(text_of(&tab, "#error"), "", "no request failed");
}

#[test]
fn sticky_page_shows_the_cluster_and_a_relocation() {
    failover_in_the_browser(true);
}

#[test]
fn non_sticky_page_shows_the_cluster_and_a_relocation() {
    failover_in_the_browser(false);
}
