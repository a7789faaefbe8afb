//! A stored session record decoded from arbitrary bytes and then used the
//! way a request uses it, through the public API: an in-memory node holds
//! the bytes under a session key, and a request with that id loads the
//! record (sticky: a takeover from another instance; non-sticky: the
//! per-request load), reads attributes, updates one, and finishes (the
//! backup or write-back computes TTLs from the record's `max_inactive_secs`
//! and `last_accessed_ms`). A second request reads the session again, and
//! shutdown flushes it. Any panic, or a 5xx, is a bug.
//!
//! The input is either raw record bytes or a structured record (its fields
//! chosen by the fuzzer, then encoded in the postcard form of the envelope
//! variant each mode reads: `V1` sticky, `V2` non-sticky), so extreme field
//! values such as `max_inactive_secs >= 2^63` are reached at once instead
//! of by guessing a 10-byte varint. Non-sticky storage format 2 has no
//! validity record: the session record under the id is all a load needs.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::arbitrary::{self, Arbitrary};

use memcached_sessions::backend::{InMemoryNode, NodeBackend};
use memcached_sessions::{Config, Session, SessionManager};
use warp::Filter;

/// The envelope's magic bytes, prepended so the fuzzer spends its time on
/// the record rather than on finding them (`envelope` covers raw bytes).
const MAGIC: [u8; 2] = [0xA5, 0x53];
/// A well-formed random part of a session id.
const RANDOM: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
}

#[derive(Arbitrary, Debug)]
enum Input {
    /// The bytes after the magic.
    Raw(Vec<u8>),
    /// A well-formed record with arbitrary field values.
    Record {
        created_at_ms: u64,
        last_accessed_ms: u64,
        max_inactive_secs: u64,
        attributes: Vec<(String, Vec<u8>)>,
    },
}

/// Postcard's unsigned varint.
fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn bytes(out: &mut Vec<u8>, value: &[u8]) {
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// Envelope variant of a sticky session record.
const STICKY_V1: u8 = 0;
/// Envelope variant of a non-sticky session record (storage format 2).
const NON_STICKY_V2: u8 = 1;

impl Input {
    /// The stored bytes for a manager in `sticky` mode (or not).
    fn stored(&self, sticky: bool) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        match self {
            Input::Raw(raw) => out.extend_from_slice(raw),
            Input::Record {
                created_at_ms,
                last_accessed_ms,
                max_inactive_secs,
                attributes,
            } => {
                out.push(if sticky { STICKY_V1 } else { NON_STICKY_V2 });
                for field in [created_at_ms, last_accessed_ms, max_inactive_secs] {
                    varint(&mut out, *field);
                }
                varint(&mut out, attributes.len() as u64);
                for (name, value) in attributes {
                    bytes(&mut out, name.as_bytes());
                    bytes(&mut out, value);
                }
            }
        }
        out
    }
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    RUNTIME.with(|runtime| {
        runtime.block_on(async {
            use_record(&input.stored(true), true).await;
            use_record(&input.stored(false), false).await;
        })
    });
});

async fn use_record(stored: &[u8], sticky: bool) {
    let node = Arc::new(InMemoryNode::new());
    let config = Config::builder()
        .memcached_nodes("n1:127.0.0.1:1")
        .sticky(sticky)
        .route("a")
        .session_backup_async(false)
        .build()
        .expect("a valid configuration");
    let manager = SessionManager::with_backends(config, vec![node.clone() as Arc<dyn NodeBackend>])
        .expect("one node, one backend");
    // Sticky: an id of instance b, so this instance takes the session over
    // from memcached. Non-sticky: every request loads it.
    let id = if sticky {
        format!("{RANDOM}-n1.b")
    } else {
        format!("{RANDOM}-n1.a")
    };
    node.put_raw(&id, stored);
    let app = manager.wrap(warp::path!("use").and(manager.session()).map(|session: Session| {
        let count = session.get::<u64>("count").ok().flatten().unwrap_or(0);
        let _ = session.get::<String>("user");
        let _ = session.get::<Vec<u8>>("data");
        let _ = session.insert("count", &count.wrapping_add(1));
        session.id().unwrap_or_default()
    }));
    let mut cookie = id;
    for _ in 0..2 {
        let response = warp::test::request()
            .path("/use")
            .header("cookie", format!("SESSIONID={cookie}"))
            .reply(&app)
            .await;
        assert!(
            !response.status().is_server_error(),
            "{} for a stored record (sticky={sticky})",
            response.status()
        );
        let set_cookie = response.headers().get("set-cookie").and_then(|v| v.to_str().ok());
        if let Some(value) = set_cookie
            .and_then(|set| set.strip_prefix("SESSIONID="))
            .and_then(|v| v.split(';').next())
        {
            cookie = value.to_owned();
        }
    }
    manager.shutdown().await;
}
