//! Entry points for the `cargo fuzz` targets in `manager/fuzz` (feature
//! `fuzzing`; not a public API). Each runs one parser on arbitrary input;
//! any panic is a bug.

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};

use crate::config::Config;
use crate::session::id::SessionId;
use crate::session::node_id::NodeId;

/// Session id parsing, with nodes `n1` and `n2` known.
pub fn session_id(text: &str) {
    let known = |node: &NodeId| matches!(node.as_str(), "n1" | "n2");
    if let Some(id) = SessionId::parse(text, known) {
        assert_eq!(id.as_str(), text, "an accepted id is canonical");
    }
}

/// The stored-session decoder.
pub fn envelope(bytes: &[u8]) {
    let _ = crate::store::envelope::decode(bytes, crate::store::envelope::Format::Sticky);
    let _ = crate::store::envelope::decode(bytes, crate::store::envelope::Format::NonSticky);
}

/// A sealed blob under a fixed key: arbitrary bytes never open.
pub fn sealed_blob(bytes: &[u8]) {
    let sealer =
        crate::store::seal::Sealer::parse("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=").expect("a valid key");
    assert!(sealer.open("key", bytes).is_none(), "forged a sealed blob");
}

/// One setting given as text (the first line is the name, the rest the value).
pub fn config_setting(input: &str) {
    let (name, value) = input.split_once('\n').unwrap_or((input, ""));
    let _ = Config::builder().set(name, value).and_then(|b| b.build());
    let _ = crate::store::node::parse_nodes(value, name);
}

/// The session id extraction from raw `Cookie` header bytes.
pub fn cookie_header(bytes: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(bytes) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.append(COOKIE, value);
    for candidate in crate::request::id_transport::cookie_values(&headers, "SESSIONID") {
        session_id(candidate);
    }
}

/// The memcached reply parser on arbitrary bytes from the socket: every
/// reply it accepts consumed some bytes and no more than it was given.
pub fn memcached_reply(bytes: &[u8]) {
    crate::store::backend::parse_replies_for_fuzzing(bytes);
}
