//! `failoverNodes` is a sticky-mode setting: non-sticky mode refuses it at
//! configuration, naming the setting (as MSM does).

use memcached_sessions::Config;

const NODES: &str = "n1:127.0.0.1:1,n2:127.0.0.1:2,n3:127.0.0.1:3";

#[test]
fn failover_nodes_are_refused_in_non_sticky_mode() {
    let error = Config::builder()
        .sticky(false)
        .memcached_nodes(NODES)
        .failover_nodes("n3")
        .build()
        .unwrap_err();
    assert_eq!(error.setting(), "failoverNodes");
    let message = error.to_string();
    assert!(
        message.starts_with(r#"failoverNodes: "n3" is not supported with sticky=false"#),
        "{message}"
    );
}

#[test]
fn the_text_settings_are_refused_in_any_order() {
    let error = Config::builder()
        .set("failoverNodes", "n3")
        .and_then(|b| b.set("memcachedNodes", NODES))
        .and_then(|b| b.set("sticky", "false"))
        .and_then(|b| b.build())
        .unwrap_err();
    assert_eq!(error.setting(), "failoverNodes");
}

#[test]
fn without_failover_nodes_non_sticky_mode_is_accepted_and_sticky_mode_keeps_them() {
    for empty in ["", " "] {
        Config::builder()
            .sticky(false)
            .memcached_nodes(NODES)
            .failover_nodes(empty)
            .build()
            .unwrap();
    }
    Config::builder()
        .memcached_nodes(NODES)
        .failover_nodes("n3")
        .build()
        .unwrap();
}
