//! keygate: issues, scopes and verifies API keys over gRPC.

pub mod api;
pub mod app;
pub mod cache;
pub mod clock;
pub mod codec;
pub mod config;
pub mod domain;
pub mod filter;
pub mod hostnames;
pub mod invalidation;
pub mod keys;
pub mod leaks;
pub mod limits;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod public_suffix;
pub mod replica;
pub mod scopes;
pub mod services;
pub mod store;
pub mod usage;
pub mod webhooks;
