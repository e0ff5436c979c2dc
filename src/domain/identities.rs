//! Identities: the customer or service that owns keys. An identity's rate
//! limits and quota are shared by all of its keys, so a customer with five keys
//! gets its plan's allowance once, not five times; its metadata comes back
//! with every verification of its keys, next to the key's own.
//!
//! The vocabulary ([`IdentityId`], [`ExternalId`], the record and its patch)
//! and the requests of the identity calls, parsed as `commands` parses the
//! key calls: every bad field named at once, nothing read from a store.

use super::{
    commands::{SECRET_HERE, organization, page_size, quota, rate_limits},
    paging::{self, TokenKind},
    violations::{All, Violations, field},
};
use crate::{
    domain::keys::contains_secret,
    domain::limits::{Quota, RateLimits},
    domain::metadata::Metadata,
    domain::model::{Invalid, Micros, OrganizationId},
    proto,
};

crate::domain::model::uuid_id!(
    /// An identity's id, shaped as a key's.
    IdentityId,
    "must be an identity id as returned by CreateIdentity"
);

/// The caller's own name for an identity (a customer id, an account number):
/// 1–255 characters, none of them whitespace or a control character, so it
/// prints, logs and compares as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalId(Box<str>);

pub const MAX_EXTERNAL_ID: usize = 255;

impl ExternalId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.chars().count() > MAX_EXTERNAL_ID {
            return Err(Invalid("must be 1 to 255 characters"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Invalid("must not contain whitespace or control characters"));
        }
        if contains_secret(s) {
            return Err(Invalid(SECRET_HERE));
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An identity as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    pub id: IdentityId,
    pub organization_id: OrganizationId,
    pub external_id: ExternalId,
    pub metadata: Metadata,
    pub rate_limits: RateLimits,
    pub quota: Option<Quota>,
    /// Credits taken in the period that starts at `quota_period_start`, as a
    /// key's (see `hotpath::quota`).
    pub quota_used: u64,
    pub quota_period_start: Micros,
    pub create_time: Micros,
    pub update_time: Micros,
}

impl IdentityRecord {
    /// The record as of `now`: a quota whose stored period has ended has used
    /// nothing of the current one.
    pub fn as_of(mut self, now: Micros) -> Self {
        (self.quota_used, self.quota_period_start) = crate::domain::limits::quota_as_of(
            self.quota,
            self.quota_used,
            self.quota_period_start,
            now,
        );
        self
    }

    /// The quota's use in its stored period, and when that period ends.
    pub fn quota_usage(&self) -> Option<(u64, Option<Micros>)> {
        crate::domain::limits::quota_usage(self.quota, self.quota_used, self.quota_period_start)
    }
}

/// The changes of an `UpdateIdentity`; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct IdentityPatch {
    pub external_id: Option<ExternalId>,
    pub metadata: Option<Metadata>,
    /// An empty set removes every rate limit.
    pub rate_limits: Option<RateLimits>,
    /// `Some(None)` removes the quota.
    pub quota: Option<Option<Quota>>,
}

impl IdentityPatch {
    pub fn apply(&self, identity: &mut IdentityRecord) {
        if let Some(e) = &self.external_id {
            identity.external_id = e.clone();
        }
        if let Some(m) = &self.metadata {
            identity.metadata = m.clone();
        }
        if let Some(l) = &self.rate_limits {
            identity.rate_limits = l.clone();
        }
        if let Some(q) = self.quota {
            identity.quota = q;
        }
    }
}

fn external_id(name: &str, s: &str) -> Result<ExternalId, Violations> {
    field(name, ExternalId::parse(s))
}

fn identity_id(s: &str) -> Result<IdentityId, Violations> {
    field("id", IdentityId::parse(s))
}

/// A key's `identity_id` field: empty is none.
pub fn key_identity(s: &str) -> Result<Option<IdentityId>, Violations> {
    if s.is_empty() {
        return Ok(None);
    }
    field("identity_id", IdentityId::parse(s)).map(Some)
}

#[derive(Debug, Clone)]
pub struct CreateIdentity {
    pub organization_id: OrganizationId,
    pub external_id: ExternalId,
    pub metadata: Metadata,
    pub rate_limits: RateLimits,
    pub quota: Option<Quota>,
}

impl CreateIdentity {
    pub fn parse(req: &proto::CreateIdentityRequest) -> Result<Self, Violations> {
        let (organization_id, external_id, metadata, rate_limits, quota) = (
            organization(&req.organization_id),
            external_id("external_id", &req.external_id),
            Metadata::parse("metadata", &req.metadata),
            rate_limits(&req.rate_limits),
            quota(req.quota.as_ref()),
        )
            .all()?;
        Ok(Self {
            organization_id,
            external_id,
            metadata,
            rate_limits,
            quota,
        })
    }
}

/// An identity of an organization, as `UpdateIdentity` and `DeleteIdentity` name it.
#[derive(Debug, Clone)]
pub struct IdentityRef {
    pub organization_id: OrganizationId,
    pub id: IdentityId,
}

impl IdentityRef {
    pub fn parse(organization_id: &str, id: &str) -> Result<Self, Violations> {
        let (organization_id, id) = (organization(organization_id), identity_id(id)).all()?;
        Ok(Self {
            organization_id,
            id,
        })
    }
}

/// How `GetIdentity` names its identity.
#[derive(Debug, Clone)]
pub enum IdentityName {
    Id(IdentityId),
    External(ExternalId),
}

#[derive(Debug, Clone)]
pub struct GetIdentity {
    pub organization_id: OrganizationId,
    pub name: IdentityName,
}

impl GetIdentity {
    pub fn parse(req: &proto::GetIdentityRequest) -> Result<Self, Violations> {
        let name = match (req.id.is_empty(), req.external_id.is_empty()) {
            (false, true) => identity_id(&req.id).map(IdentityName::Id),
            (true, false) => {
                external_id("external_id", &req.external_id).map(IdentityName::External)
            }
            _ => Err(Violations::one(
                "id",
                "give exactly one of id and external_id",
            )),
        };
        let (organization_id, name) = (organization(&req.organization_id), name).all()?;
        Ok(Self {
            organization_id,
            name,
        })
    }
}

#[derive(Debug, Clone)]
pub struct UpdateIdentity {
    pub identity: IdentityRef,
    pub patch: IdentityPatch,
}

const PATHS: &str = "external_id, metadata, rate_limits or quota";

impl UpdateIdentity {
    pub fn parse(req: &proto::UpdateIdentityRequest) -> Result<Self, Violations> {
        (
            IdentityRef::parse(&req.organization_id, &req.id),
            Self::patch(req),
        )
            .all()
            .map(|(identity, patch)| Self { identity, patch })
    }

    fn patch(req: &proto::UpdateIdentityRequest) -> Result<IdentityPatch, Violations> {
        let paths = req
            .update_mask
            .as_ref()
            .map(|m| m.paths.as_slice())
            .unwrap_or_default();
        if paths.is_empty() {
            return Err(Violations::one(
                "update_mask",
                format!("is required: name the fields to change ({PATHS})"),
            ));
        }
        let mut patch = IdentityPatch::default();
        let mut v = Violations::default();
        let mut take = |parsed: Result<(), Violations>| {
            if let Err(e) = parsed {
                v.extend(e);
            }
        };
        for (i, path) in paths.iter().enumerate() {
            match path.as_str() {
                "external_id" => take(
                    external_id("external_id", &req.external_id)
                        .map(|e| patch.external_id = Some(e)),
                ),
                "metadata" => take(
                    Metadata::parse("metadata", &req.metadata).map(|m| patch.metadata = Some(m)),
                ),
                "rate_limits" => {
                    take(rate_limits(&req.rate_limits).map(|l| patch.rate_limits = Some(l)));
                }
                "quota" => take(quota(req.quota.as_ref()).map(|q| patch.quota = Some(q))),
                _ => take(Err(Violations::one(
                    format!("update_mask.paths[{i}]"),
                    format!("unknown path {path:?}: expected {PATHS}"),
                ))),
            }
        }
        v.into_result().map(|()| patch)
    }
}

#[derive(Debug, Clone)]
pub struct ListIdentities {
    pub organization_id: OrganizationId,
    pub page_size: u32,
    pub after: Option<IdentityId>,
}

impl ListIdentities {
    pub fn parse(req: &proto::ListIdentitiesRequest) -> Result<Self, Violations> {
        let after = field(
            "page_token",
            paging::decode(TokenKind::Identities, &req.page_token),
        )
        .and_then(|p| {
            p.map(|p| {
                field(
                    "page_token",
                    IdentityId::parse(&p).map_err(|_| paging::BAD_TOKEN),
                )
            })
            .transpose()
        });
        let (organization_id, page_size, after) = (
            organization(&req.organization_id),
            page_size(req.page_size),
            after,
        )
            .all()?;
        Ok(Self {
            organization_id,
            page_size,
            after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create() -> proto::CreateIdentityRequest {
        proto::CreateIdentityRequest {
            organization_id: "acme".into(),
            external_id: "cus_123".into(),
            metadata: [("plan".to_owned(), "pro".to_owned())].into(),
            rate_limits: vec![proto::RateLimit {
                name: "per_minute".into(),
                limit: 100,
                window: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
            }],
            quota: Some(proto::Quota {
                limit: 1000,
                period: proto::QuotaPeriod::Month as i32,
            }),
        }
    }

    #[test]
    fn a_good_create_parses() {
        let c = CreateIdentity::parse(&create()).expect("parses");
        assert_eq!(c.external_id.as_str(), "cus_123");
        assert_eq!(c.rate_limits.len(), 1);
        assert_eq!(c.quota.map(|q| q.limit), Some(1000));
        assert_eq!(c.metadata.len(), 1);
    }

    #[test]
    fn every_bad_field_of_a_create_is_named() {
        let mut req = create();
        req.organization_id = "no spaces".into();
        req.external_id = "two words".into();
        req.metadata = [("Bad Name".to_owned(), "x".to_owned())].into();
        req.rate_limits[0].limit = 0;
        req.quota = Some(proto::Quota {
            limit: 0,
            period: 0,
        });
        let v = CreateIdentity::parse(&req).expect_err("refused");
        let fields: Vec<String> = v.to_vec().into_iter().map(|f| f.field).collect();
        for f in [
            "organization_id",
            "external_id",
            "rate_limits[0].limit",
            "quota.limit",
            "quota.period",
        ] {
            assert!(fields.iter().any(|x| x == f), "{f} missing from {fields:?}");
        }
        assert!(
            fields.iter().any(|x| x.starts_with("metadata")),
            "{fields:?}"
        );
    }

    #[test]
    fn external_ids() {
        assert!(ExternalId::parse("cus_123").is_ok());
        assert!(ExternalId::parse("ops@example.com").is_ok());
        assert!(ExternalId::parse(&"x".repeat(255)).is_ok());
        for bad in ["", " x", "a\tb", "a\u{7}b"] {
            assert!(ExternalId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ExternalId::parse(&"x".repeat(256)).is_err());
        let secret =
            crate::domain::keys::Secret::generate(&crate::domain::keys::KeyPrefix::default());
        assert!(ExternalId::parse(secret.expose()).is_err());
    }

    #[test]
    fn get_takes_exactly_one_name() {
        let req = |id: &str, ext: &str| proto::GetIdentityRequest {
            organization_id: "acme".into(),
            id: id.into(),
            external_id: ext.into(),
        };
        let id = IdentityId::generate();
        assert!(matches!(
            GetIdentity::parse(&req(id.as_str(), "")).map(|g| g.name),
            Ok(IdentityName::Id(_))
        ));
        assert!(matches!(
            GetIdentity::parse(&req("", "cus_1")).map(|g| g.name),
            Ok(IdentityName::External(_))
        ));
        assert!(GetIdentity::parse(&req("", "")).is_err());
        assert!(GetIdentity::parse(&req(id.as_str(), "cus_1")).is_err());
    }

    #[test]
    fn an_update_needs_a_mask_of_known_paths() {
        let mut req = proto::UpdateIdentityRequest {
            organization_id: "acme".into(),
            id: IdentityId::generate().as_str().into(),
            external_id: "cus_9".into(),
            ..Default::default()
        };
        assert!(UpdateIdentity::parse(&req).is_err());
        req.update_mask = Some(prost_types::FieldMask {
            paths: vec!["external_id".into(), "quota".into()],
        });
        let u = UpdateIdentity::parse(&req).expect("parses");
        assert_eq!(
            u.patch.external_id.map(|e| e.as_str().to_owned()),
            Some("cus_9".into())
        );
        assert_eq!(u.patch.quota, Some(None));
        assert!(u.patch.metadata.is_none() && u.patch.rate_limits.is_none());
        req.update_mask = Some(prost_types::FieldMask {
            paths: vec!["name".into()],
        });
        assert!(UpdateIdentity::parse(&req).is_err());
    }
}
