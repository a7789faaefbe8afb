//! Which non-sticky requests lock: the locking mode, with `auto` learning.
//!
//! # `auto`
//!
//! `auto` learns per **request kind**: the method and the *normalised*
//! path, so `/users/123/cart` and `/users/456/cart` are one kind
//! (`GET /users/{}/cart`). The path (as sent, percent-encoded, without the
//! query) is split at `/`, and a segment becomes `{}` when it
//!
//! * is all ASCII digits (`123`, `0042`), or
//! * is at least [`TOKEN_MIN_LEN`] (16) bytes long and contains a digit
//!   (UUIDs, hex or base64 ids and tokens: `0b7e5a3c-…`, `5f1d7a9e2c4b…`), or
//! * is longer than [`SEGMENT_MAX_LEN`] (32) bytes (any other long token).
//!
//! Every other segment is kept as sent (`/api/v2/orders` stays as it is).
//! A kind whose text is longer than [`KIND_MAX_LEN`] (512) bytes is never
//! learned: it always locks.
//!
//! What is remembered, and what is forgotten:
//!
//! * A kind seen **modifying** the session (any attribute change,
//!   `invalidate`, `cycle_id`) locks for good. These verdicts are kept in a
//!   fixed-size Bloom filter (2^20 bits, 128 KiB, allocated on first use):
//!   they are never evicted, however many kinds there are. A false positive
//!   only makes a read-only kind lock (about 1 in 40 000 kinds with 10 000
//!   modifying kinds, 1 in 60 with 100 000): never the unsafe way round.
//! * A kind seen **not modifying** (and never modifying) runs without a lock
//!   until [`READ_ONLY_FOR`] (6 h) after its last such request. At most
//!   [`MAX_READ_ONLY`] (10 000) such verdicts are kept; when full, expired
//!   ones are dropped, then those not refreshed for the longest (a quarter
//!   of the map at once).
//! * A kind **not remembered** (new, expired, evicted, too long) locks: that
//!   is the safe default, so eviction can only add locks, never skip one.
//!
//! As in MSM, the first request of a read-only kind that starts modifying
//! (or of a kind merged with read-only ones by the normalisation) runs
//! unlocked; it is remembered as modifying from then on.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::locking_mode::LockingMode;

/// `auto` keeps at most this many read-only verdicts.
const MAX_READ_ONLY: usize = 10_000;
/// `auto` forgets a read-only verdict this long after the kind's last
/// read-only request (MSM: 6 h), so a kind nobody used for that long is
/// checked under a lock again.
const READ_ONLY_FOR: Duration = Duration::from_secs(6 * 3600);
/// A segment of at least this many bytes that contains a digit is an id.
const TOKEN_MIN_LEN: usize = 16;
/// A segment longer than this is an id, whatever it contains.
const SEGMENT_MAX_LEN: usize = 32;
/// Longer (normalised) kinds are not learned: they always lock.
const KIND_MAX_LEN: usize = 512;
/// Bits of the modifying-kinds Bloom filter (a power of two).
const MODIFYING_BITS: usize = 1 << 20;
/// Bits set per kind in the Bloom filter.
const MODIFYING_HASHES: u64 = 3;

/// Decides which requests lock.
#[derive(Default)]
pub(crate) struct LockPolicy {
    learned: Mutex<Learned>,
}

/// What `auto` knows.
#[derive(Default)]
struct Learned {
    /// Kinds seen only reading, until when that verdict holds.
    read_only: HashMap<Box<str>, Instant>,
    /// Kinds seen modifying: a Bloom filter of `MODIFYING_BITS` bits
    /// (empty until the first one).
    modifying: Vec<u64>,
    /// Keys the Bloom filter's hash, so clients cannot aim at its bits.
    hasher: RandomState,
}

impl Learned {
    /// The filter bits of `kind` (Kirsch–Mitzenmacher double hashing).
    fn bits(&self, kind: &str) -> impl Iterator<Item = usize> + use<> {
        let hash = self.hasher.hash_one(kind);
        let (h1, h2) = (hash & 0xffff_ffff, (hash >> 32) | 1);
        (0..MODIFYING_HASHES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) as usize) & (MODIFYING_BITS - 1))
    }

    fn is_modifying(&self, kind: &str) -> bool {
        !self.modifying.is_empty()
            && self
                .bits(kind)
                .all(|bit| self.modifying[bit / 64] & (1 << (bit % 64)) != 0)
    }

    fn remember_modifying(&mut self, kind: &str) {
        self.read_only.remove(kind);
        if self.modifying.is_empty() {
            self.modifying = vec![0; MODIFYING_BITS / 64];
        }
        let bits: Vec<usize> = self.bits(kind).collect();
        for bit in bits {
            self.modifying[bit / 64] |= 1 << (bit % 64);
        }
    }

    fn remember_read_only(&mut self, kind: &str, now: Instant) {
        if self.is_modifying(kind) {
            return;
        }
        let until = now + READ_ONLY_FOR;
        if let Some(entry) = self.read_only.get_mut(kind) {
            *entry = until;
            return;
        }
        if self.read_only.len() >= MAX_READ_ONLY {
            self.evict(now);
        }
        self.read_only.insert(kind.into(), until);
    }

    /// Drops expired verdicts, then the least recently refreshed ones down
    /// to three quarters of the cap (amortised O(1) per insertion).
    fn evict(&mut self, now: Instant) {
        self.read_only.retain(|_, until| *until > now);
        let keep = MAX_READ_ONLY * 3 / 4;
        if self.read_only.len() <= keep {
            return;
        }
        let mut untils: Vec<Instant> = self.read_only.values().copied().collect();
        let drop = untils.len() - keep;
        let (_, cutoff, _) = untils.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        // Ties at the cutoff: drop only as many as needed.
        let mut ties_to_drop = drop - untils.iter().filter(|until| **until < cutoff).count();
        self.read_only.retain(|_, until| {
            if *until == cutoff && ties_to_drop > 0 {
                ties_to_drop -= 1;
                return false;
            }
            *until >= cutoff
        });
    }
}

/// The request kind `auto` learns about: the method and the normalised
/// path (see the module docs); `None` when too long to learn.
fn request_kind(method: &str, path: &str) -> Option<String> {
    let mut kind = String::with_capacity(method.len() + 1 + path.len().min(KIND_MAX_LEN));
    kind.push_str(method);
    kind.push(' ');
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            kind.push('/');
        }
        kind.push_str(if is_id_segment(segment) { "{}" } else { segment });
        if kind.len() > KIND_MAX_LEN {
            return None;
        }
    }
    Some(kind)
}

/// Whether a path segment looks like an id or token (see the module docs).
fn is_id_segment(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    let has_digit = bytes.iter().any(u8::is_ascii_digit);
    (!bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit))
        || (bytes.len() >= TOKEN_MIN_LEN && has_digit)
        || bytes.len() > SEGMENT_MAX_LEN
}

impl LockPolicy {
    /// Whether a request (method, path as sent, without query) locks.
    pub(crate) fn should_lock(&self, mode: &LockingMode, method: &str, path: &str) -> bool {
        match mode {
            LockingMode::None => false,
            LockingMode::All => true,
            LockingMode::UriPattern(pattern) => pattern.matches(path),
            LockingMode::Auto => {
                let Some(kind) = request_kind(method, path) else {
                    return true;
                };
                let learned = self.learned.lock();
                if learned.is_modifying(&kind) {
                    return true;
                }
                learned
                    .read_only
                    .get(kind.as_str())
                    .is_none_or(|until| *until <= Instant::now())
            }
        }
    }

    /// `auto`: remembers whether a request kind modified the session. A
    /// kind seen modifying once is locked from then on.
    pub(crate) fn learn(&self, method: &str, path: &str, modified: bool) {
        let Some(kind) = request_kind(method, path) else {
            return;
        };
        let mut learned = self.learned.lock();
        if modified {
            learned.remember_modifying(&kind);
        } else {
            learned.remember_read_only(&kind, Instant::now());
        }
    }

    /// Read-only verdicts held.
    #[cfg(test)]
    fn read_only_len(&self) -> usize {
        self.learned.lock().read_only.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTO: LockingMode = LockingMode::Auto;

    #[tokio::test]
    async fn auto_learns_read_only_kinds_and_never_forgets_modifying_ones() {
        let policy = LockPolicy::default();
        assert!(policy.should_lock(&AUTO, "GET", "/a"), "first request of a kind locks");
        policy.learn("GET", "/a", false);
        assert!(!policy.should_lock(&AUTO, "GET", "/a"));
        assert!(policy.should_lock(&AUTO, "POST", "/a"), "method is part of the kind");
        policy.learn("GET", "/a", true);
        assert!(policy.should_lock(&AUTO, "GET", "/a"));
        policy.learn("GET", "/a", false);
        assert!(policy.should_lock(&AUTO, "GET", "/a"), "modifying is for good");
    }

    #[tokio::test(start_paused = true)]
    async fn read_only_verdicts_expire() {
        let policy = LockPolicy::default();
        policy.learn("GET", "/a", false);
        assert!(!policy.should_lock(&AUTO, "GET", "/a"));
        tokio::time::advance(READ_ONLY_FOR).await;
        assert!(policy.should_lock(&AUTO, "GET", "/a"));
    }

    #[test]
    fn paths_are_normalised_to_routes() {
        let kind = |path: &str| request_kind("GET", path).unwrap();
        assert_eq!(kind("/users/123/cart"), "GET /users/{}/cart");
        assert_eq!(kind("/users/456/cart"), kind("/users/123/cart"));
        assert_eq!(kind("/orders/0b7e5a3c-1f2d-4e5f-8a9b-0c1d2e3f4a5b"), "GET /orders/{}");
        assert_eq!(kind("/objects/5f1d7a9e2c4b3a1f0e9d8c7b"), "GET /objects/{}");
        assert_eq!(kind("/reset/Xk3f9aQzL0pR7vB2"), "GET /reset/{}", "base64 token");
        assert_eq!(kind(&format!("/p/{}", "x".repeat(33))), "GET /p/{}", "any long segment");
        assert_eq!(
            kind("/api/v2/orders/"),
            "GET /api/v2/orders/",
            "words, short mixed and empty segments stay"
        );
        assert_eq!(
            kind("/password-reset-form"),
            "GET /password-reset-form",
            "long words without digits stay"
        );
        assert_eq!(kind("/"), "GET /");
        assert_eq!(request_kind("GET", &"/a".repeat(300)), None, "too long to learn");
    }

    #[tokio::test]
    async fn routes_share_one_kind() {
        let policy = LockPolicy::default();
        policy.learn("GET", "/users/123/cart", false);
        assert!(!policy.should_lock(&AUTO, "GET", "/users/456/cart"));
        policy.learn("GET", "/users/789/cart", true);
        assert!(policy.should_lock(&AUTO, "GET", "/users/123/cart"));
        assert_eq!(policy.read_only_len(), 0);
    }

    #[tokio::test]
    async fn kinds_too_long_to_learn_always_lock() {
        let policy = LockPolicy::default();
        let long = "/a".repeat(300);
        policy.learn("GET", &long, false);
        assert!(policy.should_lock(&AUTO, "GET", &long));
        assert_eq!(policy.read_only_len(), 0);
    }

    #[tokio::test]
    async fn the_map_stays_bounded_under_100_000_distinct_paths() {
        let policy = LockPolicy::default();
        for i in 0..100_000 {
            let path = format!("/page-{}/x", to_letters(i));
            policy.learn("GET", &path, i % 3 == 0);
            assert!(policy.read_only_len() <= MAX_READ_ONLY);
        }
        assert!(policy.read_only_len() >= MAX_READ_ONLY * 3 / 4);
        assert_eq!(policy.learned.lock().modifying.len() * 64, MODIFYING_BITS, "fixed size");
        // The most recently learned read-only kind survived the evictions.
        assert!(!policy.should_lock(&AUTO, "GET", &format!("/page-{}/x", to_letters(99_998))));
    }

    #[tokio::test(start_paused = true)]
    async fn eviction_drops_the_least_recently_refreshed_and_never_skips_a_needed_lock() {
        let policy = LockPolicy::default();
        policy.learn("POST", "/cart", true);
        policy.learn("GET", "/home", false);
        for i in 0..100_000 {
            tokio::time::advance(Duration::from_millis(1)).await;
            policy.learn("GET", &format!("/r/{}", to_letters(i)), i % 2 == 0);
            if i % 1000 == 0 {
                policy.learn("GET", "/home", false); // still in use
            }
        }
        assert!(
            policy.should_lock(&AUTO, "POST", "/cart"),
            "a modifying verdict is never evicted"
        );
        policy.learn("POST", "/cart", false);
        assert!(policy.should_lock(&AUTO, "POST", "/cart"), "nor turned read-only");
        assert!(
            !policy.should_lock(&AUTO, "GET", "/home"),
            "a kind in use keeps its verdict"
        );
        assert!(
            policy.should_lock(&AUTO, "GET", &format!("/r/{}", to_letters(1))),
            "an evicted kind locks"
        );
    }

    #[tokio::test]
    async fn few_read_only_kinds_are_mistaken_for_modifying_ones() {
        let policy = LockPolicy::default();
        for i in 0..10_000 {
            policy.learn("POST", &format!("/w/{}", to_letters(i)), true);
        }
        let mut mistaken = 0;
        for i in 0..1_000 {
            let path = format!("/r/{}", to_letters(i));
            policy.learn("GET", &path, false);
            mistaken += usize::from(policy.should_lock(&AUTO, "GET", &path));
        }
        assert!(mistaken <= 5, "{mistaken} of 1000");
    }

    /// `i` in letters, so the segment is kept by the normalisation.
    fn to_letters(mut i: usize) -> String {
        let mut text = String::new();
        loop {
            text.push(char::from(b'a' + (i % 26) as u8));
            i /= 26;
            if i == 0 {
                return text;
            }
        }
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
