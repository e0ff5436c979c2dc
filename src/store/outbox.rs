//! The webhook outbox: which events each endpoint still has to receive, and
//! who is delivering them. An event's delivery rows (one per endpoint) are
//! written by the event's own transaction (`record_event!` in `sql.rs`), so no
//! commit order can skip one; here they are leased by one instance at a time
//! with a conditional `UPDATE`
//! (portable to SQLite and MySQL alike, unlike `SKIP LOCKED`), and marked
//! delivered, retried or given up. A lease that runs out (its instance
//! crashed) makes the row deliverable again: at least once, and a duplicate
//! only after a crash.

use super::{
    Pool, Store, StoreError, mysql,
    rows::{DeliveryRow, convert, corrupt},
    sql::on_pool,
    sqlite,
};
use crate::domain::model::{KeyEvent, Micros};

/// One event to deliver to one endpoint, leased to this instance.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event's global id (`key_events.id`).
    pub event_id: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    pub event: KeyEvent,
    /// `ApiKey` JSON as the event's transaction left the key; for an
    /// identity event, `Identity` JSON as it left the identity.
    pub snapshot: Option<String>,
}

impl Store {
    /// Leases up to `limit` deliveries of `endpoint` that are due, to `owner`
    /// until `lease_until`: each organization's oldest first, taking turns.
    pub async fn webhook_claim(
        &self,
        endpoint: &str,
        owner: &str,
        now: Micros,
        lease_until: Micros,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        // Fair between organizations: the oldest due event of each comes
        // before the second of any, so one tenant's burst of 10 000 events
        // delays another's `key.revoked` by at most one round, not 10 000
        // deliveries. Within an organization, events stay in order.
        let due = "SELECT event_id FROM ( \
                SELECT d.event_id, ROW_NUMBER() OVER ( \
                    PARTITION BY e.organization_id ORDER BY d.event_id) AS turn \
                FROM webhook_deliveries d JOIN key_events e ON e.id = d.event_id \
                WHERE d.endpoint = ? AND d.state = 0 AND d.next_attempt_time <= ? \
                AND d.lease_until <= ?) due \
            ORDER BY turn, event_id LIMIT ?";
        // Due and unleased again at the moment of the lease: another instance
        // may have tried and rescheduled it since the first read.
        let lease = "UPDATE webhook_deliveries SET lease_until = ?, lease_owner = ? \
            WHERE endpoint = ? AND event_id = ? AND state = 0 AND lease_until <= ? \
            AND next_attempt_time <= ?";
        let load = "SELECT e.id, d.attempts, e.org_seq, e.key_id, e.organization_id, e.action, \
            e.actor_id, e.event_time, e.key_snapshot, e.identity_id, \
            CASE WHEN e.action = 7 THEN e.key_snapshot END AS policy \
            FROM webhook_deliveries d JOIN key_events e ON e.id = d.event_id \
            WHERE d.endpoint = ? AND d.event_id = ?";
        let mut claimed = Vec::new();
        on_pool!(self, |p, _d| {
            let ids: Vec<i64> = sqlx::query_scalar(due)
                .bind(endpoint)
                .bind(now.0)
                .bind(now.0)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?;
            for id in ids {
                let won = sqlx::query(lease)
                    .bind(lease_until.0)
                    .bind(owner)
                    .bind(endpoint)
                    .bind(id)
                    .bind(now.0)
                    .bind(now.0)
                    .execute(p)
                    .await?
                    .rows_affected();
                if won == 1 {
                    let row: Option<DeliveryRow> = sqlx::query_as(load)
                        .bind(endpoint)
                        .bind(id)
                        .fetch_optional(p)
                        .await?;
                    claimed.extend(row);
                }
            }
        });
        convert(claimed)
    }

    /// Records the outcome of an attempt by `owner`: delivered, or retried at
    /// `retry_at`, or given up (`retry_at` `None`). A lease lost meanwhile
    /// (another instance took over) records nothing.
    pub async fn webhook_attempted(
        &self,
        endpoint: &str,
        event_id: u64,
        owner: &str,
        now: Micros,
        outcome: Result<(), (Option<Micros>, &str)>,
    ) -> Result<(), StoreError> {
        let id = i64::try_from(event_id).map_err(|_| corrupt("webhook_deliveries", "event_id"))?;
        let (state, next, error) = match outcome {
            Ok(()) => (1_i64, now.0, None),
            Err((Some(at), e)) => (0, at.0, Some(e)),
            Err((None, e)) => (2, now.0, Some(e)),
        };
        let error: Option<String> = error.map(|e| e.chars().take(255).collect());
        let sql = "UPDATE webhook_deliveries SET state = ?, attempts = attempts + 1, \
            next_attempt_time = ?, lease_until = 0, last_error = ?, \
            done_time = CASE WHEN ? = 0 THEN NULL ELSE ? END \
            WHERE endpoint = ? AND event_id = ? AND lease_owner = ? AND state = 0";
        on_pool!(self, |p, _d| {
            sqlx::query(sql)
                .bind(state)
                .bind(next)
                .bind(error.as_deref())
                .bind(state)
                .bind(now.0)
                .bind(endpoint)
                .bind(id)
                .bind(owner)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Gives up `owner`'s leases on these deliveries without counting an
    /// attempt: they are due again at once.
    pub async fn webhook_release(
        &self,
        endpoint: &str,
        event_ids: &[u64],
        owner: &str,
    ) -> Result<(), StoreError> {
        let sql = "UPDATE webhook_deliveries SET lease_until = 0 \
            WHERE endpoint = ? AND event_id = ? AND lease_owner = ? AND state = 0";
        for id in event_ids {
            let id = i64::try_from(*id).map_err(|_| corrupt("webhook_deliveries", "event_id"))?;
            on_pool!(self, |p, _d| {
                sqlx::query(sql)
                    .bind(endpoint)
                    .bind(id)
                    .bind(owner)
                    .execute(p)
                    .await?;
            });
        }
        Ok(())
    }

    /// When the oldest event `endpoint` has not received yet happened.
    pub async fn webhook_oldest_pending(
        &self,
        endpoint: &str,
    ) -> Result<Option<Micros>, StoreError> {
        let sql = "SELECT MIN(e.event_time) FROM webhook_deliveries d \
            JOIN key_events e ON e.id = d.event_id WHERE d.endpoint = ? AND d.state = 0";
        let t: Option<i64> = on_pool!(self, |p, _d| {
            sqlx::query_scalar(sql).bind(endpoint).fetch_one(p).await?
        });
        Ok(t.map(Micros))
    }
}
