//! The service layer's one error type and its one mapping to `tonic::Status`.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::store::StoreError;

/// Why an RPC failed, in the terms of the API contract.
#[derive(Debug)]
pub enum ApiError {
    Unauthenticated(&'static str),
    PermissionDenied(&'static str),
    NotFound,
    AlreadyExists(&'static str),
    FailedPrecondition(&'static str),
    /// Each bad field with what is wrong with it; becomes a `google.rpc.BadRequest`.
    InvalidArgument(Vec<FieldViolation>),
    Unavailable,
    /// The detail was logged where it happened; callers learn nothing of it.
    Internal,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut v = Violations::default();
        v.add(field, description);
        match v.finish() {
            Err(e) => e,
            Ok(()) => Self::Internal,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::from(&e)
    }
}

impl From<&StoreError> for ApiError {
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

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Unauthenticated(m) => Status::unauthenticated(m),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::NotFound => Status::not_found("key not found"),
            ApiError::AlreadyExists(m) => Status::already_exists(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::InvalidArgument(violations) => {
                let message = violations
                    .iter()
                    .map(|v| format!("{}: {}", v.field, v.description))
                    .collect::<Vec<_>>()
                    .join("; ");
                Status::with_error_details(
                    Code::InvalidArgument,
                    message,
                    ErrorDetails::with_bad_request(violations),
                )
            }
            ApiError::Unavailable => {
                Status::unavailable("the key store is unavailable; retry later")
            }
            ApiError::Internal => Status::internal("internal error"),
        }
    }
}

/// At most this many violations are reported; the status travels in HTTP/2
/// trailers, which clients cap at a few KiB, so an answer must stay small however
/// much is wrong with a request.
const MAX_VIOLATIONS: usize = 10;
/// Longest field name or description echoed back, in characters.
const MAX_ECHO: usize = 160;

fn bounded(s: String) -> String {
    match s.char_indices().nth(MAX_ECHO) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s,
    }
}

/// Collects the bad fields of a request before failing, so one round trip tells
/// the caller what is wrong: the first [`MAX_VIOLATIONS`] of them, and how many more.
#[derive(Debug, Default)]
pub struct Violations {
    found: Vec<FieldViolation>,
    more: usize,
}

impl Violations {
    /// Keeps the value of a field that parsed, or records why it did not.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        field: impl Into<String>,
        parsed: Result<T, E>,
    ) -> Option<T> {
        match parsed {
            Ok(v) => Some(v),
            Err(e) => {
                self.add(field, e.to_string());
                None
            }
        }
    }

    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.found.len() < MAX_VIOLATIONS {
            self.found.push(FieldViolation::new(
                bounded(field.into()),
                bounded(description.into()),
            ));
        } else {
            self.more += 1;
        }
    }

    /// Fails with the recorded violations, if any.
    pub fn finish(mut self) -> Result<(), ApiError> {
        if self.found.is_empty() {
            return Ok(());
        }
        if self.more > 0 {
            self.found.push(FieldViolation::new(
                "…",
                format!("and {} more invalid fields", self.more),
            ));
        }
        Err(ApiError::InvalidArgument(self.found))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_stay_small_however_bad_the_request() {
        let mut v = Violations::default();
        for i in 0..10_000 {
            v.add(format!("update_mask.paths[{i}]"), "x".repeat(100_000));
        }
        let status = Status::from(v.finish().expect_err("invalid"));
        assert!(status.message().len() < 2_500, "{}", status.message().len());
        assert!(status.details().len() < 5_000, "{}", status.details().len());
        assert!(
            status.message().contains("and 9990 more"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn short_values_are_kept_whole() {
        assert_eq!(bounded("name".into()), "name");
        assert_eq!(bounded("é".repeat(300)).chars().count(), MAX_ECHO + 1);
    }
}
