//! A session: the handle handlers use ([`handle::Session`]), its shared
//! in-memory state and the transitions of that state ([`state`]), its id
//! ([`id`]) and its attributes ([`attributes`]).

pub(crate) mod attributes;
pub(crate) mod handle;
pub(crate) mod id;
pub(crate) mod state;
