//! keygate's vocabulary and rules, in terms of its own types.
//!
//! - The vocabulary, parsed rather than validated: [`model`] (ids, names,
//!   owners, a key's record and events), [`keys`] (the secret: format,
//!   checksum, hash), [`scopes`], [`hostnames`] (with [`public_suffix`]),
//!   [`limits`] (rate limits and quotas), [`networks`] (where a key may be
//!   used from, and by which workload), [`metadata`] (what a verification
//!   returns about the key's owner), [`identities`] (who owns keys and
//!   shares their limits, and the identity calls' requests), and [`json`], the JSON form of a key
//!   and an event (each event's key snapshot, the webhook body).
//! - The rules: what a request means ([`commands`], [`verify`]), who may do
//!   what ([`policy`]), what an organization allows its keys to be
//!   ([`key_policy`]), what a key in each state of its life allows
//!   ([`lifecycle`]), which routes a proxied request may take ([`routes`]),
//!   what a leak report proves ([`leaks`]), which notices are due
//!   ([`notices`]), and why something failed
//!   ([`error`], [`violations`]).
//!
//! Nothing here knows a transport (tonic, axum) or a database driver (sqlx);
//! `services` give these rules a store and the hot path, and `api` translates
//! them to and from the wire.

pub mod commands;
pub mod error;
pub mod hostnames;
pub mod identities;
pub mod json;
pub mod key_policy;
pub mod keys;
pub mod leaks;
pub mod lifecycle;
pub mod limits;
pub mod metadata;
pub mod model;
pub mod networks;
pub mod notices;
pub mod paging;
pub mod policy;
pub mod public_suffix;
pub mod routes;
pub mod scopes;
pub mod verify;
pub mod violations;

pub use error::Error;
