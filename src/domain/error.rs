//! Why a keygate operation failed, in the terms of the API contract; every
//! transport maps this one type to its own answers (gRPC in `api::grpc::errors`).
//! Which store failures become which error is the services' decision
//! (`services/store_errors.rs`): the domain knows no store.

use super::violations::Violations;

#[derive(Debug)]
pub enum Error {
    Unauthenticated(&'static str),
    PermissionDenied(&'static str),
    NotFound,
    AlreadyExists(&'static str),
    FailedPrecondition(&'static str),
    /// The request breaks a rule of the organization's key policy; the text
    /// names the rule.
    BreaksKeyPolicy(String),
    /// Each bad field with what is wrong with it.
    Invalid(Violations),
    /// A bound of the deployment is reached (keys per organization); the
    /// text names it.
    LimitReached(String),
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
