//! Memcached node identities and the `memcachedNodes` / `failoverNodes`
//! syntax.
//!
//! ```text
//! memcachedNodes = node ( ("," | whitespace) node )*
//! node           = id ":" host ":" port      (several nodes: ids required)
//!                | host ":" port             (exactly one node, no id)
//! id             = [A-Za-z0-9_]{1,32}
//! host           = hostname | IPv4 | "[" IPv6 "]"
//! failoverNodes  = id ( ("," | whitespace) id )*
//! ```

use crate::error::ConfigError;
use crate::session::node_id::{MAX_NODE_ID_LEN, NodeId};

const NODES: &str = "memcachedNodes";
const FAILOVER: &str = "failoverNodes";

/// One configured memcached node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// `None` only for the single anonymous node (`host:port`).
    pub id: Option<NodeId>,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Used only when no regular node is available (see `failoverNodes`).
    pub failover: bool,
}

impl NodeSpec {
    /// `host:port`, with brackets around IPv6 addresses; what the client dials.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The id, or the address for the anonymous node; used in logs and errors.
    pub fn label(&self) -> String {
        match &self.id {
            Some(id) => id.to_string(),
            None if self.port == 0 => self.host.clone(),
            None => self.address(),
        }
    }

    /// The pseudo node of the embedded in-process store.
    pub(crate) fn embedded() -> Self {
        Self {
            id: None,
            host: "in-process".to_owned(),
            port: 0,
            failover: false,
        }
    }
}

fn tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|t| !t.is_empty())
}

fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
}

fn parse_port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u16>().ok().filter(|port| *port != 0)
}

/// Parses one `id:host:port` or `host:port` token.
fn parse_node(token: &str) -> Result<NodeSpec, ConfigError> {
    let malformed = || ConfigError::new(NODES, format!("{token:?} is not id:host:port"));
    let (rest, port) = token.rsplit_once(':').ok_or_else(malformed)?;
    let port = parse_port(port).ok_or_else(malformed)?;
    let (id, host) = if let Some(bracketed) = rest.strip_suffix(']') {
        // `[v6]` or `id:[v6]`
        let (head, v6) = bracketed.rsplit_once('[').ok_or_else(malformed)?;
        let id = match head {
            "" => None,
            _ => Some(head.strip_suffix(':').ok_or_else(malformed)?),
        };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') {
            return Err(malformed());
        }
        (id, v6)
    } else {
        match rest.split_once(':') {
            Some((id, host)) => (Some(id), host),
            None => (None, rest),
        }
    };
    if !host.contains(':') && !valid_host(host) {
        return Err(malformed());
    }
    let id = match id {
        None => None,
        Some(text) => Some(NodeId::parse(text).ok_or_else(|| {
            ConfigError::new(
                NODES,
                format!("{token:?}: node id {text:?} must be 1-{MAX_NODE_ID_LEN} characters of [A-Za-z0-9_]"),
            )
        })?),
    };
    Ok(NodeSpec {
        id,
        host: host.to_owned(),
        port,
        failover: false,
    })
}

/// Parses `memcachedNodes`, then marks the `failoverNodes` (which may be
/// empty) and checks the combination.
pub(crate) fn parse_nodes(nodes: &str, failover: &str) -> Result<Vec<NodeSpec>, ConfigError> {
    let mut specs = tokens(nodes).map(parse_node).collect::<Result<Vec<_>, _>>()?;
    if specs.is_empty() {
        return Err(ConfigError::new(NODES, format!("{nodes:?} lists no node")));
    }
    if specs.len() > 1 {
        if let Some(anonymous) = specs.iter().find(|s| s.id.is_none()) {
            return Err(ConfigError::new(
                NODES,
                format!(
                    "{:?} has no id; ids are required when more than one node is listed",
                    anonymous.address()
                ),
            ));
        }
    }
    for (i, spec) in specs.iter().enumerate() {
        if let Some(dup) = specs[..i].iter().find(|s| s.id == spec.id) {
            return Err(ConfigError::new(
                NODES,
                format!("node id {:?} is listed twice", dup.label()),
            ));
        }
        if specs[..i].iter().any(|s| s.address() == spec.address()) {
            return Err(ConfigError::new(
                NODES,
                format!("address {:?} is listed twice", spec.address()),
            ));
        }
    }
    let failover_ids: Vec<&str> = tokens(failover).collect();
    if failover_ids.is_empty() {
        return Ok(specs);
    }
    if specs.len() == 1 {
        return Err(ConfigError::new(
            FAILOVER,
            format!("{failover:?}: failover nodes need at least two memcached nodes"),
        ));
    }
    for id in failover_ids {
        let spec = specs
            .iter_mut()
            .find(|s| s.id.as_ref().is_some_and(|n| n.as_str() == id))
            .ok_or_else(|| ConfigError::new(FAILOVER, format!("{id:?} is not a node id of memcachedNodes")))?;
        spec.failover = true;
    }
    if specs.iter().all(|s| s.failover) {
        return Err(ConfigError::new(
            FAILOVER,
            format!("{failover:?} names every node; at least one must stay a regular node"),
        ));
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(specs: &[NodeSpec]) -> Vec<String> {
        specs.iter().map(NodeSpec::label).collect()
    }

    #[test]
    fn parses_ids_hosts_and_ports_with_any_separator() {
        let specs = parse_nodes("n1:localhost:11211, n2:10.0.0.2:11212\tn_3:[::1]:11213", "").unwrap();
        assert_eq!(ids(&specs), ["n1", "n2", "n_3"]);
        assert_eq!(specs[1].address(), "10.0.0.2:11212");
        assert_eq!(specs[2].address(), "[::1]:11213");
        assert!(specs.iter().all(|s| !s.failover));
    }

    #[test]
    fn single_host_port_has_no_id() {
        let specs = parse_nodes("cache.internal:11211", "").unwrap();
        assert_eq!(specs[0].id, None);
        assert_eq!(specs[0].address(), "cache.internal:11211");
    }

    #[test]
    fn rejects_malformed_nodes_naming_setting_and_text() {
        let err = parse_nodes("n1:host", "").unwrap_err();
        assert_eq!(err.to_string(), r#"memcachedNodes: "n1:host" is not id:host:port"#);
        for bad in [
            "n1:host:0",
            "n1:host:99999",
            "n1:host:",
            ":host:1",
            "n-1:h:1",
            "n1:h st:1",
            "n1:[zz]:1",
        ] {
            let err = parse_nodes(bad, "").unwrap_err();
            assert_eq!(err.setting(), "memcachedNodes", "{bad}");
        }
        assert!(
            parse_nodes("  , ", "")
                .unwrap_err()
                .to_string()
                .contains("lists no node")
        );
    }

    #[test]
    fn rejects_duplicates_and_missing_ids() {
        assert!(
            parse_nodes("n1:a:1,n1:b:2", "")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(
            parse_nodes("n1:a:1,n2:a:1", "")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(parse_nodes("n1:a:1,b:2", "").unwrap_err().to_string().contains("no id"));
    }

    #[test]
    fn failover_nodes_must_exist_and_leave_a_regular_node() {
        let specs = parse_nodes("n1:a:1 n2:b:2 n3:c:3", "n3").unwrap();
        assert_eq!(specs.iter().filter(|s| s.failover).count(), 1);
        assert!(specs[2].failover);
        let unknown = parse_nodes("n1:a:1,n2:b:2", "n9").unwrap_err();
        assert_eq!(
            unknown.to_string(),
            r#"failoverNodes: "n9" is not a node id of memcachedNodes"#
        );
        assert!(
            parse_nodes("n1:a:1,n2:b:2", "n1 n2")
                .unwrap_err()
                .to_string()
                .contains("every node")
        );
        assert!(
            parse_nodes("n1:a:1", "n1")
                .unwrap_err()
                .to_string()
                .contains("at least two")
        );
    }

    #[test]
    fn node_ids_are_word_characters() {
        assert!(NodeId::parse("n1_B").is_some());
        for bad in ["", "n-1", "n.1", "n 1", &"x".repeat(33)] {
            assert!(NodeId::parse(bad).is_none(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_node_list_never_panics(nodes in ".{0,120}", failover in ".{0,40}") {
            let _ = parse_nodes(&nodes, &failover);
        }

        #[test]
        fn well_formed_lists_parse(ports in proptest::collection::vec(1u16.., 1..6)) {
            let spec: Vec<String> = ports.iter().enumerate().map(|(i, p)| format!("n{i}:h{i}.example:{p}")).collect();
            let specs = parse_nodes(&spec.join(" , "), "").unwrap();
            proptest::prop_assert_eq!(specs.len(), ports.len());
        }
    }
}
