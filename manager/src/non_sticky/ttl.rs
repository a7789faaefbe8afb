//! How long each stored copy lives (see the table in [`crate::non_sticky`]).

use std::time::Duration;

use tokio::time::Instant;

use crate::non_sticky::NonSticky;
use crate::store::backend::Expiry;

/// TTL of the primary copy: the inactivity interval itself.
pub(crate) fn primary_expiry(max_inactive: Option<Duration>) -> Expiry {
    max_inactive.map_or(Expiry::Never, Expiry::After)
}

/// TTL of the backup copy (and of a forward record): a quarter interval
/// longer than the primary's, since reads slide only the primary and an
/// unchanged session is rewritten once a quarter interval has passed.
pub(crate) fn backup_expiry(max_inactive: Option<Duration>) -> Expiry {
    max_inactive.map_or(Expiry::Never, |max| Expiry::After(backup_lifetime(max)))
}

/// 1¼ × `max` (saturating: any configured interval is accepted).
fn backup_lifetime(max: Duration) -> Duration {
    max.saturating_add(max / 4)
}

/// TTL of a forward record: as long as the backup it replaces would have
/// lived (a day when sessions never expire).
pub(crate) fn forward_expiry(max_inactive: Option<Duration>) -> Expiry {
    Expiry::After(copy_lifetime(max_inactive))
}

/// How long any copy of a session (or its forward record) can outlive its
/// last write: the backup's lifetime (a day when sessions never expire).
pub(crate) fn copy_lifetime(max_inactive: Option<Duration>) -> Duration {
    max_inactive.map_or(FORWARD_WITHOUT_EXPIRY, backup_lifetime)
}

/// How long a forward record lives when sessions never expire.
const FORWARD_WITHOUT_EXPIRY: Duration = Duration::from_secs(86_400);

/// Whether an unchanged session written at `written_ms` is due for its
/// rewrite (which refreshes the backup's TTL).
pub(crate) fn rewrite_due(max_inactive: Option<Duration>, written_ms: u64, now_ms: u64) -> bool {
    max_inactive
        .is_some_and(|max| now_ms.saturating_sub(written_ms) >= u64::try_from(max.as_millis() / 4).unwrap_or(u64::MAX))
}

/// Until when a repair matters: as long as the copy it targets could live.
pub(crate) fn repair_deadline(non_sticky: &NonSticky) -> Instant {
    let lifetime = match forward_expiry(non_sticky.config.max_inactive) {
        Expiry::After(lifetime) => lifetime,
        Expiry::Never => FORWARD_WITHOUT_EXPIRY,
    };
    let now = Instant::now();
    // Beyond the clock's range: as long as a forward without expiry.
    now.checked_add(lifetime.saturating_add(Duration::from_secs(1)))
        .unwrap_or(now + FORWARD_WITHOUT_EXPIRY)
}
