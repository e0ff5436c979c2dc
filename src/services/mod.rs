//! The domain's entry points, shared by every transport: each owns what its
//! rules need at run time (store, cache, usage, clock).

pub mod keys;
mod store_errors;
pub mod verifier;

pub use keys::KeyService;
pub use verifier::{Outcome, Verifier};
