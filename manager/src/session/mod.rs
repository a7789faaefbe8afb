//! What a session is, below every other module: its in-memory state and
//! the transitions of that state ([`state`]), its id ([`id`], naming a
//! [`node_id`]), its attributes ([`attributes`]) and the record it is
//! stored as ([`record`]). The handle handlers use is
//! [`crate::request::session::Session`].

pub(crate) mod attributes;
pub(crate) mod id;
pub(crate) mod node_id;
pub(crate) mod record;
pub(crate) mod state;
