//! The JSON form of keys and events: the key snapshot each event keeps (the
//! store writes it in the event's transaction), and the body a webhook carries: `{"type", "timestamp", "data": {"event", "key"}}`,
//! with the event and the key in the protobuf JSON mapping of `KeyEvent` and
//! `ApiKey` (lowerCamelCase names, enum value names, 64-bit integers as
//! strings, RFC 3339 times in UTC), so a consumer can decode them with the
//! same generated types as the gRPC API. Every field is written, defaults
//! included. The key never carries its secret: `KeyRecord` does not have it.

use serde_json::{Value, json};

use crate::{
    domain::identities::IdentityRecord,
    domain::key_policy::KeyPolicy,
    domain::limits::{Quota, QuotaPeriod, RateLimits},
    domain::model::{EventAction, KeyEvent, KeyRecord, KeyType, Micros},
    domain::scopes::ScopeSet,
};

/// RFC 3339 in UTC with microseconds, as the protobuf JSON mapping writes a
/// `Timestamp`.
pub fn rfc3339(t: Micros) -> String {
    let seconds = t.0.div_euclid(1_000_000);
    let micros = t.0.rem_euclid(1_000_000);
    let date = time::OffsetDateTime::from_unix_timestamp(seconds)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        date.year(),
        u8::from(date.month()),
        date.day(),
        date.hour(),
        date.minute(),
        date.second()
    )
}

fn duration(micros: i64) -> String {
    let (s, us) = (micros / 1_000_000, micros % 1_000_000);
    if us == 0 {
        format!("{s}s")
    } else {
        format!("{s}.{us:06}s")
    }
}

pub fn action_name(a: EventAction) -> &'static str {
    match a {
        EventAction::Created => "KEY_EVENT_ACTION_CREATED",
        EventAction::Updated => "KEY_EVENT_ACTION_UPDATED",
        EventAction::Revoked => "KEY_EVENT_ACTION_REVOKED",
        EventAction::Deleted => "KEY_EVENT_ACTION_DELETED",
        EventAction::Rotated => "KEY_EVENT_ACTION_ROTATED",
        EventAction::Leaked => "KEY_EVENT_ACTION_LEAKED",
        EventAction::PolicyChanged => "KEY_EVENT_ACTION_POLICY_CHANGED",
        EventAction::IdentityCreated => "KEY_EVENT_ACTION_IDENTITY_CREATED",
        EventAction::IdentityUpdated => "KEY_EVENT_ACTION_IDENTITY_UPDATED",
        EventAction::IdentityDeleted => "KEY_EVENT_ACTION_IDENTITY_DELETED",
        EventAction::KeyExpiring => "KEY_EVENT_ACTION_KEY_EXPIRING",
        EventAction::KeyDormant => "KEY_EVENT_ACTION_KEY_DORMANT",
        EventAction::QuotaLow => "KEY_EVENT_ACTION_QUOTA_LOW",
        EventAction::QuotaExhausted => "KEY_EVENT_ACTION_QUOTA_EXHAUSTED",
    }
}

/// The webhook `type`: `key.created`, `key.updated`, …, the names receivers switch on.
pub fn event_type(a: EventAction) -> &'static str {
    match a {
        EventAction::Created => "key.created",
        EventAction::Updated => "key.updated",
        EventAction::Revoked => "key.revoked",
        EventAction::Deleted => "key.deleted",
        EventAction::Rotated => "key.rotated",
        EventAction::Leaked => "key.leaked",
        EventAction::PolicyChanged => "key_policy.changed",
        EventAction::IdentityCreated => "identity.created",
        EventAction::IdentityUpdated => "identity.updated",
        EventAction::IdentityDeleted => "identity.deleted",
        EventAction::KeyExpiring => "key.expiring",
        EventAction::KeyDormant => "key.dormant",
        EventAction::QuotaLow => "quota.low",
        EventAction::QuotaExhausted => "quota.exhausted",
    }
}

/// Whether an event is about an identity rather than a key (its snapshot is
/// the identity's): an identity's own changes and its quota's notices.
pub fn is_identity_event(e: &KeyEvent) -> bool {
    e.key_id.is_none() && e.identity_id.is_some()
}

fn quota_json(q: Option<Quota>) -> Value {
    q.map_or(Value::Null, |q| {
        let period = match q.period {
            QuotaPeriod::Day => "QUOTA_PERIOD_DAY",
            QuotaPeriod::Month => "QUOTA_PERIOD_MONTH",
            QuotaPeriod::Total => "QUOTA_PERIOD_TOTAL",
        };
        json!({"limit": q.limit.to_string(), "period": period})
    })
}

fn rate_limits_json(limits: &RateLimits) -> Value {
    limits
        .iter()
        .map(|l| {
            json!({
                "name": l.name.as_str(),
                "limit": l.limit.to_string(),
                "window": duration(l.window.0),
            })
        })
        .collect()
}

fn quota_usage_json(usage: Option<(u64, Option<Micros>)>) -> Value {
    usage.map_or(Value::Null, |(used, reset)| {
        json!({
            "used": used.to_string(),
            "resetTime": reset.map_or(Value::Null, |t| Value::String(rfc3339(t))),
        })
    })
}

/// `Identity` in the protobuf JSON mapping, as of the event that wrote it.
pub fn identity_json(i: &IdentityRecord) -> Value {
    json!({
        "id": i.id.as_str(),
        "organizationId": i.organization_id.as_str(),
        "externalId": i.external_id.as_str(),
        "metadata": i.metadata.to_json(),
        "rateLimits": rate_limits_json(&i.rate_limits),
        "quota": quota_json(i.quota),
        "quotaUsage": quota_usage_json(i.quota_usage()),
        "createTime": rfc3339(i.create_time),
    })
}

/// `ApiKey` in the protobuf JSON mapping, as of the event that wrote it.
pub fn key_json(k: &KeyRecord) -> Value {
    let opt_time = |t: Option<Micros>| t.map_or(Value::Null, |t| Value::String(rfc3339(t)));
    json!({
        "id": k.id.as_str(),
        "organizationId": k.organization_id.as_str(),
        "type": match k.owner.key_type() {
            KeyType::User => "KEY_TYPE_USER",
            KeyType::Bot => "KEY_TYPE_BOT",
        },
        "userId": k.owner.user_id().map_or("", |u| u.as_str()),
        "name": k.name.as_str(),
        "scopes": k.scopes.to_vec(),
        "allowedHostnames": k.allowed_hostnames.to_vec(),
        "keyPrefix": k.key_prefix,
        "lastFour": k.last_four,
        "requestCount": k.request_count.to_string(),
        "revoked": k.revoke_time.is_some(),
        "createTime": rfc3339(k.create_time),
        "updateTime": rfc3339(k.update_time),
        "lastUsedTime": opt_time(k.last_used_time),
        "revokeTime": opt_time(k.revoke_time),
        "expireTime": opt_time(k.expire_time),
        "createdBy": k.created_by.as_str(),
        "rateLimits": rate_limits_json(&k.rate_limits),
        "quota": quota_json(k.quota),
        "quotaUsage": quota_usage_json(k.quota_usage()),
        "rotatedToId": k.rotated_to_id.as_ref().map_or("", |i| i.as_str()),
        "rotatedFromId": k.rotated_from_id.as_ref().map_or("", |i| i.as_str()),
        "allowedNetworks": k.allowed_networks.to_vec(),
        "boundPrincipals": k.bound_principals.to_vec(),
        "metadata": k.metadata.to_json(),
        "identityId": k.identity_id.as_ref().map_or("", |i| i.as_str()),
    })
}

/// `KeyEvent` in the protobuf JSON mapping.
pub fn event_json(e: &KeyEvent) -> Value {
    json!({
        "id": e.id.to_string(),
        "keyId": e.key_id.as_ref().map_or("", |k| k.as_str()),
        "organizationId": e.organization_id.as_str(),
        "action": action_name(e.action),
        "actorId": e.actor_id.as_str(),
        "time": rfc3339(e.time),
        "policy": e.policy.as_ref().map_or(Value::Null, policy_json),
        "identityId": e.identity_id.as_ref().map_or("", |i| i.as_str()),
    })
}

/// `KeyPolicy` in the protobuf JSON mapping: what a POLICY_CHANGED event
/// keeps, and what its webhook carries.
pub fn policy_json(p: &KeyPolicy) -> Value {
    let opt = |d: Option<Micros>| d.map_or(Value::Null, |d| Value::String(duration(d.0)));
    json!({
        "maxLifetime": opt(p.max_lifetime),
        "requireNetworksForBotKeys": p.require_networks_for_bot_keys,
        "allowedBotScopes": p.allowed_bot_scopes.as_ref().map_or(Vec::new(), |s| s.to_vec()),
        "maxRotationGrace": opt(p.max_rotation_grace),
    })
}

/// A stored policy that [`policy_json`] cannot have written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotAPolicy;

/// A policy as [`policy_json`] wrote it; anything else is refused.
pub fn policy_from_json(s: &str) -> Result<KeyPolicy, NotAPolicy> {
    let v: Value = serde_json::from_str(s).map_err(|_| NotAPolicy)?;
    let opt = |name: &str| -> Result<Option<Micros>, NotAPolicy> {
        match &v[name] {
            Value::Null => Ok(None),
            Value::String(d) => parse_duration(d).map(Some).map_err(|()| NotAPolicy),
            _ => Err(NotAPolicy),
        }
    };
    let scopes: Vec<&str> = match &v["allowedBotScopes"] {
        Value::Array(a) => a
            .iter()
            .map(|s| s.as_str().ok_or(NotAPolicy))
            .collect::<Result<_, _>>()?,
        _ => return Err(NotAPolicy),
    };
    Ok(KeyPolicy {
        max_lifetime: opt("maxLifetime")?,
        require_networks_for_bot_keys: v["requireNetworksForBotKeys"]
            .as_bool()
            .ok_or(NotAPolicy)?,
        allowed_bot_scopes: match scopes.is_empty() {
            true => None,
            false => Some(ScopeSet::parse(scopes).map_err(|_| NotAPolicy)?),
        },
        max_rotation_grace: opt("maxRotationGrace")?,
    })
}

/// `60s` or `1.500000s`, as [`duration`] writes it.
fn parse_duration(s: &str) -> Result<Micros, ()> {
    let s = s.strip_suffix('s').ok_or(())?;
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    let seconds: i64 = whole.parse().map_err(|_| ())?;
    let micros: i64 = format!("{frac:0<6}").parse().map_err(|_| ())?;
    seconds
        .checked_mul(1_000_000)
        .and_then(|m| m.checked_add(micros))
        .map(Micros)
        .ok_or(())
}

/// The whole body. `snapshot` is what the event's transaction stored: the
/// key (`Value::Null` for events written before snapshots existed, and for a
/// policy change, which carries its policy in the event), or for an identity
/// event the identity, which goes in `data.identity` with `data.key` null.
pub fn body(event: &KeyEvent, snapshot: Value) -> String {
    let (key, identity) = match is_identity_event(event) {
        true => (Value::Null, snapshot),
        false => (snapshot, Value::Null),
    };
    json!({
        "type": event_type(event.action),
        "timestamp": rfc3339(event.time),
        "data": {"event": event_json(event), "key": key, "identity": identity},
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_use_the_protobuf_json_forms() {
        assert_eq!(rfc3339(Micros(0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(Micros(1_796_083_199_999_999)),
            "2026-11-30T23:59:59.999999Z"
        );
        assert_eq!(duration(60_000_000), "60s");
        assert_eq!(duration(1_500_000), "1.500000s");
        assert_eq!(parse_duration("60s"), Ok(Micros(60_000_000)));
        assert_eq!(parse_duration("1.500000s"), Ok(Micros(1_500_000)));
        assert_eq!(parse_duration("1.5s"), Ok(Micros(1_500_000)));
        for bad in ["60", "s", "1.1234567s", "-x s", "1.-5s"] {
            assert_eq!(parse_duration(bad), Err(()), "{bad}");
        }
    }

    /// The JSON of a key and of a policy has every field of its proto
    /// message, by its JSON name: a field added to the proto and forgotten
    /// here fails this test, not a receiver.
    #[test]
    fn every_proto_field_is_written() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("descriptor set");
        let fields = |message: &str| -> Vec<String> {
            let mut names: Vec<String> = set
                .file
                .iter()
                .flat_map(|f| &f.message_type)
                .find(|m| m.name() == message)
                .unwrap_or_else(|| panic!("{message} in the descriptors"))
                .field
                .iter()
                .map(|f| f.json_name().to_owned())
                .collect();
            names.sort();
            names
        };
        let keys = |v: &Value| -> Vec<String> {
            let mut names: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            names.sort();
            names
        };
        let secret =
            crate::domain::keys::Secret::generate(&crate::domain::keys::KeyPrefix::default());
        let key = KeyRecord::test_bot(crate::domain::model::KeyId::generate(), &secret, "k");
        assert_eq!(keys(&key_json(&key)), fields("ApiKey"));
        assert_eq!(
            keys(&policy_json(&KeyPolicy::default())),
            fields("KeyPolicy")
        );
        let identity = IdentityRecord {
            id: crate::domain::identities::IdentityId::generate(),
            organization_id: key.organization_id.clone(),
            external_id: crate::domain::identities::ExternalId::parse("cus_1").expect("id"),
            metadata: Default::default(),
            rate_limits: Default::default(),
            quota: None,
            quota_used: 0,
            quota_period_start: Micros(0),
            create_time: Micros(0),
            update_time: Micros(0),
        };
        assert_eq!(keys(&identity_json(&identity)), fields("Identity"));
        let event = KeyEvent {
            id: 1,
            key_id: None,
            organization_id: key.organization_id.clone(),
            action: EventAction::IdentityCreated,
            actor_id: key.created_by.clone(),
            time: Micros(0),
            policy: None,
            identity_id: Some(identity.id.clone()),
        };
        assert_eq!(keys(&event_json(&event)), fields("KeyEvent"));
    }

    #[test]
    fn a_policy_reads_back_as_written() {
        let p = KeyPolicy {
            max_lifetime: Some(Micros(90 * 86_400_000_000)),
            require_networks_for_bot_keys: true,
            allowed_bot_scopes: Some(ScopeSet::parse(["links:read", "reports:*"]).expect("scopes")),
            max_rotation_grace: Some(Micros(0)),
        };
        let written = policy_json(&p).to_string();
        assert_eq!(policy_from_json(&written), Ok(p));
        assert_eq!(
            policy_from_json(&policy_json(&KeyPolicy::default()).to_string()),
            Ok(KeyPolicy::default())
        );
        assert_eq!(policy_from_json("{}"), Err(NotAPolicy));
    }
}
