//! The gRPC services of the contract: `KeyAdmin` and `KeyVerify`.

pub mod admin;
mod answer;
pub mod auth;
pub mod codec;
mod convert;
pub mod errors;
pub mod observe;
pub mod verify;

pub use admin::AdminApi;
pub use auth::AdminTokens;
pub use verify::{VerifyApi, VerifyService};
