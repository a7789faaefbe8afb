//! Where sessions are kept: the memcached nodes and their availability
//! ([`nodes`], [`node`], [`backend`]) and the stored format ([`envelope`],
//! sealed by [`seal`]).

pub mod backend;
pub(crate) mod envelope;
pub(crate) mod node;
pub(crate) mod nodes;
pub(crate) mod seal;
