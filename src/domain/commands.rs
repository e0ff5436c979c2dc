//! KeyAdmin requests parsed into commands: after `parse`, every field is a
//! domain value, and a request with bad fields is refused with all of them named.
//! Parsing needs no store and no caller: who may run a command is
//! [`super::policy`]'s question, asked by the keys service.

use super::{
    paging::{self, TokenKind},
    violations::{All, Violations, field},
};
use crate::{
    domain::hostnames::{AllowedHostnames, HostnamePattern, HostnamesError},
    domain::identities::{IdentityId, key_identity},
    domain::key_policy::{self, KeyPolicy},
    domain::keys::contains_secret,
    domain::limits::{LimitName, MAX_RATE_LIMITS, Quota, QuotaPeriod, RateLimit, RateLimits},
    domain::metadata::Metadata,
    domain::model::{KeyId, KeyName, KeyPatch, KeyType, Micros, OrganizationId, UserId},
    domain::networks::{AllowedNetworks, BoundPrincipals, NetworksError},
    domain::scopes::{ScopeCatalog, ScopeSet, ScopeSetError, parse_scope},
    proto,
};

/// What parsing may consult: the operator's scope catalog and the time, given
/// rather than read, so that tests choose it.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub catalog: Option<&'a ScopeCatalog>,
    pub now: Micros,
}

pub(super) const SECRET_HERE: &str = "looks like an API key; a secret must never be stored here";

pub(super) fn organization(s: &str) -> Result<OrganizationId, Violations> {
    field("organization_id", OrganizationId::parse(s))
}

fn key_id(name: &str, s: &str) -> Result<KeyId, Violations> {
    field(name, KeyId::parse(s))
}

fn name(s: &str) -> Result<KeyName, Violations> {
    if contains_secret(s) {
        return Err(Violations::one("name", SECRET_HERE));
    }
    field("name", KeyName::parse(s))
}

/// Scopes checked against the grammar and the catalog; every bad one is named by
/// its index in the request (within the violations' cap).
fn scopes(list: &[String], catalog: Option<&ScopeCatalog>) -> Result<ScopeSet, Violations> {
    let mut v = Violations::default();
    let set = match ScopeSet::parse(list) {
        Ok(set) => set,
        Err(ScopeSetError::Invalid { .. }) => {
            for (index, scope) in list.iter().enumerate() {
                if let Err(e) = parse_scope(scope) {
                    v.add(format!("scopes[{index}]"), e.to_string());
                }
            }
            return Err(v);
        }
        Err(e) => return Err(Violations::one("scopes", e.to_string())),
    };
    if let Some(catalog) = catalog {
        for (index, scope) in list.iter().enumerate() {
            if parse_scope(scope).is_ok_and(|s| !catalog.allows(s)) {
                v.add(
                    format!("scopes[{index}]"),
                    format!("{scope:?} is not in the scope catalog"),
                );
            }
        }
    }
    v.into_result().map(|()| set)
}

/// Every bad entry is named by its index (within the violations' cap).
fn hostnames(list: &[String]) -> Result<AllowedHostnames, Violations> {
    let mut v = Violations::default();
    for (i, host) in list.iter().enumerate() {
        if contains_secret(host) {
            v.add(format!("allowed_hostnames[{i}]"), SECRET_HERE);
        } else if let Err(e) = host.parse::<HostnamePattern>() {
            v.add(format!("allowed_hostnames[{i}]"), e.to_string());
        }
    }
    v.into_result()?;
    AllowedHostnames::parse(list).map_err(|e| match e {
        HostnamesError::TooMany(_) => Violations::one("allowed_hostnames", e.to_string()),
        HostnamesError::Invalid { index, source, .. } => {
            Violations::one(format!("allowed_hostnames[{index}]"), source.to_string())
        }
    })
}

/// A key's networks or principals: every bad entry is named by its index.
fn restriction<T>(
    name: &str,
    list: &[String],
    parse: impl Fn(&[String]) -> Result<T, NetworksError>,
) -> Result<T, Violations> {
    let mut v = Violations::default();
    for (i, entry) in list.iter().enumerate() {
        if contains_secret(entry) {
            v.add(format!("{name}[{i}]"), SECRET_HERE);
        } else if let Err(NetworksError::Invalid { reason, .. }) =
            parse(std::slice::from_ref(entry))
        {
            v.add(format!("{name}[{i}]"), reason);
        }
    }
    v.into_result()?;
    parse(list).map_err(|e| match e {
        NetworksError::Invalid { index, reason } => {
            Violations::one(format!("{name}[{index}]"), reason)
        }
        other => Violations::one(name, other.to_string()),
    })
}

fn networks(list: &[String]) -> Result<AllowedNetworks, Violations> {
    restriction("allowed_networks", list, |l| AllowedNetworks::parse(l))
}

fn principals(list: &[String]) -> Result<BoundPrincipals, Violations> {
    restriction("bound_principals", list, |l| BoundPrincipals::parse(l))
}

/// An expiry must lie in the future when it is set.
fn expiry(ts: Option<&prost_types::Timestamp>, now: Micros) -> Result<Option<Micros>, Violations> {
    let Some(ts) = ts else { return Ok(None) };
    let t = field("expire_time", Micros::from_timestamp(ts))?;
    if t <= now {
        return Err(Violations::one("expire_time", "must be in the future"));
    }
    Ok(Some(t))
}

/// Every bad rate limit is named by its index and field (within the cap).
pub(super) fn rate_limits(list: &[proto::RateLimit]) -> Result<RateLimits, Violations> {
    if list.len() > MAX_RATE_LIMITS {
        return Err(Violations::one(
            "rate_limits",
            format!(
                "at most {MAX_RATE_LIMITS} rate limits per key, got {}",
                list.len()
            ),
        ));
    }
    let mut v = Violations::default();
    let mut parsed = Vec::with_capacity(list.len());
    for (i, l) in list.iter().enumerate() {
        let name = match LimitName::parse(&l.name) {
            Ok(n) if list[..i].iter().any(|o| o.name == l.name) => {
                v.add(
                    format!("rate_limits[{i}].name"),
                    format!(
                        "{:?} is used by an earlier rate limit; names must be unique",
                        l.name
                    ),
                );
                Some(n)
            }
            Ok(n) => Some(n),
            Err(e) => {
                v.add(format!("rate_limits[{i}].name"), e.to_string());
                None
            }
        };
        if let Some(e) = RateLimit::limit_invalid(l.limit) {
            v.add(format!("rate_limits[{i}].limit"), e.to_string());
        }
        let window = match &l.window {
            None => {
                v.add(format!("rate_limits[{i}].window"), "is required");
                None
            }
            Some(d) => match window(d) {
                Ok(w) => Some(w),
                Err(e) => {
                    v.add(format!("rate_limits[{i}].window"), e.to_string());
                    None
                }
            },
        };
        if let (Some(name), Some(window)) = (name, window) {
            parsed.push(RateLimit {
                name,
                limit: l.limit,
                window,
            });
        }
    }
    v.into_result()?;
    RateLimits::new(parsed).map_err(|e| Violations::one("rate_limits", e.to_string()))
}

/// A window as microseconds, refused unless it is 1 s to 30 days in whole milliseconds.
fn window(d: &prost_types::Duration) -> Result<Micros, crate::domain::model::Invalid> {
    use crate::domain::model::Invalid;
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return Err(Invalid("must be from 1s to 30 days"));
    }
    if d.nanos % 1_000_000 != 0 {
        return Err(Invalid("must be a whole number of milliseconds"));
    }
    let micros = d
        .seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(d.nanos / 1_000)))
        .ok_or(Invalid("must be from 1s to 30 days"))?;
    let w = Micros(micros);
    RateLimit::window_invalid(w).map_or(Ok(w), Err)
}

/// An unset quota is none; a set one needs a limit and a period.
pub(super) fn quota(q: Option<&proto::Quota>) -> Result<Option<Quota>, Violations> {
    let Some(q) = q else { return Ok(None) };
    let limit = match Quota::limit_invalid(q.limit) {
        Some(e) => Err(Violations::one("quota.limit", e.to_string())),
        None => Ok(q.limit),
    };
    let period = match proto::QuotaPeriod::try_from(q.period) {
        Ok(proto::QuotaPeriod::Day) => Ok(QuotaPeriod::Day),
        Ok(proto::QuotaPeriod::Month) => Ok(QuotaPeriod::Month),
        Ok(proto::QuotaPeriod::Total) => Ok(QuotaPeriod::Total),
        _ => Err(Violations::one(
            "quota.period",
            "must be QUOTA_PERIOD_DAY, QUOTA_PERIOD_MONTH or QUOTA_PERIOD_TOTAL",
        )),
    };
    let (limit, period) = (limit, period).all()?;
    Ok(Some(Quota { limit, period }))
}

pub(super) fn page_size(n: i32) -> Result<u32, Violations> {
    field("page_size", paging::page_size(n))
}

/// A key of an organization, as `GetKey`, `RevokeKey` and `UpdateKey` name it.
#[derive(Debug, Clone)]
pub struct KeyRef {
    pub organization_id: OrganizationId,
    pub id: KeyId,
}

impl KeyRef {
    pub fn parse(organization_id: &str, id: &str) -> Result<Self, Violations> {
        let (organization_id, id) = (organization(organization_id), key_id("id", id)).all()?;
        Ok(Self {
            organization_id,
            id,
        })
    }
}

#[derive(Debug, Clone)]
pub struct CreateKey {
    pub organization_id: OrganizationId,
    pub key_type: KeyType,
    pub name: KeyName,
    pub scopes: ScopeSet,
    pub allowed_hostnames: AllowedHostnames,
    pub allowed_networks: AllowedNetworks,
    pub bound_principals: BoundPrincipals,
    pub metadata: Metadata,
    pub expire_time: Option<Micros>,
    pub rate_limits: RateLimits,
    pub quota: Option<Quota>,
    pub identity_id: Option<IdentityId>,
}

impl CreateKey {
    pub fn parse(req: &proto::CreateKeyRequest, cx: Context<'_>) -> Result<Self, Violations> {
        let key_type = match proto::KeyType::try_from(req.r#type) {
            Ok(proto::KeyType::User) => Ok(KeyType::User),
            Ok(proto::KeyType::Bot) => Ok(KeyType::Bot),
            _ => Err(Violations::one(
                "type",
                "must be KEY_TYPE_USER or KEY_TYPE_BOT",
            )),
        };
        let (
            organization_id,
            key_type,
            name,
            scopes,
            allowed_hostnames,
            expire_time,
            rate_limits,
            quota,
            allowed_networks,
            bound_principals,
            metadata,
            identity_id,
        ) = (
            organization(&req.organization_id),
            key_type,
            name(&req.name),
            scopes(&req.scopes, cx.catalog),
            hostnames(&req.allowed_hostnames),
            expiry(req.expire_time.as_ref(), cx.now),
            rate_limits(&req.rate_limits),
            quota(req.quota.as_ref()),
            networks(&req.allowed_networks),
            principals(&req.bound_principals),
            Metadata::parse("metadata", &req.metadata),
            key_identity(&req.identity_id),
        )
            .all()?;
        Ok(Self {
            organization_id,
            key_type,
            name,
            scopes,
            allowed_hostnames,
            allowed_networks,
            bound_principals,
            metadata,
            expire_time,
            rate_limits,
            quota,
            identity_id,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ListKeys {
    pub organization_id: OrganizationId,
    pub page_size: u32,
    pub after: Option<KeyId>,
    pub key_type: Option<KeyType>,
    pub user_id: Option<UserId>,
    pub include_revoked: bool,
}

impl ListKeys {
    pub fn parse(req: &proto::ListKeysRequest) -> Result<Self, Violations> {
        let after = field(
            "page_token",
            paging::decode(TokenKind::Keys, &req.page_token),
        )
        .and_then(|p| {
            p.map(|p| KeyId::parse(&p))
                .transpose()
                .map_err(|_| Violations::one("page_token", paging::BAD_TOKEN))
        });
        let key_type = match proto::KeyType::try_from(req.r#type) {
            Ok(proto::KeyType::Unspecified) => Ok(None),
            Ok(proto::KeyType::User) => Ok(Some(KeyType::User)),
            Ok(proto::KeyType::Bot) => Ok(Some(KeyType::Bot)),
            Err(_) => Err(Violations::one("type", "must be a KeyType value")),
        };
        let user_id = if req.user_id.is_empty() {
            Ok(None)
        } else {
            field("user_id", UserId::parse(&req.user_id)).map(Some)
        };
        let (organization_id, page_size, after, key_type, user_id) = (
            organization(&req.organization_id),
            page_size(req.page_size),
            after,
            key_type,
            user_id,
        )
            .all()?;
        Ok(Self {
            organization_id,
            page_size,
            after,
            key_type,
            user_id,
            include_revoked: req.include_revoked,
        })
    }
}

#[derive(Debug, Clone)]
pub struct UpdateKey {
    pub key: KeyRef,
    pub patch: KeyPatch,
}

impl UpdateKey {
    pub fn parse(req: &proto::UpdateKeyRequest, cx: Context<'_>) -> Result<Self, Violations> {
        (
            KeyRef::parse(&req.organization_id, &req.id),
            Self::patch(req, cx),
        )
            .all()
            .map(|(key, patch)| Self { key, patch })
    }

    /// The fields the mask names, each parsed; the others stay as they are.
    fn patch(req: &proto::UpdateKeyRequest, cx: Context<'_>) -> Result<KeyPatch, Violations> {
        let paths = req
            .update_mask
            .as_ref()
            .map(|m| m.paths.as_slice())
            .unwrap_or_default();
        if paths.is_empty() {
            return Err(Violations::one(
                "update_mask",
                "is required: name the fields to change (name, scopes, allowed_hostnames, expire_time, rate_limits, quota, allowed_networks, bound_principals, metadata, identity_id)",
            ));
        }
        let mut patch = KeyPatch::default();
        let mut v = Violations::default();
        let mut take = |parsed: Result<(), Violations>| {
            if let Err(e) = parsed {
                v.extend(e);
            }
        };
        for (i, path) in paths.iter().enumerate() {
            match path.as_str() {
                "name" => take(name(&req.name).map(|n| patch.name = Some(n))),
                "scopes" => take(scopes(&req.scopes, cx.catalog).map(|s| patch.scopes = Some(s))),
                "allowed_hostnames" => take(
                    hostnames(&req.allowed_hostnames).map(|h| patch.allowed_hostnames = Some(h)),
                ),
                "expire_time" => take(
                    expiry(req.expire_time.as_ref(), cx.now).map(|e| patch.expire_time = Some(e)),
                ),
                "rate_limits" => {
                    take(rate_limits(&req.rate_limits).map(|l| patch.rate_limits = Some(l)));
                }
                "quota" => take(quota(req.quota.as_ref()).map(|q| patch.quota = Some(q))),
                "allowed_networks" => {
                    take(networks(&req.allowed_networks).map(|n| patch.allowed_networks = Some(n)))
                }
                "bound_principals" => take(
                    principals(&req.bound_principals).map(|p| patch.bound_principals = Some(p)),
                ),
                "metadata" => take(
                    Metadata::parse("metadata", &req.metadata).map(|m| patch.metadata = Some(m)),
                ),
                "identity_id" => {
                    take(key_identity(&req.identity_id).map(|id| patch.identity_id = Some(id)))
                }
                _ => take(Err(Violations::one(
                    format!("update_mask.paths[{i}]"),
                    format!(
                        "unknown path {path:?}: expected name, scopes, allowed_hostnames, expire_time, rate_limits, quota, allowed_networks, bound_principals, metadata or identity_id"
                    ),
                ))),
            }
        }
        v.into_result().map(|()| patch)
    }
}

const HOUR_MICROS: i64 = 3_600_000_000;
const DAY_MICROS: i64 = 24 * HOUR_MICROS;

#[derive(Debug, Clone)]
pub struct GetKeyUsage {
    pub key: KeyRef,
    /// Days rather than hours.
    pub daily: bool,
    /// Start of the first bucket that overlaps the range.
    pub from: Micros,
    /// End of the range (exclusive).
    pub to: Micros,
}

impl GetKeyUsage {
    pub fn parse(req: &proto::GetKeyUsageRequest) -> Result<Self, Violations> {
        let daily = match proto::UsageGranularity::try_from(req.granularity) {
            Ok(proto::UsageGranularity::Hour) => Ok(false),
            Ok(proto::UsageGranularity::Day) => Ok(true),
            _ => Err(Violations::one(
                "granularity",
                "must be USAGE_GRANULARITY_HOUR or USAGE_GRANULARITY_DAY",
            )),
        };
        let time = |name: &'static str, ts: Option<&prost_types::Timestamp>| {
            ts.ok_or_else(|| Violations::one(name, "is required"))
                .and_then(|ts| field(name, Micros::from_timestamp(ts)))
        };
        let (key, daily, start, end) = (
            KeyRef::parse(&req.organization_id, &req.id),
            daily,
            time("start_time", req.start_time.as_ref()),
            time("end_time", req.end_time.as_ref()),
        )
            .all()?;
        if end <= start {
            return Err(Violations::one("end_time", "must be after start_time"));
        }
        let (size, max, what) = if daily {
            (
                DAY_MICROS,
                400 * DAY_MICROS,
                "at most 400 days of daily buckets per call",
            )
        } else {
            (
                HOUR_MICROS,
                31 * DAY_MICROS,
                "at most 31 days of hourly buckets per call",
            )
        };
        if end.0 - start.0 > max {
            return Err(Violations::one("end_time", what));
        }
        Ok(Self {
            key,
            daily,
            from: Micros(start.0.div_euclid(size) * size),
            to: end,
        })
    }
}

/// The longest grace period of a rotation: 7 days.
pub const MAX_GRACE: Micros = Micros(7 * 86_400 * 1_000_000);

#[derive(Debug, Clone)]
pub struct RotateKey {
    pub key: KeyRef,
    /// `None`: revoke the old key at once; otherwise how long it keeps verifying.
    pub grace: Option<Micros>,
}

impl RotateKey {
    pub fn parse(req: &proto::RotateKeyRequest) -> Result<Self, Violations> {
        let grace = match &req.grace_period {
            None => Ok(None),
            Some(d) if d.seconds == 0 && d.nanos == 0 => Ok(None),
            Some(d) if d.seconds < 0 || d.nanos < 0 => Err(Violations::one(
                "grace_period",
                "must not be negative: 0 revokes the old key at once",
            )),
            Some(d) => {
                let micros = d
                    .seconds
                    .saturating_mul(1_000_000)
                    .saturating_add(i64::from(d.nanos / 1_000));
                if !(1_000_000..=MAX_GRACE.0).contains(&micros) {
                    Err(Violations::one(
                        "grace_period",
                        "must be 0 (revoke the old key at once) or from 1s to 7 days",
                    ))
                } else {
                    Ok(Some(Micros(micros)))
                }
            }
        };
        let (key, grace) = (KeyRef::parse(&req.organization_id, &req.id), grace).all()?;
        Ok(Self { key, grace })
    }
}

#[derive(Debug, Clone)]
pub struct RemoveMember {
    pub organization_id: OrganizationId,
    pub user_id: UserId,
}

impl RemoveMember {
    pub fn parse(req: &proto::RemoveMemberRequest) -> Result<Self, Violations> {
        let (organization_id, user_id) = (
            organization(&req.organization_id),
            field("user_id", UserId::parse(&req.user_id)),
        )
            .all()?;
        Ok(Self {
            organization_id,
            user_id,
        })
    }
}

#[derive(Debug, Clone)]
pub struct ListKeyEvents {
    pub organization_id: OrganizationId,
    pub key_id: Option<KeyId>,
    pub page_size: u32,
    /// The organization's event id after which the page starts (0: the first page).
    pub after: u64,
}

impl ListKeyEvents {
    pub fn parse(req: &proto::ListKeyEventsRequest) -> Result<Self, Violations> {
        let key = if req.key_id.is_empty() {
            Ok(None)
        } else {
            key_id("key_id", &req.key_id).map(Some)
        };
        let after = field(
            "page_token",
            paging::decode(TokenKind::Events, &req.page_token),
        )
        .and_then(|p| {
            p.map_or(Ok(0), |p| p.parse::<u64>())
                .map_err(|_| Violations::one("page_token", paging::BAD_TOKEN))
        });
        let (organization_id, key_id, page_size, after) = (
            organization(&req.organization_id),
            key,
            page_size(req.page_size),
            after,
        )
            .all()?;
        Ok(Self {
            organization_id,
            key_id,
            page_size,
            after,
        })
    }
}

/// A duration field of the key policy as microseconds, within `range`.
fn policy_duration(
    name: &str,
    d: &prost_types::Duration,
    range: std::ops::RangeInclusive<Micros>,
    bounds: &str,
) -> Result<Micros, Violations> {
    let micros = (d.seconds >= 0 && (0..1_000_000_000).contains(&d.nanos))
        .then(|| {
            d.seconds
                .checked_mul(1_000_000)?
                .checked_add(i64::from(d.nanos / 1_000))
        })
        .flatten()
        .map(Micros)
        .filter(|m| range.contains(m));
    micros.ok_or_else(|| Violations::one(name, format!("must be {bounds}")))
}

#[derive(Debug, Clone)]
pub struct SetKeyPolicy {
    pub organization_id: OrganizationId,
    pub policy: KeyPolicy,
}

impl SetKeyPolicy {
    pub fn parse(req: &proto::SetKeyPolicyRequest, cx: Context<'_>) -> Result<Self, Violations> {
        let empty = proto::KeyPolicy::default();
        let p = req.policy.as_ref().unwrap_or(&empty);
        let max_lifetime = p
            .max_lifetime
            .as_ref()
            .map(|d| {
                policy_duration(
                    "policy.max_lifetime",
                    d,
                    key_policy::MIN_LIFETIME..=key_policy::MAX_LIFETIME,
                    "from 60s to 3650 days",
                )
            })
            .transpose();
        let max_rotation_grace = p
            .max_rotation_grace
            .as_ref()
            .map(|d| {
                policy_duration(
                    "policy.max_rotation_grace",
                    d,
                    Micros(0)..=MAX_GRACE,
                    "from 0 (revoke at once) to 7 days",
                )
            })
            .transpose();
        let allowed_bot_scopes = if p.allowed_bot_scopes.is_empty() {
            Ok(None)
        } else {
            scopes(&p.allowed_bot_scopes, cx.catalog)
                .map(Some)
                .map_err(|v| v.prefixed("policy.allowed_bot_"))
        };
        let (organization_id, max_lifetime, max_rotation_grace, allowed_bot_scopes) = (
            organization(&req.organization_id),
            max_lifetime,
            max_rotation_grace,
            allowed_bot_scopes,
        )
            .all()?;
        Ok(Self {
            organization_id,
            policy: KeyPolicy {
                max_lifetime,
                require_networks_for_bot_keys: p.require_networks_for_bot_keys,
                allowed_bot_scopes,
                max_rotation_grace,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Micros = Micros(1_800_000_000_000_000);

    fn cx() -> Context<'static> {
        Context {
            catalog: None,
            now: NOW,
        }
    }

    fn create() -> proto::CreateKeyRequest {
        proto::CreateKeyRequest {
            organization_id: "acme".into(),
            r#type: proto::KeyType::Bot.into(),
            name: "ci".into(),
            scopes: vec!["links:read".into()],
            ..Default::default()
        }
    }

    #[test]
    fn a_good_create_parses_with_its_lists_normalised() {
        let mut req = create();
        req.scopes = vec![
            "links:write".into(),
            "links:read".into(),
            "links:write".into(),
        ];
        let cmd = CreateKey::parse(&req, cx()).expect("valid");
        assert_eq!(cmd.key_type, KeyType::Bot);
        assert_eq!(cmd.scopes.to_vec(), ["links:read", "links:write"]);
        assert!(cmd.rate_limits.is_empty() && cmd.quota.is_none());
    }

    /// Every bad field is named at once, so a caller fixes them in one go.
    #[test]
    fn every_bad_field_of_a_create_is_named() {
        let mut req = create();
        req.organization_id = String::new();
        req.r#type = 0;
        req.name = String::new();
        req.scopes = vec!["Not A Scope".into()];
        req.expire_time = Some(prost_types::Timestamp {
            seconds: 1,
            nanos: 0,
        });
        let err = CreateKey::parse(&req, cx())
            .expect_err("invalid")
            .to_string();
        for field in [
            "organization_id",
            "type",
            "name",
            "scopes[0]",
            "expire_time",
        ] {
            assert!(err.contains(field), "{field} in {err}");
        }
    }

    #[test]
    fn a_pasted_secret_is_refused_as_a_name() {
        let secret =
            crate::domain::keys::Secret::generate(&crate::domain::keys::KeyPrefix::default());
        let mut req = create();
        req.name = format!("my key {}", secret.expose());
        let err = CreateKey::parse(&req, cx())
            .expect_err("refused")
            .to_string();
        assert!(err.contains("name") && err.contains(SECRET_HERE), "{err}");
    }

    #[test]
    fn an_update_needs_a_mask_of_known_paths_and_parses_only_those() {
        let update = |paths: &[&str]| proto::UpdateKeyRequest {
            organization_id: "acme".into(),
            id: "018f1f7e-0000-7000-8000-000000000001".into(),
            name: "renamed".into(),
            scopes: vec!["Not A Scope".into()],
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
            ..Default::default()
        };
        let err = UpdateKey::parse(&update(&[]), cx())
            .expect_err("no mask")
            .to_string();
        assert!(err.contains("update_mask"), "{err}");
        let err = UpdateKey::parse(&update(&["name", "colour"]), cx())
            .expect_err("unknown path")
            .to_string();
        assert!(
            err.contains("update_mask.paths[1]") && err.contains("colour"),
            "{err}"
        );
        // The bad scopes are not named in the mask, so they are not read.
        let cmd = UpdateKey::parse(&update(&["name"]), cx()).expect("valid");
        assert_eq!(
            cmd.patch.name.map(|n| n.as_str().to_owned()).as_deref(),
            Some("renamed")
        );
        assert!(cmd.patch.scopes.is_none() && cmd.patch.quota.is_none());
        let err = UpdateKey::parse(&update(&["scopes"]), cx())
            .expect_err("bad scopes")
            .to_string();
        assert!(err.contains("scopes[0]"), "{err}");
    }
}
