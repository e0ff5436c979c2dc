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
                crate::metrics::store_error("unavailable");
                // Once a second at most: during an outage every call fails
                // here, and a line per call would bury the log operators read.
                static UNAVAILABLE: std::sync::LazyLock<crate::logging::Throttle> =
                    std::sync::LazyLock::new(Default::default);
                if let Some(dropped) = UNAVAILABLE.allow("store", std::time::Instant::now()) {
                    tracing::warn!(
                        error = %e,
                        dropped,
                        "store unavailable"
                    );
                }
                Self::Unavailable
            }
            StoreError::NotFound => Self::NotFound,
            StoreError::Precondition(why) => Self::FailedPrecondition(why),
            StoreError::TooManyKeys(cap) => Self::LimitReached(format!(
                "the organization has {cap} live keys, the most --max-keys-per-organization \
                 allows; revoke keys it no longer uses"
            )),
            StoreError::LiveUserKeyExists => Self::AlreadyExists(
                "this user already has a live user key in this organization; revoke it first",
            ),
            StoreError::ExternalIdTaken => Self::AlreadyExists(
                "the organization has an identity with this external_id already",
            ),
            other => {
                crate::metrics::store_error("internal");
                tracing::error!(error = %other, "store failure");
                Self::Internal
            }
        }
    }
}
