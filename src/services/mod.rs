//! The domain's entry points, shared by every transport: each owns what its
//! rules need at run time (store, cache, usage, clock).

pub mod authorizer;
pub mod keys;
pub mod limiter;
pub mod quota;
pub mod shared_limits;
mod store_errors;
pub mod verifier;

pub use keys::KeyService;
pub use verifier::{Limits, Outcome, Verifier};
