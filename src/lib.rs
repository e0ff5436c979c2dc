//! keygate: issues, scopes and verifies API keys over gRPC.

pub mod hostnames;
pub mod keys;
pub mod model;
pub mod proto;
pub mod scopes;
pub mod store;
