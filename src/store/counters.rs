//! Usage counts, quota credits, usage history and retention: the statements
//! that take no organization lock (each is one conditional or additive
//! statement, or a batch of them), so they live apart from the key and event
//! writes in `sql.rs`, whose lock order ties them together.

use super::{Pool, Store, StoreError, mysql, rows::corrupt, sql::on_pool, sqlite};
use crate::domain::{
    limits::{LimitsOwner, QuotaPeriod},
    model::{KeyId, Micros},
};

/// The row that holds an owner's quota, as `(table, condition on one bound id)`:
/// a chain's newest key, or the identity.
fn quota_row(owner: &LimitsOwner) -> (&'static str, &'static str, &str) {
    match owner {
        LimitsOwner::Lineage(id) => (
            "api_keys",
            "lineage_id = ? AND rotated_to_id IS NULL",
            id.as_str(),
        ),
        LimitsOwner::Identity(id) => ("identities", "id = ?", id.as_str()),
    }
}

/// Keys per usage-flush statement: keeps the statement far below both back ends'
/// placeholder limits (SQLite 32 766, MySQL 65 535) at 3 placeholders a key.
const USAGE_CHUNK: usize = 1000;

/// What [`Store::take_quota`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaTake {
    /// `credits` are this instance's to spend; `used` counts them.
    Taken { credits: u64, used: u64, limit: u64 },
    /// Fewer credits are left than were needed.
    Exhausted { used: u64, limit: u64 },
    /// The key has no quota (any more), or no row.
    NoQuota,
}

/// Usage accumulated in memory for one key since the last flush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageDelta {
    pub key_id: KeyId,
    pub count: u64,
    pub last_used: Micros,
    /// Verifications by `(UTC hour start, VerifyCode number)`.
    pub history: Vec<(Micros, i64, u64)>,
}

const DAY: i64 = 86_400_000_000;

/// Rows for the hourly and daily history tables from a flush's deltas:
/// `((key, bucket start, code), count)`, one per bucket and code.
type HistoryRow<'a> = ((&'a KeyId, i64, i64), u64);

fn history_rows(deltas: &[UsageDelta]) -> (Vec<HistoryRow<'_>>, Vec<HistoryRow<'_>>) {
    let mut hours = Vec::new();
    let mut days: std::collections::BTreeMap<(&KeyId, i64, i64), u64> = Default::default();
    for d in deltas {
        for (hour, code, n) in &d.history {
            hours.push(((&d.key_id, hour.0, *code), *n));
            *days
                .entry((&d.key_id, hour.0.div_euclid(DAY) * DAY, *code))
                .or_default() += n;
        }
    }
    (hours, days.into_iter().collect())
}

impl Store {
    /// Adds accumulated usage in one transaction, one statement per [`USAGE_CHUNK`]
    /// keys. Deltas of keys deleted meanwhile match no row and are dropped.
    pub async fn add_usage(&self, deltas: &[UsageDelta]) -> Result<(), StoreError> {
        on_pool!(self, |p, d| {
            // All chunks or none: the caller re-adds the whole batch when this fails,
            // so a failure half-way must not leave the first chunks counted.
            let mut tx = p.begin().await?;
            let counted: Vec<&UsageDelta> = deltas.iter().filter(|u| u.count > 0).collect();
            for chunk in counted.chunks(USAGE_CHUNK) {
                let sql = (d.usage_update)(chunk.len());
                let mut q = sqlx::query(&sql);
                for u in chunk {
                    q = q
                        .bind(u.key_id.as_str())
                        .bind(i64::try_from(u.count).unwrap_or(i64::MAX))
                        .bind(u.last_used.0);
                }
                q.execute(&mut *tx).await?;
            }
            // The history in the same transaction: its totals never drift from
            // `request_count`, whatever fails.
            let (hours, days) = history_rows(deltas);
            for (table, rows) in [("usage_hourly", hours), ("usage_daily", days)] {
                for chunk in rows.chunks(USAGE_CHUNK) {
                    let values = vec!["(?, ?, ?, ?)"; chunk.len()].join(", ");
                    let sql = format!(
                        "INSERT INTO {table} (key_id, bucket_start, code, count) VALUES {values}{}",
                        d.history_upsert
                    );
                    let mut q = sqlx::query(&sql);
                    for ((key, start, code), n) in chunk {
                        q = q
                            .bind(key.as_str())
                            .bind(*start)
                            .bind(*code)
                            .bind(i64::try_from(*n).unwrap_or(i64::MAX));
                    }
                    q.execute(&mut *tx).await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Takes up to `want` credits, and at least `need`, of the quota of
    /// `owner` (a rotation chain, spending its newest key's quota, or an
    /// identity) in the period that starts at `period`: the only way a credit is handed out. The
    /// conditional `UPDATE` is what makes quotas exact across instances: two
    /// instances racing for the last credits cannot both get them, whatever their
    /// caches say. A row still in an earlier period is moved to this one first.
    ///
    /// `kind` is the quota's period as the caller knows it: a row whose quota
    /// now has another period (the caller's cache is behind a change) is
    /// `NoQuota` and left alone, rather than moved to a period of the wrong
    /// kind.
    pub async fn take_quota(
        &self,
        owner: &LimitsOwner,
        period: Micros,
        kind: QuotaPeriod,
        need: u64,
        want: u64,
    ) -> Result<QuotaTake, StoreError> {
        let (table, row, id) = quota_row(owner);
        let read = format!(
            "SELECT quota_limit, quota_used, quota_period_start, quota_period \
             FROM {table} WHERE {row}"
        );
        let roll = format!(
            "UPDATE {table} SET quota_used = 0, quota_period_start = ? \
             WHERE {row} AND quota_period_start = ? AND quota_period = ?"
        );
        // Each retry follows another instance's successful write, so this ends;
        // the bound only keeps a pathological race from spinning.
        for _ in 0..16 {
            let found: Option<(Option<i64>, i64, i64, Option<i64>)> = on_pool!(self, |p, _d| {
                sqlx::query_as(&read).bind(id).fetch_optional(p).await?
            });
            let Some((Some(limit), used, start, Some(stored_kind))) = found else {
                return Ok(QuotaTake::NoQuota);
            };
            if stored_kind != kind.as_i64() {
                return Ok(QuotaTake::NoQuota);
            }
            let limit = u64::try_from(limit).map_err(|_| corrupt(table, "quota_limit"))?;
            let used = u64::try_from(used).map_err(|_| corrupt(table, "quota_used"))?;
            if start < period.0 {
                on_pool!(self, |p, _d| {
                    sqlx::query(&roll)
                        .bind(period.0)
                        .bind(id)
                        .bind(start)
                        .bind(kind.as_i64())
                        .execute(p)
                        .await?;
                });
                continue;
            }
            let available = limit.saturating_sub(used);
            if start > period.0 || available < need.max(1) {
                // A row in a later period than our clock's: another instance's
                // clock is ahead; spend nothing until ours catches up.
                return Ok(QuotaTake::Exhausted { used, limit });
            }
            let n = want.clamp(need.max(1), available);
            if self.try_take_quota(owner, period, kind, n).await? {
                return Ok(QuotaTake::Taken {
                    credits: n,
                    used: used + n,
                    limit,
                });
            }
        }
        Err(StoreError::Contended)
    }

    /// The conditional write under [`Store::take_quota`]: takes exactly `n`
    /// credits if the owner's row is in `period` and has `n` left, whatever
    /// the caller read before. `false` changes nothing.
    pub async fn try_take_quota(
        &self,
        owner: &LimitsOwner,
        period: Micros,
        kind: QuotaPeriod,
        n: u64,
    ) -> Result<bool, StoreError> {
        let (table, row, id) = quota_row(owner);
        let sql = format!(
            "UPDATE {table} SET quota_used = quota_used + ? \
             WHERE {row} AND quota_period = ? \
             AND quota_period_start = ? AND quota_used + ? <= quota_limit"
        );
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let taken = on_pool!(self, |p, _d| {
            sqlx::query(&sql)
                .bind(n)
                .bind(id)
                .bind(kind.as_i64())
                .bind(period.0)
                .bind(n)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(taken == 1)
    }

    /// Gives back credits taken by [`Store::take_quota`] and not spent, unless
    /// the period has moved on (then they are gone with it). A rotation since
    /// the take carried the use over to the new row, so the credits go there.
    ///
    /// Credits taken under a quota of another period kind (the quota changed
    /// since) are not returned: the changed quota counts from its own start.
    pub async fn return_quota(
        &self,
        owner: &LimitsOwner,
        period: Micros,
        kind: QuotaPeriod,
        credits: u64,
    ) -> Result<(), StoreError> {
        let (table, row, id) = quota_row(owner);
        let sql = format!(
            "UPDATE {table} SET quota_used = quota_used - ? \
             WHERE {row} AND quota_period = ? \
             AND quota_period_start = ? AND quota_used >= ?"
        );
        let n = i64::try_from(credits).unwrap_or(i64::MAX);
        on_pool!(self, |p, _d| {
            sqlx::query(&sql)
                .bind(n)
                .bind(id)
                .bind(kind.as_i64())
                .bind(period.0)
                .bind(n)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// A key's history rows of `table` (`usage_hourly` or `usage_daily`) with
    /// `from <= bucket_start < to`, as `(bucket start, code, count)`, in order.
    pub async fn usage_history(
        &self,
        key: &KeyId,
        daily: bool,
        from: Micros,
        to: Micros,
    ) -> Result<Vec<(Micros, i64, u64)>, StoreError> {
        let table = if daily { "usage_daily" } else { "usage_hourly" };
        let sql = format!(
            "SELECT bucket_start, code, count FROM {table} \
             WHERE key_id = ? AND bucket_start >= ? AND bucket_start < ? \
             ORDER BY bucket_start, code"
        );
        let rows: Vec<(i64, i64, i64)> = on_pool!(self, |p, _d| {
            sqlx::query_as(&sql)
                .bind(key.as_str())
                .bind(from.0)
                .bind(to.0)
                .fetch_all(p)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(start, code, n)| (Micros(start), code, u64::try_from(n).unwrap_or(0)))
            .collect())
    }

    /// Deletes up to 1000 history rows of `table` older than `before`; returns
    /// how many. Small statements, so no prune holds a lock for long.
    pub async fn prune_usage_history(
        &self,
        daily: bool,
        before: Micros,
    ) -> Result<u64, StoreError> {
        let table = if daily { "usage_daily" } else { "usage_hourly" };
        let n = on_pool!(self, |p, d| {
            sqlx::query(&(d.prune_history)(table))
                .bind(before.0)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(n)
    }

    /// Deletes up to `batch` of the oldest events from before `before`, with
    /// their webhook deliveries (delivered, given up, or never to be sent now);
    /// returns how many events went. Reads the oldest `batch` events by id
    /// and deletes the leading run of them that is old enough, so each call
    /// touches a bounded number of rows and stops at the first newer event.
    pub async fn prune_events(&self, before: Micros, batch: u32) -> Result<u64, StoreError> {
        on_pool!(self, |p, _d| {
            let oldest: Vec<(i64, i64)> =
                sqlx::query_as("SELECT id, event_time FROM key_events ORDER BY id LIMIT ?")
                    .bind(i64::from(batch))
                    .fetch_all(p)
                    .await?;
            let old: Vec<i64> = oldest
                .iter()
                .take_while(|(_, time)| *time < before.0)
                .map(|(id, _)| *id)
                .collect();
            let Some(&upto) = old.last() else {
                return Ok(0);
            };
            let mut tx = p.begin().await?;
            sqlx::query("DELETE FROM webhook_deliveries WHERE event_id <= ?")
                .bind(upto)
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query("DELETE FROM key_events WHERE id <= ?")
                .bind(upto)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n)
        })
    }
}
