//! The webhook outbox: which events each endpoint still has to receive, and
//! who is delivering them. Events are written by the key's own transaction
//! (`sql.rs`); here, rows of `webhook_deliveries` are made for them per
//! endpoint, leased by one instance at a time with a conditional `UPDATE`
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
use crate::model::{KeyEvent, Micros};

/// One event to deliver to one endpoint, leased to this instance.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event's global id (`key_events.id`).
    pub event_id: u64,
    /// Failed attempts so far.
    pub attempts: u32,
    pub event: KeyEvent,
    /// `ApiKey` JSON as the event's transaction left the key.
    pub key_json: Option<String>,
}

impl Store {
    /// Starts `endpoint`'s cursor at the newest event, unless it has one: a
    /// newly configured endpoint receives what happens from now on, not the
    /// whole history.
    pub async fn webhook_cursor_init(&self, endpoint: &str) -> Result<(), StoreError> {
        on_pool!(self, |p, d| {
            let sql = format!(
                "{} INTO webhook_cursors (endpoint, last_event_id) \
                 SELECT ?, COALESCE(MAX(id), 0) FROM key_events",
                d.insert_ignore
            );
            sqlx::query(&sql).bind(endpoint).execute(p).await?;
        });
        Ok(())
    }

    /// Makes delivery rows for up to `limit` events past `endpoint`'s cursor
    /// and moves the cursor, in one transaction; returns how many. Instances
    /// doing this at once make each row once (primary key, insert-ignore).
    pub async fn webhook_fan_out(
        &self,
        endpoint: &str,
        now: Micros,
        limit: u32,
    ) -> Result<usize, StoreError> {
        on_pool!(self, |p, d| {
            let mut tx = p.begin().await?;
            let cursor: Option<i64> =
                sqlx::query_scalar("SELECT last_event_id FROM webhook_cursors WHERE endpoint = ?")
                    .bind(endpoint)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(cursor) = cursor else {
                return Ok(0);
            };
            let ids: Vec<i64> =
                sqlx::query_scalar("SELECT id FROM key_events WHERE id > ? ORDER BY id LIMIT ?")
                    .bind(cursor)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await?;
            let Some(last) = ids.last().copied() else {
                return Ok(0);
            };
            let values = vec!["(?, ?, ?)"; ids.len()].join(", ");
            let sql = format!(
                "{} INTO webhook_deliveries (endpoint, event_id, next_attempt_time) VALUES {values}",
                d.insert_ignore
            );
            let mut q = sqlx::query(&sql);
            for id in &ids {
                q = q.bind(endpoint).bind(*id).bind(now.0);
            }
            q.execute(&mut *tx).await?;
            sqlx::query(
                "UPDATE webhook_cursors SET last_event_id = ? WHERE endpoint = ? AND last_event_id < ?",
            )
            .bind(last)
            .bind(endpoint)
            .bind(last)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(ids.len())
        })
    }

    /// Leases up to `limit` deliveries of `endpoint` that are due, to `owner`
    /// until `lease_until`, oldest event first.
    pub async fn webhook_claim(
        &self,
        endpoint: &str,
        owner: &str,
        now: Micros,
        lease_until: Micros,
        limit: u32,
    ) -> Result<Vec<Delivery>, StoreError> {
        let due = "SELECT event_id FROM webhook_deliveries \
            WHERE endpoint = ? AND state = 0 AND next_attempt_time <= ? AND lease_until <= ? \
            ORDER BY event_id LIMIT ?";
        let lease = "UPDATE webhook_deliveries SET lease_until = ?, lease_owner = ? \
            WHERE endpoint = ? AND event_id = ? AND state = 0 AND lease_until <= ?";
        let load = "SELECT e.id, d.attempts, e.org_seq, e.key_id, e.organization_id, e.action, \
            e.actor_id, e.event_time, e.key_snapshot \
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
