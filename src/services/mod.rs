//! The domain's entry points, shared by every transport: each gives the
//! domain's rules what they need at run time (the store, the hot path's
//! caches, limiters and usage counting, the clock). Keys are changed only
//! through [`KeyService`], verified only through [`Verifier`], and proxied
//! requests authorized only through [`authorizer::Authorizer`].

pub mod authorizer;
mod identities;
pub mod keys;
pub mod notices;
mod store_errors;
pub mod verifier;

pub use keys::KeyService;
pub use verifier::{Limits, Outcome, Verifier};
