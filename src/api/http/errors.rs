//! The one mapping from the domain's errors to HTTP answers, as
//! `api::grpc::errors` is for gRPC: a route returns the error and this says
//! which status and JSON body it becomes.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

use crate::domain::Error;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Error::Unauthenticated(m) => (StatusCode::UNAUTHORIZED, m.to_owned()),
            Error::PermissionDenied(m) => (StatusCode::FORBIDDEN, m.to_owned()),
            Error::NotFound => (StatusCode::NOT_FOUND, "key not found".to_owned()),
            Error::AlreadyExists(m) | Error::FailedPrecondition(m) => {
                (StatusCode::CONFLICT, m.to_owned())
            }
            Error::BreaksKeyPolicy(m) => (StatusCode::CONFLICT, m),
            Error::Invalid(v) => (StatusCode::BAD_REQUEST, v.to_string()),
            Error::LimitReached(m) => (StatusCode::TOO_MANY_REQUESTS, m),
            // Callers retry these (GitHub retries a failed leak report).
            Error::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the key store is unavailable; retry later".to_owned(),
            ),
            // The detail was logged where it happened.
            Error::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".to_owned(),
            ),
        };
        super::error(status, &message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status() {
        for (e, status) in [
            (Error::Unauthenticated("x"), 401),
            (Error::PermissionDenied("x"), 403),
            (Error::NotFound, 404),
            (Error::AlreadyExists("x"), 409),
            (Error::FailedPrecondition("x"), 409),
            (Error::invalid("name", "is required"), 400),
            (Error::LimitReached("x".into()), 429),
            (Error::Unavailable, 503),
            (Error::Internal, 500),
        ] {
            assert_eq!(e.into_response().status().as_u16(), status);
        }
    }
}
