//! Transports: each authenticates its caller, parses the request into the
//! domain's terms, calls a service and translates the answer back. No rule of
//! the product lives here.

pub mod edge;
pub mod envoy;
pub mod grpc;
pub mod http;
mod written;

use crate::{domain::verify::Code, proto::VerifyCode};

/// The contract's number for a verification's outcome, which every transport
/// answers with (gRPC, and the edge's `x-keygate-code`).
pub fn verify_code(code: Code) -> VerifyCode {
    match code {
        Code::Valid => VerifyCode::Valid,
        Code::Missing => VerifyCode::Missing,
        Code::Malformed => VerifyCode::Malformed,
        Code::NotFound => VerifyCode::NotFound,
        Code::Revoked => VerifyCode::Revoked,
        Code::Expired => VerifyCode::Expired,
        Code::OrganizationMismatch => VerifyCode::OrganizationMismatch,
        Code::HostnameBlocked => VerifyCode::HostnameBlocked,
        Code::InsufficientScope => VerifyCode::InsufficientScope,
        Code::RateLimited => VerifyCode::RateLimited,
        Code::QuotaExceeded => VerifyCode::QuotaExceeded,
        Code::NetworkBlocked => VerifyCode::NetworkBlocked,
        Code::PrincipalMismatch => VerifyCode::PrincipalMismatch,
    }
}
