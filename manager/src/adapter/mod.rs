//! The web framework adapters, both on the request glue of [`crate::request`]:
//!
//! - [`warp`] (feature `warp`, default): `SessionManager::session` and
//!   `SessionManager::wrap`.
//! - [`tower`] (feature `tower`; `axum` adds the extractor): the
//!   [`SessionLayer`](crate::SessionLayer).

#[cfg(feature = "tower")]
pub(crate) mod tower;
#[cfg(feature = "warp")]
mod warp;
