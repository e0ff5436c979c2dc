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
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(err) => {
                tracing::warn!(error = %err, "store unavailable");
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

/// Collects every bad field of a request before failing, so one round trip tells
/// the caller everything that is wrong.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

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
        self.0.push(FieldViolation::new(field, description));
    }

    /// Fails with every recorded violation, if any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::InvalidArgument(self.0))
        }
    }
}
