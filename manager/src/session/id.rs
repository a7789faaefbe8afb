//! Session ids: `<random>-<nodeId>[.<route>]`.
//!
//! * `random`: 32 characters of base64url (`[A-Za-z0-9_-]`) encoding 192
//!   bits from the operating system's CSPRNG;
//! * `nodeId`: the memcached node holding the backup (absent when no node
//!   was available or the single configured node has no id);
//! * `route`: the instance that holds the primary copy (Tomcat's
//!   `jvmRoute`), `[A-Za-z0-9_-]{1,64}`, absent when none is configured.
//!
//! Parsing is strict: the random part has a fixed length, so `-` inside it
//! never confuses the node suffix; the node id must be configured; a `.`
//! can only start the route. Anything else is "no session".

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::session::node_id::NodeId;

/// Longest accepted route (instance name).
pub(crate) const MAX_ROUTE_LEN: usize = 64;

/// Random bytes per id (192 bits).
const RANDOM_BYTES: usize = 24;
/// Length of the random part in characters.
pub(crate) const RANDOM_LEN: usize = RANDOM_BYTES / 3 * 4;

/// A validated session id. `Debug` shows only a prefix, so ids do not leak
/// into logs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct SessionId {
    text: Box<str>,
    node: Option<NodeId>,
    route_start: Option<usize>,
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

impl SessionId {
    /// A fresh id with new randomness.
    pub(crate) fn generate(node: Option<&NodeId>, route: Option<&str>) -> Self {
        let mut bytes = [0u8; RANDOM_BYTES];
        getrandom::fill(&mut bytes).expect("the operating system's random number generator failed");
        Self::compose(&URL_SAFE_NO_PAD.encode(bytes), node, route)
    }

    fn compose(random: &str, node: Option<&NodeId>, route: Option<&str>) -> Self {
        let mut text = String::with_capacity(RANDOM_LEN + 2 + 32 + MAX_ROUTE_LEN);
        text.push_str(random);
        if let Some(node) = node {
            text.push('-');
            text.push_str(node.as_str());
        }
        let route_start = route.map(|route| {
            text.push('.');
            let start = text.len();
            text.push_str(route);
            start
        });
        Self {
            text: text.into(),
            node: node.cloned(),
            route_start,
        }
    }

    /// Parses an id received from a client. `is_known_node` decides which
    /// node ids are acceptable (the configured ones). `None` for anything
    /// that is not exactly an id this system could have issued.
    pub(crate) fn parse(text: &str, is_known_node: impl Fn(&NodeId) -> bool) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() < RANDOM_LEN || bytes.len() > RANDOM_LEN + 2 + 32 + MAX_ROUTE_LEN {
            return None;
        }
        if !bytes[..RANDOM_LEN].iter().copied().all(is_base64url) {
            return None;
        }
        let rest = &text[RANDOM_LEN..];
        let (node_part, route) = match rest.split_once('.') {
            Some((node_part, route)) => (node_part, Some(route)),
            None => (rest, None),
        };
        let node = match node_part {
            "" => None,
            suffix => {
                let node = NodeId::parse(suffix.strip_prefix('-')?)?;
                if !is_known_node(&node) {
                    return None;
                }
                Some(node)
            }
        };
        if let Some(route) = route {
            let valid = !route.is_empty()
                && route.len() <= MAX_ROUTE_LEN
                && route
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid {
                return None;
            }
        }
        Some(Self::compose(&text[..RANDOM_LEN], node.as_ref(), route))
    }

    /// The id as sent in the cookie.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// The random part (the first 32 characters).
    pub(crate) fn random_part(&self) -> &str {
        &self.text[..RANDOM_LEN]
    }

    /// The node holding the backup, if any.
    pub(crate) fn node(&self) -> Option<&NodeId> {
        self.node.as_ref()
    }

    /// The instance route, if any.
    pub(crate) fn route(&self) -> Option<&str> {
        self.route_start.map(|start| &self.text[start..])
    }

    /// The same random part with another node (relocation) and route (takeover).
    pub(crate) fn with_location(&self, node: Option<&NodeId>, route: Option<&str>) -> Self {
        Self::compose(&self.text[..RANDOM_LEN], node, route)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}…{})", &self.text[..4], &self.text[RANDOM_LEN..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId::parse(id).unwrap()
    }

    fn known(id: &NodeId) -> bool {
        matches!(id.as_str(), "n1" | "n2")
    }

    #[test]
    fn generated_ids_roundtrip_with_every_suffix_shape() {
        for (n, route) in [
            (None, None),
            (Some(node("n1")), None),
            (None, Some("a")),
            (Some(node("n2")), Some("app-1")),
        ] {
            let id = SessionId::generate(n.as_ref(), route);
            let parsed = SessionId::parse(id.as_str(), known).unwrap();
            assert_eq!(parsed, id);
            assert_eq!(parsed.node(), n.as_ref());
            assert_eq!(parsed.route(), route);
        }
    }

    #[test]
    fn ids_are_random_and_url_safe() {
        let a = SessionId::generate(None, None);
        let b = SessionId::generate(None, None);
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), RANDOM_LEN);
        assert!(a.as_str().bytes().all(is_base64url));
    }

    #[test]
    fn relocation_keeps_the_random_part() {
        let id = SessionId::generate(Some(&node("n1")), Some("a"));
        let moved = id.with_location(Some(&node("n2")), Some("b"));
        assert_eq!(&moved.as_str()[..RANDOM_LEN], &id.as_str()[..RANDOM_LEN]);
        assert!(moved.as_str().ends_with("-n2.b"));
    }

    #[test]
    fn rejects_anything_not_issued_by_us() {
        let good = SessionId::generate(Some(&node("n1")), None).to_string();
        let random = &good[..RANDOM_LEN];
        let bad = [
            String::new(),
            "abc".to_owned(),
            format!("{random}-n9"),                         // unknown node
            format!("{random}-"),                           // empty node
            format!("{random}x"),                           // no dash
            format!("{random}-n1."),                        // empty route
            format!("{random}-n1.a.b"),                     // dot in route
            format!("{random}-n1.a b"),                     // space in route
            format!("{}+{}", &random[..10], &random[11..]), // + is not base64url
            format!("{random}-n1.{}", "r".repeat(65)),
            format!("{random}-n1\r\nflush_all"),
            format!("{random}\0"),
        ];
        for text in bad {
            assert!(SessionId::parse(&text, known).is_none(), "{text:?}");
        }
    }

    #[test]
    fn debug_redacts_the_random_part() {
        let id = SessionId::generate(Some(&node("n1")), Some("a"));
        let debug = format!("{id:?}");
        assert!(!debug.contains(&id.as_str()[4..RANDOM_LEN]));
        assert!(debug.ends_with("-n1.a)"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_anything_never_panics_and_accepts_only_canonical_ids(text in ".{0,200}") {
            if let Some(id) = SessionId::parse(&text, known) {
                proptest::prop_assert_eq!(id.as_str(), text.as_str());
            }
        }

        #[test]
        fn ids_with_any_route_roundtrip(route in "[A-Za-z0-9_-]{1,64}", node in proptest::option::of("n[12]")) {
            let node = node.map(|n| NodeId::parse(&n).unwrap());
            let id = SessionId::generate(node.as_ref(), Some(&route));
            proptest::prop_assert_eq!(SessionId::parse(id.as_str(), known), Some(id.clone()));
        }
    }
}
