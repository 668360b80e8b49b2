//! What goes over HTTP: request and response bodies and query parameters, kept apart
//! from store and domain types so changing one never silently changes the other.

pub(crate) mod api_key;
pub(crate) mod delivery;
pub(crate) mod error;
pub(crate) mod page;
pub(crate) mod stats;
pub(crate) mod webhook;
pub(crate) mod workspace;
