#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| memcached_sessions::fuzzing::config_setting(text));
