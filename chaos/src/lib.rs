//! Load, verify and chaos tools for `memcached-sessions`.
//!
//! Two binaries share the load engine in this library:
//!
//! * **`load-verify`** keeps K virtual users busy against one URL (a load
//!   balancer) or a list of demo-app instance URLs, identifies every write
//!   by a unique token, remembers what it expects of every session, reads
//!   every session back at the end and prints one summary line. Exit code
//!   0: nothing lost; 1: something was lost, saved against a "nothing
//!   saved" answer, answered 500, or could not be verified; 2: usage or
//!   startup error.
//! * **`chaos-local`** starts 3 memcached nodes and 2 demo-app instances on
//!   loopback per scenario (the instances behind a TCP fault proxy per
//!   node when the scenario needs network faults), runs the load engine
//!   in-process, injects one fault mid-run (node kills, freezes and empty
//!   restarts, alone or combined; app kill -9, rolling orderly restarts; a
//!   partition of one instance from one node; a slow network with clients
//!   hanging up), keeps the load running, verifies, checks that the fault
//!   had its effect, and prints one line per scenario. See [`scenario`].
//!
//! # The demo-app contract used here
//!
//! `POST /counter?token=T[&delay_ms=N]` increments the session's counter
//! (creating the session if there is none) and appends `T` to the
//! session's token list (the last [`TOKEN_WINDOW`] are kept); `GET
//! /counter` reads it; both answer
//! `{"count":N,"session_id":"<id or null>","instance":"<route>","tokens":[..]}`.
//! The session travels in the `SESSIONID` cookie. Ids look like
//! `<32 random chars>-<node>[.<route>]`; the random part stays the same when
//! a session is relocated to another memcached node or taken over by another
//! instance, so "the same session" means "the same first 32 characters"
//! ([`session_id`]). `GET /stats` gives the instance's statistics.
//!
//! # Accounting: exact where it can be, honest about ambiguity
//!
//! Each virtual user sends one request at a time. Two checks run on every
//! reply:
//!
//! * **Tokens** ([`token_ledger`]): every write carries `u<user>-<seq>`.
//!   An acknowledged (2xx) token missing from the session's list is a
//!   **lost update**; a token present whose request was answered `503` or
//!   `409` — which promise "nothing saved" — is a **phantom write**; a
//!   token present that never reached a server, or that this user never
//!   sent, is an **extra update**. Tokens of requests that failed in
//!   flight may or may not be present.
//! * **The count** ([`Expectation`]): the range `[lo, hi]` the counter must
//!   be in catches losses older than the token window. A write that
//!   **succeeds** with count `c` is correct iff `lo + 1 <= c <= hi + 1`; a
//!   **read** returning `c` iff `lo <= c <= hi`. A failed write may or may
//!   not have been applied ([`WriteEffect`]): a refused connection, `503`
//!   and `409` were not (range unchanged); another error status may have
//!   been (`hi += 1`); a timeout, broken connection or hang-up may even be
//!   applied *later* (`hi += 1` and head room kept above every later
//!   observation). A loss seen by both checks is counted once.
//!
//! A response whose session's random part differs from the user's session
//! (or has no session) is a **lost session**. Any `500` is a **server
//! error** and fails the run unless declared. Nothing is ever retried to
//! make a check pass. Only the final read-back retries transport errors (a
//! killed instance's users may still be moving to another one); a session
//! whose read-back still fails is **unverified**, which fails the run as
//! well: "nothing lost" is only claimed for sessions actually read back.
//!
//! Optionally ([`LoadConfig::handoff`]) every session is then read once
//! more through the next target, which in sticky mode must take it over
//! from memcached: that checks the backup copy, not only the primary.
//!
//! Load shapes: readers (users that only read once they have a session)
//! can idle between reads ([`LoadConfig::reader_idle`]) so their sessions
//! sit untouched across a fault; a share of requests can be **hung up**
//! ([`LoadConfig::hangup_ratio`]): the client closes the connection at a
//! random moment before the answer.
//!
//! Errors are reported by HTTP status (`503`, …) and, for transport
//! failures, as `refused` (no connection: not sent), `timeout`, `transport`
//! (anything else, e.g. a connection reset by a dying process) and
//! `hangup` (our own).

#![forbid(unsafe_code)]

mod app_instance;
mod app_stats;
mod chaos_run;
mod cookie_jar;
mod counter_reply;
mod demo_app_binary;
mod error;
mod expectation;
mod failure;
mod latency;
mod load;
mod local_cluster;
pub mod scenario;
pub mod session_id;
mod summary;
mod tally;
mod targets;
pub mod token_ledger;
mod user;

pub use crate::app_instance::AppInstance;
pub use crate::app_stats::AppStats;
pub use crate::chaos_run::{ScenarioReport, ScenarioSettings, Verdict, run_scenario};
pub use crate::cookie_jar::SessionJar;
pub use crate::counter_reply::CounterReply;
pub use crate::demo_app_binary::demo_app_binary;
pub use crate::error::Error;
pub use crate::expectation::{Check, Expectation, WriteEffect};
pub use crate::failure::Failure;
pub use crate::latency::Latency;
pub use crate::load::{LoadConfig, LoadReport, run_load};
pub use crate::local_cluster::{LocalCluster, MEMCACHED_NODES, ROUTES};
pub use crate::summary::{Summary, Tolerance};
pub use crate::tally::Tally;
pub use crate::targets::{TargetMode, TargetPicker, parse_targets};
pub use crate::token_ledger::{TOKEN_WINDOW, TokenCheck, TokenLedger, TokenOutcome};
