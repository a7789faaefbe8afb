//! Memcached-backed HTTP sessions with failover for [warp] and tower /
//! axum apps, in the style of Java's [memcached-session-manager] (MSM).
//!
//! Web apps running as several instances behind a load balancer need each
//! user's session on whichever instance serves the next request. This crate
//! keeps the **primary copy** of every session in the app process (sticky
//! mode) and **backs it up** to one memcached node, whose id is part of the
//! session id — `<random>-<nodeId>[.<route>]` — so any instance can find it
//! without a shared directory.
//!
//! # Quick start
//!
//! ```no_run
//! use memcached_sessions::{Config, Session, SessionManager};
//! use warp::Filter;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = Config::builder()
//!     .memcached_nodes("n1:127.0.0.1:11211,n2:127.0.0.1:11212")
//!     .route("app1")
//!     .build()?;
//! let sessions = SessionManager::start(config).await?;
//!
//! let visits = warp::path("visits")
//!     .and(sessions.session())
//!     .map(|session: Session| {
//!         let n: u64 = session.get("visits").ok().flatten().unwrap_or(0) + 1;
//!         session.insert("visits", &n).expect("u64 serializes");
//!         format!("visit number {n}")
//!     });
//! warp::serve(sessions.wrap(visits)).run(([127, 0, 0, 1], 8080)).await;
//! # Ok(()) }
//! ```
//!
//! # Web frameworks
//!
//! The core works on the `http` crate's types; adapters are features:
//! `warp` (default: `SessionManager::session` and `SessionManager::wrap`),
//! `tower` (`SessionManager::layer`, a tower `Layer` that leaves a
//! `SessionHandle` in the request extensions) and `axum` (`Session` as an
//! extractor). Both adapters run the same request path, so modes, settings
//! and guarantees are identical. With `--no-default-features` no web
//! framework is in the dependency tree.
//!
//! # Configuration
//!
//! [`Config::builder`] takes MSM's settings typed, or as text by their MSM
//! names with [`ConfigBuilder::set`]. `memcachedNodes` is
//! `n1:host:port,n2:host:port` (comma or whitespace separated); a single
//! `host:port` without id means session ids carry no node id. Without
//! `memcachedNodes` the manager uses an embedded in-process store (one
//! process only: no failover). Every invalid value is a [`ConfigError`]
//! naming the setting and quoting the text.
//!
//! # Lifecycle of a request (sticky mode)
//!
//! 1. [`SessionManager::wrap`] reads the session cookie. A malformed id, one
//!    naming an unknown node, or one nobody holds is "no session": a client
//!    can never choose its own id.
//! 2. [`SessionManager::session`] finds the session: in this process, or —
//!    when this instance does not hold it — in memcached (**takeover**).
//! 3. The handler uses the [`Session`] (typed `get` / `insert` / `remove`,
//!    [`Session::invalidate`], [`Session::cycle_id`]).
//! 4. After the handler, the session is backed up to the node named in its
//!    id **only if** it changed (an exact per-attribute comparison, no
//!    hashing: attributes are kept serialized), is new, or its id changed;
//!    a session that was only read gets its memcached TTL extended with
//!    `touch` when that is due (at most once per `margin / 2`, see below).
//!    With `sessionBackupAsync=true` (default) the backup runs off the
//!    request path through a bounded queue (sessions queued together are
//!    written in one pipelined exchange per node); with `false` the
//!    response waits up to `sessionBackupTimeout`.
//! 5. `Set-Cookie` (HttpOnly, SameSite, Path, Secure as configured) is sent
//!    only when the id is new or changed.
//!
//! **TTL**: memcached keeps a session for its remaining inactivity time plus
//! a margin of a quarter of `maxInactiveInterval` (1 s to 5 min); values
//! over 30 days are sent as absolute time; `maxInactiveInterval <= 0` means
//! never. A sweep expires idle sessions from memory every
//! `expiry_sweep_interval` and deletes their memcached copies.
//!
//! # What happens when a memcached node dies
//!
//! Node availability is tracked per node (probed every second, and updated
//! by every operation's outcome). At the next request of a session whose
//! node is down, the session is **relocated**: same random part, a live
//! node's id, the cookie re-set once, a full backup to the new node.
//! New sessions go to a random available regular node; `failoverNodes` are
//! used only when no regular node is available, and sessions leave them
//! again when a regular node is back. With no node available at all,
//! sessions keep being served from memory with unchanged ids (no cookie
//! churn) and move to a node once one is back. A node that comes back
//! **empty** is detected by a per-instance sentinel key, and every session
//! this instance holds for it is written again.
//!
//! A frozen node costs at most one `operationTimeout`: every operation is
//! bounded by it, and the failure marks the node down for everyone.
//!
//! Host names are resolved at every connection attempt (a node whose name
//! does not resolve yet is down until it does). The node list itself can
//! change at run time with [`SessionManager::set_nodes`]: a new id is
//! added, a known id at a new address is an empty node there, an id left
//! out is down for good (its sessions relocate). Its docs give the drain
//! procedure for removing a node without losing a session.
//!
//! # What happens when an app instance dies
//!
//! Another instance receives a session id it does not hold (its route names
//! another instance). It claims the session with an atomic `add` of a
//! takeover key (so two instances never both take it over: the loser
//! answers `503` with `Retry-After: 1`), loads it from memcached, rewrites
//! the route to its own, stores it under the new id, deletes the old key
//! and re-sets the cookie. Concurrent requests for it on one instance wait
//! for one takeover and share it. What the dead instance changed but had
//! not yet backed up is lost: with async backup that is at most the last
//! answered change of each session (a change is answered only once the
//! one answered before it is stored, waiting up to `sessionBackupTimeout`);
//! `sessionBackupAsync=false` closes that window.
//! An orderly [`SessionManager::shutdown`] writes every pending backup and
//! keeps all sessions in memcached.
//!
//! # Non-sticky mode
//!
//! With `sticky(false)` no instance owns a session: a request that uses
//! one loads it from memcached and writes it back at its end if it changed
//! (the write completes before the response, so the next request sees it on
//! any instance). Concurrent requests of one instance share one in-memory
//! copy; each request that changed it writes it before it answers, and the
//! last to finish releases it. The session's copy is written back only if
//! its CAS token is the one it was read with: a change based on older data
//! is refused with `503` and nothing saved (never a silent overwrite). The
//! primary copy's memcached TTL is the inactivity clock, slid by the one
//! `mg` that reads it (a read-only request costs one operation); a backup
//! copy lives on the next available node of the ring and is written only
//! after the primary kept a write. A primary that lost its copy is
//! re-created from the backup, a dead primary is replaced by its backup
//! (relocation, leaving a forward record so the old id keeps working), and
//! a logout leaves a tombstone so no backup can revive it. The exact
//! memcached operations per request kind are listed in the README.
//!
//! **Locking** (`lockingMode`): `none` (concurrent changes: the first
//! write wins, the others are refused with 503), `all` (every
//! request that uses a session holds its lock), `uriPattern:<regex>` (the
//! matching paths), `auto` (locks until a request kind — method + path — is
//! seen not to change the session; a kind seen changing it always locks). A
//! lock is an atomic `add` with TTL `lockExpiration`, retried with backoff
//! (10 ms doubling to 500 ms) for up to `operationTimeout`, renewed while
//! held, and released (CAS-guarded) at the end of the request, on every
//! error path and on invalidation. When it cannot be had, `lockFailure`
//! decides: `fail` (default) answers 503 with `Retry-After` and saves
//! nothing — no update can be lost; `proceed` serves the request unlocked
//! with a warning, as MSM does. A request whose lock expired anyway (it
//! could not be renewed) answers 503 and saves nothing. A lock is never
//! left behind by a cancelled request (client hang-up): it is released at
//! once. A write memcached did not confirm is `504` (may have been saved).
//!
//! # Hostile input and security options
//!
//! Nothing a client sends — malformed, huge, duplicated or non-UTF-8
//! cookies or id headers, ids of unknown nodes or of sessions that do not
//! exist — is ever adopted as a session id or turned into a 5xx: it is "no
//! session". Bytes read back from memcached that do not decode (garbage,
//! truncated, foreign, newer format) are "no session" too, counted in
//! `decode_failures`. [`ConfigBuilder::max_session_size`] bounds a session
//! ([`Error::SessionTooLarge`] at `insert`);
//! [`ConfigBuilder::session_encryption_keys`] seals every stored session
//! (XChaCha20-Poly1305, bound to its key, key rotation);
//! [`ConfigBuilder::storage_key_secret`] keeps session ids out of memcached
//! keys; [`ConfigBuilder::session_id_header`] carries ids for API clients;
//! `__Host-` cookie names and persistent cookies whose `Max-Age` slides with
//! the session are supported. The README's Security section has the threat
//! model.
//!
//! # A replicated store for other session layers
//!
//! [`replicated::ReplicatedStore`] keeps opaque documents (another
//! framework's sessions) on **two** nodes chosen by rendezvous hashing of
//! their id, for session layers whose ids cannot name a node; the
//! `tower-sessions-memcached` crate is a tower-sessions store on it. Its
//! module docs state its contract (what a node's death, freeze or empty
//! restart does; create never overwrites; deletion marks); it has no
//! locking and no in-process primary — that is what this crate's own
//! session layer is for.
//!
//! # Metrics
//!
//! Through the [`metrics`](https://docs.rs/metrics) facade (the app picks
//! the exporter and installs it before [`SessionManager::start`]): every
//! counter of [`Statistics`] as `memcached_sessions_<name>_total`, node
//! availability as `memcached_sessions_node_up{node}`, every memcached
//! operation's duration by node, operation and result, and real histograms
//! of backup, load and lock times and session sizes. Labels never carry a
//! session id. The README's Metrics section lists them all.
//!
//! # Concurrency guarantees
//!
//! In sticky mode all requests of a session on one instance share one
//! in-memory session; each accessor is atomic ([`Session::update`] for
//! read-modify-write); there is no lost update between requests on one
//! instance. Backups of one session never run concurrently and a delete is
//! never overtaken by an older write. In non-sticky mode with locking,
//! requests of different instances on one session run one at a time; with or
//! without locking, a write based on older data than the session's current
//! copy is refused (`503`, nothing saved) instead of overwriting it.
//!
//! [warp]: https://docs.rs/warp
//! [memcached-session-manager]: https://github.com/magro/memcached-session-manager

#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Built without any adapter (`--no-default-features`), the request glue
// has no caller yet: that build is for writing an adapter of your own.
#![cfg_attr(not(any(feature = "warp", feature = "tower")), allow(dead_code))]

mod adapter;
mod cluster;
mod config;
mod detached;
mod error;
mod events;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod id_gates;
mod inner;
mod manager;
mod non_sticky;
mod periodic;
pub mod replicated;
mod request;
mod session;
mod stats;
mod sticky;
mod store;
mod telemetry;

#[cfg(feature = "axum")]
pub use crate::adapter::tower::SessionRejection;
#[cfg(feature = "tower")]
pub use crate::adapter::tower::{SessionHandle, SessionLayer, SessionService};
pub use crate::cluster::{NodeStatus, SessionLocation};
pub use crate::config::Config;
pub use crate::config::builder::ConfigBuilder;
pub use crate::config::locking_mode::{LockFailure, LockingMode};
pub use crate::config::uri_pattern::UriPattern;
pub use crate::error::{BackendError, ConfigError, Error};
pub use crate::events::{SessionEvent, SessionEventKind};
pub use crate::manager::SessionManager;
pub use crate::request::session::Session;
pub use crate::session::node_id::NodeId;
pub use crate::stats::{CounterSnapshot, MinMaxAvgSnapshot, Statistics};
pub use crate::store::backend;
pub use crate::store::node::NodeSpec;
pub use cookie::SameSite;
