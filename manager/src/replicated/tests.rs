//! The replicated store on in-memory nodes: placement, reads that pick the
//! newest copy and repair the others, creates that never overwrite, and
//! deletion marks that outlive stale copies.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::store::backend::{InMemoryNode, NodeBackend};
use crate::store::node::NodeSpec;

struct Fixture {
    store: ReplicatedStore,
    nodes: Vec<Arc<InMemoryNode>>,
}

impl Fixture {
    fn new(list: &str) -> Self {
        Self::with_config(list, |builder| builder)
    }

    fn with_config(list: &str, configure: impl FnOnce(crate::ConfigBuilder) -> crate::ConfigBuilder) -> Self {
        let builder = Config::builder()
            .memcached_nodes(list)
            .node_probe_interval(Duration::from_millis(10))
            .operation_timeout(Duration::from_millis(200));
        let config = configure(builder).build().unwrap();
        let count = config.nodes().map_or(1, <[NodeSpec]>::len);
        let nodes: Vec<Arc<InMemoryNode>> = (0..count).map(|_| Arc::new(InMemoryNode::new())).collect();
        let backends = nodes.iter().map(|n| Arc::clone(n) as Arc<dyn NodeBackend>).collect();
        let store = ReplicatedStore::with_backends(config, backends).unwrap();
        Self { store, nodes }
    }

    /// `id`'s ranking on the three nodes: its two replicas, then the next
    /// node.
    fn ranked(&self, id: &str) -> (String, String, String) {
        let replicas = self.store.replicas_of(id);
        let (first, second) = (replicas[0].clone(), replicas[1].clone());
        let third = ["n1", "n2", "n3"]
            .into_iter()
            .find(|n| *n != first && *n != second)
            .unwrap()
            .to_owned();
        (first, second, third)
    }

    fn node(&self, label: &str) -> &InMemoryNode {
        let index = label[1..].parse::<usize>().unwrap() - 1;
        &self.nodes[index]
    }

    /// The labels of the nodes holding `id`'s key.
    fn holders(&self, id: &str) -> Vec<String> {
        let key = self.store.storage_key(id).unwrap();
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].contains(&key))
            .map(|i| format!("n{}", i + 1))
            .collect()
    }

    async fn raw(&self, label: &str, id: &str) -> Option<Vec<u8>> {
        let key = self.store.storage_key(id).unwrap();
        self.node(label).get(&key).await.unwrap()
    }

    /// Marks `label` down (or up) and waits until the store sees it.
    async fn set_down(&self, label: &str, down: bool) {
        self.node(label).set_down(down);
        for _ in 0..200 {
            if self.store.nodes().iter().any(|n| n.id == label && n.available != down) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "{label} never became {}",
            if down { "unavailable" } else { "available" }
        );
    }

    async fn body(&self, id: &str) -> Option<String> {
        let document = self.store.load(id).await.unwrap()?;
        Some(String::from_utf8(document.body).unwrap())
    }
}

fn in_an_hour() -> SystemTime {
    SystemTime::now() + Duration::from_secs(3600)
}

#[tokio::test]
async fn documents_roundtrip_on_exactly_two_nodes() {
    let f = Fixture::new("n1:h:1 n2:h:2 n3:h:3");
    let mut spread = std::collections::HashSet::new();
    for i in 0..30 {
        let id = format!("doc{i}");
        assert_eq!(
            f.store.create(&id, b"one", in_an_hour()).await.unwrap(),
            Created::Stored
        );
        assert_eq!(f.body(&id).await.as_deref(), Some("one"));
        f.store.save(&id, b"two", in_an_hour()).await.unwrap();
        assert_eq!(f.body(&id).await.as_deref(), Some("two"));
        let holders = f.holders(&id);
        assert_eq!(holders, {
            let mut replicas = f.store.replicas_of(&id);
            replicas.sort();
            replicas
        });
        assert_eq!(holders.len(), 2, "{id}");
        spread.insert(holders);
        f.store.delete(&id).await.unwrap();
        assert_eq!(f.body(&id).await, None);
    }
    assert_eq!(spread.len(), 3, "every pair of nodes holds some documents");
    assert_eq!(f.store.statistics().copies_recreated, 0);
}

#[tokio::test]
async fn a_dead_replica_is_replaced_and_its_stale_copy_loses_when_it_returns() {
    let f = Fixture::new("n1:h:1 n2:h:2 n3:h:3");
    f.store.save("d", b"v1", in_an_hour()).await.unwrap();
    let (first, second, third) = f.ranked("d");
    let stale = f.raw(&first, "d").await.unwrap();
    f.node(&first).set_down(true);
    assert_eq!(f.body("d").await.as_deref(), Some("v1"), "read from the other copy");
    f.store.save("d", b"v2", in_an_hour()).await.unwrap();
    assert_eq!(
        f.raw(&third, "d").await,
        f.raw(&second, "d").await,
        "the next node took the second copy of v2"
    );
    // The dead node comes back with the copy it had (cut off, not restarted).
    f.node(&first).put_raw(&f.store.storage_key("d").unwrap(), &stale);
    f.set_down(&first, false).await;
    assert_eq!(f.body("d").await.as_deref(), Some("v2"), "the newer copy wins");
    assert_eq!(
        f.raw(&first, "d").await,
        f.raw(&second, "d").await,
        "the stale copy was replaced"
    );
    assert_eq!(f.store.statistics().stale_copies_replaced, 1);
}

#[tokio::test]
async fn a_replica_restarted_empty_is_refilled_by_the_next_load() {
    let f = Fixture::new("n1:h:1 n2:h:2 n3:h:3");
    f.store.save("d", b"kept", in_an_hour()).await.unwrap();
    let first = f.store.replicas_of("d")[0].clone();
    f.node(&first).clear();
    assert_eq!(f.body("d").await.as_deref(), Some("kept"));
    assert!(f.raw(&first, "d").await.is_some(), "re-created");
    assert_eq!(f.store.statistics().copies_recreated, 1);
    assert_eq!(f.body("d").await.as_deref(), Some("kept"));
    assert_eq!(f.store.statistics().copies_recreated, 1, "nothing left to repair");
}

#[tokio::test]
async fn a_deleted_document_stays_deleted_when_a_node_that_missed_the_delete_returns() {
    let f = Fixture::new("n1:h:1 n2:h:2 n3:h:3");
    f.store.save("d", b"secret", in_an_hour()).await.unwrap();
    let first = f.store.replicas_of("d")[0].clone();
    f.node(&first).set_down(true);
    f.store.delete("d").await.unwrap();
    assert_eq!(f.body("d").await, None);
    f.set_down(&first, false).await;
    assert!(f.raw(&first, "d").await.is_some(), "the old copy is still there");
    assert_eq!(f.body("d").await, None, "the deletion mark wins over the stale copy");
    assert_eq!(
        f.store.create("d", b"new", in_an_hour()).await.unwrap(),
        Created::IdTaken,
        "a deleted id is not handed out again while its mark lives"
    );
}

#[tokio::test]
async fn create_never_overwrites_and_undoes_a_partial_add() {
    let f = Fixture::new("n1:h:1 n2:h:2 n3:h:3");
    assert_eq!(
        f.store.create("d", b"first", in_an_hour()).await.unwrap(),
        Created::Stored
    );
    assert_eq!(
        f.store.create("d", b"second", in_an_hour()).await.unwrap(),
        Created::IdTaken
    );
    assert_eq!(f.body("d").await.as_deref(), Some("first"));
    // Only one replica holds the id: the add on the other one is undone.
    let replicas = f.store.replicas_of("x");
    f.store.save("x", b"only", in_an_hour()).await.unwrap();
    f.node(&replicas[1]).clear();
    assert_eq!(
        f.store.create("x", b"other", in_an_hour()).await.unwrap(),
        Created::IdTaken
    );
    assert!(f.raw(&replicas[1], "x").await.is_none(), "the partial add was removed");
    assert_eq!(f.store.statistics().ids_taken, 2);
}

#[tokio::test]
async fn garbage_under_a_key_is_a_missing_copy_and_gets_replaced() {
    let f = Fixture::new("n1:h:1 n2:h:2");
    f.store.save("d", b"good", in_an_hour()).await.unwrap();
    let key = f.store.storage_key("d").unwrap();
    f.node("n1").put_raw(&key, b"\xa5\x53\xff\xff garbage");
    assert_eq!(f.body("d").await.as_deref(), Some("good"));
    assert_eq!(f.raw("n1", "d").await, f.raw("n2", "d").await);
    let stats = f.store.statistics();
    assert_eq!((stats.decode_failures, stats.stale_copies_replaced), (1, 1));
    f.node("n1").put_raw(&key, b"junk");
    f.node("n2").put_raw(&key, b"junk");
    assert_eq!(f.body("d").await, None, "garbage everywhere is no document");
}

#[tokio::test]
async fn expired_and_invalid_documents_are_never_returned() {
    let f = Fixture::new("n1:h:1 n2:h:2");
    let past = SystemTime::now() - Duration::from_secs(1);
    assert_eq!(f.store.create("old", b"x", past).await.unwrap(), Created::Stored);
    assert_eq!(f.body("old").await, None);
    f.store.save("d", b"x", in_an_hour()).await.unwrap();
    f.store.save("d", b"x", past).await.unwrap();
    assert_eq!(f.body("d").await, None, "saving an expired document deletes it");
    for bad in ["", "a b", "é", &"x".repeat(129)] {
        assert_eq!(f.store.load(bad).await.unwrap(), None);
        let error = f.store.save(bad, b"x", in_an_hour()).await.unwrap_err();
        assert!(error.is_usage_error(), "{error}");
    }
    let big = vec![b'x'; Config::DEFAULT_MAX_SESSION_SIZE + 1];
    assert!(matches!(
        f.store.save("d", &big, in_an_hour()).await,
        Err(Error::DocumentTooLarge { .. })
    ));
}

#[tokio::test]
async fn far_expiries_roundtrip_to_the_second() {
    let f = Fixture::new("n1:h:1 n2:h:2");
    let expires_at = UNIX_EPOCH + Duration::from_secs(unix_ms(in_an_hour()) / 1000 + 86_400 * 400);
    f.store.save("d", b"x", expires_at).await.unwrap();
    assert_eq!(f.store.load("d").await.unwrap().unwrap().expires_at, expires_at);
}

#[tokio::test]
async fn with_every_node_down_operations_fail_as_unavailable_and_recover() {
    let f = Fixture::new("n1:h:1 n2:h:2");
    f.store.save("d", b"x", in_an_hour()).await.unwrap();
    f.node("n1").set_down(true);
    f.node("n2").set_down(true);
    let error = f.store.load("d").await.unwrap_err();
    assert!(error.is_unavailable(), "{error}");
    assert!(
        f.store
            .save("d", b"y", in_an_hour())
            .await
            .unwrap_err()
            .is_unavailable()
    );
    f.set_down("n1", false).await;
    f.set_down("n2", false).await;
    assert_eq!(f.body("d").await.as_deref(), Some("x"));
}

#[tokio::test]
async fn sealed_documents_roundtrip_and_hide_their_body() {
    let f = Fixture::with_config("n1:h:1 n2:h:2", |b| {
        b.session_encryption_keys("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            .storage_key_secret("AQEBAQEBAQEBAQEBAQEBAQ==")
    });
    f.store.save("d", b"visible?", in_an_hour()).await.unwrap();
    assert!(!f.store.storage_key("d").unwrap().contains(":d"), "the id is hashed");
    let raw = f.raw("n1", "d").await.unwrap();
    assert!(!raw.windows(8).any(|w| w == b"visible?"));
    assert_eq!(f.body("d").await.as_deref(), Some("visible?"));
}

#[tokio::test]
async fn the_copy_written_past_a_dead_node_is_found_when_a_replica_later_lacks_it() {
    let f = Fixture::new("n1:h:1 n2:h:2 n3:h:3");
    f.store.save("d", b"v1", in_an_hour()).await.unwrap();
    let (first, second, _) = f.ranked("d");
    let stale = f.raw(&first, "d").await.unwrap();
    f.node(&first).set_down(true);
    f.store.save("d", b"v2", in_an_hour()).await.unwrap();
    // The first node returns with its old copy and nobody loads the
    // document; then the second node loses its copy (restart, eviction).
    f.node(&first).put_raw(&f.store.storage_key("d").unwrap(), &stale);
    f.set_down(&first, false).await;
    f.node(&second).clear();
    assert_eq!(
        f.body("d").await.as_deref(),
        Some("v2"),
        "the third node's newer copy is looked at when a replica lacks the document"
    );
    assert_eq!(
        f.raw(&first, "d").await,
        f.raw(&second, "d").await,
        "both replicas repaired"
    );
}

#[tokio::test]
async fn a_delete_finds_and_marks_a_copy_left_past_a_dead_node() {
    let f = Fixture::new("n1:h:1 n2:h:2 n3:h:3");
    f.store.save("d", b"v1", in_an_hour()).await.unwrap();
    let (first, second, third) = f.ranked("d");
    f.node(&first).set_down(true);
    f.store.save("d", b"v2", in_an_hour()).await.unwrap();
    f.set_down(&first, false).await;
    f.node(&first).clear();
    f.node(&second).clear();
    // Only the third node holds the document now.
    f.store.delete("d").await.unwrap();
    assert_eq!(f.body("d").await, None);
    f.node(&first).set_down(true);
    f.node(&second).set_down(true);
    assert_eq!(
        f.body("d").await,
        None,
        "with both replicas gone, the third node's copy must not bring it back"
    );
    assert!(f.raw(&third, "d").await.is_some());
}

#[tokio::test]
async fn a_deletion_mark_lives_as_long_as_the_longest_lived_copy() {
    let f = Fixture::new("n1:h:1 n2:h:2");
    let far = SystemTime::now() + Duration::from_secs(86_400 * 40);
    f.store.save("d", b"x", far).await.unwrap();
    f.store.delete("d").await.unwrap();
    let key = f.store.storage_key("d").unwrap();
    for node in &f.nodes {
        let (bytes, ttl) = node.get_with_ttl(&key).await.unwrap().expect("a mark");
        let ttl = ttl.expect("marks expire");
        assert!(ttl > Duration::from_secs(86_400 * 39), "mark TTL {ttl:?}");
        assert!(matches!(
            f.store.shared.store.codec.decode(&key, &bytes, crate::store::envelope::Format::Document),
            Ok(crate::store::envelope::Stored::Document(copy)) if copy.body.is_none()
        ));
    }
    // Deleting again (a replayed logout) never shortens the mark.
    f.store.delete("d").await.unwrap();
    let (_, ttl) = f.nodes[0].get_with_ttl(&key).await.unwrap().unwrap();
    assert!(ttl.unwrap() > Duration::from_secs(86_400 * 39));
}

#[tokio::test]
async fn a_copy_past_its_expiry_is_not_returned_even_while_memcached_keeps_it() {
    let f = Fixture::new("n1:h:1 n2:h:2");
    let key = f.store.storage_key("d").unwrap();
    let copy = crate::store::envelope::encode_document(crate::store::envelope::DocumentCopyRef {
        version: 1,
        expires_at_ms: unix_ms(SystemTime::now()) - 1000,
        body: Some(b"old"),
    });
    for node in &f.nodes {
        node.put_raw(&key, &copy);
    }
    assert_eq!(f.body("d").await, None);
    let far = crate::store::envelope::encode_document(crate::store::envelope::DocumentCopyRef {
        version: 2,
        expires_at_ms: u64::MAX,
        body: Some(b"far"),
    });
    f.nodes[0].put_raw(&key, &far);
    assert_eq!(f.body("d").await.as_deref(), Some("far"), "no overflow on any expiry");
}

#[tokio::test]
async fn instances_that_disagree_about_a_node_still_see_each_others_writes() {
    // Two instances on the same nodes; the slow one never probes again, so
    // it keeps a node it once saw failing for down while the other uses it.
    let f = Fixture::new("n1:h:1 n2:h:2 n3:h:3");
    let slow_config = Config::builder()
        .memcached_nodes("n1:h:1 n2:h:2 n3:h:3")
        .node_probe_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let backends = f.nodes.iter().map(|n| Arc::clone(n) as Arc<dyn NodeBackend>).collect();
    let slow = ReplicatedStore::with_backends(slow_config, backends).unwrap();
    for i in 0..20 {
        let id = format!("doc{i}");
        f.store.save(&id, b"v1", in_an_hour()).await.unwrap();
        let first = f.store.replicas_of(&id)[0].clone();
        f.node(&first).set_down(true);
        assert_eq!(slow.load(&id).await.unwrap().unwrap().body, b"v1");
        f.node(&first).set_down(false);
        assert!(
            !slow.replicas_of(&id).contains(&first),
            "the slow instance still avoids {first}"
        );
        assert!(f.store.replicas_of(&id).contains(&first), "the other one uses it");
        slow.save(&id, b"v2", in_an_hour()).await.unwrap();
        assert_eq!(
            f.body(&id).await.as_deref(),
            Some("v2"),
            "{id}: a write past the node is seen"
        );
        f.store.save(&id, b"v3", in_an_hour()).await.unwrap();
        assert_eq!(
            slow.load(&id).await.unwrap().unwrap().body,
            b"v3",
            "{id}: and the other way round"
        );
        // Make the slow instance see the node again for the next round.
        f.node(&first).set_down(false);
        slow.shared.store.nodes.iter().for_each(|n| {
            n.observe(true, tokio::time::Instant::now());
        });
    }
}

#[tokio::test]
async fn two_different_copies_of_one_version_settle_on_the_same_one() {
    let f = Fixture::new("n1:h:1 n2:h:2");
    let key = f.store.storage_key("d").unwrap();
    let copy = |body: &'static [u8]| {
        crate::store::envelope::encode_document(crate::store::envelope::DocumentCopyRef {
            version: 7,
            expires_at_ms: unix_ms(in_an_hour()),
            body: Some(body),
        })
    };
    f.nodes[0].put_raw(&key, &copy(b"a"));
    f.nodes[1].put_raw(&key, &copy(b"b"));
    assert_eq!(
        f.body("d").await.as_deref(),
        Some("b"),
        "ordered by bytes, whatever the answer order"
    );
    assert_eq!(
        f.raw("n1", "d").await,
        f.raw("n2", "d").await,
        "and the other copy repaired"
    );
}

#[test]
fn repairs_are_counted_as_metrics() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let f = Fixture::new("n1:h:1 n2:h:2");
            f.store.save("d", b"x", in_an_hour()).await.unwrap();
            f.node("n1").clear();
            f.node("n2").put_raw(&f.store.storage_key("d").unwrap(), b"junk");
            assert_eq!(f.body("d").await, None, "nothing decodable left");
            f.store.save("d", b"y", in_an_hour()).await.unwrap();
            f.node("n1").clear();
            assert_eq!(f.body("d").await.as_deref(), Some("y"));
        });
    });
    let events: std::collections::HashMap<String, u64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == crate::telemetry::REPLICATED_EVENTS)
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => Some((key.key().labels().next()?.value().to_owned(), n)),
            _ => None,
        })
        .collect();
    assert_eq!(events.get("copy_recreated"), Some(&1), "{events:?}");
    assert_eq!(events.get("decode_failure"), Some(&1), "{events:?}");
}
