//! The versions that order a document's copies: microseconds since the
//! unix epoch by this process's clock, strictly increasing within the
//! process (a clock stepping back never yields a lower version).
//!
//! Copies of one document only disagree after a fault (a node that missed
//! writes while it was down or cut off); a read then keeps the copy with
//! the highest version. Across instances that is the copy written last by
//! the writers' clocks — keep them synchronized (NTP): a write by an
//! instance whose clock is behind by more than the time between two writes
//! of one document can lose to the older copy when copies disagree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Hands out versions (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct VersionClock {
    last: AtomicU64,
}

impl VersionClock {
    /// A version above every one handed out before by this clock.
    pub(crate) fn next(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let previous = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            .expect("the update closure always returns Some");
        now.max(previous.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_strictly_increase_even_within_one_microsecond() {
        let clock = VersionClock::default();
        let versions: Vec<u64> = (0..10_000).map(|_| clock.next()).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]));
        let now_us = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        assert!(versions[0] > now_us - 60_000_000, "close to the wall clock");
    }

    #[test]
    fn a_clock_ahead_of_the_wall_keeps_counting_up() {
        let clock = VersionClock {
            last: AtomicU64::new(u64::MAX - 2),
        };
        assert_eq!(clock.next(), u64::MAX - 1);
        assert_eq!(clock.next(), u64::MAX);
    }
}
