//! Sessions held in this process, by id, plus short-lived forwarding entries
//! from ids that moved (relocation, takeover) to their new ids, so requests
//! already in flight with the old cookie still find their session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use crate::session::state::SessionState;

/// How long a moved id keeps forwarding to the new one.
const FORWARD_FOR: Duration = Duration::from_secs(60);

/// Most forwards kept at once.
pub(crate) const MAX_FORWARDS: usize = 100_000;

/// Most ended sessions remembered; beyond, the oldest are forgotten (their
/// memcached tombstones still stand).
pub(crate) const MAX_ENDED: usize = 100_000;

/// Where a moved id points, and until when.
struct Forward {
    to: Box<str>,
    until: Instant,
}

#[derive(Default)]
pub(crate) struct LocalSessions {
    by_id: RwLock<HashMap<Box<str>, Arc<SessionState>>>,
    forwards: Mutex<HashMap<Box<str>, Forward>>,
    /// Local tombstones: the ids of sessions that ended here (logout,
    /// expiry, an id left by `cycle_id`), each until its copies in
    /// memcached can no longer exist; in order of ending.
    ended: Mutex<EndedSessions>,
}

#[derive(Default)]
struct EndedSessions {
    until: HashMap<Box<str>, Instant>,
    order: std::collections::VecDeque<(Box<str>, Instant)>,
}

impl LocalSessions {
    /// The session with this id, following a forward if the id moved.
    pub(crate) fn get(&self, id: &str) -> Option<Arc<SessionState>> {
        if let Some(found) = self.by_id.read().get(id) {
            return Some(found.clone());
        }
        let target = {
            let forwards = self.forwards.lock();
            let forward = forwards.get(id)?;
            if forward.until <= Instant::now() {
                return None;
            }
            forward.to.clone()
        };
        self.by_id.read().get(&target).cloned()
    }

    pub(crate) fn insert(&self, id: &str, session: Arc<SessionState>) {
        self.by_id.write().insert(id.into(), session);
    }

    /// Re-files a session under its new id; `forward` keeps the old id
    /// working for a minute (not for `cycle_id`, whose point is to kill it).
    pub(crate) fn rekey(&self, old: &str, new: &str, forward: bool) {
        {
            let mut by_id = self.by_id.write();
            if let Some(session) = by_id.remove(old) {
                by_id.insert(new.into(), session);
            }
        }
        let mut forwards = self.forwards.lock();
        if forward {
            let now = Instant::now();
            if forwards.len() >= MAX_FORWARDS {
                forwards.retain(|_, forward| forward.until > now);
            }
            // Still full of live forwards (a mass relocation): the old id
            // of this one stops working at once, like after a minute.
            if forwards.len() >= MAX_FORWARDS {
                return;
            }
            let forward = Forward {
                to: new.into(),
                until: now + FORWARD_FOR,
            };
            forwards.insert(old.into(), forward);
        } else {
            forwards.remove(old);
        }
    }

    /// Remembers until `until` that the session id `id` ended: no request
    /// of this process loads it from memcached again, even before (or
    /// without) its tombstone there.
    pub(crate) fn end(&self, id: &str, until: Instant) {
        let mut ended = self.ended.lock();
        // Under the same lock as `insert_unless_ended`: a load racing this
        // end either sees it, or its session is removed here. A dead id is
        // not forwarded anywhere either.
        self.by_id.write().remove(id);
        self.forwards.lock().remove(id);
        if ended.order.len() >= MAX_ENDED {
            if let Some((oldest, at)) = ended.order.pop_front() {
                if ended.until.get(&oldest) == Some(&at) {
                    ended.until.remove(&oldest);
                }
            }
        }
        ended.until.insert(id.into(), until);
        ended.order.push_back((id.into(), until));
    }

    /// Files a session loaded from memcached under `id`, unless that id
    /// ended here meanwhile; `false` then.
    pub(crate) fn insert_unless_ended(&self, id: &str, session: Arc<SessionState>) -> bool {
        let ended = self.ended.lock();
        if ended.until.get(id).is_some_and(|until| *until > Instant::now()) {
            return false;
        }
        self.by_id.write().insert(id.into(), session);
        true
    }

    /// Whether the session id `id` ended here (and may still have a copy).
    pub(crate) fn has_ended(&self, id: &str) -> bool {
        self.ended
            .lock()
            .until
            .get(id)
            .is_some_and(|until| *until > Instant::now())
    }

    /// How many ended ids are remembered.
    #[cfg(test)]
    pub(crate) fn ended_len(&self) -> usize {
        self.ended.lock().order.len()
    }

    /// Removes a session. Forwards pointing at it are left to expire: they
    /// lead nowhere now (a lookup through one finds nothing), and scanning
    /// for them made a mass removal quadratic.
    pub(crate) fn remove(&self, id: &str) -> Option<Arc<SessionState>> {
        self.by_id.write().remove(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.by_id.read().len()
    }

    /// All sessions, for sweeps (a snapshot; the map is not held).
    pub(crate) fn all(&self) -> Vec<Arc<SessionState>> {
        self.by_id.read().values().cloned().collect()
    }

    /// Drops local tombstones whose time is up (oldest first: every id
    /// ends for about as long, so the order of ending is nearly the order
    /// of their ends).
    pub(crate) fn prune_ended(&self) {
        let now = Instant::now();
        let mut ended = self.ended.lock();
        while let Some((id, until)) = ended.order.front().cloned() {
            if until > now {
                break;
            }
            ended.order.pop_front();
            if ended.until.get(&id) == Some(&until) {
                ended.until.remove(&id);
            }
        }
    }

    /// Drops expired forwards.
    pub(crate) fn prune_forwards(&self, now: Instant) {
        self.forwards.lock().retain(|_, forward| forward.until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::id::SessionId;

    #[tokio::test(start_paused = true)]
    async fn forwards_are_bounded_and_removal_is_not_quadratic() {
        let local = LocalSessions::default();
        let started = std::time::Instant::now();
        for n in 0..MAX_FORWARDS + 50 {
            let (old, new) = (format!("old{n}"), format!("new{n}"));
            local.insert(&old, state());
            local.rekey(&old, &new, true);
        }
        assert_eq!(local.forwards.lock().len(), MAX_FORWARDS);
        for n in 0..MAX_FORWARDS + 50 {
            local.remove(&format!("new{n}"));
        }
        assert!(
            local.get("old1").is_none(),
            "a forward to a removed session leads nowhere"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "linear, not quadratic: {:?}",
            started.elapsed()
        );
        tokio::time::advance(FORWARD_FOR).await;
        local.prune_forwards(Instant::now());
        assert_eq!(local.forwards.lock().len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn ended_sessions_are_remembered_for_a_while_and_bounded() {
        let local = LocalSessions::default();
        let lifetime = Duration::from_secs(600);
        local.end("abc-n1.a", Instant::now() + lifetime);
        assert!(local.has_ended("abc-n1.a"));
        assert!(
            !local.has_ended("abc-n1.b"),
            "another id of the same session is not ended"
        );
        tokio::time::advance(lifetime).await;
        assert!(!local.has_ended("abc-n1.a"), "forgotten once its copies cannot exist");
        local.prune_ended();
        assert_eq!(local.ended_len(), 0);
        for n in 0..MAX_ENDED + 10 {
            local.end(&format!("r{n}"), Instant::now() + lifetime);
        }
        assert_eq!(local.ended_len(), MAX_ENDED);
        assert!(!local.has_ended("r0"), "the oldest are forgotten first");
        assert!(local.has_ended(&format!("r{}", MAX_ENDED + 9)));
    }

    fn state() -> Arc<SessionState> {
        Arc::new(SessionState::new(SessionId::generate(None, None), None))
    }

    #[tokio::test(start_paused = true)]
    async fn moved_ids_forward_for_a_while() {
        let store = LocalSessions::default();
        let s = state();
        store.insert("a", s.clone());
        store.rekey("a", "b", true);
        assert!(Arc::ptr_eq(&store.get("b").unwrap(), &s));
        assert!(Arc::ptr_eq(&store.get("a").unwrap(), &s));
        tokio::time::advance(FORWARD_FOR).await;
        assert!(store.get("a").is_none());
        store.prune_forwards(Instant::now());
        assert_eq!(store.len(), 1);
    }

    #[tokio::test]
    async fn cycled_ids_do_not_forward_and_removal_drops_forwards() {
        let store = LocalSessions::default();
        store.insert("a", state());
        store.rekey("a", "b", false);
        assert!(store.get("a").is_none());
        store.insert("c", state());
        store.rekey("c", "d", true);
        store.remove("d");
        assert!(store.get("c").is_none());
        assert!(store.get("d").is_none());
    }
}
