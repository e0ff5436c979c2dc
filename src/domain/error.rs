//! Why a keygate operation failed, in the terms of the API contract; every
//! transport maps this one type to its own answers (gRPC in `api::grpc::errors`).

use super::violations::Violations;
use crate::store::StoreError;

#[derive(Debug)]
pub enum Error {
    Unauthenticated(&'static str),
    PermissionDenied(&'static str),
    NotFound,
    AlreadyExists(&'static str),
    FailedPrecondition(&'static str),
    /// Each bad field with what is wrong with it.
    Invalid(Violations),
    /// The store cannot be reached or did not answer in time: retry later.
    Unavailable,
    /// The detail was logged where it happened; callers learn nothing of it.
    Internal,
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid(Violations::one(field, description))
    }
}

impl From<Violations> for Error {
    fn from(v: Violations) -> Self {
        Self::Invalid(v)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::from(&e)
    }
}

/// The one place that decides which store failures a caller may retry
/// (UNAVAILABLE) and which are keygate's own (INTERNAL, detail only in the log).
impl From<&StoreError> for Error {
    fn from(e: &StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Timeout(_) | StoreError::Closed => {
                tracing::warn!(error = %e, "store unavailable");
                Self::Unavailable
            }
            StoreError::NotFound => Self::NotFound,
            StoreError::Revoked => {
                Self::FailedPrecondition("the key is revoked and cannot be updated")
            }
            StoreError::LiveUserKeyExists => Self::AlreadyExists(
                "this user already has a live user key in this organization; revoke it first",
            ),
            other => {
                tracing::error!(error = %other, "store failure");
                Self::Internal
            }
        }
    }
}
