//! Identities' rows: created, read, changed and deleted each with its event
//! in one transaction, under the organization's lock like every key write
//! (see `sql.rs`), so a key joining an identity and the identity's deletion
//! cannot pass each other. The identity's quota is taken and given back by
//! `counters.rs`, as a key's is.

use super::{
    Pool, Store, StoreError, mysql,
    rows::{IDENTITY_COLUMNS, IdentityRow, convert},
    sql::{
        LimitsChange, Subject, bind_limits, limits_assignments, lock_organization, on_pool,
        optional_metadata, record_event, reserve_event_ids,
    },
    sqlite,
};
use crate::domain::{
    identities::{IdentityId, IdentityName, IdentityPatch, IdentityRecord},
    model::{EventAction, Micros, OrganizationId, UserId},
};

/// An identity's event, borrowed from the change it belongs to.
struct IdentityEvent<'a> {
    identity: &'a IdentityRecord,
    action: EventAction,
    actor: &'a UserId,
    time: Micros,
}

impl IdentityEvent<'_> {
    /// About no key: an empty key id and a hash no key has, as a policy
    /// event; the identity's id and its JSON instead.
    fn subject(&self) -> Subject<'_> {
        Subject {
            key_id: "",
            organization_id: &self.identity.organization_id,
            hash: [0; 32],
            snapshot: crate::domain::json::identity_json(self.identity).to_string(),
            identity_id: Some(self.identity.id.as_str()),
        }
    }
}

/// The identity `$id` of `$org` as transaction `$tx` sees it; none is `NotFound`.
macro_rules! read_identity {
    ($tx:expr, $org:expr, $id:expr) => {{
        let sql = format!(
            "SELECT {IDENTITY_COLUMNS} FROM identities WHERE organization_id = ? AND id = ?"
        );
        let row: Option<IdentityRow> = sqlx::query_as(&sql)
            .bind($org)
            .bind($id)
            .fetch_optional(&mut *$tx)
            .await?;
        IdentityRecord::try_from(row.ok_or(StoreError::NotFound)?)?
    }};
}

/// The unique index on `(organization_id, external_id)` refused the row.
fn is_external_id_taken(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Store {
    /// Inserts an identity and its `IDENTITY_CREATED` event.
    pub async fn create_identity(
        &self,
        identity: &IdentityRecord,
        actor: &UserId,
    ) -> Result<(), StoreError> {
        let i = identity;
        let sql = format!(
            "INSERT INTO identities ({IDENTITY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        );
        on_pool!(self, |p, d| {
            let mut tx = p.begin().await?;
            lock_organization!(tx, d, i.organization_id.as_str());
            let inserted = sqlx::query(&sql)
                .bind(i.id.as_str())
                .bind(i.organization_id.as_str())
                .bind(i.external_id.as_str())
                .bind(optional_metadata(&i.metadata))
                .bind(i.rate_limits.encode())
                .bind(i.quota.map(|q| i64::try_from(q.limit).unwrap_or(i64::MAX)))
                .bind(i.quota.map(|q| q.period.as_i64()))
                .bind(i64::try_from(i.quota_used).unwrap_or(i64::MAX))
                .bind(i.quota_period_start.0)
                .bind(i.create_time.0)
                .bind(i.update_time.0)
                .execute(&mut *tx)
                .await;
            match inserted {
                Err(e) if is_external_id_taken(&e) => return Err(StoreError::ExternalIdTaken),
                other => other?,
            };
            record_event!(
                self,
                tx,
                d,
                IdentityEvent {
                    identity: i,
                    action: EventAction::IdentityCreated,
                    actor,
                    time: i.create_time,
                }
            );
            tx.commit().await?;
            Ok(())
        })
    }

    /// One identity of an organization, by id or external id.
    pub async fn get_identity(
        &self,
        org: &OrganizationId,
        name: &IdentityName,
    ) -> Result<Option<IdentityRecord>, StoreError> {
        let (column, value) = match name {
            IdentityName::Id(id) => ("id", id.as_str()),
            IdentityName::External(e) => ("external_id", e.as_str()),
        };
        let sql = format!(
            "SELECT {IDENTITY_COLUMNS} FROM identities WHERE organization_id = ? AND {column} = ?"
        );
        let row: Option<IdentityRow> = on_pool!(self, |p, _d| {
            sqlx::query_as(&sql)
                .bind(org.as_str())
                .bind(value)
                .fetch_optional(p)
                .await?
        });
        row.map(IdentityRecord::try_from).transpose()
    }

    /// The identity `id`, whatever its organization: the verify path's read,
    /// for an identity a key names (the key's organization is the identity's,
    /// as every write that sets it checks).
    pub async fn identity_by_id(
        &self,
        id: &IdentityId,
    ) -> Result<Option<IdentityRecord>, StoreError> {
        let sql = format!("SELECT {IDENTITY_COLUMNS} FROM identities WHERE id = ?");
        let row: Option<IdentityRow> = on_pool!(self, |p, _d| {
            sqlx::query_as(&sql)
                .bind(id.as_str())
                .fetch_optional(p)
                .await?
        });
        row.map(IdentityRecord::try_from).transpose()
    }

    /// A page of an organization's identities in id (creation) order.
    pub async fn list_identities(
        &self,
        org: &OrganizationId,
        after: Option<&IdentityId>,
        limit: u32,
    ) -> Result<Vec<IdentityRecord>, StoreError> {
        let sql = format!(
            "SELECT {IDENTITY_COLUMNS} FROM identities \
             WHERE organization_id = ? AND id > ? ORDER BY id LIMIT ?"
        );
        let rows: Vec<IdentityRow> = on_pool!(self, |p, _d| {
            sqlx::query_as(&sql)
                .bind(org.as_str())
                .bind(after.map_or("", IdentityId::as_str))
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?
        });
        convert(rows)
    }

    /// Applies a patch and writes the `IDENTITY_UPDATED` event, atomically.
    /// The quota keeps its use while its period stays the same, as a key's.
    pub async fn update_identity(
        &self,
        org: &OrganizationId,
        id: &IdentityId,
        patch: &IdentityPatch,
        actor: &UserId,
        now: Micros,
    ) -> Result<IdentityRecord, StoreError> {
        const UPDATE: &str = concat!(
            "UPDATE identities SET update_time = ?, \
             external_id = COALESCE(?, external_id), \
             metadata = CASE WHEN ? = 1 THEN ? ELSE metadata END, ",
            limits_assignments!(),
            " WHERE organization_id = ? AND id = ?"
        );
        let metadata = patch.metadata.as_ref().and_then(optional_metadata);
        let limits = LimitsChange::new(patch.rate_limits.as_ref(), patch.quota, now);
        on_pool!(self, |p, d| {
            let mut tx = p.begin().await?;
            lock_organization!(tx, d, org.as_str());
            let _ = read_identity!(tx, org.as_str(), id.as_str());
            let q = sqlx::query(UPDATE)
                .bind(now.0)
                .bind(patch.external_id.as_ref().map(|e| e.as_str()))
                .bind(i64::from(patch.metadata.is_some()))
                .bind(metadata.as_deref());
            let updated = bind_limits!(q, limits)
                .bind(org.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await;
            match updated {
                Err(e) if is_external_id_taken(&e) => return Err(StoreError::ExternalIdTaken),
                other => other?,
            };
            let identity = read_identity!(tx, org.as_str(), id.as_str());
            record_event!(
                self,
                tx,
                d,
                IdentityEvent {
                    identity: &identity,
                    action: EventAction::IdentityUpdated,
                    actor,
                    time: now,
                }
            );
            tx.commit().await?;
            Ok(identity)
        })
    }

    /// Deletes an identity with its `IDENTITY_DELETED` event, unless a live
    /// key (not revoked, not expired at `now`, a rotated key still in its
    /// grace included) belongs to it: then `Precondition`. Dead keys that
    /// named it name no identity afterwards. Returns the identity as it was.
    pub async fn delete_identity(
        &self,
        org: &OrganizationId,
        id: &IdentityId,
        actor: &UserId,
        now: Micros,
    ) -> Result<IdentityRecord, StoreError> {
        on_pool!(self, |p, d| {
            let mut tx = p.begin().await?;
            lock_organization!(tx, d, org.as_str());
            let identity = read_identity!(tx, org.as_str(), id.as_str());
            let live: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM api_keys WHERE identity_id = ? \
                 AND revoke_time IS NULL AND (expire_time IS NULL OR expire_time > ?)",
            )
            .bind(id.as_str())
            .bind(now.0)
            .fetch_one(&mut *tx)
            .await?;
            if live > 0 {
                return Err(StoreError::Precondition(
                    "the identity still has live keys; revoke them or move them to another identity first",
                ));
            }
            sqlx::query("UPDATE api_keys SET identity_id = NULL WHERE identity_id = ?")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM identities WHERE organization_id = ? AND id = ?")
                .bind(org.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            record_event!(
                self,
                tx,
                d,
                IdentityEvent {
                    identity: &identity,
                    action: EventAction::IdentityDeleted,
                    actor,
                    time: now,
                }
            );
            tx.commit().await?;
            Ok(identity)
        })
    }
}
