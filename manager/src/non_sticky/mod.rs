//! Non-sticky mode: every request that uses a session loads it from
//! memcached and writes it back at its end if it changed; no instance owns
//! a session, so a load balancer may send any request anywhere.
//!
//! Keys of a session with id `I` (prefix `P`), storage format 2 (envelope
//! variant `V2`; the earlier format's records are never read):
//!
//! | key | node | TTL | what |
//! |---|---|---|---|
//! | `P I` | primary (named in `I`) | maxInactive, slid by every read | the session: its TTL *is* the inactivity clock |
//! | `bak:P I` | next available node in the ring | 1¼ × maxInactive from its last write | the backup copy |
//! | `lock:P <random part of I>` | primary (or where it moves) | lockExpiration | the lock |
//!
//! Operations per request kind (R = round trip):
//!
//! * **read-only** (session used, not changed): `mg P I v c T<maxInactive>`
//!   on the primary — **1 operation, 1 R**: it reads the session with its
//!   CAS token and slides its TTL. Once a quarter of the interval has
//!   passed since the session was last written, a read also rewrites it
//!   (primary, CAS-conditional, then backup), which keeps the backup's TTL
//!   ahead of the primary's: 3 operations, 3 R, once per quarter interval.
//!   So does the first read after any node went down, came back or
//!   restarted empty (as this instance saw it) of a session written
//!   before: its backup may be missing or on a node that is no longer the
//!   next available one.
//! * **modifying**: the read, then the primary written *conditionally on
//!   the CAS token it was read with* (`ms … C<cas>`; an `add` for a new or
//!   relocated id), then — only once the primary kept it — the backup:
//!   3 operations, 3 R. The backup is not written in parallel with the
//!   primary on purpose: a write refused as stale, or whose outcome is
//!   unknown, must never reach the copy a failover would read.
//! * **with a lock**: the lock's `add` goes in the same pipelined round
//!   trip as the read (`ms lock … ME` then `mg`, in order on one
//!   connection, so the read happens under the lock), and its CAS-guarded
//!   delete in the same round trip as the backup write: 5 operations,
//!   still 3 R.
//! * **request carrying the id without using the session**: `touch` of
//!   both copies, before the response = 2 operations, 1 R.
//! * **logout** (`invalidate`) and the old id of a `cycle_id`: tombstones
//!   written over the primary and every backup slot round the ring, and
//!   the backup slots' tombstones again a few `operationTimeout`s later (a
//!   concurrent backup write may still be on its way); what cannot be
//!   written now is queued as a repair ([`crate::store::repairs`]).
//! * With a **single node** there is no backup: read-only 1, modifying 2.
//!
//! **Expiry.** A session expires when its primary copy's TTL runs out.
//! The backup outlives the primary by at most a quarter interval, so a
//! session read from its backup (primary down or restarted empty) may be
//! at most `maxInactive / 4` past its inactivity limit — the documented
//! margin; never more.
//!
//! **Failover.** A primary that lost the session (restarted empty) is
//! re-created from the backup. When the primary node is down, the backup
//! is read from the next available node in the ring (walking further if
//! that one is down too), the id is relocated to that node, new primary
//! and backup copies are written, and the old backup copy is replaced by a
//! **forward record** (`Moved` → the new id, same TTL as the backup it
//! replaces), so requests still carrying the old id — in flight, or whose
//! response was lost — find the session under its new id instead of
//! starting an empty one. A new id given by `cycle_id` leaves tombstones
//! instead: the old id must die. The old primary copy, on a node that may
//! come back with it (frozen, partitioned), gets its forward record as a
//! repair when the node answers; and any instance that saw a node change
//! state checks the backup slot of a copy written before that change
//! (one more operation, once per session per change), so a stale copy is
//! recognised by the forward or tombstone there even before that repair.

pub(crate) mod claims;
pub(crate) mod in_flight;
pub(crate) mod load;
pub(crate) mod lock;
pub(crate) mod lock_policy;
pub(crate) mod tombstones;
pub(crate) mod ttl;
pub(crate) mod write;

use std::sync::Arc;

use crate::config::Config;
use crate::id_gates::IdGates;
use crate::non_sticky::in_flight::InFlightSessions;
use crate::non_sticky::lock::Locks;
use crate::non_sticky::lock_policy::LockPolicy;
use crate::stats::Stats;
use crate::store::Store;

/// Non-sticky mode's state: the sessions this instance's requests are
/// using right now, and which requests lock.
pub(crate) struct NonSticky {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<Store>,
    pub(crate) stats: Arc<Stats>,
    /// Sessions in use by this instance's requests.
    pub(crate) inflight: InFlightSessions,
    /// Which requests lock (`lockingMode`, learnt with `auto`).
    pub(crate) lock_policy: LockPolicy,
    /// Serializes, per session id, the loads and write-backs of this process.
    pub(crate) id_gates: IdGates,
    /// Where locks are taken, renewed and released.
    pub(crate) locks: Arc<Locks>,
}

impl NonSticky {
    pub(crate) fn new(config: Arc<Config>, store: Arc<Store>, stats: Arc<Stats>, instance_token: String) -> Self {
        let locks = Locks::new(
            Arc::clone(&store),
            config.lock_expiration,
            config.operation_timeout,
            instance_token,
        );
        Self {
            config,
            store,
            stats,
            inflight: InFlightSessions::default(),
            lock_policy: LockPolicy::default(),
            id_gates: IdGates::default(),
            locks: Arc::new(locks),
        }
    }
}
