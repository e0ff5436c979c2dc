//! keygate: issues, scopes and verifies API keys over gRPC.

pub mod app;
pub mod cache;
pub mod codec;
pub mod config;
pub mod hostnames;
pub mod invalidation;
pub mod keys;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod public_suffix;
pub mod scopes;
pub mod service;
pub mod store;
pub mod usage;
