//! Tests of the configuration: defaults, validation, the settings table.

use super::*;
use crate::config::builder::ConfigBuilder;
use crate::config::settings::{SETTINGS, markdown_table};

#[test]
fn defaults_match_msm() {
    let config = Config::builder().build().unwrap();
    assert!(config.sticky);
    assert!(config.backup_async);
    assert_eq!(config.backup_timeout, Duration::from_millis(100));
    assert_eq!(config.operation_timeout, Duration::from_millis(1000));
    assert_eq!(config.max_inactive, Some(Duration::from_secs(1800)));
    assert!(config.nodes.is_none(), "no memcachedNodes = embedded store");
    assert_eq!(config.cookie.same_site, SameSite::Lax);
}

#[test]
fn zero_or_negative_max_inactive_means_never() {
    for secs in ["0", "-1"] {
        let config = Config::builder()
            .set("maxInactiveInterval", secs)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(config.max_inactive, None);
    }
}

#[test]
fn text_settings_name_the_setting_and_quote_the_value() {
    let cases = [
        ("sticky", "yes", r#"sticky: "yes" is not true or false"#),
        (
            "operationTimeout",
            "1s",
            r#"operationTimeout: "1s" is not a whole number of milliseconds"#,
        ),
        (
            "maxInactiveInterval",
            "ten",
            r#"maxInactiveInterval: "ten" is not a whole number of seconds"#,
        ),
        (
            "cookieSameSite",
            "loose",
            r#"cookieSameSite: "loose" is not Lax, Strict or None"#,
        ),
    ];
    for (name, value, expected) in cases {
        assert_eq!(Config::builder().set(name, value).unwrap_err().to_string(), expected);
    }
    assert!(Config::builder().set("nope", "1").is_err());
}

#[test]
fn build_rejects_bad_values() {
    let cases: Vec<(ConfigBuilder, &str)> = vec![
        (Config::builder().memcached_nodes("n1:host"), "memcachedNodes"),
        (Config::builder().failover_nodes("n1"), "failoverNodes"),
        (Config::builder().route("a.b"), "route"),
        (Config::builder().storage_key_prefix("has space"), "storageKeyPrefix"),
        (Config::builder().storage_key_prefix("x".repeat(65)), "storageKeyPrefix"),
        (
            Config::builder().request_uri_ignore_pattern("(("),
            "requestUriIgnorePattern",
        ),
        (Config::builder().cookie_name("bad name"), "cookieName"),
        (Config::builder().cookie_path("nope"), "cookiePath"),
        (Config::builder().locking_mode("maybe"), "lockingMode"),
        (Config::builder().operation_timeout(Duration::ZERO), "operationTimeout"),
        (
            Config::builder().lock_expiration(Duration::from_millis(10)),
            "lockExpiration",
        ),
        (Config::builder().cookie_same_site(SameSite::None), "cookieSameSite"),
        (Config::builder().sticky(false).enabled(false), "enabled"),
        (Config::builder().cookie_name("__Host-id"), "cookieName"),
        (
            Config::builder()
                .cookie_name("__Host-id")
                .cookie_secure(true)
                .cookie_path("/a"),
            "cookieName",
        ),
        (Config::builder().cookie_name("__Secure-id"), "cookieName"),
        (Config::builder().session_id_header("bad header"), "sessionIdHeader"),
        (Config::builder().session_id_header("cookie"), "sessionIdHeader"),
        (Config::builder().cookie_enabled(false), "cookieEnabled"),
        (Config::builder().max_session_size(10), "maxSessionSize"),
        (Config::builder().max_session_size(2 << 20), "maxSessionSize"),
    ];
    for (builder, setting) in cases {
        assert_eq!(builder.build().unwrap_err().setting(), setting);
    }
}

#[test]
fn secure_cookie_prefixes_and_header_ids_are_accepted_when_consistent() {
    let config = Config::builder()
        .cookie_name("__Host-sid")
        .cookie_secure(true)
        .session_id_header("X-Session-Id")
        .cookie_enabled(false)
        .build()
        .unwrap();
    assert_eq!(config.id_header.unwrap().as_str(), "x-session-id");
}

#[test]
fn empty_route_and_pattern_mean_unset() {
    let config = Config::builder()
        .route("")
        .request_uri_ignore_pattern("")
        .build()
        .unwrap();
    assert_eq!(config.route, None);
    assert!(config.ignore_pattern.is_none());
}

proptest::proptest! {
    #[test]
    fn any_text_for_any_setting_is_a_value_or_a_named_error(index in 0..SETTINGS.len(), value in ".{0,80}") {
        let setting = &SETTINGS[index];
        match Config::builder().set(setting.name, &value).and_then(ConfigBuilder::build) {
            Ok(_) => {}
            Err(error) => proptest::prop_assert!(!error.setting().is_empty()),
        }
    }
}

/// The README's configuration table is the one the settings table renders:
/// a setting added, renamed or re-documented in one place only fails here.
#[test]
fn the_readme_table_is_the_settings_table() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
    let expected = markdown_table();
    let header = expected.lines().next().expect("a header");
    let start = readme
        .find(header)
        .expect("the README has the settings table (header as rendered)");
    let table: String = readme[start..]
        .lines()
        .take_while(|line| line.starts_with('|'))
        .map(|line| format!("{line}\n"))
        .collect();
    assert_eq!(
        table, expected,
        "README.md's configuration table differs from config/settings.rs; the rendered table is above"
    );
}

#[test]
fn every_setting_has_one_name_and_a_builder_method() {
    let builder_source = include_str!("builder.rs");
    let mut names = std::collections::HashSet::new();
    for setting in SETTINGS {
        for name in std::iter::once(&setting.name).chain(setting.aliases) {
            assert!(names.insert(*name), "{name} is listed twice");
        }
        assert!(
            builder_source.contains(&format!("pub fn {}(", setting.method)),
            "{}: no builder method {}",
            setting.name,
            setting.method
        );
    }
    assert!(Config::builder().set("nope", "1").is_err());
}

/// Each documented default, given as text, changes nothing: the table
/// says what the builder really does.
#[test]
fn the_documented_defaults_are_the_defaults() {
    let defaults = format!("{:?}", ConfigBuilder::default());
    for setting in SETTINGS {
        let Some(text) = setting.default_text else {
            continue;
        };
        let set = Config::builder()
            .set(setting.name, text)
            .unwrap_or_else(|e| panic!("{}: {e}", setting.name));
        assert_eq!(
            format!("{set:?}"),
            defaults,
            "{} = {text:?} is not the default",
            setting.name
        );
    }
}
