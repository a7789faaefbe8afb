//! Unit tests of [`super`]: what a session's memcached copy needs, and when
//! an answer may go before its backup.

use super::*;
use crate::session::node_id::NodeId;

fn session(max_inactive: Option<Duration>) -> SessionInner {
    let id = SessionId::generate(Some(&NodeId::parse("n1").unwrap()), None);
    SessionState::new(id, max_inactive).inner.into_inner()
}

fn stored_now(inner: &mut SessionInner, epoch: u64) {
    let now = Instant::now();
    let expires_at = inner.write_ttl(now).map(|d| now + d);
    inner.stored = Some(StoredMark {
        id: inner.id.clone(),
        version: inner.version,
        epoch,
        expires_at,
    });
}

#[tokio::test(start_paused = true)]
async fn new_changed_moved_or_lost_sessions_are_written() {
    let mut s = session(Some(Duration::from_secs(60)));
    assert_eq!(s.backup_need(Some(0)), BackupNeed::Write, "new");
    assert_eq!(s.backup_need(None), BackupNeed::Nothing, "no node to write to");
    stored_now(&mut s, 0);
    assert_eq!(s.backup_need(Some(0)), BackupNeed::Nothing);
    s.version += 1;
    assert_eq!(s.backup_need(Some(0)), BackupNeed::Write, "changed");
    stored_now(&mut s, 0);
    assert_eq!(s.backup_need(Some(1)), BackupNeed::Write, "node lost its data");
    let moved = s.id.with_location(Some(&NodeId::parse("n2").unwrap()), None);
    s.change_id(moved);
    assert_eq!(s.obsolete_ids.len(), 1);
    assert_eq!(s.backup_need(Some(0)), BackupNeed::Write, "moved");
    s.invalidated = true;
    assert_eq!(s.backup_need(Some(0)), BackupNeed::Delete);
}

#[tokio::test(start_paused = true)]
async fn read_only_sessions_are_touched_once_the_margin_runs_low() {
    let max = Duration::from_secs(60);
    let mut s = session(Some(max));
    stored_now(&mut s, 0);
    // margin = 15 s; touch once the copy would outlive the session by less than 7.5 s.
    tokio::time::advance(Duration::from_secs(7)).await;
    s.touch_access(Instant::now());
    assert_eq!(s.backup_need(Some(0)), BackupNeed::Nothing);
    tokio::time::advance(Duration::from_secs(1)).await;
    s.touch_access(Instant::now());
    assert_eq!(s.backup_need(Some(0)), BackupNeed::Touch);
}

#[tokio::test(start_paused = true)]
async fn ttl_follows_remaining_inactivity_plus_margin() {
    let s = session(Some(Duration::from_secs(1800)));
    assert_eq!(s.write_ttl(Instant::now()), Some(Duration::from_secs(1800 + 300)));
    let never = session(None);
    assert_eq!(never.write_ttl(Instant::now()), None);
    assert!(!never.is_expired(Instant::now() + Duration::from_secs(86_400 * 365)));
    let long = session(Some(Duration::from_secs(40 * 86_400)));
    assert_eq!(
        long.write_ttl(Instant::now()),
        Some(Duration::from_secs(40 * 86_400 + 300)),
        "over 30 days: the backend sends it as an absolute time"
    );
}

/// Found by the `request_record` fuzz target: a stored record with
/// `max_inactive_secs >= 2^63` overflowed `Instant + Duration`.
#[tokio::test(start_paused = true)]
async fn an_interval_beyond_the_clock_is_never_an_overflow() {
    for secs in [1 << 63, u64::MAX, (1 << 63) - 1] {
        let mut s = session(Some(Duration::from_secs(secs)));
        assert_eq!(s.write_ttl(Instant::now()), None, "{secs}");
        stored_now(&mut s, 0);
        assert_eq!(s.backup_need(Some(0)), BackupNeed::Nothing, "{secs}");
        s.stored.as_mut().unwrap().expires_at = Some(Instant::now());
        assert_eq!(s.backup_need(Some(0)), BackupNeed::Nothing, "{secs}: no due time");
        assert!(!s.is_expired(Instant::now() + Duration::from_secs(86_400 * 365)));
    }
}

#[test]
fn size_bound_matches_the_encoding() {
    let mut s = session(Some(Duration::from_secs(60)));
    assert!(envelope_len(&s) <= s.size());
    for (i, len) in [0usize, 1, 127, 128, 300, 20_000].into_iter().enumerate() {
        let key = format!("k{i}");
        let predicted = s.size_with(&key, &vec![7; len]);
        s.set_attribute(&key, vec![7; len].into());
        assert_eq!(s.size(), predicted);
        let actual = envelope_len(&s);
        assert!(
            actual <= s.size() && s.size() <= actual + RECORD_OVERHEAD,
            "{actual} vs {}",
            s.size()
        );
    }
    s.remove_attribute("k5");
    assert!(envelope_len(&s) <= s.size());
    s.clear_attributes();
    assert_eq!(s.size(), RECORD_OVERHEAD + 1);
}

fn envelope_len(s: &SessionInner) -> usize {
    crate::store::envelope::encode(s.record(), crate::store::envelope::Format::Sticky).len()
}

#[tokio::test(start_paused = true)]
async fn expiry_counts_from_the_last_access() {
    let mut s = session(Some(Duration::from_secs(10)));
    tokio::time::advance(Duration::from_secs(9)).await;
    s.touch_access(Instant::now());
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(!s.is_expired(Instant::now()));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(s.is_expired(Instant::now()));
}

#[tokio::test(start_paused = true)]
async fn a_change_waits_only_for_the_previous_answered_one() {
    let mut s = session(Some(Duration::from_secs(60)));
    assert!(s.can_answer_now(true, Some(0)), "nothing answered yet");
    s.version += 1;
    s.acknowledge();
    assert!(s.can_answer_now(false, Some(0)), "a read of what was answered");
    s.version += 1;
    assert!(
        !s.can_answer_now(true, Some(0)),
        "a new change while the answered one is not stored"
    );
    stored_now(&mut s, 0);
    assert!(
        s.can_answer_now(true, Some(0)),
        "stored (at least as recent as the answered change)"
    );
    assert!(!s.can_answer_now(true, Some(1)), "stored in an epoch the node lost");
    s.acknowledge();
    s.version += 1;
    assert!(s.can_answer_now(true, Some(0)), "the answered change is the stored one");
    s.acknowledge();
    s.version += 1;
    assert!(!s.can_answer_now(true, Some(0)));
    s.forget_stored();
    s.acknowledge();
    assert!(
        !s.can_answer_now(true, Some(0)),
        "concurrent changes: a change answered by another request still needs its write"
    );
    stored_now(&mut s, 0);
    let moved = s.id.with_location(Some(&NodeId::parse("n2").unwrap()), None);
    s.change_id(moved);
    assert!(
        !s.can_answer_now(false, Some(0)),
        "a new id (relocation, cycle_id) needs a copy under it"
    );
}
