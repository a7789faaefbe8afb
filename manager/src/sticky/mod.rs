//! Sticky mode: the primary copy of a session lives in this process.

pub(crate) mod backup;
pub(crate) mod local_sessions;
pub(crate) mod resolve;
pub(crate) mod unsynced;
