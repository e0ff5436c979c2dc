//! keygate's own rules, in terms of its own types: what a request means
//! ([`commands`], [`verify`]), who may do what ([`policy`]), what a key in
//! each state of its life allows ([`lifecycle`]), and why something
//! failed ([`error`], [`violations`]). Nothing here knows a transport (tonic,
//! axum) or a database driver (sqlx); `services` give these rules a store and a
//! cache, and `api` translates them to and from the wire. [`routes`] is the
//! route policy of requests keygate authorizes for a proxy.

pub mod commands;
pub mod error;
pub mod lifecycle;
pub mod paging;
pub mod policy;
pub mod routes;
pub mod verify;
pub mod violations;

pub use error::Error;
