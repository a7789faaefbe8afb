//! Reading a document: both replicas at once, the copy with the highest
//! version wins, and every replica that answered with a missing, older or
//! undecodable copy gets the winner written back (only if it still holds
//! what was read: a repair never overwrites a newer write).
//!
//! When fewer than two replicas hold a copy, the next available node of
//! the ranking is read as well: while a replica was down, writes went
//! there, and a replica that came back (and was never read since) may have
//! lost its copy meanwhile — the newest copy can be on that third node.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::replicated::fan_out::on_replicas;
use crate::replicated::placement::{REPLICAS, ranking};
use crate::replicated::shared::{Counters, Shared};
use crate::store::backend::{Expiry, Versioned, WriteMode, WriteOutcome};
use crate::store::envelope::{self, DocumentCopy, Format, Stored};
use crate::store::nodes::Node;

/// One replica's answer.
struct Answer {
    node: Arc<Node>,
    /// One of the document's replicas in this reading (not the extra read
    /// past them).
    replica: bool,
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
    /// The copy with the highest version (a deletion mark included). Two
    /// different copies with one version (two writers in one microsecond)
    /// are ordered by their bytes, so every instance picks the same one and
    /// repairs the other.
    pub(crate) fn winner(&self) -> Option<&DocumentCopy> {
        self.answers
            .iter()
            .filter_map(|answer| answer.copy.as_ref())
            .max_by(|a, b| a.version.cmp(&b.version).then_with(|| a.body.cmp(&b.body)))
    }

    /// How long a deletion mark must live: until the latest expiry of any
    /// copy read (marks included, so a repeated delete never shortens
    /// one). `None` when there is nothing to delete: no copy, or the newest
    /// is a mark already.
    pub(crate) fn mark_expiry_ms(&self) -> Option<u64> {
        self.winner()?.body.as_ref()?;
        self.answers
            .iter()
            .filter_map(|answer| answer.copy.as_ref())
            .map(|copy| copy.expires_at_ms)
            .max()
    }

    /// How many replicas answered with a copy (a body or a mark).
    fn copies(&self) -> usize {
        self.answers.iter().filter(|answer| answer.copy.is_some()).count()
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
    let tried: Vec<Arc<Node>> = outcomes.tried.iter().map(|(node, _)| Arc::clone(node)).collect();
    let answers = outcomes
        .tried
        .into_iter()
        .filter_map(|(_, outcome)| outcome.ok())
        .map(|(node, read)| answer(shared, key, node, read, true))
        .collect();
    let mut reading = Reading { answers };
    if reading.copies() < REPLICAS {
        let next = ranking
            .iter()
            .find(|node| node.is_available() && !tried.iter().any(|t| Arc::ptr_eq(t, node)));
        if let Some(node) = next {
            // A failure here only leaves the reading as it was.
            if let Ok(read) = node.call(|b| b.get_with_cas(key)).await {
                reading.answers.push(answer(shared, key, Arc::clone(node), read, false));
            }
        }
    }
    Ok(reading)
}

fn answer(shared: &Shared, key: &str, node: Arc<Node>, read: Option<Versioned>, replica: bool) -> Answer {
    let copy = read.as_ref().and_then(|read| decode(shared, key, &node, &read.value));
    Answer {
        node,
        replica,
        read,
        copy,
    }
}

fn decode(shared: &Shared, key: &str, node: &Node, bytes: &[u8]) -> Option<DocumentCopy> {
    match shared.store.codec.decode(key, bytes, Format::Document) {
        Ok(Stored::Document(copy)) => Some(copy),
        Ok(_) => None,
        Err(error) => {
            Counters::count_decode_failure(&shared.store.stats);
            tracing::warn!(node = %node.label(), %error, "a stored document copy was rejected; treating it as missing");
            None
        }
    }
}

/// Writes the winner of `reading` to every node that answered with a
/// missing, older or undecodable copy — except a missing copy on a node
/// past the two replicas (the extra read): that node is not a replica.
/// Where the key was missing the write is an `add`, otherwise a
/// CAS-guarded replace, so a write that landed since the read is never
/// overwritten. An expired winner is not written back. Failures are only
/// logged: the next read tries again.
pub(crate) async fn repair(shared: &Shared, key: &str, reading: &Reading, now_ms: u64) {
    let Some(winner) = reading.winner() else {
        return;
    };
    let targets: Vec<&Answer> = reading
        .answers
        .iter()
        .filter(|answer| answer.replica || answer.read.is_some())
        .collect();
    overwrite_older(shared, key, &targets, winner, now_ms).await;
}

/// After a delete wrote `mark` to the replicas: the mark also replaces
/// every older copy `reading` found on a node past them, so that copy
/// cannot come back when the replicas are gone.
pub(crate) async fn mark_beyond_replicas(
    shared: &Shared,
    key: &str,
    reading: &Reading,
    mark: &DocumentCopy,
    now_ms: u64,
) {
    let beyond: Vec<&Answer> = reading
        .answers
        .iter()
        .filter(|answer| !answer.replica && answer.read.is_some())
        .collect();
    overwrite_older(shared, key, &beyond, mark, now_ms).await;
}

/// Writes `winner` over every answer in `targets` that holds a missing,
/// undecodable or other (older, or a same-version loser) copy (add /
/// CAS-guarded replace).
async fn overwrite_older(shared: &Shared, key: &str, targets: &[&Answer], winner: &DocumentCopy, now_ms: u64) {
    let Some(remaining_ms) = winner.expires_at_ms.checked_sub(now_ms).filter(|ms| *ms > 0) else {
        return;
    };
    let stale: Vec<(&Answer, WriteMode)> = targets
        .iter()
        .copied()
        .filter(|answer| answer.copy.as_ref() != Some(winner))
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
