#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| memcached_sessions::fuzzing::memcached_reply(bytes));
