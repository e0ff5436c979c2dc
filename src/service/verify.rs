//! `KeyVerify.VerifyKey`: on the path of every request our users serve. A denial
//! is an answer, not an error; errors are kept for the caller's own faults and
//! for a store that cannot be reached.

use std::{sync::Arc, time::Instant};

use tonic::{Request, Response, Status};

use super::error::ApiError;
use crate::{
    cache::{CachedKey, KeyCache, Lookup},
    keys::{self, SecretHash},
    lookup::Lookups,
    metrics::VerifyMetrics,
    model::Micros,
    proto::{self, VerifyCode, key_verify_server::KeyVerify},
    scopes::parse_scope,
    usage::UsageRecorder,
};

#[derive(Debug, Clone)]
pub struct VerifyService {
    lookups: Lookups,
    cache: Arc<KeyCache>,
    usage: Arc<UsageRecorder>,
    metrics: VerifyMetrics,
}

impl VerifyService {
    pub fn new(lookups: Lookups, cache: Arc<KeyCache>, usage: Arc<UsageRecorder>) -> Self {
        Self {
            lookups,
            cache,
            usage,
            metrics: VerifyMetrics::new(),
        }
    }

    async fn lookup(&self, hash: SecretHash) -> Result<Option<Arc<CachedKey>>, ApiError> {
        match self.cache.get(&hash) {
            Lookup::Found(k) => Ok(Some(k)),
            Lookup::Unknown => Ok(None),
            Lookup::Miss(ticket) => {
                let record = self
                    .lookups
                    .find(hash)
                    .await
                    .map_err(|e| ApiError::from(&*e))?;
                Ok(self.cache.fill(ticket, hash, record))
            }
        }
    }
}

fn denied(code: VerifyCode, key: Option<&CachedKey>) -> proto::VerifyKeyResponse {
    proto::VerifyKeyResponse {
        valid: code == VerifyCode::Valid,
        code: code.into(),
        key: key.map(CachedKey::verified),
        missing_scopes: Vec::new(),
    }
}

/// The checks of the contract's table that follow a successful lookup, in order.
fn check(key: &CachedKey, req: &proto::VerifyKeyRequest, now: Micros) -> proto::VerifyKeyResponse {
    if key.revoke_time.is_some() {
        return denied(VerifyCode::Revoked, Some(key));
    }
    if key.expire_time.is_some_and(|t| t <= now) {
        return denied(VerifyCode::Expired, Some(key));
    }
    if !req.organization_id.is_empty() && req.organization_id != key.organization_id() {
        return denied(VerifyCode::OrganizationMismatch, Some(key));
    }
    if !key.allowed_hostnames.allows(&req.origin, &req.referer) {
        return denied(VerifyCode::HostnameBlocked, Some(key));
    }
    // Each missing scope once, in the order first asked for.
    let mut missing: Vec<String> = Vec::new();
    for s in &req.required_scopes {
        if parse_scope(s).is_ok_and(|s| !key.scopes.grants(s)) && !missing.contains(s) {
            missing.push(s.clone());
        }
    }
    if !missing.is_empty() {
        let mut resp = denied(VerifyCode::InsufficientScope, Some(key));
        resp.missing_scopes = missing;
        return resp;
    }
    denied(VerifyCode::Valid, Some(key))
}

#[tonic::async_trait]
impl KeyVerify for VerifyService {
    async fn verify_key(
        &self,
        request: Request<proto::VerifyKeyRequest>,
    ) -> Result<Response<proto::VerifyKeyResponse>, Status> {
        let start = Instant::now();
        let result = self.verify(request.into_inner()).await;
        let code = result.as_ref().ok().map(proto::VerifyKeyResponse::code);
        self.metrics.observe(code, start.elapsed());
        result.map(Response::new).map_err(Status::from)
    }
}

impl VerifyService {
    async fn verify(
        &self,
        req: proto::VerifyKeyRequest,
    ) -> Result<proto::VerifyKeyResponse, ApiError> {
        // The caller's own mistakes come first: they are bugs to fix, not denials.
        for (i, s) in req.required_scopes.iter().enumerate() {
            if let Err(e) = parse_scope(s) {
                return Err(ApiError::invalid(
                    format!("required_scopes[{i}]"),
                    e.to_string(),
                ));
            }
        }
        if !req.organization_id.is_empty()
            && let Err(e) = crate::model::OrganizationId::check(&req.organization_id)
        {
            return Err(ApiError::invalid("organization_id", e.to_string()));
        }

        if req.key.is_empty() {
            return Ok(denied(VerifyCode::Missing, None));
        }
        // Length, shape and checksum: a malformed key never reaches cache or store.
        let Ok(hash) = keys::parse_token(&req.key) else {
            return Ok(denied(VerifyCode::Malformed, None));
        };
        let Some(key) = self.lookup(hash).await? else {
            return Ok(denied(VerifyCode::NotFound, None));
        };
        let now = Micros::now();
        self.usage.record(&key, now);
        let resp = check(&key, &req, now);
        tracing::debug!(key_id = %key.id, code = resp.code, "verified");
        Ok(resp)
    }
}
