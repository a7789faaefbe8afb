//! A session: the handle handlers use ([`handle::Session`]), its shared
//! in-memory state and the transitions of that state ([`state`]), its id
//! ([`id`]) and its attributes ([`attributes`]).

pub(crate) mod attributes;
pub(crate) mod id;
pub(crate) mod node_id;
pub(crate) mod record;
pub(crate) mod state;
