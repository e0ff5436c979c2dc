//! Domain types. Each one is parsed once at the edge (from a request, a flag or a
//! database row) so the rest of keygate never sees an unchecked string.
//!
//! Size: about 350 lines of code, one small type after another; the rest are tests.

use std::{sync::Arc, time::SystemTime};

use crate::{
    domain::hostnames::AllowedHostnames,
    domain::keys::SecretHash,
    domain::limits::{Quota, RateLimits},
    domain::metadata::Metadata,
    domain::networks::{AllowedNetworks, BoundPrincipals},
    domain::scopes::ScopeSet,
};

/// Why a value was refused; the service layer names the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

/// An API key fits the id grammars below; used as an id it would be stored,
/// logged and returned, so ids of that shape are refused.
const KEY_AS_ID: Invalid = Invalid("looks like an API key; a secret must never be used as an id");

/// `organization_id`: 1–64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OrganizationId(Arc<str>);

impl OrganizationId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        Self::check(s).map(|()| Self(s.into()))
    }

    /// The grammar alone, without building an id: the verify path compares the
    /// request's organization with the key's and needs no copy of it.
    pub fn check(s: &str) -> Result<(), Invalid> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(Invalid("must be 1-64 characters of [A-Za-z0-9_-]"));
        }
        if crate::domain::keys::is_secret_shaped(s) {
            return Err(KEY_AS_ID);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `user_id`: 1–128 printable ASCII characters without whitespace; keygate keeps no
/// user table, so this is all it can check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(Arc<str>);

impl UserId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok = (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
        if ok && crate::domain::keys::is_secret_shaped(s) {
            return Err(KEY_AS_ID);
        }
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(Invalid(
                "must be 1-128 printable ASCII characters without whitespace",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Declares an id type keygate hands out: a UUIDv7 in its hyphenated
/// lower-case form, so ids sort by creation time and pagination by id is both
/// stable and chronological; anything else (another case, no hyphens) is
/// refused with `$msg`, so one id has one spelling.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $msg:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            pub fn generate() -> Self {
                Self(uuid::Uuid::now_v7().hyphenated().to_string().into())
            }

            pub fn parse(s: &str) -> Result<Self, $crate::domain::model::Invalid> {
                use $crate::domain::model::Invalid;
                let id = uuid::Uuid::try_parse(s).map_err(|_| Invalid($msg))?;
                let canonical = id.hyphenated().to_string();
                if canonical == s {
                    Ok(Self(canonical.into()))
                } else {
                    Err(Invalid($msg))
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
pub(crate) use uuid_id;

uuid_id!(
    /// A key's id.
    KeyId,
    "must be a key id as returned by CreateKey"
);

/// A key's display name: 1–255 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyName(String);

impl KeyName {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.trim().is_empty() {
            return Err(Invalid("must not be empty"));
        }
        if s.chars().count() > Self::MAX_CHARS {
            return Err(Invalid("must be at most 255 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(Invalid("must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who owns a key. Stored as the proto enum's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    User,
    Bot,
}

impl KeyType {
    pub fn as_i64(self) -> i64 {
        match self {
            Self::User => 1,
            Self::Bot => 2,
        }
    }
}

/// The stored number back; anything else is not a key type keygate wrote.
impl TryFrom<i64> for KeyType {
    type Error = Invalid;

    fn try_from(n: i64) -> Result<Self, Invalid> {
        match n {
            1 => Ok(Self::User),
            2 => Ok(Self::Bot),
            _ => Err(Invalid("not a key type")),
        }
    }
}

/// Microseconds since the Unix epoch: the one time representation in the store,
/// identical on MySQL and SQLite and free of time-zone settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(pub i64);

impl Micros {
    /// 0001-01-01 to 9999-12-31, the range of `google.protobuf.Timestamp`.
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;

    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }

    pub fn from_timestamp(ts: &prost_types::Timestamp) -> Result<Self, Invalid> {
        if !(Self::MIN_SECONDS..=Self::MAX_SECONDS).contains(&ts.seconds)
            || !(0..1_000_000_000).contains(&ts.nanos)
        {
            return Err(Invalid("must be a valid timestamp"));
        }
        Ok(Self(ts.seconds * 1_000_000 + i64::from(ts.nanos / 1_000)))
    }

    /// As a `google.protobuf.Duration` (a length of time, not a point in it).
    pub fn to_duration(self) -> prost_types::Duration {
        prost_types::Duration {
            seconds: self.0.div_euclid(1_000_000),
            nanos: i32::try_from(self.0.rem_euclid(1_000_000) * 1_000).unwrap_or(0),
        }
    }

    pub fn to_timestamp(self) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: self.0.div_euclid(1_000_000),
            // rem_euclid keeps nanos in 0..1e9 for times before the epoch.
            nanos: i32::try_from(self.0.rem_euclid(1_000_000) * 1_000).unwrap_or(0),
        }
    }
}

/// Role of the person on whose behalf a trusted caller acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Member,
}

/// The caller's stated actor, from `x-actor-id` and `x-actor-role`.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: UserId,
    pub role: Role,
}

/// What a key's owner is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    User(UserId),
    Bot,
}

impl Owner {
    pub fn key_type(&self) -> KeyType {
        match self {
            Self::User(_) => KeyType::User,
            Self::Bot => KeyType::Bot,
        }
    }

    pub fn user_id(&self) -> Option<&UserId> {
        match self {
            Self::User(u) => Some(u),
            Self::Bot => None,
        }
    }
}

/// A stored key. The secret itself is never part of it.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: KeyId,
    pub organization_id: OrganizationId,
    pub owner: Owner,
    pub name: KeyName,
    pub scopes: ScopeSet,
    pub allowed_hostnames: AllowedHostnames,
    /// Where the key may be presented from; empty allows anywhere.
    pub allowed_networks: AllowedNetworks,
    /// Which workload identities may present it; empty allows any presenter.
    pub bound_principals: BoundPrincipals,
    /// Returned with every verification of the key.
    pub metadata: Metadata,
    pub secret_hash: SecretHash,
    pub key_prefix: String,
    pub last_four: String,
    pub request_count: u64,
    pub create_time: Micros,
    pub update_time: Micros,
    pub last_used_time: Option<Micros>,
    pub revoke_time: Option<Micros>,
    pub expire_time: Option<Micros>,
    pub created_by: UserId,
    pub rate_limits: RateLimits,
    pub quota: Option<Quota>,
    /// Credits taken in the quota period that starts at `quota_period_start`,
    /// spent or leased by an instance (see `hotpath::quota`); a row whose period
    /// has ended has used nothing of the current one.
    pub quota_used: u64,
    pub quota_period_start: Micros,
    /// The key that replaced this one, set by a rotation.
    pub rotated_to_id: Option<KeyId>,
    /// The key this one replaced.
    pub rotated_from_id: Option<KeyId>,
    /// The first key of this key's rotation chain (its own id when it was
    /// never a rotation's replacement): every link of a chain spends the usage
    /// limits of the chain's newest key, found by this id.
    pub lineage_id: KeyId,
    /// The identity whose limits the key shares with its other keys.
    pub identity_id: Option<crate::domain::identities::IdentityId>,
}

impl KeyRecord {
    /// A new key of `secret`, created at `now` with a fresh id: never used,
    /// revoked or rotated, and without restrictions, metadata, limits or an
    /// identity (set those on the result). `CreateKey`, the bench's bulk
    /// seeding and the tests all start here.
    pub fn new(
        organization_id: OrganizationId,
        owner: Owner,
        name: KeyName,
        scopes: ScopeSet,
        secret: &crate::domain::keys::Secret,
        created_by: UserId,
        now: Micros,
    ) -> Self {
        let id = KeyId::generate();
        Self {
            lineage_id: id.clone(),
            id,
            organization_id,
            owner,
            name,
            scopes,
            allowed_hostnames: AllowedHostnames::default(),
            allowed_networks: AllowedNetworks::default(),
            bound_principals: BoundPrincipals::default(),
            metadata: Metadata::default(),
            secret_hash: secret.hash(),
            key_prefix: secret.key_prefix(),
            last_four: secret.last_four(),
            request_count: 0,
            create_time: now,
            update_time: now,
            last_used_time: None,
            revoke_time: None,
            expire_time: None,
            created_by,
            rate_limits: RateLimits::default(),
            quota: None,
            quota_used: 0,
            quota_period_start: Micros(0),
            rotated_to_id: None,
            rotated_from_id: None,
            identity_id: None,
        }
    }

    /// The record as of `now`: a quota whose stored period has ended has used
    /// nothing of the current one (the row itself moves on at its next use).
    pub fn as_of(mut self, now: Micros) -> Self {
        (self.quota_used, self.quota_period_start) = crate::domain::limits::quota_as_of(
            self.quota,
            self.quota_used,
            self.quota_period_start,
            now,
        );
        self
    }

    /// The quota's use in its stored period, and when that period ends; read
    /// through [`KeyRecord::as_of`] first to see the current period.
    pub fn quota_usage(&self) -> Option<(u64, Option<Micros>)> {
        crate::domain::limits::quota_usage(self.quota, self.quota_used, self.quota_period_start)
    }

    /// Whether an actor may see and change this key: admins any key of their
    /// organization, members only their own user keys.
    pub fn is_accessible_by(&self, actor: &Actor) -> bool {
        actor.role == Role::Admin || self.owner.user_id() == Some(&actor.id)
    }

    /// A bot key of `acme` with scope `links:read`, for unit tests.
    #[cfg(test)]
    pub(crate) fn test_bot(id: KeyId, secret: &crate::domain::keys::Secret, name: &str) -> Self {
        let mut key = Self::new(
            OrganizationId::parse("acme").expect("org"),
            Owner::Bot,
            KeyName::parse(name).expect("name"),
            ScopeSet::parse(["links:read"]).expect("scopes"),
            secret,
            UserId::parse("admin").expect("user"),
            Micros(0),
        );
        key.lineage_id = id.clone();
        key.id = id;
        key
    }
}

/// The changes of an `UpdateKey`, already validated; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyPatch {
    pub name: Option<KeyName>,
    pub scopes: Option<ScopeSet>,
    pub allowed_hostnames: Option<AllowedHostnames>,
    pub allowed_networks: Option<AllowedNetworks>,
    pub bound_principals: Option<BoundPrincipals>,
    /// Replaces the whole map.
    pub metadata: Option<Metadata>,
    /// `Some(None)` removes the expiry.
    pub expire_time: Option<Option<Micros>>,
    /// An empty set removes every rate limit.
    pub rate_limits: Option<RateLimits>,
    /// `Some(None)` removes the quota.
    pub quota: Option<Option<Quota>>,
    /// `Some(None)` takes the key out of its identity.
    pub identity_id: Option<Option<crate::domain::identities::IdentityId>>,
}

impl KeyPatch {
    pub fn apply(&self, key: &mut KeyRecord) {
        if let Some(name) = &self.name {
            key.name = name.clone();
        }
        if let Some(scopes) = &self.scopes {
            key.scopes = scopes.clone();
        }
        if let Some(hosts) = &self.allowed_hostnames {
            key.allowed_hostnames = hosts.clone();
        }
        if let Some(nets) = &self.allowed_networks {
            key.allowed_networks = nets.clone();
        }
        if let Some(principals) = &self.bound_principals {
            key.bound_principals = principals.clone();
        }
        if let Some(metadata) = &self.metadata {
            key.metadata = metadata.clone();
        }
        if let Some(expire) = self.expire_time {
            key.expire_time = expire;
        }
        if let Some(limits) = &self.rate_limits {
            key.rate_limits = limits.clone();
        }
        if let Some(quota) = self.quota {
            key.quota = quota;
        }
        if let Some(identity) = &self.identity_id {
            key.identity_id = identity.clone();
        }
    }
}

/// The audit trail's verbs, stored as the proto enum's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAction {
    Created,
    Updated,
    Revoked,
    Deleted,
    Rotated,
    Leaked,
    /// The organization's key policy was set; about no key.
    PolicyChanged,
    /// An identity was created, changed or deleted; about no key.
    IdentityCreated,
    IdentityUpdated,
    IdentityDeleted,
    /// Notices (see `domain::notices`): about a key, or for a quota about
    /// the key holding it or an identity.
    KeyExpiring,
    KeyDormant,
    QuotaLow,
    QuotaExhausted,
}

impl EventAction {
    pub fn as_i64(self) -> i64 {
        match self {
            Self::Created => 1,
            Self::Updated => 2,
            Self::Revoked => 3,
            Self::Deleted => 4,
            Self::Rotated => 5,
            Self::Leaked => 6,
            Self::PolicyChanged => 7,
            Self::IdentityCreated => 8,
            Self::IdentityUpdated => 9,
            Self::IdentityDeleted => 10,
            Self::KeyExpiring => 11,
            Self::KeyDormant => 12,
            Self::QuotaLow => 13,
            Self::QuotaExhausted => 14,
        }
    }
}

/// The stored number back; anything else is not an action keygate wrote.
impl TryFrom<i64> for EventAction {
    type Error = Invalid;

    fn try_from(n: i64) -> Result<Self, Invalid> {
        match n {
            1 => Ok(Self::Created),
            2 => Ok(Self::Updated),
            3 => Ok(Self::Revoked),
            4 => Ok(Self::Deleted),
            5 => Ok(Self::Rotated),
            6 => Ok(Self::Leaked),
            7 => Ok(Self::PolicyChanged),
            8 => Ok(Self::IdentityCreated),
            9 => Ok(Self::IdentityUpdated),
            10 => Ok(Self::IdentityDeleted),
            11 => Ok(Self::KeyExpiring),
            12 => Ok(Self::KeyDormant),
            13 => Ok(Self::QuotaLow),
            14 => Ok(Self::QuotaExhausted),
            _ => Err(Invalid("not an event action")),
        }
    }
}

/// One row of the audit trail.
#[derive(Debug, Clone)]
pub struct KeyEvent {
    /// The event's number in its organization's own sequence (1, 2, 3, …): ids
    /// tell a caller nothing about other organizations' activity.
    pub id: u64,
    /// `None` for an event about no key (a policy change).
    pub key_id: Option<KeyId>,
    pub organization_id: OrganizationId,
    pub action: EventAction,
    pub actor_id: UserId,
    pub time: Micros,
    /// The policy a `PolicyChanged` event set.
    pub policy: Option<crate::domain::key_policy::KeyPolicy>,
    /// The identity an identity event is about.
    pub identity_id: Option<crate::domain::identities::IdentityId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn organization_id_grammar() {
        assert!(OrganizationId::parse("acme_Co-1").is_ok());
        assert!(OrganizationId::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "a b", "acme.com", "é", &"a".repeat(65)] {
            assert!(OrganizationId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_id_grammar() {
        assert!(UserId::parse("bob@example.com").is_ok());
        assert!(UserId::parse("0b9a3c1e-6f1e-4c59-a1a3-2f6f1b1f8b10").is_ok());
        assert!(UserId::parse(&"u".repeat(128)).is_ok());
        for bad in ["", "a b", "tab\t", "é", "nul\0", &"u".repeat(129)] {
            assert!(UserId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn api_keys_are_not_ids() {
        let secret =
            crate::domain::keys::Secret::generate(&crate::domain::keys::KeyPrefix::default());
        assert_eq!(OrganizationId::parse(secret.expose()), Err(KEY_AS_ID));
        assert_eq!(UserId::parse(secret.expose()), Err(KEY_AS_ID));
    }

    #[test]
    fn key_id_is_canonical_uuid() {
        let id = KeyId::generate();
        assert_eq!(KeyId::parse(id.as_str()), Ok(id.clone()));
        assert!(KeyId::parse(&id.as_str().to_uppercase()).is_err());
        assert!(KeyId::parse("not-an-id").is_err());
        assert!(KeyId::parse("").is_err());
    }

    #[test]
    fn key_ids_sort_by_creation() {
        let a = KeyId::generate();
        let b = KeyId::generate();
        assert!(a < b);
    }

    #[test]
    fn key_name_rules() {
        assert!(KeyName::parse("CI deploy key ✓").is_ok());
        assert!(KeyName::parse(&"é".repeat(255)).is_ok());
        assert!(KeyName::parse(&"é".repeat(256)).is_err());
        assert!(KeyName::parse("").is_err());
        assert!(KeyName::parse("   ").is_err());
        assert!(KeyName::parse("line\nbreak").is_err());
    }

    #[test]
    fn micros_round_trip_timestamps() {
        let ts = prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_000,
        };
        let m = Micros::from_timestamp(&ts).expect("valid");
        assert_eq!(m, Micros(1_700_000_000_123_456));
        assert_eq!(m.to_timestamp(), ts);
        let before_epoch = Micros(-1);
        assert_eq!(
            before_epoch.to_timestamp(),
            prost_types::Timestamp {
                seconds: -1,
                nanos: 999_999_000
            }
        );
        assert!(
            Micros::from_timestamp(&prost_types::Timestamp {
                seconds: 0,
                nanos: -1
            })
            .is_err()
        );
        assert!(
            Micros::from_timestamp(&prost_types::Timestamp {
                seconds: i64::MAX,
                nanos: 0
            })
            .is_err()
        );
    }
}
