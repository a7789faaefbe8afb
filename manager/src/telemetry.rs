//! Metrics through the [`metrics`] facade: the library records, the app
//! chooses the exporter (the demo app serves Prometheus text at
//! `GET /metrics`). Install the app's recorder before
//! `SessionManager::start`: handles are registered with the recorder in
//! place at their first use.
//!
//! Three kinds, all prefixed `memcached_sessions_`:
//! - every counter of [`Statistics`] as a `…_total` counter, exported
//!   every `nodeProbeInterval` by the manager (as increments, so several
//!   managers in one process add up), with the availability of every node
//!   (`node_up{node}`) and the gauges (`active`, queue lengths);
//! - real histograms, recorded as things happen: durations in seconds,
//!   sizes in bytes;
//! - per node, as things happen: every store operation's duration by
//!   `op` and `result`, and sticky backups by `result`.
//!
//! Labels are node labels (`n1`, `host:port` for a node without id),
//! operation names and results, never a session id. [`catalog`] lists
//! every metric with its meaning; the README's table is rendered from it
//! (a test compares them).

use crate::stats::{self, COUNTERS, CounterSnapshot, Statistics};

/// The common prefix of every metric name.
pub(crate) const PREFIX: &str = "memcached_sessions_";

/// What a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric, as the README lists it.
#[derive(Clone, Debug)]
pub(crate) struct MetricDoc {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    /// The labels (read by the README table's test only).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) labels: &'static str,
    pub(crate) meaning: String,
}

/// The histograms recorded as things happen, with their meaning.
pub(crate) const HISTOGRAMS: &[(&str, &str)] = &[
    (
        stats::BACKUP_DURATION,
        "Sticky: one backup (serialize and write, or touch).",
    ),
    (
        stats::BACKUP_WAIT,
        "Sticky: how long a response waited for backups — with `sessionBackupAsync=false` its own; with async backup, only when its session's previous answered change had not landed yet, the write that stores it.",
    ),
    (
        stats::LOAD_DURATION,
        "Loading a session from memcached (takeover, non-sticky load).",
    ),
    (stats::SERIALIZATION_DURATION, "Serializing a session for a write."),
    (stats::SESSION_SIZE, "Serialized size of a written session."),
    (stats::LOCK_WAIT, "Non-sticky: time to acquire a session lock."),
    (
        stats::LOCK_FAILURE_WAIT,
        "Non-sticky: time spent before giving up on a lock.",
    ),
    (stats::LOCK_RELEASE_DURATION, "Non-sticky: time to release a lock."),
    (stats::LOCK_HOLD, "Non-sticky: how long a lock was held."),
];

/// Name of the per-operation histogram (labels `node`, `op`, `result`).
pub(crate) const STORE_OPERATION: &str = "memcached_sessions_store_operation_duration_seconds";
/// Name of the per-node backup counter (labels `node`, `result`).
pub(crate) const BACKUPS: &str = "memcached_sessions_backups_total";
/// Name of the node availability gauge (label `node`).
pub(crate) const NODE_UP: &str = "memcached_sessions_node_up";
/// Name of the replicated store's event counter (label `event`).
pub(crate) const REPLICATED_EVENTS: &str = "memcached_sessions_replicated_events_total";

/// Counters exported under a name of their own (with a `result` label)
/// instead of `<counter>_total`.
const TAKEOVERS: &str = "memcached_sessions_takeovers_total";

/// The gauges exported with the counters.
const GAUGES: &[(&str, &str)] = &[
    (
        "memcached_sessions_active",
        "Sessions held in this process (sticky) or in use by its requests (non-sticky).",
    ),
    (
        "memcached_sessions_backup_queue_length",
        "Sticky: sessions waiting in the async backup queue.",
    ),
    (
        "memcached_sessions_repair_queue_length",
        "Writes owed to nodes that were down or failed them (logout tombstones, forward records), waiting for their node.",
    ),
    (
        "memcached_sessions_unsynced_sessions",
        "Sticky: sessions whose last backup failed or was deferred, waiting for a retry.",
    ),
];

/// The counter a [`Statistics`] counter is exported as, and its labels.
fn counter_name(field: &str) -> (String, Option<(&'static str, &'static str)>) {
    match field {
        "takeovers" => (TAKEOVERS.to_owned(), Some(("result", "taken"))),
        "takeover_conflicts" => (TAKEOVERS.to_owned(), Some(("result", "conflict"))),
        _ => (format!("{PREFIX}{field}_total"), None),
    }
}

/// Every metric this crate records.
pub(crate) fn catalog() -> Vec<MetricDoc> {
    let mut docs = Vec::new();
    for (field, meaning) in COUNTERS {
        let (name, label) = counter_name(field);
        if label.is_some() {
            if field == &"takeovers" {
                docs.push(MetricDoc {
                    name,
                    kind: Kind::Counter,
                    labels: "`result`: `taken`, `conflict`",
                    meaning: "Sticky: sessions taken over from another instance, and takeovers refused because another instance was taking the same session over.".to_owned(),
                });
            }
            continue;
        }
        docs.push(MetricDoc {
            name,
            kind: Kind::Counter,
            labels: "",
            meaning: normalize(meaning),
        });
    }
    docs.push(MetricDoc {
        name: BACKUPS.to_owned(),
        kind: Kind::Counter,
        labels: "`node`; `result`: `written`, `touched`, `failed`",
        meaning: "Sticky: backups by node and outcome.".to_owned(),
    });
    docs.push(MetricDoc {
        name: REPLICATED_EVENTS.to_owned(),
        kind: Kind::Counter,
        labels: "`event`: `copy_recreated`, `stale_copy_replaced`, `single_copy_write`, `id_taken`, `decode_failure`",
        meaning: "The replicated store (`tower-sessions-memcached`): copies re-created on a replica that lacked them, older or undecodable copies replaced, writes that reached one replica only, creates that found their id taken, stored bytes that did not decode.".to_owned(),
    });
    docs.push(MetricDoc {
        name: NODE_UP.to_owned(),
        kind: Kind::Gauge,
        labels: "`node`",
        meaning: "1 while the node is considered available, 0 while it is down (updated by every operation and by the prober).".to_owned(),
    });
    for (name, meaning) in GAUGES {
        docs.push(MetricDoc {
            name: (*name).to_owned(),
            kind: Kind::Gauge,
            labels: "",
            meaning: (*meaning).to_owned(),
        });
    }
    docs.push(MetricDoc {
        name: STORE_OPERATION.to_owned(),
        kind: Kind::Histogram,
        labels: "`node`; `op` (`get`, `set`, `touch`, …); `result`: `ok`, `error`, `abandoned` (timed out or cancelled)",
        meaning: "Every memcached operation.".to_owned(),
    });
    for (name, meaning) in HISTOGRAMS {
        docs.push(MetricDoc {
            name: (*name).to_owned(),
            kind: Kind::Histogram,
            labels: "",
            meaning: (*meaning).to_owned(),
        });
    }
    docs
}

/// Describes every metric to the recorder in place (Prometheus shows the
/// meanings as `# HELP` lines, with the unit of durations and sizes).
pub(crate) fn describe() {
    for doc in catalog() {
        let unit = if doc.name.ends_with("_seconds") {
            Some(metrics::Unit::Seconds)
        } else if doc.name.ends_with("_bytes") {
            Some(metrics::Unit::Bytes)
        } else {
            None
        };
        match (doc.kind, unit) {
            (Kind::Counter, _) => metrics::describe_counter!(doc.name, doc.meaning),
            (Kind::Gauge, _) => metrics::describe_gauge!(doc.name, doc.meaning),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(doc.name, unit, doc.meaning),
            (Kind::Histogram, None) => metrics::describe_histogram!(doc.name, doc.meaning),
        }
    }
}

fn normalize(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Exports what changed since `last`: counter increments, the gauges, and
/// each node's availability (`nodes`: label and state).
pub(crate) fn export(statistics: &Statistics, last: &mut CounterSnapshot, nodes: &[(String, bool)]) {
    for ((field, _), (now, before)) in COUNTERS
        .iter()
        .zip(statistics.counters.values().into_iter().zip(last.values()))
    {
        let delta = now.saturating_sub(before);
        if delta == 0 {
            continue;
        }
        match counter_name(field) {
            (name, None) => metrics::counter!(name).increment(delta),
            (name, Some((key, value))) => metrics::counter!(name, key => value).increment(delta),
        }
    }
    *last = statistics.counters.clone();
    let gauges = [
        statistics.local_sessions,
        statistics.backup_queue_len,
        statistics.repair_queue_len,
        statistics.unsynced_sessions,
    ];
    for ((name, _), value) in GAUGES.iter().zip(gauges) {
        metrics::gauge!(*name).set(value as f64);
    }
    for (label, up) in nodes {
        node_up(label, *up);
    }
}

/// Counts one event of the replicated store (see [`REPLICATED_EVENTS`]).
pub(crate) fn replicated_event(event: &'static str) {
    metrics::counter!(REPLICATED_EVENTS, "event" => event).increment(1);
}

/// Sets a node's availability gauge.
pub(crate) fn node_up(label: &str, up: bool) {
    metrics::gauge!(NODE_UP, "node" => label.to_owned()).set(if up { 1.0 } else { 0.0 });
}

/// The README's metrics table, rendered from [`catalog`].
#[cfg(test)]
pub(crate) fn markdown_table() -> String {
    let mut table = String::from("| metric | type | labels | meaning |\n|---|---|---|---|\n");
    for doc in catalog() {
        let kind = match doc.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let labels = if doc.labels.is_empty() { "—" } else { doc.labels };
        table.push_str(&format!("| `{}` | {kind} | {labels} | {} |\n", doc.name, doc.meaning));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_metric() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).expect("README.md");
        let expected = markdown_table();
        let header = expected.lines().next().expect("a header");
        let start = readme
            .find(header)
            .expect("the README has the metrics table (header as rendered)");
        let table: String = readme[start..]
            .lines()
            .take_while(|line| line.starts_with('|'))
            .map(|line| format!("{line}\n"))
            .collect();
        assert_eq!(table, expected, "README.md's metrics table differs from telemetry.rs");
    }

    #[test]
    fn names_are_prometheus_names_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for doc in catalog() {
            assert!(doc.name.starts_with(PREFIX), "{}", doc.name);
            assert!(
                doc.name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{}",
                doc.name
            );
            assert!(seen.insert(doc.name.clone()), "{} listed twice", doc.name);
        }
    }
}
