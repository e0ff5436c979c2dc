//! `VerifyKey`'s rules: what a verification asks, and the contract's check order
//! once the key is known. Transports (gRPC `VerifyKey`, and later ext_authz and
//! HTTP forward auth) parse their own requests into a [`Verification`] and
//! translate the [`Code`] back; the order of checks lives only here.

use super::violations::{Violations, field};
use crate::{
    cache::CachedKey,
    keys::{self, SecretHash},
    model::{Micros, OrganizationId},
    scopes::parse_scope,
};

/// A verification's outcome; the contract's `VerifyCode` without its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Valid,
    Missing,
    Malformed,
    NotFound,
    Revoked,
    Expired,
    OrganizationMismatch,
    HostnameBlocked,
    InsufficientScope,
    RateLimited,
    QuotaExceeded,
}

impl Code {
    /// The contract's `VerifyCode` number, as the usage history stores it.
    pub fn number(self) -> i64 {
        match self {
            Self::Valid => 1,
            Self::Missing => 2,
            Self::Malformed => 3,
            Self::NotFound => 4,
            Self::Revoked => 5,
            Self::Expired => 6,
            Self::OrganizationMismatch => 7,
            Self::HostnameBlocked => 8,
            Self::InsufficientScope => 9,
            Self::RateLimited => 10,
            Self::QuotaExceeded => 11,
        }
    }

    /// What the code means to the end client in HTTP (the contract's §2 and
    /// §10): 200 valid, 401 for no usable key (2–6), 403 for a key that may
    /// not do this (7–9), 429 for a spent limit (10–11). Every entry point that
    /// answers in HTTP terms (Envoy, forward auth) takes it from here.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Valid => 200,
            Self::Missing | Self::Malformed | Self::NotFound | Self::Revoked | Self::Expired => 401,
            Self::OrganizationMismatch | Self::HostnameBlocked | Self::InsufficientScope => 403,
            Self::RateLimited | Self::QuotaExceeded => 429,
        }
    }

    /// Position among the outcomes of a verification that found its key (the
    /// ones the usage history counts); `None` for the others.
    pub fn outcome_index(self) -> Option<usize> {
        match self {
            Self::Valid => Some(0),
            Self::Missing | Self::Malformed | Self::NotFound => None,
            other => usize::try_from(other.number() - 4).ok(),
        }
    }

    /// The code at an outcome position (the inverse of `outcome_index`).
    pub fn from_outcome_index(i: usize) -> Option<Self> {
        [
            Self::Valid,
            Self::Revoked,
            Self::Expired,
            Self::OrganizationMismatch,
            Self::HostnameBlocked,
            Self::InsufficientScope,
            Self::RateLimited,
            Self::QuotaExceeded,
        ]
        .get(i)
        .copied()
    }
}

/// What a caller asks of a presented key, borrowed from its request: the verify
/// path copies nothing it does not have to. Its `Debug` shows no key.
#[derive(Clone, Copy)]
pub struct Verification<'a> {
    pub key: &'a str,
    /// Each well-formed (checked by [`Verification::new`]).
    pub required_scopes: &'a [String],
    pub origin: &'a str,
    pub referer: &'a str,
    /// Only a key of this organization passes, when set.
    pub organization_id: Option<&'a str>,
    /// Rate-limit calls and quota credits this call consumes; 0 asks whether a
    /// call of cost 1 would pass and consumes nothing.
    pub cost: u32,
}

impl std::fmt::Debug for Verification<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a field added here must be shown (or hidden) here.
        let Self {
            key,
            required_scopes,
            origin,
            referer,
            organization_id,
            cost,
        } = self;
        f.debug_struct("Verification")
            .field("key", &crate::keys::Redacted(key))
            .field("required_scopes", required_scopes)
            .field("origin", origin)
            .field("referer", referer)
            .field("organization_id", organization_id)
            .field("cost", cost)
            .finish()
    }
}

/// The most one call may consume.
pub const MAX_COST: u32 = 1_000;

impl<'a> Verification<'a> {
    /// The caller's own mistakes come first: a malformed required scope or
    /// organization is a bug to fix (INVALID_ARGUMENT), not a denial.
    pub fn new(
        key: &'a str,
        required_scopes: &'a [String],
        origin: &'a str,
        referer: &'a str,
        organization_id: &'a str,
        cost: Option<u32>,
    ) -> Result<Self, Violations> {
        let cost = cost.unwrap_or(1);
        if cost > MAX_COST {
            return Err(Violations::one(
                "cost",
                format!("must be at most {MAX_COST}, got {cost}"),
            ));
        }
        if let Some((i, e)) = required_scopes
            .iter()
            .enumerate()
            .find_map(|(i, s)| parse_scope(s).err().map(|e| (i, e)))
        {
            return Err(Violations::one(
                format!("required_scopes[{i}]"),
                e.to_string(),
            ));
        }
        let organization_id = if organization_id.is_empty() {
            None
        } else {
            field("organization_id", OrganizationId::check(organization_id))?;
            Some(organization_id)
        };
        Ok(Self {
            key,
            required_scopes,
            origin,
            referer,
            organization_id,
            cost,
        })
    }

    /// The checks before any lookup: no key is MISSING; a wrong shape, length or
    /// checksum is MALFORMED and never reaches the cache or the store.
    pub fn presented(&self) -> Result<SecretHash, Code> {
        if self.key.is_empty() {
            return Err(Code::Missing);
        }
        keys::parse_token(self.key).map_err(|_| Code::Malformed)
    }
}

/// The checks of the contract's table that follow a successful lookup, in order
/// up to the usage limits (which need state: `services::verifier` applies them),
/// with the missing scopes (each once, in the order asked) when that is the answer.
/// Expiry is read against `now` on every call, never cached.
pub fn check(key: &CachedKey, v: &Verification<'_>, now: Micros) -> (Code, Vec<String>) {
    if key.revoke_time.is_some() {
        return (Code::Revoked, Vec::new());
    }
    if key.expire_time.is_some_and(|t| t <= now) {
        return (Code::Expired, Vec::new());
    }
    if v.organization_id
        .is_some_and(|org| org != key.organization_id())
    {
        return (Code::OrganizationMismatch, Vec::new());
    }
    if !key.allowed_hostnames.allows(v.origin, v.referer) {
        return (Code::HostnameBlocked, Vec::new());
    }
    let mut missing: Vec<String> = Vec::new();
    for s in v.required_scopes {
        if parse_scope(s).is_ok_and(|s| !key.scopes.grants(s)) && !missing.contains(s) {
            missing.push(s.clone());
        }
    }
    if missing.is_empty() {
        (Code::Valid, missing)
    } else {
        (Code::InsufficientScope, missing)
    }
}
