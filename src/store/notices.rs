//! Notices' rows: which keys and identities may be due a notice (bounded
//! reads that leave out what was claimed already), and the claim itself,
//! written with the notice's event in one transaction, so the event (and its
//! webhook deliveries) exists exactly once per occurrence, whichever instance
//! won.

use super::{
    KEY_COLUMNS, Pool, Store, StoreError, mysql,
    rows::{IDENTITY_COLUMNS, IdentityRow, KeyRow, convert},
    sql::{SELECT_KEY, Subject, lock_organization, record_event, reserve_event_ids},
    sqlite,
};
use crate::domain::{
    identities::IdentityRecord,
    model::{EventAction, KeyRecord, Micros, OrganizationId, UserId},
    notices::{DAY, Occurrence},
};

use super::sql::on_pool;

/// What a notice is about, as read again inside the claim's transaction.
/// Not boxed: a scan holds a few hundred, briefly.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Noticed {
    Key(KeyRecord),
    Identity(IdentityRecord),
}

impl Noticed {
    fn organization_id(&self) -> &OrganizationId {
        match self {
            Self::Key(k) => &k.organization_id,
            Self::Identity(i) => &i.organization_id,
        }
    }

    fn id(&self) -> &str {
        match self {
            Self::Key(k) => k.id.as_str(),
            Self::Identity(i) => i.id.as_str(),
        }
    }
}

struct NoticeEvent<'a> {
    about: &'a Noticed,
    action: EventAction,
    actor: &'a UserId,
    time: Micros,
}

impl NoticeEvent<'_> {
    /// The key or the identity as it is now. A key notice's hash is all
    /// zeros: a notice changes nothing, so no cache drops the key for it.
    fn subject(&self) -> Subject<'_> {
        match self.about {
            Noticed::Key(k) => Subject {
                key_id: k.id.as_str(),
                organization_id: &k.organization_id,
                hash: [0; 32],
                snapshot: crate::domain::json::key_json(k).to_string(),
                identity_id: None,
            },
            Noticed::Identity(i) => Subject {
                key_id: "",
                organization_id: &i.organization_id,
                hash: [0; 32],
                snapshot: crate::domain::json::identity_json(i).to_string(),
                identity_id: Some(i.id.as_str()),
            },
        }
    }
}

/// Not yet claimed: `$alias.id` has no claim of `$kind` for `$occurrence`
/// (SQL expressions over the row) and variant `$variant`.
macro_rules! unclaimed {
    ($kind:expr, $occurrence:expr, $variant:expr) => {
        concat!(
            "NOT EXISTS (SELECT 1 FROM notice_claims c WHERE c.subject_id = t.id AND c.kind = ",
            $kind,
            " AND c.occurrence = ",
            $occurrence,
            " AND c.variant = ",
            $variant,
            ")"
        )
    };
}

/// A live newest key: a key in a rotation's grace is not warned about.
const LIVE: &str = "t.revoke_time IS NULL AND t.rotated_to_id IS NULL";

/// A quota at 80 % or more of its current period, whose notice (low, or
/// exhausted once used up) is not claimed yet. Binds: the day's and the
/// month's start.
macro_rules! quota_due {
    () => {
        concat!(
            "t.quota_limit IS NOT NULL AND t.quota_used * 5 >= t.quota_limit * 4 \
             AND ((t.quota_period = 1 AND t.quota_period_start = ?) \
               OR (t.quota_period = 2 AND t.quota_period_start = ?) OR t.quota_period = 3) AND ",
            unclaimed!(
                "(CASE WHEN t.quota_used >= t.quota_limit THEN 5 ELSE 4 END)",
                "t.quota_period_start",
                "t.quota_limit"
            )
        )
    };
}

impl Store {
    /// Up to `limit` keys and identities of each reason that may be due a
    /// notice at `now` and have no claim for it: keys expiring within a day
    /// (and within a week), keys unused since `now - dormant_after`, and
    /// quotas at 80 % or more. The caller decides with `domain::notices`.
    pub async fn notice_candidates(
        &self,
        now: Micros,
        dormant_after: Micros,
        limit: u32,
    ) -> Result<(Vec<KeyRecord>, Vec<IdentityRecord>), StoreError> {
        use crate::domain::limits::QuotaPeriod;
        let keys = |condition: &str| {
            format!("SELECT {KEY_COLUMNS} FROM api_keys t WHERE {LIVE} AND {condition} LIMIT ?")
        };
        let day_ahead = keys(concat!(
            "t.expire_time > ? AND t.expire_time <= ? AND ",
            unclaimed!("2", "t.expire_time", "0")
        ));
        let week_ahead = keys(concat!(
            "t.expire_time > ? AND t.expire_time <= ? AND ",
            unclaimed!("1", "t.expire_time", "0")
        ));
        let dormant = keys(concat!(
            "(t.expire_time IS NULL OR t.expire_time > ?) \
             AND COALESCE(t.last_used_time, t.create_time) <= ? AND ",
            unclaimed!("3", "COALESCE(t.last_used_time, t.create_time)", "0")
        ));
        // Unexpired only, as `domain::notices` decides: an expired key with
        // a used-up quota that never resets would otherwise come back on
        // every scan and, 500 of them, crowd out every other key's notice.
        let key_quotas = keys(concat!(
            "(t.expire_time IS NULL OR t.expire_time > ?) AND ",
            quota_due!()
        ));
        let identity_quotas = format!(
            "SELECT {IDENTITY_COLUMNS} FROM identities t WHERE {} LIMIT ?",
            quota_due!()
        );
        let (day, month) = (
            QuotaPeriod::Day.start(now).0,
            QuotaPeriod::Month.start(now).0,
        );
        let limit = i64::from(limit);
        let mut rows: Vec<KeyRow> = Vec::new();
        let identities: Vec<IdentityRow> = on_pool!(self, |p, _d| {
            for (sql, from, to) in [
                (&day_ahead, now.0, now.0 + DAY),
                (&week_ahead, now.0 + DAY, now.0 + 7 * DAY),
            ] {
                rows.extend(
                    sqlx::query_as::<_, KeyRow>(sql)
                        .bind(from)
                        .bind(to)
                        .bind(limit)
                        .fetch_all(p)
                        .await?,
                );
            }
            rows.extend(
                sqlx::query_as::<_, KeyRow>(&dormant)
                    .bind(now.0)
                    .bind(now.0 - dormant_after.0)
                    .bind(limit)
                    .fetch_all(p)
                    .await?,
            );
            rows.extend(
                sqlx::query_as::<_, KeyRow>(&key_quotas)
                    .bind(now.0)
                    .bind(day)
                    .bind(month)
                    .bind(limit)
                    .fetch_all(p)
                    .await?,
            );
            sqlx::query_as(&identity_quotas)
                .bind(day)
                .bind(month)
                .bind(limit)
                .fetch_all(p)
                .await?
        });
        Ok((convert(rows)?, convert(identities)?))
    }

    /// Claims one occurrence of a notice and writes its event, atomically,
    /// if `due` still finds it due on the row as this transaction reads it;
    /// `false` when another instance claimed it first or it is due no more.
    pub async fn claim_notice(
        &self,
        about: &Noticed,
        occurrence: Occurrence,
        due: &(dyn Fn(&Noticed) -> Option<Occurrence> + Sync),
        actor: &UserId,
        now: Micros,
    ) -> Result<bool, StoreError> {
        let org = about.organization_id().as_str();
        let id = about.id();
        on_pool!(self, |p, d| {
            let mut tx = p.begin().await?;
            lock_organization!(tx, d, org);
            let current = match about {
                Noticed::Key(_) => {
                    let row: Option<KeyRow> = sqlx::query_as(SELECT_KEY)
                        .bind(org)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    row.map(KeyRecord::try_from).transpose()?.map(Noticed::Key)
                }
                Noticed::Identity(_) => {
                    let sql = format!(
                        "SELECT {IDENTITY_COLUMNS} FROM identities WHERE organization_id = ? AND id = ?"
                    );
                    let row: Option<IdentityRow> = sqlx::query_as(&sql)
                        .bind(org)
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    row.map(IdentityRecord::try_from)
                        .transpose()?
                        .map(Noticed::Identity)
                }
            };
            let Some(current) = current.filter(|c| due(c) == Some(occurrence)) else {
                return Ok(false);
            };
            // Under the organization's lock the claims of one organization
            // are serialized, so the read decides; the primary key would
            // refuse a second claim anyway.
            let claimed: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM notice_claims WHERE subject_id = ? AND kind = ? \
                 AND occurrence = ? AND variant = ?",
            )
            .bind(id)
            .bind(occurrence.kind.as_i64())
            .bind(occurrence.at.0)
            .bind(occurrence.variant)
            .fetch_optional(&mut *tx)
            .await?;
            if claimed.is_some() {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO notice_claims (subject_id, kind, occurrence, variant, claim_time) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(id)
            .bind(occurrence.kind.as_i64())
            .bind(occurrence.at.0)
            .bind(occurrence.variant)
            .bind(now.0)
            .execute(&mut *tx)
            .await?;
            record_event!(
                self,
                tx,
                d,
                NoticeEvent {
                    about: &current,
                    action: occurrence.kind.action(),
                    actor,
                    time: now,
                }
            );
            tx.commit().await?;
            Ok(true)
        })
    }
}
