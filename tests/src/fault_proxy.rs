//! A TCP fault-injection proxy: put one between an app instance and a
//! memcached node to cut or slow down exactly that link, while other
//! instances keep reaching the same node.
//!
//! [`Memcached::freeze`](crate::Memcached::freeze) and
//! [`Memcached::kill`](crate::Memcached::kill) fail a node for *everybody*.
//! A network partition is different: one app instance loses a node that the
//! others still see. [`ProxyMesh`] builds that topology — one [`FaultProxy`]
//! per (instance, node) pair — and each instance is started with its own
//! node list, [`ProxyMesh::spec_for`], which points at its proxies.
//!
//! # Modes
//!
//! A proxy forwards bytes between its clients and one upstream address
//! according to its [`ProxyMode`], which can be changed at any time with
//! [`FaultProxy::set_mode`]; the change applies to new *and* open
//! connections:
//!
//! * [`Pass`](ProxyMode::Pass) — bytes flow both ways untouched.
//! * [`Delay`](ProxyMode::Delay) — every chunk read in either direction is
//!   delivered `fixed + uniform(0..=jitter)` after it was read. Chunks of one
//!   direction are never reordered: a chunk is delivered no earlier than the
//!   one before it, so a short delay drawn after a long one waits for it
//!   (like TCP, which delivers a stream in order however its segments travel).
//!   A round trip therefore takes at least `2 × fixed`.
//! * [`Blackhole`](ProxyMode::Blackhole) — a silent partition: connections
//!   are still accepted, but nothing is forwarded in either direction, and a
//!   new connection is not even dialed upstream. Bytes are *held*, not
//!   dropped (the proxy stops reading, so they wait in the kernel's socket
//!   buffers, as TCP retransmits would keep them during a real partition):
//!   when the mode goes back to `Pass` or `Delay` the streams resume intact
//!   and held requests get their replies.
//! * [`Refuse`](ProxyMode::Refuse) — the peer is gone: the listening socket is
//!   closed, so connecting fails with `ConnectionRefused`, and every open
//!   proxied connection is closed. Leaving `Refuse` binds the same port again.
//!
//! `set_mode` returns once the listener state matches the mode (closed for
//! `Refuse`, bound otherwise) and, for `Refuse`, every proxied connection is
//! closed; the `Pass`/`Delay`/`Blackhole` gates are read by the forwarding
//! tasks before each chunk is forwarded, so no byte crosses a blackholed
//! proxy once `set_mode` has returned.
//!
//! # Usage
//!
//! Start a [`ProxyMesh`] for a [`Cluster`] and the names of the app
//! instances, start every instance with [`ProxyMesh::spec_for`] as its node
//! list, then break single links with [`ProxyMesh::set`] (or a node's links
//! with [`ProxyMesh::set_all_for_node`], …); the example on [`ProxyMesh`]
//! partitions one demo-app instance from one node. A lone [`FaultProxy`]
//! fronts any TCP address.
//!
//! A proxy's upstream is a node's address, which stays valid across
//! [`Memcached::restart_empty`](crate::Memcached::restart_empty) (same port),
//! so a mesh survives node restarts; while a node is down, the proxy accepts
//! a connection and closes it when dialing the node fails.
//!
//! # Threads and cleanup
//!
//! The API is synchronous, like the rest of the harness, and may be used from
//! `#[tokio::test]` functions: each proxy runs its own current-thread tokio
//! runtime on a background thread. Dropping a [`FaultProxy`] (or the mesh)
//! stops that thread and closes the listener and every proxied connection.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::Cluster;

/// Largest chunk read from a socket at once.
const CHUNK_SIZE: usize = 16 * 1024;
/// Chunks read but not yet delivered, per direction. A bound keeps a slow
/// (delayed) direction from buffering without limit: the reader then
/// stalls and TCP flow control pushes back on the sender.
const IN_FLIGHT_CHUNKS: usize = 256;
/// Pause before retrying a failed `bind` (leaving `Refuse`) or `accept`.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// How long [`FaultProxy::set_mode`] waits for the mode to be applied.
const MODE_APPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval of [`FaultProxy::set_mode`].
const MODE_APPLY_POLL: Duration = Duration::from_millis(1);

/// What a [`FaultProxy`] does with the traffic.
///
/// A mode applies to new and open connections alike, from the moment
/// [`FaultProxy::set_mode`] returns:
///
/// * `Pass` — bytes flow both ways untouched.
/// * `Delay` — every chunk read in either direction is delivered
///   `fixed + uniform(0..=jitter)` after it was read, but never before the
///   chunk read before it in the same direction (no reordering, like TCP). A
///   request/reply round trip takes at least `2 × fixed`.
/// * `Blackhole` — a silent partition: connections are still accepted but
///   nothing is forwarded either way and new connections are not dialed
///   upstream. Bytes are held, not dropped (the proxy stops reading them), so
///   after a switch to `Pass` or `Delay` the streams resume intact and held
///   requests get their replies.
/// * `Refuse` — the listening socket is closed (connecting fails with
///   `ConnectionRefused`) and open proxied connections are closed; leaving
///   `Refuse` binds the same port again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward bytes both ways.
    Pass,
    /// Deliver every chunk, in each direction, `fixed + uniform(0..=jitter)`
    /// after it was read, never reordering within a direction.
    Delay {
        /// Delay applied to every chunk.
        fixed: Duration,
        /// Upper bound of the random extra delay per chunk.
        jitter: Duration,
    },
    /// Accept connections but forward nothing in either direction; bytes are
    /// held and flow again, intact, after a switch to `Pass` or `Delay`.
    Blackhole,
    /// Refuse new connections (the listener is closed) and close open ones.
    Refuse,
}

impl ProxyMode {
    /// `true` for the modes in which bytes are forwarded.
    fn flows(self) -> bool {
        matches!(self, ProxyMode::Pass | ProxyMode::Delay { .. })
    }
}

/// State shared between the handle and the proxy thread. Plain atomics: the
/// handle only reads them (and polls `listening`/`open` in `set_mode`).
#[derive(Debug, Default)]
struct Shared {
    accepted: AtomicU64,
    /// Proxied connections currently open (accepted and not yet closed).
    open: AtomicU64,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
    /// Whether the listening socket is bound (false only in `Refuse`).
    listening: AtomicBool,
}

/// A TCP proxy on `127.0.0.1:<free port>` in front of one upstream address,
/// with a switchable [`ProxyMode`].
///
/// Created in [`Pass`](ProxyMode::Pass) mode. It runs on its own thread
/// with a current-thread tokio runtime, so its API is blocking and may be
/// used from `#[tokio::test]` functions too. Dropping it stops that thread
/// and closes its listener and every proxied connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    mode: watch::Sender<ProxyMode>,
    shared: Arc<Shared>,
    /// Dropped to stop the accept loop (and with it the runtime).
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` in [`Pass`](ProxyMode::Pass) mode,
    /// listening on `127.0.0.1` at a port picked by the kernel.
    ///
    /// The upstream is dialed per accepted connection (lazily), so it need
    /// not be up yet.
    ///
    /// # Panics
    ///
    /// If the thread, its runtime or the listener cannot be created.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let (mode_tx, mode_rx) = watch::channel(ProxyMode::Pass);
        let shared = Arc::new(Shared::default());
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<SocketAddr, String>>(1);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy->{upstream}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = ready_tx.send(Err(format!("cannot build its tokio runtime: {err}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let bound = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                        .await
                        .and_then(|listener| Ok((listener.local_addr()?, listener)));
                    let (addr, listener) = match bound {
                        Ok(bound) => bound,
                        Err(err) => {
                            let _ = ready_tx.send(Err(format!("cannot listen on 127.0.0.1:0: {err}")));
                            return;
                        }
                    };
                    thread_shared.listening.store(true, Ordering::SeqCst);
                    let _ = ready_tx.send(Ok(addr));
                    accept_loop(listener, addr, upstream, mode_rx, shutdown_rx, thread_shared).await;
                });
                // Dropping the runtime drops every connection task, which
                // closes their sockets.
            })
            .unwrap_or_else(|err| panic!("fault proxy to {upstream}: cannot spawn its thread: {err}"));
        let addr = match ready_rx.recv() {
            Ok(Ok(addr)) => addr,
            Ok(Err(message)) => {
                let _ = thread.join();
                panic!("fault proxy to {upstream}: {message}");
            }
            Err(_) => {
                let _ = thread.join();
                panic!("fault proxy to {upstream}: its thread ended before listening");
            }
        };
        FaultProxy {
            addr,
            upstream,
            mode: mode_tx,
            shared,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    /// The address clients connect to (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port of [`addr`](Self::addr) (kept across `Refuse`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.borrow()
    }

    /// Switches the mode, for new and open connections alike.
    ///
    /// Returns once the listener is closed (`Refuse`) or bound again (any
    /// other mode), and for `Refuse` once every proxied connection is closed.
    /// Forwarding tasks check the mode before each chunk, so after this
    /// returns no byte crosses a blackholed proxy.
    ///
    /// # Panics
    ///
    /// If that state is not reached within 5 s (e.g. another process took
    /// the port while the proxy was refusing).
    pub fn set_mode(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
        let deadline = std::time::Instant::now() + MODE_APPLY_TIMEOUT;
        loop {
            // Compare with the latest mode, in case another thread changed it.
            let refusing = self.mode() == ProxyMode::Refuse;
            let listening = self.shared.listening.load(Ordering::SeqCst);
            let applied = if refusing {
                !listening && self.open_connections() == 0
            } else {
                listening
            };
            if applied {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "fault proxy {} -> {}: mode {mode:?} not applied within {MODE_APPLY_TIMEOUT:?} \
                 (listening: {listening}, open connections: {}); was the port taken while refusing?",
                self.addr,
                self.upstream,
                self.open_connections()
            );
            std::thread::sleep(MODE_APPLY_POLL);
        }
    }

    /// Connections accepted so far (in any mode but `Refuse`).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Proxied connections currently open.
    pub fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Bytes delivered to the upstream so far.
    pub fn bytes_to_upstream(&self) -> u64 {
        self.shared.to_upstream.load(Ordering::SeqCst)
    }

    /// Bytes delivered to clients so far.
    pub fn bytes_to_client(&self) -> u64 {
        self.shared.to_client.load(Ordering::SeqCst)
    }

    /// Bytes delivered in both directions so far
    /// ([`bytes_to_upstream`](Self::bytes_to_upstream) +
    /// [`bytes_to_client`](Self::bytes_to_client)). A byte counts once it
    /// was written to the other socket, not when it was read.
    pub fn bytes_forwarded(&self) -> u64 {
        self.bytes_to_upstream() + self.bytes_to_client()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Dropping the sender ends the accept loop; the thread then drops
        // its runtime, and with it every connection task and socket.
        drop(self.shutdown.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts connections (while not refusing) and spawns one relay task each;
/// closes and re-binds the listener as the mode enters and leaves `Refuse`.
async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
    mut shutdown: oneshot::Receiver<()>,
    shared: Arc<Shared>,
) {
    let mut listener = Some(listener);
    loop {
        let refusing = *mode.borrow_and_update() == ProxyMode::Refuse;
        if refusing && listener.is_some() {
            listener = None;
            shared.listening.store(false, Ordering::SeqCst);
        } else if !refusing && listener.is_none() {
            // tokio sets SO_REUSEADDR, so connections of the previous
            // listener in TIME_WAIT do not block the port.
            match TcpListener::bind(addr).await {
                Ok(bound) => {
                    listener = Some(bound);
                    shared.listening.store(true, Ordering::SeqCst);
                }
                Err(_) => {
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = mode.changed() => {}
                        () = tokio::time::sleep(RETRY_INTERVAL) => {}
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = accept(listener.as_ref()) => match accepted {
                Ok(client) => {
                    shared.accepted.fetch_add(1, Ordering::SeqCst);
                    // Counted before the task runs, so `set_mode(Refuse)`
                    // cannot miss a connection that was just accepted.
                    let open = OpenGuard::new(Arc::clone(&shared));
                    tokio::spawn(serve(client, upstream, mode.clone(), open));
                }
                // E.g. out of file descriptors: back off instead of spinning.
                Err(_) => tokio::time::sleep(RETRY_INTERVAL).await,
            },
        }
    }
}

/// Accepts from `listener`, or never completes without one.
async fn accept(listener: Option<&TcpListener>) -> io::Result<TcpStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// Counts an open connection in [`Shared::open`] until dropped.
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: Arc<Shared>) -> OpenGuard {
        shared.open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(shared)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One proxied connection: relays until both directions ended, an error
/// occurred or the mode became `Refuse`; then both sockets are closed.
async fn serve(mut client: TcpStream, upstream: SocketAddr, mode: watch::Receiver<ProxyMode>, open: OpenGuard) {
    let shared = Arc::clone(&open.0);
    let mut refuse = mode.clone();
    tokio::select! {
        // An `Err` (the proxy is being dropped) closes the connection too.
        _ = refuse.wait_for(|mode| *mode == ProxyMode::Refuse) => {}
        _ = relay(&mut client, upstream, mode, &shared) => {}
    }
    // Sockets are closed here, before the connection stops counting as open.
    drop(client);
    drop(open);
}

async fn relay(
    client: &mut TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<ProxyMode>,
    shared: &Shared,
) -> io::Result<()> {
    client.set_nodelay(true)?;
    // Dial lazily: a blackholed proxy holds the client without touching the
    // upstream, like a partition in which the SYN never arrives.
    flowing(&mut mode).await;
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.split();
    let (server_read, server_write) = server.split();
    tokio::try_join!(
        pump(client_read, server_write, mode.clone(), &shared.to_upstream),
        pump(server_read, client_write, mode, &shared.to_client),
    )?;
    Ok(())
}

/// Waits until the mode lets bytes flow and returns it. Never returns once
/// the proxy is being dropped (its runtime is about to cancel everything).
async fn flowing(mode: &mut watch::Receiver<ProxyMode>) -> ProxyMode {
    // Copy the mode out at once: the borrow must not be held across awaits.
    let current = mode.wait_for(|mode| mode.flows()).await.map(|current| *current);
    match current {
        Ok(current) => current,
        Err(_) => std::future::pending().await,
    }
}

/// One direction: a reader that stamps every chunk with its delivery time
/// and a writer that delivers chunks in order at those times. On EOF the
/// write side is shut down (half-close), so the peer sees the EOF too.
async fn pump<R, W>(from: R, to: W, mode: watch::Receiver<ProxyMode>, delivered: &AtomicU64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (chunks_tx, chunks_rx) = mpsc::channel(IN_FLIGHT_CHUNKS);
    tokio::try_join!(
        read_chunks(from, chunks_tx, mode.clone()),
        write_chunks(to, chunks_rx, mode, delivered),
    )?;
    Ok(())
}

/// A chunk read from one socket and the instant it may be written to the
/// other.
type Chunk = (Instant, Vec<u8>);

async fn read_chunks<R>(
    mut from: R,
    chunks: mpsc::Sender<Chunk>,
    mut mode: watch::Receiver<ProxyMode>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
{
    let mut jitter = Jitter::new();
    let mut previous = Instant::now();
    loop {
        // Blackholed: stop reading, so the bytes wait in the socket buffer.
        flowing(&mut mode).await;
        let mut buf = vec![0; CHUNK_SIZE];
        let read = tokio::select! {
            read = from.read(&mut buf) => read?,
            // Re-check the gate (`read` is cancel-safe: nothing is lost).
            _ = mode.changed() => continue,
        };
        if read == 0 {
            // EOF: dropping the sender lets the writer drain and half-close.
            return Ok(());
        }
        buf.truncate(read);
        let delay = match *mode.borrow() {
            ProxyMode::Delay { fixed, jitter: max } => fixed + jitter.sample(max),
            // A chunk read just as the mode became Blackhole/Refuse is held
            // (or dropped with the connection) by the writer's gate.
            ProxyMode::Pass | ProxyMode::Blackhole | ProxyMode::Refuse => Duration::ZERO,
        };
        previous = deliver_at(previous, Instant::now(), delay);
        if chunks.send((previous, buf)).await.is_err() {
            // The writer failed; `write_chunks` reports its error.
            return Ok(());
        }
    }
}

async fn write_chunks<W>(
    mut to: W,
    mut chunks: mpsc::Receiver<Chunk>,
    mut mode: watch::Receiver<ProxyMode>,
    delivered: &AtomicU64,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    while let Some((at, bytes)) = chunks.recv().await {
        tokio::time::sleep_until(at).await;
        // Checked right before writing: a chunk already read is held here
        // while the proxy is blackholed.
        flowing(&mut mode).await;
        to.write_all(&bytes).await?;
        delivered.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    }
    to.shutdown().await
}

/// When a chunk read at `now` with `delay` is delivered: after its delay, but
/// never before the previous chunk of the same direction (no reordering).
fn deliver_at(previous: Instant, now: Instant, delay: Duration) -> Instant {
    previous.max(now + delay)
}

/// A small PRNG (SplitMix64) for the jitter; seeded from std's per-process
/// random hash keys, so no extra dependency is needed.
struct Jitter(u64);

impl Jitter {
    fn new() -> Jitter {
        Jitter(RandomState::new().hash_one(0x6a69_7474_6572_u64))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A duration uniformly distributed in `0..=max` (nanosecond steps).
    fn sample(&mut self, max: Duration) -> Duration {
        let max = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        let nanos = match max {
            0 => 0,
            u64::MAX => self.next_u64(),
            max => self.next_u64() % (max + 1),
        };
        Duration::from_nanos(nanos)
    }
}

/// One [`FaultProxy`] per (app instance, memcached node) pair of a
/// [`Cluster`], so that every instance has its own, separately breakable,
/// link to every node.
///
/// Start each instance with [`spec_for`](Self::spec_for) as its
/// `memcachedNodes`; then [`set`](Self::set) breaks one link, e.g. a
/// partition of one instance from one node. The test itself keeps talking to
/// the nodes directly through the [`Cluster`]. All proxies start in
/// [`Pass`](ProxyMode::Pass) mode.
///
/// Methods taking an instance name or node id panic if it is unknown.
///
/// # Example
///
/// ```no_run
/// use integration_tests::{Cluster, DemoApp, ProxyMesh, ProxyMode};
///
/// let cluster = Cluster::start(2);
/// let mesh = ProxyMesh::start(&cluster, &["a1", "a2"]);
/// let spec_a1 = mesh.spec_for("a1");
/// let spec_a2 = mesh.spec_for("a2");
/// let a1 = DemoApp::start(&["--memcached-nodes", &spec_a1, "--route", "a1"]);
/// let a2 = DemoApp::start(&["--memcached-nodes", &spec_a2, "--route", "a2"]);
///
/// // a1 loses n1; a2 (and the test, through `cluster`) still reach it.
/// mesh.set("a1", "n1", ProxyMode::Blackhole);
/// // ... later: heal the partition.
/// mesh.set("a1", "n1", ProxyMode::Pass);
/// ```
#[derive(Debug)]
pub struct ProxyMesh {
    /// `n1..nN`, as in [`Cluster::ids`].
    node_ids: Vec<String>,
    /// Per instance, in the order given: one proxy per node, in `node_ids` order.
    instances: Vec<(String, Vec<FaultProxy>)>,
}

impl ProxyMesh {
    /// Starts one proxy per (instance, node) pair, each forwarding to the
    /// node's address (which survives
    /// [`Memcached::restart_empty`](crate::Memcached::restart_empty)).
    ///
    /// # Panics
    ///
    /// If an instance name is empty or repeated, or a proxy cannot start.
    pub fn start(cluster: &Cluster, instances: &[&str]) -> ProxyMesh {
        for (i, name) in instances.iter().enumerate() {
            assert!(!name.is_empty(), "ProxyMesh::start: empty instance name");
            assert!(
                !instances[..i].contains(name),
                "ProxyMesh::start: instance {name:?} is listed twice in {instances:?}"
            );
        }
        let upstreams: Vec<SocketAddr> = cluster
            .nodes
            .iter()
            .map(|node| SocketAddr::from((Ipv4Addr::LOCALHOST, node.port())))
            .collect();
        ProxyMesh {
            node_ids: cluster.ids(),
            instances: instances
                .iter()
                .map(|name| {
                    let proxies = upstreams.iter().map(|&upstream| FaultProxy::start(upstream)).collect();
                    ((*name).to_owned(), proxies)
                })
                .collect(),
        }
    }

    /// The instance names, in the order given to [`start`](Self::start).
    pub fn instances(&self) -> Vec<&str> {
        self.instances.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// The node ids, `["n1", …, "nN"]`.
    pub fn node_ids(&self) -> &[String] {
        &self.node_ids
    }

    /// The `memcachedNodes` value for `instance`:
    /// `"n1:127.0.0.1:<proxy port>,n2:…"` — the ids of [`Cluster::spec`]
    /// with the addresses of this instance's proxies.
    pub fn spec_for(&self, instance: &str) -> String {
        self.node_ids
            .iter()
            .zip(self.proxies_of(instance))
            .map(|(id, proxy)| format!("{id}:{}", proxy.addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The proxy between `instance` and node `node_id`.
    pub fn proxy(&self, instance: &str, node_id: &str) -> &FaultProxy {
        &self.proxies_of(instance)[self.node_index(node_id)]
    }

    /// Sets the mode of the link between `instance` and node `node_id`.
    pub fn set(&self, instance: &str, node_id: &str, mode: ProxyMode) {
        self.proxy(instance, node_id).set_mode(mode);
    }

    /// Sets the mode of every instance's link to node `node_id`.
    pub fn set_all_for_node(&self, node_id: &str, mode: ProxyMode) {
        let index = self.node_index(node_id);
        for (_, proxies) in &self.instances {
            proxies[index].set_mode(mode);
        }
    }

    /// Sets the mode of every link of `instance` (cuts it off from all nodes).
    pub fn set_all_for_instance(&self, instance: &str, mode: ProxyMode) {
        for proxy in self.proxies_of(instance) {
            proxy.set_mode(mode);
        }
    }

    /// Sets the mode of every proxy in the mesh.
    pub fn set_all(&self, mode: ProxyMode) {
        for proxy in self.instances.iter().flat_map(|(_, proxies)| proxies) {
            proxy.set_mode(mode);
        }
    }

    fn proxies_of(&self, instance: &str) -> &[FaultProxy] {
        self.instances
            .iter()
            .find(|(name, _)| name == instance)
            .map(|(_, proxies)| proxies.as_slice())
            .unwrap_or_else(|| panic!("unknown instance {instance:?}; this mesh has {:?}", self.instances()))
    }

    fn node_index(&self, node_id: &str) -> usize {
        self.node_ids.iter().position(|id| id == node_id).unwrap_or_else(|| {
            panic!(
                "unknown memcached node id {node_id:?}; this mesh has {:?}",
                self.node_ids
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bounds() {
        let mut jitter = Jitter::new();
        let max = Duration::from_millis(3);
        let samples: Vec<Duration> = (0..10_000).map(|_| jitter.sample(max)).collect();
        assert!(samples.iter().all(|d| *d <= max));
        // Spread over the range, not stuck at one value.
        assert!(samples.iter().any(|d| *d < max / 4));
        assert!(samples.iter().any(|d| *d > max * 3 / 4));
        assert_eq!(jitter.sample(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn delivery_never_overtakes_the_previous_chunk() {
        let t0 = Instant::now();
        // A long delay, then a short one: the second chunk waits.
        let first = deliver_at(t0, t0, Duration::from_millis(50));
        let second = deliver_at(first, t0 + Duration::from_millis(1), Duration::from_millis(5));
        assert_eq!(second, first);
        // A later chunk with its own delay past the previous one keeps it.
        let third = deliver_at(second, t0 + Duration::from_millis(60), Duration::from_millis(5));
        assert_eq!(third, t0 + Duration::from_millis(65));
    }
}
