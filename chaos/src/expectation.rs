//! What one virtual user expects of its session's counter.
//!
//! Pure logic, no I/O: the user feeds it every outcome and gets a [`Check`]
//! back for every observed count. See the crate docs for the rules.

use crate::session_id::random_part;

/// What a failed write may have done to the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteEffect {
    /// Certainly not applied (the connection was refused: nothing was sent).
    NotApplied,
    /// Applied or not, but settled: the server finished the request (it sent
    /// an error status), so it cannot be applied after a later observation.
    MaybeApplied,
    /// Applied or not, possibly only later: the request timed out or the
    /// connection broke, and a live server may still be working on it.
    MaybeLater,
}

/// The verdict on one observed count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Check {
    /// Increments that were acknowledged (or observed) but are gone: the
    /// count was this much below the expected range.
    pub lost_updates: u64,
    /// Increments nobody sent: the count was this much above the range.
    pub extra_updates: u64,
    /// The response carried another session (or none): the user's session
    /// is gone and the server started a new one.
    pub lost_session: bool,
}

impl Check {
    /// `true` if nothing was lost or invented.
    pub fn is_consistent(&self) -> bool {
        self.lost_updates == 0 && self.extra_updates == 0 && !self.lost_session
    }
}

/// The expected counter range `[lo, hi]` of one user's session.
///
/// `late` counts the writes that failed in a way that lets them land after
/// any later observation ([`WriteEffect::MaybeLater`]); every narrowing
/// keeps that much head room above the observed count.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expectation {
    /// Random part of the session's id; `None` before the first session.
    session: Option<String>,
    lo: u64,
    hi: u64,
    late: u64,
}

impl Expectation {
    /// No session yet; the counter of a session to be created is 0.
    pub fn new() -> Expectation {
        Expectation::default()
    }

    /// The random part of the current session's id, if there is one.
    pub fn session(&self) -> Option<&str> {
        self.session.as_deref()
    }

    /// The expected range `(lo, hi)` of the counter.
    pub fn range(&self) -> (u64, u64) {
        (self.lo, self.hi)
    }

    /// Records a write that failed with the given effect.
    pub fn write_failed(&mut self, effect: WriteEffect) {
        match effect {
            WriteEffect::NotApplied => {}
            WriteEffect::MaybeApplied => self.hi += 1,
            WriteEffect::MaybeLater => {
                self.hi += 1;
                self.late += 1;
            }
        }
    }

    /// Checks a successful write that answered `count` for session `id`
    /// (full id; `None` if the response had no session).
    pub fn write_succeeded(&mut self, id: Option<&str>, count: u64) -> Check {
        self.observe(id, count, 1)
    }

    /// Checks a successful read that answered `count` for session `id`.
    pub fn read_succeeded(&mut self, id: Option<&str>, count: u64) -> Check {
        self.observe(id, count, 0)
    }

    /// `applied` is 1 for a write (it adds one to the range), 0 for a read.
    fn observe(&mut self, id: Option<&str>, count: u64, applied: u64) -> Check {
        let theirs = id.map(random_part);
        match (self.session.as_deref(), theirs) {
            (Some(mine), theirs) if theirs != Some(mine) => {
                // The server no longer knows the session: whatever it held
                // is gone. Continue with what the server handed out instead.
                self.session = theirs.map(str::to_owned);
                self.lo = count;
                self.hi = count;
                self.late = 0;
                return Check {
                    lost_session: true,
                    ..Check::default()
                };
            }
            (None, Some(theirs)) => self.session = Some(theirs.to_owned()),
            _ => {}
        }
        let (lo, hi) = (self.lo + applied, self.hi + applied);
        let check = Check {
            lost_updates: lo.saturating_sub(count),
            extra_updates: count.saturating_sub(hi),
            lost_session: false,
        };
        self.lo = count;
        self.hi = count + self.late;
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-n1.a1";
    const A_MOVED: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA-n3.a2";
    const B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB-n2.a1";

    fn with_session(count: u64) -> Expectation {
        let mut e = Expectation::new();
        assert!(e.write_succeeded(Some(A), 1).is_consistent());
        for c in 2..=count {
            assert!(e.write_succeeded(Some(A), c).is_consistent());
        }
        e
    }

    #[test]
    fn first_write_creates_the_session_at_one() {
        let mut e = Expectation::new();
        assert_eq!(e.session(), None);
        assert_eq!(e.write_succeeded(Some(A), 1), Check::default());
        assert_eq!(e.session(), Some(&A[..32]));
        assert_eq!(e.range(), (1, 1));
    }

    #[test]
    fn reads_and_writes_in_order_are_consistent() {
        let mut e = with_session(3);
        assert!(e.read_succeeded(Some(A), 3).is_consistent());
        assert!(e.write_succeeded(Some(A), 4).is_consistent());
        assert_eq!(e.range(), (4, 4));
    }

    #[test]
    fn write_below_range_counts_lost_updates() {
        let mut e = with_session(5);
        // Expected 6; got 4: two acknowledged increments are gone.
        let check = e.write_succeeded(Some(A), 4);
        assert_eq!(check.lost_updates, 2);
        assert_eq!(check.extra_updates, 0);
        assert!(!check.lost_session);
        // Continues from the observed value.
        assert_eq!(e.range(), (4, 4));
        assert!(e.write_succeeded(Some(A), 5).is_consistent());
    }

    #[test]
    fn read_below_range_counts_lost_updates() {
        let mut e = with_session(5);
        assert_eq!(e.read_succeeded(Some(A), 4).lost_updates, 1);
        assert_eq!(e.range(), (4, 4));
    }

    #[test]
    fn count_above_range_is_extra() {
        let mut e = with_session(2);
        let check = e.write_succeeded(Some(A), 5);
        assert_eq!(check.extra_updates, 2);
        assert_eq!(check.lost_updates, 0);
        assert_eq!(e.read_succeeded(Some(A), 7).extra_updates, 2);
    }

    #[test]
    fn refused_write_changes_nothing() {
        let mut e = with_session(2);
        e.write_failed(WriteEffect::NotApplied);
        assert_eq!(e.range(), (2, 2));
        assert_eq!(e.read_succeeded(Some(A), 3).extra_updates, 1);
    }

    #[test]
    fn ambiguous_write_widens_the_range_both_ways() {
        for applied in [false, true] {
            let mut e = with_session(2);
            e.write_failed(WriteEffect::MaybeApplied);
            assert_eq!(e.range(), (2, 3));
            let c = if applied { 3 } else { 2 };
            assert!(e.read_succeeded(Some(A), c).is_consistent(), "read {c}");
            // Settled: narrowed to exactly what was seen.
            assert_eq!(e.range(), (c, c));
        }
        let mut e = with_session(2);
        e.write_failed(WriteEffect::MaybeApplied);
        // The next successful write answers 3 (first not applied) or 4.
        assert!(e.clone().write_succeeded(Some(A), 3).is_consistent());
        assert!(e.clone().write_succeeded(Some(A), 4).is_consistent());
        assert_eq!(e.clone().write_succeeded(Some(A), 2).lost_updates, 1);
        assert_eq!(e.write_succeeded(Some(A), 5).extra_updates, 1);
    }

    #[test]
    fn several_ambiguous_writes_accumulate() {
        let mut e = with_session(1);
        e.write_failed(WriteEffect::MaybeApplied);
        e.write_failed(WriteEffect::MaybeApplied);
        assert_eq!(e.range(), (1, 3));
        assert!(e.clone().read_succeeded(Some(A), 1).is_consistent());
        assert!(e.clone().read_succeeded(Some(A), 3).is_consistent());
        assert_eq!(e.read_succeeded(Some(A), 0).lost_updates, 1);
    }

    #[test]
    fn a_timed_out_write_may_land_after_a_read() {
        let mut e = with_session(2);
        e.write_failed(WriteEffect::MaybeLater);
        assert_eq!(e.range(), (2, 3));
        // Not applied yet when read...
        assert!(e.read_succeeded(Some(A), 2).is_consistent());
        // ...but it may still be: the head room stays.
        assert_eq!(e.range(), (2, 3));
        assert!(e.read_succeeded(Some(A), 3).is_consistent());
        // The lower bound is exact all the same.
        assert_eq!(e.read_succeeded(Some(A), 2).lost_updates, 1);
    }

    #[test]
    fn relocated_or_taken_over_session_is_the_same_session() {
        let mut e = with_session(3);
        assert!(e.read_succeeded(Some(A_MOVED), 3).is_consistent());
        assert!(e.write_succeeded(Some(A_MOVED), 4).is_consistent());
    }

    #[test]
    fn a_different_session_is_a_lost_session_and_adopted() {
        let mut e = with_session(4);
        let check = e.write_succeeded(Some(B), 1);
        assert!(check.lost_session);
        assert_eq!(check.lost_updates, 0, "lost sessions are counted apart");
        assert_eq!(e.session(), Some(&B[..32]));
        assert_eq!(e.range(), (1, 1));
        assert!(e.write_succeeded(Some(B), 2).is_consistent());
    }

    #[test]
    fn a_read_without_session_is_a_lost_session() {
        let mut e = with_session(4);
        let check = e.read_succeeded(None, 0);
        assert!(check.lost_session);
        assert_eq!(e.session(), None);
        // The next write creates a new session; nothing more is lost.
        assert!(e.write_succeeded(Some(B), 1).is_consistent());
    }

    #[test]
    fn failed_first_write_then_new_session_is_no_loss() {
        let mut e = Expectation::new();
        e.write_failed(WriteEffect::MaybeLater);
        // Read without a session: count 0 is fine.
        assert!(e.read_succeeded(None, 0).is_consistent());
        assert!(e.write_succeeded(Some(B), 1).is_consistent());
        assert_eq!(e.session(), Some(&B[..32]));
    }

    #[test]
    fn a_timeout_before_a_lost_session_is_forgotten() {
        let mut e = with_session(2);
        e.write_failed(WriteEffect::MaybeLater);
        assert!(e.write_succeeded(Some(B), 1).lost_session);
        assert_eq!(e.range(), (1, 1));
    }
}
