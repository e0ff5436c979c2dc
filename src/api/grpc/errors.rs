//! The one mapping from the domain's errors to `tonic::Status`.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::domain::{Error, violations::Violations};

/// Bad fields become a `google.rpc.BadRequest` naming each, and a message that
/// lists them for callers that do not read details.
fn invalid_argument(v: &Violations) -> Status {
    let violations: Vec<FieldViolation> = v
        .to_vec()
        .into_iter()
        .map(|v| FieldViolation::new(v.field, v.description))
        .collect();
    Status::with_error_details(
        Code::InvalidArgument,
        v.to_string(),
        ErrorDetails::with_bad_request(violations),
    )
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::PermissionDenied(m) => Status::permission_denied(m),
            Error::NotFound => Status::not_found("key not found"),
            Error::AlreadyExists(m) => Status::already_exists(m),
            Error::FailedPrecondition(m) => Status::failed_precondition(m),
            Error::BreaksKeyPolicy(m) => Status::failed_precondition(m),
            Error::Invalid(v) => invalid_argument(&v),
            Error::LimitReached(m) => Status::resource_exhausted(m),
            Error::Unavailable => Status::unavailable("the key store is unavailable; retry later"),
            Error::Internal => Status::internal("internal error"),
        }
    }
}

impl From<Violations> for Status {
    fn from(v: Violations) -> Self {
        invalid_argument(&v)
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
        let status = Status::from(Error::Invalid(v));
        assert!(status.message().len() < 2_500, "{}", status.message().len());
        assert!(status.details().len() < 5_000, "{}", status.details().len());
        assert!(
            status.message().contains("and 9990 more"),
            "{}",
            status.message()
        );
    }
}
