//! Rows as the database returns them, decoded by column name (`sqlx::FromRow`),
//! and their conversion into domain types, which parses every value again: a
//! row keygate cannot have written is [`StoreError::Corrupt`], never a panic.
//!
//! Text columns are read as bytes: MySQL flags `_bin` collations as binary,
//! which sqlx's `String` decoder refuses; the conversion checks the UTF-8.

use super::StoreError;
use crate::{
    domain::hostnames::AllowedHostnames,
    domain::identities::{ExternalId, IdentityId, IdentityRecord},
    domain::json,
    domain::key_policy::KeyPolicy,
    domain::keys::SecretHash,
    domain::limits::{Quota, QuotaPeriod, RateLimits},
    domain::metadata::Metadata,
    domain::model::{
        EventAction, KeyEvent, KeyId, KeyName, KeyRecord, KeyType, Micros, OrganizationId, Owner,
        UserId,
    },
    domain::networks::{AllowedNetworks, BoundPrincipals},
    domain::scopes::ScopeSet,
};

/// The columns of `api_keys` keygate both writes and reads.
macro_rules! written_key_columns {
    () => {
        "id, organization_id, key_type, user_id, name, scopes, \
         allowed_hostnames, secret_hash, key_prefix, last_four, request_count, create_time, \
         update_time, last_used_time, revoke_time, expire_time, created_by, rate_limits, \
         quota_limit, quota_period, quota_used, quota_period_start, rotated_to_id, rotated_from_id, \
         allowed_networks, bound_principals, metadata, identity_id"
    };
}
pub(super) use written_key_columns;

/// The columns of `api_keys` keygate reads, in the order [`KeyRow`] names them:
/// the written ones and the generated `lineage_id`.
macro_rules! key_columns {
    () => {
        concat!($crate::store::rows::written_key_columns!(), ", lineage_id")
    };
}
pub(super) use key_columns;

#[derive(Debug, sqlx::FromRow)]
pub(super) struct KeyRow {
    id: Vec<u8>,
    organization_id: Vec<u8>,
    key_type: i64,
    user_id: Option<Vec<u8>>,
    name: Vec<u8>,
    scopes: Vec<u8>,
    allowed_hostnames: Vec<u8>,
    secret_hash: Vec<u8>,
    key_prefix: Vec<u8>,
    last_four: Vec<u8>,
    request_count: i64,
    create_time: i64,
    update_time: i64,
    last_used_time: Option<i64>,
    revoke_time: Option<i64>,
    expire_time: Option<i64>,
    created_by: Vec<u8>,
    rate_limits: Vec<u8>,
    quota_limit: Option<i64>,
    quota_period: Option<i64>,
    quota_used: i64,
    quota_period_start: i64,
    rotated_to_id: Option<Vec<u8>>,
    rotated_from_id: Option<Vec<u8>>,
    allowed_networks: Option<Vec<u8>>,
    bound_principals: Option<Vec<u8>>,
    metadata: Option<Vec<u8>>,
    identity_id: Option<Vec<u8>>,
    lineage_id: Option<Vec<u8>>,
}

/// The columns of `identities` keygate reads, in the order [`IdentityRow`] names them.
pub(super) const IDENTITY_COLUMNS: &str = "id, organization_id, external_id, metadata, \
    rate_limits, quota_limit, quota_period, quota_used, quota_period_start, create_time, \
    update_time";

#[derive(Debug, sqlx::FromRow)]
pub(super) struct IdentityRow {
    id: Vec<u8>,
    organization_id: Vec<u8>,
    external_id: Vec<u8>,
    metadata: Option<Vec<u8>>,
    rate_limits: Vec<u8>,
    quota_limit: Option<i64>,
    quota_period: Option<i64>,
    quota_used: i64,
    quota_period_start: i64,
    create_time: i64,
    update_time: i64,
}

#[derive(Debug, sqlx::FromRow)]
pub(super) struct EventRow {
    org_seq: i64,
    key_id: Vec<u8>,
    organization_id: Vec<u8>,
    action: i64,
    actor_id: Vec<u8>,
    event_time: i64,
    /// The policy a POLICY_CHANGED event set (its snapshot column, read only
    /// for those events).
    policy: Option<Vec<u8>>,
    identity_id: Option<Vec<u8>>,
}

/// An event due for a webhook delivery, with its delivery's attempts so far.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct DeliveryRow {
    id: i64,
    attempts: i64,
    #[sqlx(flatten)]
    event: EventRow,
    key_snapshot: Option<Vec<u8>>,
}

/// An organization's key policy.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct PolicyRow {
    max_lifetime: Option<i64>,
    require_networks_for_bot_keys: i64,
    allowed_bot_scopes: Vec<u8>,
    max_rotation_grace: Option<i64>,
}

impl TryFrom<PolicyRow> for KeyPolicy {
    type Error = StoreError;

    fn try_from(r: PolicyRow) -> Result<Self, StoreError> {
        const T: &str = "key_policies";
        let scopes = text(r.allowed_bot_scopes, T, "allowed_bot_scopes")?;
        Ok(Self {
            max_lifetime: r.max_lifetime.map(Micros),
            require_networks_for_bot_keys: r.require_networks_for_bot_keys != 0,
            allowed_bot_scopes: match scopes.is_empty() {
                true => None,
                false => Some(
                    ScopeSet::parse(scopes.split(' '))
                        .map_err(|_| corrupt(T, "allowed_bot_scopes"))?,
                ),
            },
            max_rotation_grace: r.max_rotation_grace.map(Micros),
        })
    }
}

/// What the invalidation poll reads of an event.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ChangeRow {
    id: i64,
    secret_hash: Vec<u8>,
    event_time: i64,
    identity_id: Option<Vec<u8>>,
}

pub(super) fn corrupt(table: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        table,
        detail: detail.into(),
    }
}

fn text(bytes: Vec<u8>, table: &'static str, column: &'static str) -> Result<String, StoreError> {
    String::from_utf8(bytes).map_err(|_| corrupt(table, format!("{column} is not UTF-8")))
}

/// A column parsed into a domain type; a value the type refuses is corruption.
fn parsed<T, E>(
    bytes: Vec<u8>,
    table: &'static str,
    column: &'static str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T, StoreError> {
    parse(&text(bytes, table, column)?).map_err(|_| corrupt(table, column))
}

/// A space-separated list column (NULL or empty for none) parsed by `parse`.
fn list<T: Default, E>(
    bytes: Option<Vec<u8>>,
    column: &'static str,
    parse: impl FnOnce(Vec<&str>) -> Result<T, E>,
) -> Result<T, StoreError> {
    const T: &str = "api_keys";
    let Some(bytes) = bytes else {
        return Ok(T::default());
    };
    let s = text(bytes, T, column)?;
    parse(s.split(' ').filter(|e| !e.is_empty()).collect()).map_err(|_| corrupt(T, column))
}

/// A quota's two columns: both NULL (none) or both set.
fn quota(
    limit: Option<i64>,
    period: Option<i64>,
    table: &'static str,
) -> Result<Option<Quota>, StoreError> {
    match (limit, period) {
        (None, None) => Ok(None),
        (Some(limit), Some(period)) => Ok(Some(Quota {
            limit: u64::try_from(limit)
                .ok()
                .filter(|l| Quota::limit_invalid(*l).is_none())
                .ok_or_else(|| corrupt(table, "quota_limit"))?,
            period: QuotaPeriod::try_from(period).map_err(|_| corrupt(table, "quota_period"))?,
        })),
        _ => Err(corrupt(table, "quota_limit does not match quota_period")),
    }
}

fn metadata(bytes: Option<Vec<u8>>, table: &'static str) -> Result<Metadata, StoreError> {
    match bytes {
        None => Ok(Metadata::default()),
        Some(m) => parsed(m, table, "metadata", |s| Metadata::from_json(s).ok_or(())),
    }
}

fn identity_id(
    bytes: Option<Vec<u8>>,
    table: &'static str,
) -> Result<Option<IdentityId>, StoreError> {
    bytes
        .map(|b| parsed(b, table, "identity_id", IdentityId::parse))
        .transpose()
}

impl TryFrom<IdentityRow> for IdentityRecord {
    type Error = StoreError;

    fn try_from(r: IdentityRow) -> Result<Self, StoreError> {
        const T: &str = "identities";
        Ok(Self {
            id: parsed(r.id, T, "id", IdentityId::parse)?,
            organization_id: parsed(
                r.organization_id,
                T,
                "organization_id",
                OrganizationId::parse,
            )?,
            external_id: parsed(r.external_id, T, "external_id", ExternalId::parse)?,
            metadata: metadata(r.metadata, T)?,
            rate_limits: parsed(r.rate_limits, T, "rate_limits", RateLimits::decode)?,
            quota: quota(r.quota_limit, r.quota_period, T)?,
            quota_used: u64::try_from(r.quota_used).map_err(|_| corrupt(T, "quota_used"))?,
            quota_period_start: Micros(r.quota_period_start),
            create_time: Micros(r.create_time),
            update_time: Micros(r.update_time),
        })
    }
}

fn hash(bytes: &[u8], table: &'static str) -> Result<SecretHash, StoreError> {
    SecretHash::from_slice(bytes).ok_or_else(|| corrupt(table, "secret_hash"))
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = StoreError;

    fn try_from(r: KeyRow) -> Result<Self, StoreError> {
        const T: &str = "api_keys";
        let key_type = KeyType::try_from(r.key_type).map_err(|_| corrupt(T, "key_type"))?;
        let owner = match (key_type, r.user_id) {
            (KeyType::User, Some(u)) => Owner::User(parsed(u, T, "user_id", UserId::parse)?),
            (KeyType::Bot, None) => Owner::Bot,
            _ => return Err(corrupt(T, "user_id does not match key_type")),
        };
        let scopes = text(r.scopes, T, "scopes")?;
        let hosts = text(r.allowed_hostnames, T, "allowed_hostnames")?;
        let quota = quota(r.quota_limit, r.quota_period, T)?;
        let id = parsed(r.id, T, "id", KeyId::parse)?;
        Ok(Self {
            // Generated by the database (migration 0007), never NULL.
            lineage_id: match r.lineage_id {
                Some(l) => parsed(l, T, "lineage_id", KeyId::parse)?,
                None => id.clone(),
            },
            id,
            organization_id: parsed(
                r.organization_id,
                T,
                "organization_id",
                OrganizationId::parse,
            )?,
            owner,
            name: parsed(r.name, T, "name", KeyName::parse)?,
            scopes: ScopeSet::parse(scopes.split(' ')).map_err(|_| corrupt(T, "scopes"))?,
            allowed_hostnames: AllowedHostnames::parse(hosts.split(' ').filter(|h| !h.is_empty()))
                .map_err(|_| corrupt(T, "allowed_hostnames"))?,
            secret_hash: hash(&r.secret_hash, T)?,
            key_prefix: text(r.key_prefix, T, "key_prefix")?,
            last_four: text(r.last_four, T, "last_four")?,
            request_count: u64::try_from(r.request_count)
                .map_err(|_| corrupt(T, "request_count"))?,
            create_time: Micros(r.create_time),
            update_time: Micros(r.update_time),
            last_used_time: r.last_used_time.map(Micros),
            revoke_time: r.revoke_time.map(Micros),
            expire_time: r.expire_time.map(Micros),
            created_by: parsed(r.created_by, T, "created_by", UserId::parse)?,
            rate_limits: parsed(r.rate_limits, T, "rate_limits", RateLimits::decode)?,
            quota,
            quota_used: u64::try_from(r.quota_used).map_err(|_| corrupt(T, "quota_used"))?,
            quota_period_start: Micros(r.quota_period_start),
            rotated_to_id: r
                .rotated_to_id
                .map(|id| parsed(id, T, "rotated_to_id", KeyId::parse))
                .transpose()?,
            rotated_from_id: r
                .rotated_from_id
                .map(|id| parsed(id, T, "rotated_from_id", KeyId::parse))
                .transpose()?,
            allowed_networks: list(r.allowed_networks, "allowed_networks", |l| {
                AllowedNetworks::parse(l)
            })?,
            bound_principals: list(r.bound_principals, "bound_principals", |l| {
                BoundPrincipals::parse(l)
            })?,
            metadata: metadata(r.metadata, T)?,
            identity_id: identity_id(r.identity_id, T)?,
        })
    }
}

impl TryFrom<EventRow> for KeyEvent {
    type Error = StoreError;

    fn try_from(r: EventRow) -> Result<Self, StoreError> {
        const T: &str = "key_events";
        Ok(Self {
            id: u64::try_from(r.org_seq).map_err(|_| corrupt(T, "org_seq"))?,
            // A policy event is about no key: its key id is empty.
            key_id: match r.key_id.is_empty() {
                true => None,
                false => Some(parsed(r.key_id, T, "key_id", KeyId::parse)?),
            },
            policy: r
                .policy
                .map(|p| parsed(p, T, "key_snapshot", json::policy_from_json))
                .transpose()?,
            organization_id: parsed(
                r.organization_id,
                T,
                "organization_id",
                OrganizationId::parse,
            )?,
            action: EventAction::try_from(r.action).map_err(|_| corrupt(T, "action"))?,
            actor_id: parsed(r.actor_id, T, "actor_id", UserId::parse)?,
            time: Micros(r.event_time),
            identity_id: identity_id(r.identity_id, T)?,
        })
    }
}

impl TryFrom<DeliveryRow> for super::Delivery {
    type Error = StoreError;

    fn try_from(r: DeliveryRow) -> Result<Self, StoreError> {
        const T: &str = "key_events";
        let event = KeyEvent::try_from(r.event)?;
        Ok(Self {
            event_id: u64::try_from(r.id).map_err(|_| corrupt(T, "id"))?,
            attempts: u32::try_from(r.attempts).unwrap_or(u32::MAX),
            // A policy event's snapshot is its policy, which the event has;
            // an identity event's is the identity.
            snapshot: match event.action {
                EventAction::PolicyChanged => None,
                _ => r
                    .key_snapshot
                    .map(|b| text(b, T, "key_snapshot"))
                    .transpose()?,
            },
            event,
        })
    }
}

impl TryFrom<ChangeRow> for super::Change {
    type Error = StoreError;

    fn try_from(r: ChangeRow) -> Result<Self, StoreError> {
        const T: &str = "key_events";
        Ok(Self {
            id: u64::try_from(r.id).map_err(|_| corrupt(T, "id"))?,
            hash: hash(&r.secret_hash, T)?,
            time: Micros(r.event_time),
            identity_id: identity_id(r.identity_id, T)?,
        })
    }
}

/// Every row converted, or the first that cannot be.
pub(super) fn convert<R, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}
