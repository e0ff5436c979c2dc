//! Domain types to their proto messages. Requests go the other way through the
//! parsing in `admin` and `verify`, field by field, so errors can name the field.

use crate::{
    domain::identities::IdentityRecord,
    domain::key_policy::KeyPolicy,
    domain::limits::{Quota, QuotaPeriod, RateLimits},
    domain::model::{EventAction, KeyEvent, KeyRecord, KeyType, Micros},
    proto,
};

impl From<KeyType> for proto::KeyType {
    fn from(t: KeyType) -> Self {
        match t {
            KeyType::User => Self::User,
            KeyType::Bot => Self::Bot,
        }
    }
}

impl From<QuotaPeriod> for proto::QuotaPeriod {
    fn from(p: QuotaPeriod) -> Self {
        match p {
            QuotaPeriod::Day => Self::Day,
            QuotaPeriod::Month => Self::Month,
            QuotaPeriod::Total => Self::Total,
        }
    }
}

impl From<EventAction> for proto::KeyEventAction {
    fn from(a: EventAction) -> Self {
        match a {
            EventAction::Created => Self::Created,
            EventAction::Updated => Self::Updated,
            EventAction::Revoked => Self::Revoked,
            EventAction::Deleted => Self::Deleted,
            EventAction::Rotated => Self::Rotated,
            EventAction::Leaked => Self::Leaked,
            EventAction::PolicyChanged => Self::PolicyChanged,
            EventAction::IdentityCreated => Self::IdentityCreated,
            EventAction::IdentityUpdated => Self::IdentityUpdated,
            EventAction::IdentityDeleted => Self::IdentityDeleted,
            EventAction::KeyExpiring => Self::KeyExpiring,
            EventAction::KeyDormant => Self::KeyDormant,
            EventAction::QuotaLow => Self::QuotaLow,
            EventAction::QuotaExhausted => Self::QuotaExhausted,
        }
    }
}

impl From<&KeyRecord> for proto::ApiKey {
    fn from(k: &KeyRecord) -> Self {
        Self {
            id: k.id.as_str().to_owned(),
            organization_id: k.organization_id.as_str().to_owned(),
            r#type: proto::KeyType::from(k.owner.key_type()).into(),
            user_id: k
                .owner
                .user_id()
                .map(|u| u.as_str().to_owned())
                .unwrap_or_default(),
            name: k.name.as_str().to_owned(),
            scopes: k.scopes.to_vec(),
            allowed_hostnames: k.allowed_hostnames.to_vec(),
            allowed_networks: k.allowed_networks.to_vec(),
            bound_principals: k.bound_principals.to_vec(),
            metadata: k.metadata.to_map(),
            key_prefix: k.key_prefix.clone(),
            last_four: k.last_four.clone(),
            request_count: k.request_count,
            revoked: k.revoke_time.is_some(),
            create_time: Some(k.create_time.to_timestamp()),
            update_time: Some(k.update_time.to_timestamp()),
            last_used_time: k.last_used_time.map(|t| t.to_timestamp()),
            revoke_time: k.revoke_time.map(|t| t.to_timestamp()),
            expire_time: k.expire_time.map(|t| t.to_timestamp()),
            created_by: k.created_by.as_str().to_owned(),
            rate_limits: rate_limits(&k.rate_limits),
            quota: k.quota.map(quota),
            quota_usage: k.quota_usage().map(quota_usage),
            identity_id: k
                .identity_id
                .as_ref()
                .map(|i| i.as_str().to_owned())
                .unwrap_or_default(),
            rotated_to_id: k
                .rotated_to_id
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default(),
            rotated_from_id: k
                .rotated_from_id
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default(),
        }
    }
}

impl From<&KeyEvent> for proto::KeyEvent {
    fn from(e: &KeyEvent) -> Self {
        Self {
            id: e.id,
            key_id: e
                .key_id
                .as_ref()
                .map(|k| k.as_str().to_owned())
                .unwrap_or_default(),
            organization_id: e.organization_id.as_str().to_owned(),
            action: proto::KeyEventAction::from(e.action).into(),
            actor_id: e.actor_id.as_str().to_owned(),
            time: Some(e.time.to_timestamp()),
            policy: e.policy.as_ref().map(Into::into),
            identity_id: e
                .identity_id
                .as_ref()
                .map(|i| i.as_str().to_owned())
                .unwrap_or_default(),
        }
    }
}

fn rate_limits(limits: &RateLimits) -> Vec<proto::RateLimit> {
    limits
        .iter()
        .map(|l| proto::RateLimit {
            name: l.name.as_str().to_owned(),
            limit: l.limit,
            window: Some(l.window.to_duration()),
        })
        .collect()
}

fn quota(q: Quota) -> proto::Quota {
    proto::Quota {
        limit: q.limit,
        period: proto::QuotaPeriod::from(q.period).into(),
    }
}

fn quota_usage((used, reset): (u64, Option<Micros>)) -> proto::QuotaUsage {
    proto::QuotaUsage {
        used,
        reset_time: reset.map(Micros::to_timestamp),
    }
}

impl From<&IdentityRecord> for proto::Identity {
    fn from(i: &IdentityRecord) -> Self {
        Self {
            id: i.id.as_str().to_owned(),
            organization_id: i.organization_id.as_str().to_owned(),
            external_id: i.external_id.as_str().to_owned(),
            metadata: i.metadata.to_map(),
            rate_limits: rate_limits(&i.rate_limits),
            quota: i.quota.map(quota),
            quota_usage: i.quota_usage().map(quota_usage),
            create_time: Some(i.create_time.to_timestamp()),
        }
    }
}

impl From<&KeyPolicy> for proto::KeyPolicy {
    fn from(p: &KeyPolicy) -> Self {
        Self {
            max_lifetime: p.max_lifetime.map(Micros::to_duration),
            require_networks_for_bot_keys: p.require_networks_for_bot_keys,
            allowed_bot_scopes: p
                .allowed_bot_scopes
                .as_ref()
                .map(|s| s.to_vec())
                .unwrap_or_default(),
            max_rotation_grace: p.max_rotation_grace.map(Micros::to_duration),
        }
    }
}
