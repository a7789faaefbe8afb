//! Anatomy of a session id: `<32 random chars>-<node>[.<route>]`.
//!
//! Only the random part identifies a session: relocation to another
//! memcached node changes `<node>`, a takeover by another instance changes
//! `<route>`, and both keep the random part.

/// Length of the random part of a session id.
pub const RANDOM_LEN: usize = 32;

/// The random part: the first [`RANDOM_LEN`] characters (the whole id if it
/// is shorter, so a malformed id still compares as itself).
pub fn random_part(id: &str) -> &str {
    id.get(..RANDOM_LEN).unwrap_or(id)
}

/// The memcached node id (`n1` in `<random>-n1.a1`), if the id names one.
pub fn node_part(id: &str) -> Option<&str> {
    let rest = id.get(RANDOM_LEN..)?.strip_prefix('-')?;
    let node = rest.split_once('.').map_or(rest, |(node, _)| node);
    (!node.is_empty()).then_some(node)
}

/// The route (`a1` in `<random>-n1.a1`), if the id names one.
pub fn route_part(id: &str) -> Option<&str> {
    let (_, route) = id.get(RANDOM_LEN..)?.split_once('.')?;
    (!route.is_empty()).then_some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANDOM: &str = "abcdefghijklmnopqrstuvwxyz-_0123";

    #[test]
    fn splits_all_parts() {
        let id = format!("{RANDOM}-n2.a1");
        assert_eq!(random_part(&id), RANDOM);
        assert_eq!(node_part(&id), Some("n2"));
        assert_eq!(route_part(&id), Some("a1"));
    }

    #[test]
    fn dash_inside_the_random_part_is_not_a_node() {
        let id = format!("{RANDOM}.a1");
        assert_eq!(random_part(&id), RANDOM);
        assert_eq!(node_part(&id), None);
        assert_eq!(route_part(&id), Some("a1"));
    }

    #[test]
    fn short_ids_are_their_own_random_part() {
        assert_eq!(random_part("short"), "short");
        assert_eq!(node_part("short"), None);
        assert_eq!(route_part("short"), None);
    }
}
