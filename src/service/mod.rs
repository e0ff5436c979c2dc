//! The gRPC services and what they share.

pub mod admin;
pub mod auth;
mod convert;
pub mod error;
mod paging;
pub mod verify;

pub use admin::AdminService;
pub use auth::AdminTokens;
pub use verify::VerifyService;
