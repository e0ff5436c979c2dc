//! Notices before trouble: a key about to expire, a key nobody uses, a quota
//! running low or used up. Each is sent once per occurrence, whatever the
//! number of instances: an occurrence is named by what makes it (the expiry it
//! warns of, the last use it counts from, the quota period and limit it is
//! about), and the store keeps one claim per name, so a second claim of the
//! same occurrence is refused by the database, not by any instance's memory.
//!
//! A new occurrence is a new notice: an expiry moved by `UpdateKey` warns
//! again, a key used and then left alone again is dormant again, each quota
//! period (or a new limit, for a quota that never resets) can run low again.

use crate::domain::{
    identities::IdentityRecord,
    limits::Quota,
    model::{EventAction, KeyRecord, Micros},
};

pub const DAY: i64 = 86_400_000_000;

/// What a notice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    /// The key expires within 7 days (and more than 1).
    ExpiresInAWeek,
    /// The key expires within 1 day.
    ExpiresInADay,
    /// A live key unused for `--dormant-after`.
    Dormant,
    /// 80 % of the quota's period is used (leased credits included).
    QuotaLow,
    /// The quota's period is used up.
    QuotaExhausted,
}

impl NoticeKind {
    pub fn as_i64(self) -> i64 {
        match self {
            Self::ExpiresInAWeek => 1,
            Self::ExpiresInADay => 2,
            Self::Dormant => 3,
            Self::QuotaLow => 4,
            Self::QuotaExhausted => 5,
        }
    }

    /// The event (and webhook) that carries it.
    pub fn action(self) -> EventAction {
        match self {
            Self::ExpiresInAWeek | Self::ExpiresInADay => EventAction::KeyExpiring,
            Self::Dormant => EventAction::KeyDormant,
            Self::QuotaLow => EventAction::QuotaLow,
            Self::QuotaExhausted => EventAction::QuotaExhausted,
        }
    }
}

/// One occurrence of a notice: its kind and what names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    pub kind: NoticeKind,
    /// The expiry, the last use (or creation), or the quota period's start.
    pub at: Micros,
    /// The quota's limit for quota notices (a quota that never resets starts
    /// no new period, so a top-up is a new occurrence by its limit), else 0.
    pub variant: i64,
}

/// The expiry notice a key is due at `now`, if any: the most urgent one that
/// applies, so a key created 12 hours before its expiry gets the one-day
/// notice only. Live keys only; a key in a rotation's grace gets none (its
/// replacement is the one to watch).
pub fn expiry(key: &KeyRecord, now: Micros) -> Option<Occurrence> {
    if !is_live_newest(key, now) {
        return None;
    }
    let expire = key.expire_time?;
    let left = expire.0 - now.0;
    let kind = match left {
        l if l <= DAY => NoticeKind::ExpiresInADay,
        l if l <= 7 * DAY => NoticeKind::ExpiresInAWeek,
        _ => return None,
    };
    Some(Occurrence {
        kind,
        at: expire,
        variant: 0,
    })
}

/// The dormancy notice a key is due at `now`: live and unused (never, or
/// not since) for `after`.
pub fn dormancy(key: &KeyRecord, now: Micros, after: Micros) -> Option<Occurrence> {
    if !is_live_newest(key, now) {
        return None;
    }
    let since = key.last_used_time.unwrap_or(key.create_time);
    (now.0 - since.0 >= after.0).then_some(Occurrence {
        kind: NoticeKind::Dormant,
        at: since,
        variant: 0,
    })
}

/// The quota notice due for a quota of which `used` credits are taken in
/// the period starting at `period_start`, as of `now`: exhausted outranks low.
pub fn quota(
    quota: Option<Quota>,
    used: u64,
    period_start: Micros,
    now: Micros,
) -> Option<Occurrence> {
    let q = quota?;
    // A row whose period has ended has used nothing of the current one.
    if q.period.start(now) != period_start {
        return None;
    }
    let kind = if used >= q.limit {
        NoticeKind::QuotaExhausted
    } else if u128::from(used) * 5 >= u128::from(q.limit) * 4 {
        NoticeKind::QuotaLow
    } else {
        return None;
    };
    Some(Occurrence {
        kind,
        at: period_start,
        variant: i64::try_from(q.limit).unwrap_or(i64::MAX),
    })
}

/// A key's quota notice: the newest key of a chain holds the chain's quota.
pub fn key_quota(key: &KeyRecord, now: Micros) -> Option<Occurrence> {
    if !is_live_newest(key, now) {
        return None;
    }
    quota(key.quota, key.quota_used, key.quota_period_start, now)
}

pub fn identity_quota(identity: &IdentityRecord, now: Micros) -> Option<Occurrence> {
    quota(
        identity.quota,
        identity.quota_used,
        identity.quota_period_start,
        now,
    )
}

fn is_live_newest(key: &KeyRecord, now: Micros) -> bool {
    key.revoke_time.is_none()
        && key.rotated_to_id.is_none()
        && key.expire_time.is_none_or(|t| t > now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        keys::{KeyPrefix, Secret},
        limits::QuotaPeriod,
        model::KeyId,
    };

    const NOW: Micros = Micros(1_796_083_200_000_000); // 2026-12-01T00:00:00Z

    fn key() -> KeyRecord {
        let secret = Secret::generate(&KeyPrefix::default());
        let mut k = KeyRecord::test_bot(KeyId::generate(), &secret, "k");
        k.create_time = Micros(NOW.0 - 10 * DAY);
        k
    }

    #[test]
    fn expiry_notices_come_a_week_and_a_day_before_the_most_urgent_only() {
        let mut k = key();
        assert_eq!(expiry(&k, NOW), None, "no expiry, no notice");
        k.expire_time = Some(Micros(NOW.0 + 8 * DAY));
        assert_eq!(expiry(&k, NOW), None);
        k.expire_time = Some(Micros(NOW.0 + 7 * DAY));
        assert_eq!(
            expiry(&k, NOW).map(|o| o.kind),
            Some(NoticeKind::ExpiresInAWeek)
        );
        k.expire_time = Some(Micros(NOW.0 + DAY / 2));
        let o = expiry(&k, NOW).expect("due");
        assert_eq!(
            (o.kind, o.at),
            (NoticeKind::ExpiresInADay, Micros(NOW.0 + DAY / 2))
        );
        k.revoke_time = Some(NOW);
        assert_eq!(expiry(&k, NOW), None, "a revoked key is past warning");
        k.revoke_time = None;
        k.rotated_to_id = Some(KeyId::generate());
        assert_eq!(expiry(&k, NOW), None, "its replacement is the one to watch");
        k.rotated_to_id = None;
        k.expire_time = Some(NOW);
        assert_eq!(expiry(&k, NOW), None, "expired already");
    }

    #[test]
    fn a_key_is_dormant_from_its_last_use_or_its_creation() {
        let mut k = key();
        let after = Micros(90 * DAY);
        assert_eq!(dormancy(&k, NOW, after), None);
        assert_eq!(
            dormancy(&k, Micros(k.create_time.0 + 90 * DAY), after).map(|o| o.at),
            Some(k.create_time)
        );
        k.last_used_time = Some(Micros(NOW.0 - 89 * DAY));
        assert_eq!(dormancy(&k, NOW, after), None);
        let o = dormancy(&k, Micros(NOW.0 + DAY), after).expect("dormant");
        assert_eq!(
            (o.kind, o.at),
            (NoticeKind::Dormant, Micros(NOW.0 - 89 * DAY))
        );
    }

    #[test]
    fn quota_notices_at_80_percent_and_when_used_up_per_period_and_limit() {
        let day = Quota {
            limit: 10,
            period: QuotaPeriod::Day,
        };
        let start = QuotaPeriod::Day.start(NOW);
        assert_eq!(quota(Some(day), 7, start, NOW), None);
        let low = quota(Some(day), 8, start, NOW).expect("low");
        assert_eq!(
            (low.kind, low.at, low.variant),
            (NoticeKind::QuotaLow, start, 10)
        );
        assert_eq!(
            quota(Some(day), 10, start, NOW).map(|o| o.kind),
            Some(NoticeKind::QuotaExhausted)
        );
        // Yesterday's use is not today's.
        assert_eq!(quota(Some(day), 10, Micros(start.0 - DAY), NOW), None);
        let total = Quota {
            limit: 5,
            period: QuotaPeriod::Total,
        };
        let used_up = quota(Some(total), 5, Micros(0), NOW).expect("used up");
        let topped_up =
            quota(Some(Quota { limit: 6, ..total }), 6, Micros(0), NOW).expect("used up again");
        assert_ne!(used_up, topped_up, "a top-up is a new occurrence");
        assert_eq!(quota(None, 100, start, NOW), None);
    }
}
