//! Per session id, exclusive use within this process: one load, takeover
//! or write-back of an id at a time.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// The gates of the ids in use.
#[derive(Default)]
pub(crate) struct IdGates {
    gates: Mutex<HashMap<Box<str>, Gate>>,
}

/// One id's gate, and how many requests hold it or wait for it (the entry
/// goes when that drops to zero).
#[derive(Default)]
struct Gate {
    lock: Arc<tokio::sync::Mutex<()>>,
    users: usize,
}

impl IdGates {
    /// Waits for exclusive use of session id `id`. The gate is let go, and
    /// its entry removed once nobody else waits, when the guard is dropped
    /// — also when the request holding it is cancelled.
    pub(crate) async fn enter(&self, id: &str) -> IdGateGuard<'_> {
        let gate = {
            let mut gates = self.gates.lock();
            let gate = gates.entry(id.into()).or_default();
            gate.users += 1;
            Arc::clone(&gate.lock)
        };
        // Made before the wait, so a waiter cancelled while it waits is
        // counted out too.
        let mut guard = IdGateGuard {
            gates: self,
            id: id.into(),
            held: None,
        };
        guard.held = Some(gate.lock_owned().await);
        guard
    }
}

/// Exclusive use of one session id in this process; see [`IdGates::enter`].
pub(crate) struct IdGateGuard<'a> {
    gates: &'a IdGates,
    id: Box<str>,
    held: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for IdGateGuard<'_> {
    fn drop(&mut self) {
        drop(self.held.take());
        let mut gates = self.gates.gates.lock();
        if let Some(gate) = gates.get_mut(&self.id) {
            gate.users -= 1;
            if gate.users == 0 {
                gates.remove(&self.id);
            }
        }
    }
}
