//! The bounded async backup queue and its dispatcher.
//!
//! The queue carries session handles, not byte snapshots: a session waits
//! in it at most once (later requests find it already queued), and the
//! worker serializes whatever the session holds when its turn comes. So
//! memory is bounded by the queue capacity, whatever memcached's latency,
//! and a burst of requests on one session costs one write. When the queue
//! is full the backup is dropped and counted; the session stays "changed"
//! and is queued again by its next request. Nothing is lost: the primary
//! copy is in this process.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::session::state::SessionState;
use crate::stats::Stats;

/// What the dispatcher hands each batch of queued sessions to.
pub(crate) trait WriteBatch: Send + Sync + 'static {
    /// Writes the sessions' current state to memcached.
    fn write_batch(self: Arc<Self>, batch: Vec<Arc<SessionState>>) -> impl Future<Output = ()> + Send;
}

/// The sender side of the async backup queue.
pub(crate) struct BackupQueue {
    sender: parking_lot::Mutex<Option<mpsc::Sender<Arc<SessionState>>>>,
    capacity: usize,
}

impl BackupQueue {
    /// Creates the queue and its dispatcher task, which runs at most
    /// `concurrency` backups at once.
    pub(crate) fn start<W: WriteBatch>(writer: Weak<W>, capacity: usize, concurrency: usize) -> (Self, JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(capacity);
        let dispatcher = tokio::spawn(dispatch(writer, receiver, concurrency));
        let queue = Self {
            sender: parking_lot::Mutex::new(Some(sender)),
            capacity,
        };
        (queue, dispatcher)
    }

    /// Sessions waiting in the queue.
    pub(crate) fn len(&self) -> usize {
        self.sender.lock().as_ref().map_or(0, |s| self.capacity - s.capacity())
    }

    /// Queues a backup unless one is already queued. Returns `false` when the
    /// queue is full or closed (the caller decides what to do).
    pub(crate) fn push(&self, session: &Arc<SessionState>, stats: &Stats) -> bool {
        if session.backup_queued.swap(true, Ordering::AcqRel) {
            return true;
        }
        let sent = match self.sender.lock().as_ref() {
            Some(sender) => match sender.try_send(session.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    Stats::count(&stats.counters.backups_dropped);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
            None => false,
        };
        if !sent {
            session.backup_queued.store(false, Ordering::Release);
        }
        sent
    }

    /// Stops accepting work; the dispatcher drains what is queued and exits.
    pub(crate) fn close(&self) {
        self.sender.lock().take();
    }
}

/// Most sessions written in one pipelined exchange per node.
const MAX_BATCH: usize = 64;

async fn dispatch<W: WriteBatch>(writer: Weak<W>, mut receiver: mpsc::Receiver<Arc<SessionState>>, concurrency: usize) {
    let permits = Arc::new(Semaphore::new(concurrency));
    while let Some(first) = receiver.recv().await {
        // Whatever queued up meanwhile goes out together: under load one
        // exchange per node carries many sessions.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(session) => batch.push(session),
                Err(_) => break,
            }
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let Some(writer) = writer.upgrade() else {
            break;
        };
        tokio::spawn(async move {
            writer.write_batch(batch).await;
            drop(permit);
        });
    }
    // Wait for the backups still in flight.
    let _all = permits.acquire_many(concurrency as u32).await;
}
