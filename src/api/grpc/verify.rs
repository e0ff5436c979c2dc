//! `KeyVerify.VerifyKey` over gRPC: on the path of every request our users
//! serve. A denial is an answer, not an error; errors are kept for the caller's
//! own faults and for a store that cannot be reached.

use tonic::{Request, Response, Status};

use crate::{
    domain::verify::{Code, Verification},
    metrics::VerifyMetrics,
    model::Micros,
    proto::{self, VerifyCode, key_verify_server::KeyVerify},
    services::{Outcome, Verifier, limiter::LimitStatus},
};

#[derive(Debug, Clone)]
pub struct VerifyApi {
    verifier: Verifier,
    metrics: VerifyMetrics,
}

impl VerifyApi {
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            metrics: VerifyMetrics::new("grpc"),
        }
    }
}

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
    }
}

fn response(outcome: Outcome) -> proto::VerifyKeyResponse {
    let code = verify_code(outcome.code);
    proto::VerifyKeyResponse {
        valid: code == VerifyCode::Valid,
        code: code.into(),
        key: outcome
            .key
            .as_deref()
            .map(crate::cache::CachedKey::verified),
        missing_scopes: outcome.missing_scopes,
        rate_limit: outcome.rate_limit.map(limit_status),
        quota: outcome.quota.map(limit_status),
        retry_after: outcome.retry_after.map(Micros::to_duration),
    }
}

fn limit_status(s: LimitStatus) -> proto::LimitStatus {
    proto::LimitStatus {
        name: s.name,
        limit: s.limit,
        remaining: s.remaining,
        reset_time: s.reset.map(Micros::to_timestamp),
    }
}

#[tonic::async_trait]
impl KeyVerify for VerifyApi {
    async fn verify_key(
        &self,
        request: Request<proto::VerifyKeyRequest>,
    ) -> Result<Response<proto::VerifyKeyResponse>, Status> {
        let start = self.metrics.start();
        let req = request.into_inner();
        let result = match Verification::new(
            &req.key,
            &req.required_scopes,
            &req.origin,
            &req.referer,
            &req.organization_id,
            req.cost,
        ) {
            Ok(v) => self.verifier.verify(&v).await.map_err(Status::from),
            Err(violations) => Err(Status::from(violations)),
        };
        let code = result.as_ref().ok().map(|o| verify_code(o.code));
        self.metrics.observe(code, start);
        result.map(|o| Response::new(response(o)))
    }
}
