//! keygate: issues, scopes and verifies API keys over gRPC.
//!
//! The folders are the architecture, and dependencies point one way, down
//! this list (a test, `tests/it/layers.rs`, checks it):
//!
//! - [`app`]: wiring only; builds every part and runs it;
//! - [`api`]: the transports (gRPC, Envoy's ext_authz, HTTP): authenticate,
//!   parse into domain terms, call a service, translate back;
//! - [`services`]: the domain's entry points (keys, verification, the edge);
//! - [`webhooks`]: events out, from the store's outbox;
//! - [`hotpath`]: the verify path's runtime: caches, coalesced reads, the
//!   forged-key filter, invalidation, usage counting, limiters, quota leases;
//! - [`store`]: MySQL and SQLite behind one `Store`;
//! - [`domain`]: keygate's vocabulary and rules, knowing no transport and no
//!   database.
//!
//! Beside them, used by any: [`config`], [`clock`], [`logging`], [`metrics`]
//! and the generated [`proto`].

pub mod api;
pub mod app;
pub mod clock;
pub mod config;
pub mod domain;
pub mod hotpath;
pub mod logging;
pub mod metrics;
pub mod proto;
pub mod services;
pub mod store;
pub mod webhooks;
