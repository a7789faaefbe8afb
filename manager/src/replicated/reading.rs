//! Reading a document: both replicas at once, the copy with the highest
//! version wins, and every replica that answered with a missing, older or
//! undecodable copy gets the winner written back (only if it still holds
//! what was read: a repair never overwrites a newer write).

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::replicated::fan_out::on_replicas;
use crate::replicated::placement::ranking;
use crate::replicated::shared::Shared;
use crate::store::backend::{Expiry, Versioned, WriteMode, WriteOutcome};
use crate::store::envelope::{self, DocumentCopy, Format, Stored};
use crate::store::nodes::Node;

/// One replica's answer.
struct Answer {
    node: Arc<Node>,
    /// The raw item with its CAS token; `None`: the key is missing.
    read: Option<Versioned>,
    /// The copy it holds; `None` when missing or not decodable.
    copy: Option<DocumentCopy>,
}

/// What the replicas of a document hold.
pub(crate) struct Reading {
    answers: Vec<Answer>,
}

impl Reading {
    /// The copy with the highest version (a deletion mark included).
    pub(crate) fn winner(&self) -> Option<&DocumentCopy> {
        self.answers
            .iter()
            .filter_map(|answer| answer.copy.as_ref())
            .max_by_key(|copy| copy.version)
    }

    /// The latest expiry among the copies that hold a body: how long a
    /// deletion mark must outlive them. `None` when no replica holds one.
    pub(crate) fn longest_expiry_ms(&self) -> Option<u64> {
        self.answers
            .iter()
            .filter_map(|answer| answer.copy.as_ref())
            .filter(|copy| copy.body.is_some())
            .map(|copy| copy.expires_at_ms)
            .max()
    }
}

/// Reads the replicas of the document stored under `key`. An error only
/// when no node answered at all.
pub(crate) async fn read(shared: &Shared, key: &str) -> Result<Reading, Error> {
    let ranking = ranking(&shared.store.nodes, key);
    let outcomes = on_replicas(&ranking, |node| async move {
        let read = node.call(|b| b.get_with_cas(key)).await?;
        Ok((node, read))
    })
    .await;
    if outcomes.answered_count() == 0 {
        return Err(outcomes.into_error());
    }
    let answers = outcomes
        .tried
        .into_iter()
        .filter_map(|(_, outcome)| outcome.ok())
        .map(|(node, read)| {
            let copy = read.as_ref().and_then(|read| decode(shared, key, &node, &read.value));
            Answer { node, read, copy }
        })
        .collect();
    Ok(Reading { answers })
}

fn decode(shared: &Shared, key: &str, node: &Node, bytes: &[u8]) -> Option<DocumentCopy> {
    match shared.store.codec.decode(key, bytes, Format::Document) {
        Ok(Stored::Document(copy)) => Some(copy),
        Ok(_) => None,
        Err(error) => {
            shared.counters.count_decode_failure(&shared.store.stats);
            tracing::warn!(node = %node.label(), %error, "a stored document copy was rejected; treating it as missing");
            None
        }
    }
}

/// Writes the winner of `reading` to every replica that answered with a
/// missing, older or undecodable copy — an `add` where the key was
/// missing, a CAS-guarded replace otherwise, so a write that landed since
/// the read is never overwritten. An expired winner is not written back.
/// Failures are only logged: the next read tries again.
pub(crate) async fn repair(shared: &Shared, key: &str, reading: &Reading, now_ms: u64) {
    let Some(winner) = reading.winner() else {
        return;
    };
    let Some(remaining_ms) = winner.expires_at_ms.checked_sub(now_ms).filter(|ms| *ms > 0) else {
        return;
    };
    let stale: Vec<(&Answer, WriteMode)> = reading
        .answers
        .iter()
        .filter(|answer| answer.copy.as_ref().is_none_or(|copy| copy.version < winner.version))
        .map(|answer| {
            let mode = match &answer.read {
                None => WriteMode::Add,
                Some(read) => WriteMode::IfCas(read.cas),
            };
            (answer, mode)
        })
        .collect();
    if stale.is_empty() {
        return;
    }
    let bytes = shared
        .store
        .codec
        .seal_owned(key, envelope::encode_document(winner.as_ref()));
    let expiry = Expiry::After(Duration::from_millis(remaining_ms));
    let writes = stale.iter().map(|(answer, mode)| {
        let item = crate::store::backend::Item {
            key,
            value: &bytes,
            expiry,
        };
        async move {
            let outcome = answer.node.call(|b| b.store_as(item, *mode)).await;
            (answer, *mode, outcome)
        }
    });
    for (answer, mode, outcome) in futures_util::future::join_all(writes).await {
        match outcome {
            Ok(WriteOutcome::Stored(_)) => shared.counters.count_repair(mode),
            // Written meanwhile (by a save, a delete or another repair).
            Ok(WriteOutcome::Refused) => {}
            Err(error) => {
                tracing::debug!(node = %answer.node.label(), %error, "re-creating a document copy failed");
            }
        }
    }
}
