//! Load, verify and chaos tools for `memcached-sessions`.
//!
//! Two binaries share the load engine in this library:
//!
//! * **`load-verify`** keeps K virtual users busy against one URL (a load
//!   balancer) or a list of demo-app instance URLs, remembers the count it
//!   expects for every session, reads every session back at the end and
//!   prints one summary line. Exit code 0: nothing lost; 1: something was
//!   lost (or could not be verified); 2: usage or startup error.
//! * **`chaos-local`** starts 3 memcached nodes and 2 demo-app instances on
//!   loopback per scenario, runs the load engine in-process, injects one
//!   fault mid-run (kill -9 / SIGSTOP+SIGCONT / restart empty of a memcached
//!   node, kill -9 of an app instance), keeps the load running, verifies and
//!   prints one line per scenario. See [`scenario`] for the list, and for the
//!   window that asynchronous backup leaves open when an app instance dies.
//!
//! # The demo-app contract used here
//!
//! `POST /counter[?delay_ms=N]` increments the session's counter (creating
//! the session if there is none) and `GET /counter` reads it; both answer
//! `{"count":N,"session_id":"<id or null>","instance":"<route>"}`. The
//! session travels in the `SESSIONID` cookie. Ids look like
//! `<32 random chars>-<node>[.<route>]`; the random part stays the same when
//! a session is relocated to another memcached node or taken over by another
//! instance, so "the same session" means "the same first 32 characters"
//! ([`session_id`]).
//!
//! # Accounting: honest about ambiguity
//!
//! Each virtual user sends one request at a time and keeps an
//! [`Expectation`]: the range `[lo, hi]` the session's counter must be in.
//!
//! * A write that **succeeds** with count `c` is correct iff
//!   `lo + 1 <= c <= hi + 1`; a **read** returning `c` iff `lo <= c <= hi`.
//!   Either way the range then becomes `[c, c + late]` (see below).
//! * A write that **fails** may or may not have been applied
//!   ([`WriteEffect`]): a refused connection never reached the server (range
//!   unchanged); an HTTP error status means the server finished the request,
//!   perhaps after incrementing (`hi += 1`); a timeout or broken connection
//!   may even be applied *later* by a server still working on it
//!   (`hi += 1`, and `late += 1`: every later observation keeps that much
//!   head room, since such a write can land after any read).
//! * A count below the range is **lost updates** (`lo - c` of them); a count
//!   above it is **extra updates** (an increment nobody sent, or one applied
//!   twice). A response whose session's random part differs from the user's
//!   session (or has no session) is a **lost session**: the server forgot
//!   it. It is recorded, and the user continues with the new session.
//! * Nothing is ever retried to make a check pass. Only the final read-back
//!   retries transport errors (a killed instance's users may still be moving
//!   to another one); a session whose read-back still fails is counted as
//!   **unverified**, which fails the run as well: "nothing lost" is only
//!   claimed for sessions that were actually read back.
//!
//! Optionally ([`LoadConfig::handoff`]) every session is then read once
//! more through the next target, which in sticky mode must take it over
//! from memcached: that checks the backup copy, not only the primary.
//!
//! Errors are reported by HTTP status (`503`, …) and, for transport
//! failures, as `refused` (no connection: not sent), `timeout` and
//! `transport` (anything else, e.g. a connection reset by a dying process).

#![forbid(unsafe_code)]

mod app_instance;
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
mod user;

pub use crate::app_instance::AppInstance;
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
pub use crate::summary::Summary;
pub use crate::tally::Tally;
pub use crate::targets::{TargetMode, TargetPicker, parse_targets};
