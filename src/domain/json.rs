//! The JSON form of keys and events: the key snapshot each event keeps (the
//! store writes it in the event's transaction), and the body a webhook carries: `{"type", "timestamp", "data": {"event", "key"}}`,
//! with the event and the key in the protobuf JSON mapping of `KeyEvent` and
//! `ApiKey` (lowerCamelCase names, enum value names, 64-bit integers as
//! strings, RFC 3339 times in UTC), so a consumer can decode them with the
//! same generated types as the gRPC API. Every field is written, defaults
//! included. The key never carries its secret: `KeyRecord` does not have it.

use serde_json::{Value, json};

use crate::{
    domain::limits::QuotaPeriod,
    domain::model::{EventAction, KeyEvent, KeyRecord, KeyType, Micros},
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
    }
}

/// `ApiKey` in the protobuf JSON mapping, as of the event that wrote it.
pub fn key_json(k: &KeyRecord) -> Value {
    let opt_time = |t: Option<Micros>| t.map_or(Value::Null, |t| Value::String(rfc3339(t)));
    let quota = k.quota.map_or(Value::Null, |q| {
        let period = match q.period {
            QuotaPeriod::Day => "QUOTA_PERIOD_DAY",
            QuotaPeriod::Month => "QUOTA_PERIOD_MONTH",
            QuotaPeriod::Total => "QUOTA_PERIOD_TOTAL",
        };
        json!({"limit": q.limit.to_string(), "period": period})
    });
    let usage = k.quota_usage().map_or(
        Value::Null,
        |(used, reset)| json!({"used": used.to_string(), "resetTime": opt_time(reset)}),
    );
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
        "rateLimits": k.rate_limits.iter().map(|l| json!({
            "name": l.name.as_str(),
            "limit": l.limit.to_string(),
            "window": duration(l.window.0),
        })).collect::<Vec<_>>(),
        "quota": quota,
        "quotaUsage": usage,
        "rotatedToId": k.rotated_to_id.as_ref().map_or("", |i| i.as_str()),
        "rotatedFromId": k.rotated_from_id.as_ref().map_or("", |i| i.as_str()),
    })
}

/// `KeyEvent` in the protobuf JSON mapping.
pub fn event_json(e: &KeyEvent) -> Value {
    json!({
        "id": e.id.to_string(),
        "keyId": e.key_id.as_str(),
        "organizationId": e.organization_id.as_str(),
        "action": action_name(e.action),
        "actorId": e.actor_id.as_str(),
        "time": rfc3339(e.time),
    })
}

/// The whole body. `key` is the key as stored by the event's transaction
/// (`Value::Null` for events written before snapshots existed).
pub fn body(event: &KeyEvent, key: Value) -> String {
    json!({
        "type": event_type(event.action),
        "timestamp": rfc3339(event.time),
        "data": {"event": event_json(event), "key": key},
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
    }
}
