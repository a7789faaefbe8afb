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
//!   connection closes: every exchange that was handed to the socket fails
//!   as [`BackendError::Ambiguous`] when it could have changed data (it may
//!   have been carried out), otherwise as [`BackendError::Unreachable`]
//!   (broken) or [`BackendError::Protocol`] (unreadable bytes); exchanges
//!   never written fail as [`ExchangeError::NotSent`]. The node's pool
//!   dials a new connection.
//! - **No deadlines here**: the caller bounds each exchange (and the dial),
//!   and closes a connection on which nothing at all was answered for a
//!   whole timeout ([`Connection::answered_since`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::protocol::{Reply, parse_reply};
use crate::error::BackendError;

/// Exchanges queued for the writer before senders wait for room. Small
/// enough that what callers abandoned on a stuck node stays bounded.
const QUEUE_CAPACITY: usize = 1024;
/// Bytes gathered into one `write` at most (more waits for the next).
const MAX_WRITE_BYTES: usize = 256 * 1024;
/// Times the writer lets other tasks run, while they keep queueing
/// commands, before it writes.
const MAX_YIELDS: usize = 4;
/// Initial read buffer; it grows to the largest reply.
const READ_BUFFER: usize = 16 * 1024;

type Answer = oneshot::Sender<Result<Vec<Reply>, ExchangeError>>;

/// Commands to send and where their replies go. Dropped before it was
/// written (the connection stopped), its caller learns it was not sent.
struct Exchange {
    commands: Bytes,
    replies: usize,
    mutating: bool,
    answer: Answer,
}

/// An exchange handed to the socket, whose replies are awaited. It is
/// always answered: if dropped unanswered, as a failure after sending.
struct Waiting {
    replies: usize,
    mutating: bool,
    answer: Option<Answer>,
}

impl Waiting {
    fn answer(mut self, result: Result<Vec<Reply>, ExchangeError>) {
        if let Some(answer) = self.answer.take() {
            let _ = answer.send(result);
        }
    }

    /// Fails the exchange because the connection stopped after it was
    /// (perhaps) written.
    fn fail(mut self, why: &Failure) {
        self.fail_now(why);
    }

    fn fail_now(&mut self, why: &Failure) {
        let error = match why {
            _ if self.mutating => BackendError::Ambiguous(why.message().to_owned()),
            Failure::Unreadable(message) => BackendError::Protocol(message.clone()),
            Failure::Broken(message) => BackendError::Unreachable(message.clone()),
        };
        if let Some(answer) = self.answer.take() {
            let _ = answer.send(Err(ExchangeError::Failed(error)));
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.answer.is_some() {
            self.fail_now(&Failure::Broken("connection closed".to_owned()));
        }
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

impl Failure {
    fn message(&self) -> &str {
        match self {
            Self::Broken(message) | Self::Unreadable(message) => message,
        }
    }
}

/// Why an exchange has no replies.
#[derive(Debug)]
pub(super) enum ExchangeError {
    /// The connection closed before the commands were written: nothing
    /// reached the node, so they can be sent again on another connection.
    NotSent,
    /// Handed to the socket (perhaps in part), then this went wrong.
    Failed(BackendError),
}

/// State both tasks and the handles share.
struct ConnectionState {
    closed: AtomicBool,
    wake: Notify,
    /// When the connection was opened; reply times count from it.
    opened: Instant,
    /// 1 + milliseconds after `opened` when the last reply arrived; 0:
    /// none yet.
    last_reply_ms: AtomicU64,
}

impl ConnectionState {
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

    fn millis_since_opened(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.opened).as_millis()).unwrap_or(u64::MAX)
    }
}

/// A handle on one connection; dropping the last one closes it.
pub(super) struct Connection {
    queue: mpsc::Sender<Exchange>,
    state: Arc<ConnectionState>,
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
        let state = Arc::new(ConnectionState {
            closed: AtomicBool::new(false),
            wake: Notify::new(),
            opened: Instant::now(),
            last_reply_ms: AtomicU64::new(0),
        });
        tokio::spawn(write_loop(queued, write_half, written, Arc::clone(&state)));
        tokio::spawn(read_loop(read_half, awaited, Arc::clone(&state)));
        Ok(Self { queue, state })
    }

    /// The connection broke or was shut: dial another.
    pub(super) fn is_closed(&self) -> bool {
        self.state.is_closed() || self.queue.is_closed()
    }

    /// Shuts the connection: exchanges in flight fail, queued ones are not sent.
    pub(super) fn close(&self) {
        self.state.close();
    }

    /// Whether any reply arrived at or after `since` (to the millisecond).
    pub(super) fn answered_since(&self, since: Instant) -> bool {
        match self.state.last_reply_ms.load(Ordering::Relaxed) {
            0 => false,
            last => last > self.state.millis_since_opened(since),
        }
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
            replies,
            mutating,
            answer,
        };
        self.queue.send(exchange).await.map_err(|_| ExchangeError::NotSent)?;
        // Dropped unanswered: it was still queued when the writer stopped.
        answered.await.map_err(|_| ExchangeError::NotSent)?
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.state.close();
    }
}

/// Writes queued exchanges, as many as are queued in one `write`, and
/// hands them to the reader (before their bytes go out, so a reply never
/// arrives for an exchange the reader does not know yet).
async fn write_loop(
    mut queued: mpsc::Receiver<Exchange>,
    mut socket: OwnedWriteHalf,
    written: mpsc::UnboundedSender<Waiting>,
    state: Arc<ConnectionState>,
) {
    let mut buffer = Vec::with_capacity(READ_BUFFER);
    loop {
        let first = tokio::select! {
            biased;
            () = state.closed() => None,
            next = queued.recv() => next,
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
            if !exchange.answer.is_closed() {
                let waiting = Waiting {
                    replies: exchange.replies,
                    mutating: exchange.mutating,
                    answer: Some(exchange.answer),
                };
                if let Err(unsent) = written.send(waiting) {
                    // The reader stopped: this one, and the batch, stay unsent.
                    unsent.0.answer(Err(ExchangeError::NotSent));
                    break;
                }
                buffer.extend_from_slice(&exchange.commands);
            }
            if buffer.len() < MAX_WRITE_BYTES {
                next = queued.try_recv().ok();
            }
        }
        if buffer.is_empty() {
            continue;
        }
        if state.is_closed() {
            break;
        }
        let outcome = tokio::select! {
            biased;
            () = state.closed() => break,
            outcome = socket.write_all(&buffer) => outcome,
        };
        if outcome.is_err() {
            break;
        }
    }
    state.close();
}

/// Reads replies and answers exchanges in the order they were written.
async fn read_loop(
    mut socket: OwnedReadHalf,
    mut written: mpsc::UnboundedReceiver<Waiting>,
    state: Arc<ConnectionState>,
) {
    let mut buffer = BytesMut::with_capacity(READ_BUFFER);
    let mut current: Option<(Waiting, Vec<Reply>)> = None;
    let why = 'connection: loop {
        let mut parsed_any = false;
        loop {
            let (reply, used) = match parse_reply(&buffer) {
                Ok(Some(parsed)) => parsed,
                Ok(None) => break,
                Err(error) => break 'connection Failure::Unreadable(error.to_string()),
            };
            buffer.advance(used);
            parsed_any = true;
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
                waiting.answer(Ok(replies));
            } else {
                current = Some((waiting, replies));
            }
        }
        if parsed_any {
            let now = state.millis_since_opened(Instant::now());
            state.last_reply_ms.store(now.saturating_add(1), Ordering::Relaxed);
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
            () = state.closed() => break Failure::Broken("connection closed".to_owned()),
        }
    };
    state.close();
    written.close();
    if let Some((waiting, _)) = current {
        waiting.fail(&why);
    }
    while let Ok(waiting) = written.try_recv() {
        waiting.fail(&why);
    }
}
