//! The one place that decides which store failures a caller may retry
//! (UNAVAILABLE) and which are keygate's own (INTERNAL, detail only in the log).

use crate::{domain::Error, store::StoreError};

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::from(&e)
    }
}

impl From<&StoreError> for Error {
    fn from(e: &StoreError) -> Self {
        match e {
            StoreError::Unavailable(_)
            | StoreError::Timeout(_)
            | StoreError::Closed
            | StoreError::Contended => {
                tracing::warn!(error = %e, "store unavailable");
                Self::Unavailable
            }
            StoreError::NotFound => Self::NotFound,
            StoreError::Precondition(why) => Self::FailedPrecondition(why),
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
