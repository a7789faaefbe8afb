//! Writing a document's copy (a body, or a deletion mark) to its replicas.

use std::time::Duration;

use crate::error::Error;
use crate::replicated::fan_out::on_replicas;
use crate::replicated::placement::{REPLICAS, ranking};
use crate::replicated::shared::Shared;
use crate::store::backend::{Expiry, Item, WriteMode, WriteOutcome};
use crate::store::envelope::{self, DocumentCopyRef};

/// What [`write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Stored on this many replicas (at least one).
    Stored(usize),
    /// `add` only: a replica already holds the key; every copy this write
    /// had stored was removed again.
    Taken,
}

/// Writes `copy` under `key` to the replicas, with `mode` `Set` or `Add`,
/// expiring `remaining` from now. An error only when no replica stored it
/// (or refused it, for `Add`).
pub(crate) async fn write(
    shared: &Shared,
    key: &str,
    copy: DocumentCopyRef<'_>,
    remaining: Duration,
    mode: WriteMode,
) -> Result<Written, Error> {
    let bytes = shared.store.codec.seal_owned(key, envelope::encode_document(copy));
    let item = Item {
        key,
        value: &bytes,
        expiry: Expiry::After(remaining),
    };
    let ranking = ranking(&shared.store.nodes, key);
    let outcomes = on_replicas(
        &ranking,
        |node| async move { node.call(|b| b.store_as(item, mode)).await },
    )
    .await;
    if outcomes.answered_count() == 0 {
        return Err(outcomes.into_error());
    }
    let taken = outcomes
        .answered()
        .any(|(_, outcome)| *outcome == WriteOutcome::Refused);
    if taken {
        // Undo exactly what this write stored (a CAS-guarded delete).
        for (node, outcome) in outcomes.answered() {
            if let WriteOutcome::Stored(cas) = *outcome {
                if let Err(error) = node.call(|b| b.delete_if_cas(key, cas)).await {
                    tracing::warn!(node = %node.label(), %error, "could not remove a copy stored under an id found taken; it expires with its TTL");
                }
            }
        }
        return Ok(Written::Taken);
    }
    let stored = outcomes.answered_count();
    if stored < REPLICAS.min(ranking.len()) {
        shared.counters.count_single_copy_write();
    }
    Ok(Written::Stored(stored))
}
