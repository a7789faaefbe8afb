//! Ending a session's stored life (logout, the old id of `cycle_id`).

use tokio::time::Instant;

use crate::error::Error;
use crate::non_sticky::NonSticky;
use crate::non_sticky::ttl::{forward_expiry, repair_deadline};
use crate::session::id::SessionId;
use crate::stats::Stats;
use crate::store::envelope;

/// Ends the stored life of `id`: its primary copy and every backup slot
/// round the ring are replaced by tombstones (living as long as a backup
/// could), and the backup slots again a few `operationTimeout`s later (a
/// concurrent request's backup write may still be on its way). What
/// cannot be done now — a node down, a failed write — is queued as a
/// repair and done as soon as the node answers, so no copy left on a node
/// that comes back can revive the session, and a stale primary coming
/// back is recognised by the tombstone in its backup slot. `Err` when the
/// primary's tombstone may not be there yet: its node is down, or the
/// write failed.
pub(crate) async fn tombstone_session(non_sticky: &NonSticky, id: &SessionId) -> Result<(), Error> {
    let Some(primary) = non_sticky.store.nodes.node_of(id) else {
        return Ok(());
    };
    let primary_delete = async {
        let key = non_sticky.store.keys.session(id);
        let expiry = forward_expiry(non_sticky.config.max_inactive);
        non_sticky
            .store
            .write_or_repair(
                primary,
                key,
                &envelope::encode_gone(),
                expiry,
                repair_deadline(non_sticky),
            )
            .await?;
        Stats::count(&non_sticky.stats.counters.deletes);
        Ok(())
    };
    let backup_delete = async {
        let key = non_sticky.store.keys.backup(id);
        let gone = envelope::encode_gone();
        let expiry = forward_expiry(non_sticky.config.max_inactive);
        // A backup write of a concurrent request may still be on its way:
        // write the tombstone again once that has surely landed or failed.
        let deadline = repair_deadline(non_sticky);
        let again = Instant::now()
            .checked_add(non_sticky.config.operation_timeout.saturating_mul(3))
            .unwrap_or(deadline);
        let sealed = non_sticky.store.codec.seal(&key, &gone).into_owned();
        // Every node a backup may be on (an earlier outage may have put one
        // further round the ring); those down now are repaired when back.
        for node in non_sticky.store.nodes.ring_after(primary) {
            if non_sticky
                .store
                .write_or_repair(node, key.clone(), &gone, expiry, deadline)
                .await
                .is_ok()
            {
                Stats::count(&non_sticky.stats.counters.deletes);
            }
            non_sticky.store.remember_repair_from(
                node,
                key.clone(),
                crate::store::repairs::Action::Set(sealed.clone(), expiry),
                again,
                deadline,
            );
        }
    };
    let (outcome, ()) = tokio::join!(primary_delete, backup_delete);
    outcome
}
