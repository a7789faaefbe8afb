//! Which non-sticky requests lock: the locking mode, with `auto` learning.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::locking_mode::LockingMode;

/// `auto` remembers at most this many request kinds.
const MAX_LEARNED: usize = 10_000;
/// `auto` forgets a read-only verdict after this long (MSM: 6 h), so a
/// request kind that starts modifying sessions is locked again.
const READ_ONLY_FOR: Duration = Duration::from_secs(6 * 3600);

/// What `auto` knows about a request kind (method + path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    ReadOnlyUntil(Instant),
    Modifying,
}

/// Decides which requests lock.
#[derive(Default)]
pub(crate) struct LockPolicy {
    learned: Mutex<HashMap<String, Verdict>>,
}

fn request_kind(method: &str, path: &str) -> String {
    format!("{method} {path}")
}

impl LockPolicy {
    /// Whether a request (method, path as sent, without query) locks.
    pub(crate) fn should_lock(&self, mode: &LockingMode, method: &str, path: &str) -> bool {
        match mode {
            LockingMode::None => false,
            LockingMode::All => true,
            LockingMode::UriPattern(pattern) => pattern.matches(path),
            LockingMode::Auto => match self.learned.lock().get(&request_kind(method, path)) {
                Some(Verdict::ReadOnlyUntil(until)) => *until <= Instant::now(),
                Some(Verdict::Modifying) | None => true,
            },
        }
    }

    /// `auto`: remembers whether a request kind modified the session. A
    /// kind seen modifying once is locked from then on.
    pub(crate) fn learn(&self, method: &str, path: &str, modified: bool) {
        let mut learned = self.learned.lock();
        if learned.len() >= MAX_LEARNED {
            learned.retain(|_, verdict| *verdict == Verdict::Modifying);
        }
        let kind = request_kind(method, path);
        if modified {
            learned.insert(kind, Verdict::Modifying);
        } else if learned.get(&kind) != Some(&Verdict::Modifying) {
            learned.insert(kind, Verdict::ReadOnlyUntil(Instant::now() + READ_ONLY_FOR));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn auto_learns_read_only_kinds_and_never_forgets_modifying_ones() {
        let policy = LockPolicy::default();
        let auto = LockingMode::Auto;
        assert!(policy.should_lock(&auto, "GET", "/a"), "first request of a kind locks");
        policy.learn("GET", "/a", false);
        assert!(!policy.should_lock(&auto, "GET", "/a"));
        assert!(policy.should_lock(&auto, "POST", "/a"), "method is part of the kind");
        policy.learn("GET", "/a", true);
        assert!(policy.should_lock(&auto, "GET", "/a"));
        policy.learn("GET", "/a", false);
        assert!(policy.should_lock(&auto, "GET", "/a"), "modifying is for good");
    }

    #[tokio::test(start_paused = true)]
    async fn read_only_verdicts_expire() {
        let policy = LockPolicy::default();
        policy.learn("GET", "/a", false);
        assert!(!policy.should_lock(&LockingMode::Auto, "GET", "/a"));
        tokio::time::advance(READ_ONLY_FOR).await;
        assert!(policy.should_lock(&LockingMode::Auto, "GET", "/a"));
    }

    #[test]
    fn fixed_modes() {
        let policy = LockPolicy::default();
        assert!(!policy.should_lock(&LockingMode::None, "POST", "/x"));
        assert!(policy.should_lock(&LockingMode::All, "GET", "/x"));
        let pattern = LockingMode::parse("uriPattern:/cart/.*").unwrap();
        assert!(policy.should_lock(&pattern, "GET", "/cart/1"));
        assert!(!policy.should_lock(&pattern, "GET", "/cart"));
    }
}
