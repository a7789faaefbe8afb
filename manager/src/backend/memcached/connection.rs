//! One multiplexed TCP connection to a memcached node.
//!
//! Any number of tasks use it at once: each exchange (one or more commands,
//! encoded) goes through a queue to a writer task, which writes everything
//! queued in one `write` — so concurrent requests share syscalls and
//! wake-ups — and a reader task reads the replies, which memcached sends in
//! command order, and hands each exchange its own.
//!
//! - **Cancellation**: a caller that stops waiting leaves the connection
//!   aligned (its replies are read and dropped); an exchange whose caller
//!   gave up before the writer reached it is never sent.
//! - **Failure**: when the socket fails, or a reply cannot be read, the
//!   connection closes: every exchange waiting for replies fails —
//!   [`BackendError::Ambiguous`] when it could have changed data,
//!   [`BackendError::Unreachable`] otherwise, [`BackendError::Protocol`]
//!   for bytes that are no reply — and queued ones that were never written
//!   fail as unreachable. The node's pool dials a new one.
//! - **No deadlines here**: the caller bounds each exchange (and the dial).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, oneshot};

use super::protocol::{Reply, parse_reply};
use crate::error::BackendError;

/// Exchanges queued for the writer before senders wait for room.
const QUEUE_CAPACITY: usize = 4096;
/// Bytes gathered into one `write` at most (more waits for the next).
const MAX_WRITE_BYTES: usize = 256 * 1024;
/// Times the writer lets other tasks run, while they keep queueing
/// commands, before it writes.
const MAX_YIELDS: usize = 4;
/// Initial read buffer; it grows to the largest reply.
const READ_BUFFER: usize = 16 * 1024;

/// Commands to send and how their replies are to be answered.
struct Exchange {
    commands: Bytes,
    waiting: Waiting,
}

/// An exchange written (or being written) whose replies are awaited.
struct Waiting {
    replies: usize,
    mutating: bool,
    answer: oneshot::Sender<Result<Vec<Reply>, BackendError>>,
}

impl Waiting {
    /// Fails the exchange because the connection stopped after it was
    /// (perhaps) written.
    fn fail(self, why: &Failure) {
        let error = match why {
            Failure::Unreadable(message) => BackendError::Protocol(message.clone()),
            Failure::Broken(message) if self.mutating => BackendError::Ambiguous(message.clone()),
            Failure::Broken(message) => BackendError::Unreachable(message.clone()),
        };
        let _ = self.answer.send(Err(error));
    }
}

/// Why a connection stopped.
enum Failure {
    /// The socket failed or was closed.
    Broken(String),
    /// The node sent bytes that are not a reply to what was asked: a bug,
    /// or not memcached on that port.
    Unreadable(String),
}

/// Set once, when either task stops; wakes the other.
#[derive(Default)]
struct Closing {
    closed: AtomicBool,
    wake: Notify,
}

impl Closing {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_waiters();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    async fn closed(&self) {
        loop {
            // Created before the check: a `close` in between still wakes it.
            let woken = self.wake.notified();
            if self.is_closed() {
                return;
            }
            woken.await;
        }
    }
}

/// Why an exchange has no replies.
#[derive(Debug)]
pub(super) enum ExchangeError {
    /// The connection closed before the commands were written: nothing
    /// reached the node, so they can be sent again on another connection.
    NotSent,
    /// Written (perhaps in part), then this went wrong.
    Failed(BackendError),
}

/// A handle on one connection; dropping the last one closes it.
pub(super) struct Connection {
    queue: mpsc::Sender<Exchange>,
    closing: Arc<Closing>,
}

impl Connection {
    /// Dials `address` and starts the connection's reader and writer tasks.
    pub(super) async fn dial(address: &str) -> Result<Self, BackendError> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| BackendError::Unreachable(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| BackendError::Unreachable(e.to_string()))?;
        let (read_half, write_half) = stream.into_split();
        let (queue, queued) = mpsc::channel(QUEUE_CAPACITY);
        let (written, awaited) = mpsc::unbounded_channel();
        let closing = Arc::new(Closing::default());
        tokio::spawn(write_loop(queued, write_half, written, Arc::clone(&closing)));
        tokio::spawn(read_loop(read_half, awaited, Arc::clone(&closing)));
        Ok(Self { queue, closing })
    }

    /// The connection broke or was shut: dial another.
    pub(super) fn is_closed(&self) -> bool {
        self.closing.is_closed() || self.queue.is_closed()
    }

    /// Sends `commands` (already encoded) and waits for their `replies`
    /// replies. `mutating`: the commands may change data, so a connection
    /// lost after they were written makes their outcome ambiguous.
    pub(super) async fn exchange(
        &self,
        commands: Bytes,
        replies: usize,
        mutating: bool,
    ) -> Result<Vec<Reply>, ExchangeError> {
        let (answer, answered) = oneshot::channel();
        let exchange = Exchange {
            commands,
            waiting: Waiting {
                replies,
                mutating,
                answer,
            },
        };
        self.queue.send(exchange).await.map_err(|_| ExchangeError::NotSent)?;
        // Dropped unanswered: the writer stopped before writing it.
        answered
            .await
            .map_err(|_| ExchangeError::NotSent)?
            .map_err(ExchangeError::Failed)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.closing.close();
    }
}

/// Writes queued exchanges, as many as are queued in one `write`, and
/// hands them to the reader (before their bytes go out, so a reply never
/// arrives for an exchange the reader does not know yet).
async fn write_loop(
    mut queued: mpsc::Receiver<Exchange>,
    mut socket: OwnedWriteHalf,
    written: mpsc::UnboundedSender<Waiting>,
    closing: Arc<Closing>,
) {
    let mut buffer = Vec::with_capacity(READ_BUFFER);
    loop {
        let first = tokio::select! {
            next = queued.recv() => next,
            () = closing.closed() => None,
        };
        let Some(first) = first else { break };
        // Let the tasks that are ready now queue their commands too, so
        // they go out in this write.
        let mut queued_before = 0;
        for _ in 0..MAX_YIELDS {
            tokio::task::yield_now().await;
            let now = queued.len();
            if now == queued_before {
                break;
            }
            queued_before = now;
        }
        buffer.clear();
        let mut next = Some(first);
        while let Some(exchange) = next.take() {
            // A caller that gave up before its exchange was written: never send it.
            if !exchange.waiting.answer.is_closed() {
                buffer.extend_from_slice(&exchange.commands);
                if let Err(unsent) = written.send(exchange.waiting) {
                    unsent.0.fail(&Failure::Broken("connection closed".to_owned()));
                    closing.close();
                    return;
                }
            }
            if buffer.len() < MAX_WRITE_BYTES {
                next = queued.try_recv().ok();
            }
        }
        if buffer.is_empty() {
            continue;
        }
        let outcome = tokio::select! {
            outcome = socket.write_all(&buffer) => outcome,
            () = closing.closed() => break,
        };
        if outcome.is_err() {
            break;
        }
    }
    closing.close();
}

/// Reads replies and answers exchanges in the order they were written.
async fn read_loop(mut socket: OwnedReadHalf, mut written: mpsc::UnboundedReceiver<Waiting>, closing: Arc<Closing>) {
    let mut buffer = BytesMut::with_capacity(READ_BUFFER);
    let mut current: Option<(Waiting, Vec<Reply>)> = None;
    let why = 'connection: loop {
        loop {
            let (reply, used) = match parse_reply(&buffer) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(error) => break 'connection Failure::Unreadable(error.to_string()),
            };
            buffer.advance(used);
            let (waiting, mut replies) = match current.take() {
                Some(entry) => entry,
                None => match written.try_recv() {
                    Ok(waiting) => {
                        let capacity = waiting.replies;
                        (waiting, Vec::with_capacity(capacity))
                    }
                    Err(_) => break 'connection Failure::Unreadable("a reply nobody asked for".to_owned()),
                },
            };
            replies.push(reply);
            if replies.len() >= waiting.replies {
                let _ = waiting.answer.send(Ok(replies));
            } else {
                current = Some((waiting, replies));
            }
        }
        if buffer.capacity() - buffer.len() < READ_BUFFER / 4 {
            buffer.reserve(READ_BUFFER);
        }
        tokio::select! {
            read = socket.read_buf(&mut buffer) => match read {
                Ok(0) => break Failure::Broken("connection closed by the node".to_owned()),
                Ok(_) => {}
                Err(error) => break Failure::Broken(error.to_string()),
            },
            () = closing.closed() => break Failure::Broken("connection closed".to_owned()),
        }
    };
    closing.close();
    written.close();
    if let Some((waiting, _)) = current {
        waiting.fail(&why);
    }
    while let Ok(waiting) = written.try_recv() {
        waiting.fail(&why);
    }
}
