//! The store's SQL, written once for both back ends.
//!
//! MySQL and SQLite both take `?` placeholders and agree on everything keygate
//! needs, so each operation is one body run against whichever pool is configured:
//! `on_pool!` expands it once per driver, which keeps each expansion concrete
//! (native driver types, no `Any` conversions, no higher-ranked executor bounds).
//!
//! Size: over 400 lines because it is every statement keygate runs, each with the
//! transaction it belongs to; split by operation, the locking order each write
//! relies on (the organization's event row first) would be spread over files.

use std::sync::LazyLock;

use super::{
    Change, Guard, Pool, Store, StoreError, mysql,
    rows::{
        ChangeRow, EventRow, KeyRow, PolicyRow, convert, corrupt, key_columns, written_key_columns,
    },
    sqlite,
};
use crate::{
    domain::identities::IdentityId,
    domain::key_policy::KeyPolicy,
    domain::keys::SecretHash,
    domain::limits::RateLimits,
    domain::model::{
        EventAction, KeyEvent, KeyId, KeyName, KeyPatch, KeyRecord, KeyType, Micros,
        OrganizationId, UserId,
    },
};

/// Runs `$body` with `$p` bound to the concrete pool and `$d` to its dialect.
macro_rules! on_pool {
    ($store:expr, |$p:ident, $d:ident| $body:expr) => {
        match &$store.pool {
            Pool::MySql($p) => {
                let $d = &mysql::DIALECT;
                let _ = $d;
                $body
            }
            Pool::Sqlite($p) => {
                let $d = &sqlite::DIALECT;
                let _ = $d;
                $body
            }
        }
    };
}

pub(super) use on_pool;

/// The columns of `api_keys` keygate reads for a key, in the order `rows::KeyRow`
/// names them; public so that the bench's baseline reads the same row.
pub const KEY_COLUMNS: &str = key_columns!();
pub(super) const SELECT_KEY: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM api_keys WHERE organization_id = ? AND id = ?"
);
/// The key `$id` of organization `$org` as transaction `$tx` sees it; a row
/// that is not there is `NotFound`.
macro_rules! read_key {
    ($tx:expr, $org:expr, $id:expr) => {{
        let row: Option<KeyRow> = sqlx::query_as(SELECT_KEY)
            .bind($org)
            .bind($id)
            .fetch_optional(&mut *$tx)
            .await?;
        KeyRecord::try_from(row.ok_or(StoreError::NotFound)?)?
    }};
}

/// The most hashes one verify-path read asks for.
pub const MAX_HASHES_PER_READ: usize = 64;

/// The verify path's read, for 1, 2, 4, … 64 hashes: a batch is padded up to the
/// next size by repeating a hash, so each connection prepares at most seven
/// statements instead of one per batch size.
static SELECT_KEYS_BY_HASHES: LazyLock<Vec<String>> = LazyLock::new(|| {
    std::iter::successors(Some(1_usize), |n| Some(n * 2))
        .take_while(|n| *n <= MAX_HASHES_PER_READ)
        .map(|n| {
            let marks = vec!["?"; n].join(", ");
            format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE secret_hash IN ({marks})")
        })
        .collect()
});

/// Reserves `$n` ids of `$org`'s event sequence inside transaction `$tx` and
/// evaluates to the first. The bump is a write on the organization's row: it
/// takes SQLite's write lock and, in MySQL, makes the organization's other event
/// writers wait for this commit, so ids are handed out without gaps or repeats.
macro_rules! reserve_event_ids {
    ($tx:expr, $d:expr, $org:expr, $n:expr) => {{
        let n: i64 = $n;
        sqlx::query($d.bump_event_seq)
            .bind($org)
            .bind(n)
            .execute(&mut *$tx)
            .await?;
        let last: i64 =
            sqlx::query_scalar("SELECT last_seq FROM org_event_seq WHERE organization_id = ?")
                .bind($org)
                .fetch_one(&mut *$tx)
                .await?;
        last - n + 1
    }};
}

/// The first statement of every write transaction: a write on the organization's
/// event-sequence row that reserves nothing. Every writer of an organization takes
/// that row before any key row, so two of them can never hold each other's rows
/// (no deadlock between, say, a RevokeKey and a RemoveMember), and in SQLite the
/// transaction holds the write lock before it reads anything.
macro_rules! lock_organization {
    ($tx:expr, $d:expr, $org:expr) => {{
        let _ = reserve_event_ids!($tx, $d, $org, 0);
    }};
}
pub(super) use {lock_organization, reserve_event_ids};

/// Writes one event of `$e` (an [`Event`] or a [`PolicyEvent`]) in transaction
/// `$tx`, with the next id of its organization: the only place an event is
/// inserted.
macro_rules! record_event {
    ($store:expr, $tx:expr, $d:expr, $e:expr) => {{
        let e = $e;
        let subject = e.subject();
        let seq = reserve_event_ids!($tx, $d, subject.organization_id.as_str(), 1);
        sqlx::query(
            "INSERT INTO key_events \
             (key_id, organization_id, action, actor_id, event_time, secret_hash, org_seq, \
              key_snapshot, identity_id) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(subject.key_id)
        .bind(subject.organization_id.as_str())
        .bind(e.action.as_i64())
        .bind(e.actor.as_str())
        .bind(e.time.0)
        .bind(&subject.hash[..])
        .bind(seq)
        .bind(subject.snapshot)
        .bind(subject.identity_id)
        .execute(&mut *$tx)
        .await?;
        for endpoint in $store.webhook_endpoints.iter() {
            sqlx::query(
                "INSERT INTO webhook_deliveries (endpoint, event_id, next_attempt_time) \
                 SELECT ?, id, ? FROM key_events WHERE organization_id = ? AND org_seq = ?",
            )
            .bind(endpoint)
            .bind(e.time.0)
            .bind(subject.organization_id.as_str())
            .bind(seq)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}
pub(super) use record_event;

/// Refuses (`Precondition`) unless `$org` has the identity `$id`, as
/// transaction `$tx` sees it: under the organization's lock, so a concurrent
/// `DeleteIdentity` either sees the key this transaction writes or deletes
/// the identity before this check.
macro_rules! identity_exists {
    ($tx:expr, $org:expr, $id:expr) => {{
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM identities WHERE organization_id = ? AND id = ?")
                .bind($org)
                .bind($id)
                .fetch_optional(&mut *$tx)
                .await?;
        if found.is_none() {
            return Err(StoreError::Precondition(
                "identity_id names no identity of this organization",
            ));
        }
    }};
}

/// Binds one key's row, in the order of [`written_key_columns!`] and
/// `lineage_root`, into `$b` (a `QueryBuilder`'s `Separated`): one place for
/// the single insert and the bulk import alike.
macro_rules! push_key {
    ($b:expr, $key:expr) => {{
        let key: &KeyRecord = $key;
        $b.push_bind(key.id.as_str())
            .push_bind(key.organization_id.as_str())
            .push_bind(key.owner.key_type().as_i64())
            .push_bind(key.owner.user_id().map(UserId::as_str))
            .push_bind(key.name.as_str())
            .push_bind(join(key.scopes.iter()))
            .push_bind(join(key.allowed_hostnames.to_vec()))
            .push_bind(&key.secret_hash.as_bytes()[..])
            .push_bind(key.key_prefix.as_str())
            .push_bind(key.last_four.as_str())
            .push_bind(0_i64)
            .push_bind(key.create_time.0)
            .push_bind(key.update_time.0)
            .push_bind(None::<i64>)
            .push_bind(None::<i64>)
            .push_bind(key.expire_time.map(|t| t.0))
            .push_bind(key.created_by.as_str())
            .push_bind(key.rate_limits.encode())
            .push_bind(
                key.quota
                    .map(|q| i64::try_from(q.limit).unwrap_or(i64::MAX)),
            )
            .push_bind(key.quota.map(|q| q.period.as_i64()))
            .push_bind(i64::try_from(key.quota_used).unwrap_or(i64::MAX))
            .push_bind(key.quota_period_start.0)
            .push_bind(key.rotated_to_id.as_ref().map(KeyId::as_str))
            .push_bind(key.rotated_from_id.as_ref().map(KeyId::as_str))
            .push_bind(optional_list(key.allowed_networks.to_vec()))
            .push_bind(optional_list(key.bound_principals.to_vec()))
            .push_bind(optional_metadata(&key.metadata))
            .push_bind(key.identity_id.as_ref().map(IdentityId::as_str))
            // The lineage is stored only for a rotation's replacement; the
            // database makes it the key's own id otherwise.
            .push_bind((key.lineage_id != key.id).then(|| key.lineage_id.as_str()));
    }};
}

/// Inserts `$keys` (an iterator of `&KeyRecord`) in transaction `$tx`, in
/// one statement; evaluates to the statement's result, so that the caller
/// can tell a unique-index refusal apart.
macro_rules! insert_keys {
    ($tx:expr, $keys:expr) => {{
        let mut q = sqlx::QueryBuilder::new(INSERT_KEYS);
        q.push_values($keys, |mut b, key| push_key!(b, key));
        q.build().execute(&mut *$tx).await
    }};
}

/// Inserts `$key` (a `&KeyRecord`) in transaction `$tx`.
macro_rules! insert_key {
    ($tx:expr, $key:expr) => {{ insert_keys!($tx, std::iter::once::<&KeyRecord>($key)) }};
}

const INSERT_KEYS: &str = concat!(
    "INSERT INTO api_keys (",
    written_key_columns!(),
    ", lineage_root) "
);

/// Rows of one bulk import statement: 29 placeholders a row stays below
/// SQLite's 32 766 and MySQL's 65 535 a statement.
const IMPORT_ROWS: usize = 1_000;

/// The assignments that change a row's usage limits (`api_keys` and
/// `identities` keep them alike), bound by [`bind_limits!`] in this order. A
/// quota keeps its use while its period stays the same, and starts the
/// current period from zero when the period changes or the quota is new.
/// MySQL assigns left to right and later terms see earlier ones, so
/// `quota_period` is assigned last: every term reads the old period on both
/// back ends.
macro_rules! limits_assignments {
    () => {
        "rate_limits = COALESCE(?, rate_limits), \
         quota_used = CASE WHEN ? = 0 THEN quota_used WHEN ? = 2 THEN 0 \
             WHEN quota_period IS NULL OR quota_period <> ? THEN 0 ELSE quota_used END, \
         quota_period_start = CASE WHEN ? = 0 THEN quota_period_start WHEN ? = 2 THEN 0 \
             WHEN quota_period IS NULL OR quota_period <> ? THEN ? ELSE quota_period_start END, \
         quota_limit = CASE WHEN ? = 0 THEN quota_limit ELSE ? END, \
         quota_period = CASE WHEN ? = 0 THEN quota_period ELSE ? END"
    };
}
pub(super) use limits_assignments;

/// What [`limits_assignments!`] binds, from a patch's limits at `now`.
pub(super) struct LimitsChange {
    pub(super) rate_limits: Option<String>,
    /// 0: the quota is unchanged, 1: set, 2: removed.
    pub(super) mode: i64,
    pub(super) period: Option<i64>,
    pub(super) period_start: i64,
    pub(super) limit: Option<i64>,
}

impl LimitsChange {
    pub(super) fn new(
        rate_limits: Option<&RateLimits>,
        quota: Option<Option<crate::domain::limits::Quota>>,
        now: Micros,
    ) -> Self {
        let (mode, quota) = match quota {
            None => (0_i64, None),
            Some(None) => (2, None),
            Some(Some(q)) => (1, Some(q)),
        };
        Self {
            rate_limits: rate_limits.map(RateLimits::encode),
            mode,
            period: quota.map(|q| q.period.as_i64()),
            period_start: quota.map_or(0, |q| q.period.start(now).0),
            limit: quota.map(|q| i64::try_from(q.limit).unwrap_or(i64::MAX)),
        }
    }
}

/// Binds a [`LimitsChange`] to `$q` in the order of [`limits_assignments!`].
macro_rules! bind_limits {
    ($q:expr, $c:expr) => {{
        let c: &LimitsChange = &$c;
        $q.bind(c.rate_limits.as_deref())
            .bind(c.mode)
            .bind(c.mode)
            .bind(c.period)
            .bind(c.mode)
            .bind(c.mode)
            .bind(c.period)
            .bind(c.period_start)
            .bind(c.mode)
            .bind(c.limit)
            .bind(c.mode)
            .bind(c.period)
    }};
}
pub(super) use bind_limits;

/// An event to record, borrowed from the change it belongs to.
struct Event<'a> {
    /// The key as this transaction leaves it: the event's key id, organization
    /// and hash (which lets every instance drop the key from its cache, even
    /// once its row is gone), and the snapshot webhooks carry.
    key: &'a KeyRecord,
    action: EventAction,
    actor: &'a UserId,
    time: Micros,
}

impl Event<'_> {
    fn subject(&self) -> Subject<'_> {
        Subject {
            key_id: self.key.id.as_str(),
            organization_id: &self.key.organization_id,
            hash: *self.key.secret_hash.as_bytes(),
            snapshot: crate::domain::json::key_json(self.key).to_string(),
            identity_id: None,
        }
    }
}

/// A change of an organization's key policy, to record as an event.
struct PolicyEvent<'a> {
    organization_id: &'a OrganizationId,
    policy: &'a KeyPolicy,
    action: EventAction,
    actor: &'a UserId,
    time: Micros,
}

impl PolicyEvent<'_> {
    /// About no key: an empty key id, and a hash no key has (all zeros), so the
    /// invalidation poll drops nothing for it.
    fn subject(&self) -> Subject<'_> {
        Subject {
            key_id: "",
            organization_id: self.organization_id,
            hash: [0; 32],
            snapshot: crate::domain::json::policy_json(self.policy).to_string(),
            identity_id: None,
        }
    }
}

/// The columns of an event row that its subject decides.
pub(super) struct Subject<'a> {
    pub(super) key_id: &'a str,
    pub(super) organization_id: &'a OrganizationId,
    pub(super) hash: [u8; 32],
    /// The key, the policy or the identity, as the event's transaction left it.
    pub(super) snapshot: String,
    /// Set for an event about an identity: every instance drops it from its
    /// identity cache.
    pub(super) identity_id: Option<&'a str>,
}

/// Which keys `list_keys` returns, after `after` in id order.
#[derive(Debug, Clone)]
pub struct KeyFilter {
    pub organization_id: OrganizationId,
    pub key_type: Option<KeyType>,
    pub user_id: Option<UserId>,
    pub include_revoked: bool,
    pub after: Option<KeyId>,
    pub limit: u32,
}

/// A list column that is NULL when empty (networks, principals): a key
/// without them stores nothing.
fn optional_list(items: Vec<String>) -> Option<String> {
    (!items.is_empty()).then(|| items.join(" "))
}

/// Metadata as a JSON object, NULL when there is none.
pub(super) fn optional_metadata(m: &crate::domain::metadata::Metadata) -> Option<String> {
    (!m.is_empty()).then(|| m.to_json().to_string())
}

/// Lists are stored space-separated: neither scopes nor hostnames can contain a space.
fn join(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let mut out = String::new();
    for item in items {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(item.as_ref());
    }
    out
}

/// Hashes as the database returns them; a value that is not one is corruption.
fn hashes_of(rows: &[Vec<u8>]) -> Result<Vec<SecretHash>, StoreError> {
    rows.iter()
        .map(|b| SecretHash::from_slice(b).ok_or_else(|| corrupt("api_keys", "secret_hash")))
        .collect()
}

/// A unique index refused the new key. Of `api_keys`' three unique indexes
/// only the live-user one can: the id is a fresh UUIDv7 and the hash that of 256
/// random bits, so a collision on either is not a case to handle. Decided by the
/// database's error class, not by the wording of its message.
fn is_live_user_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Store {
    /// Writes `keys` as they are, a thousand rows a statement, in one
    /// transaction: the bulk load of a store that no keygate serves yet
    /// (keygate-bench seeds a million keys this way; a migration from another
    /// key service would too). No events are recorded and no organization
    /// limit is checked, so running instances learn of these keys only when
    /// they read them or rebuild their filter; CreateKey is the way for keys
    /// made while keygate runs.
    pub async fn import_keys(&self, keys: &[KeyRecord]) -> Result<(), StoreError> {
        on_pool!(self, |p, d| {
            let mut tx = p.begin().await?;
            for chunk in keys.chunks(IMPORT_ROWS) {
                insert_keys!(tx, chunk.iter())?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Inserts a new key and its `CREATED` event in one transaction.
    pub async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        on_pool!(self, |p, d| {
            let mut tx = p.begin().await?;
            lock_organization!(tx, d, key.organization_id.as_str());
            if let Some(cap) = self.max_live_keys {
                // Under the organization's lock: racing creates count each other.
                let live: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM api_keys WHERE organization_id = ? \
                     AND revoke_time IS NULL AND rotated_to_id IS NULL \
                     AND (expire_time IS NULL OR expire_time > ?)",
                )
                .bind(key.organization_id.as_str())
                .bind(key.create_time.0)
                .fetch_one(&mut *tx)
                .await?;
                if u64::try_from(live).unwrap_or(0) >= cap {
                    return Err(StoreError::TooManyKeys(cap));
                }
            }
            if let Some(identity) = &key.identity_id {
                identity_exists!(tx, key.organization_id.as_str(), identity.as_str());
            }
            let inserted = insert_key!(tx, key);
            match inserted {
                Err(e) if is_live_user_conflict(&e) => return Err(StoreError::LiveUserKeyExists),
                other => other?,
            };
            record_event!(
                self,
                tx,
                d,
                Event {
                    key,
                    action: EventAction::Created,
                    actor: &key.created_by,
                    time: key.create_time,
                }
            );
            tx.commit().await?;
            Ok(())
        })
    }

    /// One key of an organization; a key of another organization is `None`.
    pub async fn get_key(
        &self,
        org: &OrganizationId,
        id: &KeyId,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let row: Option<KeyRow> = on_pool!(self, |p, _d| {
            sqlx::query_as(SELECT_KEY)
                .bind(org.as_str())
                .bind(id.as_str())
                .fetch_optional(p)
                .await?
        });
        row.map(KeyRecord::try_from).transpose()
    }

    /// The keys that some of `hashes` belong to, each once, in no particular
    /// order: the verify path's only read, one statement per
    /// [`MAX_HASHES_PER_READ`] distinct hashes.
    pub async fn find_by_hashes(
        &self,
        hashes: &[SecretHash],
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut distinct = hashes.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let mut found = Vec::new();
        for chunk in distinct.chunks(MAX_HASHES_PER_READ) {
            let Some(last) = chunk.last() else { break };
            let slots = chunk.len().next_power_of_two();
            let sql = &SELECT_KEYS_BY_HASHES[slots.trailing_zeros() as usize];
            let padded = chunk.iter().chain(std::iter::repeat(last)).take(slots);
            let rows: Vec<KeyRow> = on_pool!(self, |p, _d| {
                let mut query = sqlx::query_as(sql);
                for hash in padded {
                    query = query.bind(&hash.as_bytes()[..]);
                }
                query.fetch_all(p).await?
            });
            found.extend(convert::<_, KeyRecord>(rows)?);
        }
        Ok(found)
    }

    /// A page of keys in id order (ids are time-ordered UUIDv7, so this is creation order).
    pub async fn list_keys(&self, f: &KeyFilter) -> Result<Vec<KeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys \
             WHERE organization_id = ? AND (? = 0 OR key_type = ?) AND (? = '' OR user_id = ?) \
             AND (? = 1 OR revoke_time IS NULL) AND id > ? ORDER BY id LIMIT ?"
        );
        let key_type = f.key_type.map_or(0, KeyType::as_i64);
        let user = f.user_id.as_ref().map_or("", UserId::as_str);
        let after = f.after.as_ref().map_or("", KeyId::as_str);
        let rows: Vec<KeyRow> = on_pool!(self, |p, _d| {
            sqlx::query_as(&sql)
                .bind(f.organization_id.as_str())
                .bind(key_type)
                .bind(key_type)
                .bind(user)
                .bind(user)
                .bind(i64::from(f.include_revoked))
                .bind(after)
                .bind(i64::from(f.limit))
                .fetch_all(p)
                .await?
        });
        convert(rows)
    }

    /// Applies a patch to a key and writes its `UPDATED` event, atomically,
    /// if `allowed` accepts the key as this transaction has it locked (the
    /// caller's rule of which keys may change); otherwise changes nothing and
    /// answers `Precondition` with the rule's reason.
    pub async fn update_key(
        &self,
        org: &OrganizationId,
        id: &KeyId,
        patch: &KeyPatch,
        actor: &UserId,
        now: Micros,
        allowed: Guard<'_>,
    ) -> Result<KeyRecord, StoreError> {
        const UPDATE: &str = concat!(
            "UPDATE api_keys SET update_time = ?, \
             name = COALESCE(?, name), scopes = COALESCE(?, scopes), \
             allowed_hostnames = COALESCE(?, allowed_hostnames), \
             allowed_networks = CASE WHEN ? = 1 THEN ? ELSE allowed_networks END, \
             bound_principals = CASE WHEN ? = 1 THEN ? ELSE bound_principals END, \
             metadata = CASE WHEN ? = 1 THEN ? ELSE metadata END, \
             identity_id = CASE WHEN ? = 1 THEN ? ELSE identity_id END, \
             expire_time = CASE WHEN ? = 1 THEN ? ELSE expire_time END, ",
            limits_assignments!(),
            " WHERE organization_id = ? AND id = ?"
        );
        let scopes = patch.scopes.as_ref().map(|s| join(s.iter()));
        let hosts = patch.allowed_hostnames.as_ref().map(|h| join(h.to_vec()));
        let networks = patch
            .allowed_networks
            .as_ref()
            .and_then(|n| optional_list(n.to_vec()));
        let principals = patch
            .bound_principals
            .as_ref()
            .and_then(|p| optional_list(p.to_vec()));
        let metadata = patch.metadata.as_ref().and_then(optional_metadata);
        let limits = LimitsChange::new(patch.rate_limits.as_ref(), patch.quota, now);
        on_pool!(self, |p, d| {
            let mut tx = p.begin().await?;
            // Every writer of the organization waits here, so the row read
            // next stays as read until this transaction ends.
            lock_organization!(tx, d, org.as_str());
            let before = read_key!(tx, org.as_str(), id.as_str());
            allowed(&before).map_err(StoreError::Precondition)?;
            if let Some(Some(identity)) = &patch.identity_id {
                identity_exists!(tx, org.as_str(), identity.as_str());
            }
            let q = sqlx::query(UPDATE)
                .bind(now.0)
                .bind(patch.name.as_ref().map(KeyName::as_str))
                .bind(scopes.as_deref())
                .bind(hosts.as_deref())
                .bind(i64::from(patch.allowed_networks.is_some()))
                .bind(networks.as_deref())
                .bind(i64::from(patch.bound_principals.is_some()))
                .bind(principals.as_deref())
                .bind(i64::from(patch.metadata.is_some()))
                .bind(metadata.as_deref())
                .bind(i64::from(patch.identity_id.is_some()))
                .bind(
                    patch
                        .identity_id
                        .as_ref()
                        .and_then(|i| i.as_ref().map(IdentityId::as_str)),
                )
                .bind(i64::from(patch.expire_time.is_some()))
                .bind(patch.expire_time.flatten().map(|t| t.0));
            bind_limits!(q, limits)
                .bind(org.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            let key = read_key!(tx, org.as_str(), id.as_str());
            record_event!(
                self,
                tx,
                d,
                Event {
                    key: &key,
                    action: EventAction::Updated,
                    actor,
                    time: now,
                }
            );
            tx.commit().await?;
            Ok(key)
        })
    }

    /// Replaces a key with `new` in one transaction, if `allowed` accepts the
    /// old key as this transaction has it locked: the old key names its
    /// replacement and is revoked (`grace_until` `None`) or expires at
    /// `grace_until` (never later than its own expiry); the new key joins the
    /// old key's lineage and starts with its quota use in the current period.
    /// Events `ROTATED` (and `REVOKED`) on the old key, `CREATED` on the new
    /// one. Returns the old key as it is now and the new key as stored.
    pub async fn rotate_key(
        &self,
        old_id: &KeyId,
        new: &KeyRecord,
        grace_until: Option<Micros>,
        now: Micros,
        allowed: Guard<'_>,
    ) -> Result<(KeyRecord, KeyRecord), StoreError> {
        let org = &new.organization_id;
        let actor = &new.created_by;
        // The old key stops counting as its owner's live user key here (the
        // generated `live_user_id` leaves rotated keys out), before the new one
        // is inserted. From then on quota takes of the lineage go to the new
        // row (the newest link), whatever an instance's cache still says.
        let retire = "UPDATE api_keys SET rotated_to_id = ?, update_time = ?, \
            revoke_time = CASE WHEN ? = 1 THEN ? ELSE revoke_time END, \
            expire_time = CASE WHEN ? = 1 THEN expire_time \
                WHEN expire_time IS NULL OR expire_time > ? THEN ? ELSE expire_time END \
            WHERE organization_id = ? AND id = ? AND revoke_time IS NULL AND rotated_to_id IS NULL";
        let revoke_now = i64::from(grace_until.is_none());
        let until = grace_until.map_or(0, |t| t.0);
        on_pool!(self, |p, d| {
            let mut tx = p.begin().await?;
            lock_organization!(tx, d, org.as_str());
            // Quota takes do not lock the organization: lock the row itself
            // and read it as last committed, so that the use read here is the
            // use the replacement inherits (a take that commits later waits
            // for this transaction, then finds the new row).
            let row: Option<KeyRow> = sqlx::query_as(d.select_key_locked)
                .bind(org.as_str())
                .bind(old_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let old = KeyRecord::try_from(row.ok_or(StoreError::NotFound)?)?;
            allowed(&old).map_err(StoreError::Precondition)?;
            sqlx::query(retire)
                .bind(new.id.as_str())
                .bind(now.0)
                .bind(revoke_now)
                .bind(now.0)
                .bind(revoke_now)
                .bind(until)
                .bind(until)
                .bind(org.as_str())
                .bind(old_id.as_str())
                .execute(&mut *tx)
                .await?;
            // Rotation never hands out fresh credits: the replacement has used
            // what the old key used in this period.
            let mut new = new.clone();
            new.lineage_id = old.lineage_id.clone();
            if let (Some(q), Some(old_q)) = (new.quota, old.quota) {
                let start = q.period.start(now);
                if old_q.period == q.period && old.quota_period_start == start {
                    new.quota_used = old.quota_used;
                }
                new.quota_period_start = start;
            }
            match insert_key!(tx, &new) {
                Err(e) if is_live_user_conflict(&e) => return Err(StoreError::LiveUserKeyExists),
                other => other?,
            };
            fn event<'a>(
                key: &'a KeyRecord,
                action: EventAction,
                actor: &'a UserId,
                time: Micros,
            ) -> Event<'a> {
                Event {
                    key,
                    action,
                    actor,
                    time,
                }
            }
            let old = read_key!(tx, org.as_str(), old_id.as_str());
            record_event!(self, tx, d, event(&old, EventAction::Rotated, actor, now));
            if grace_until.is_none() {
                record_event!(self, tx, d, event(&old, EventAction::Revoked, actor, now));
            }
            record_event!(self, tx, d, event(&new, EventAction::Created, actor, now));
            tx.commit().await?;
            Ok((old, new))
        })
    }

    /// Revokes a key; revoking a revoked key changes nothing and writes no event.
    pub async fn revoke_key(
        &self,
        org: &OrganizationId,
        id: &KeyId,
        actor: &UserId,
        now: Micros,
    ) -> Result<KeyRecord, StoreError> {
        self.revoke(org, id, actor, now, false).await
    }

    /// Revokes a key reported as leaked: events `LEAKED` then `REVOKED`, in one
    /// transaction with the change. Returns whether this call revoked it (a
    /// key already revoked changes nothing and writes no event).
    pub async fn revoke_leaked(
        &self,
        org: &OrganizationId,
        id: &KeyId,
        actor: &UserId,
        now: Micros,
    ) -> Result<bool, StoreError> {
        let before = self.get_key(org, id).await?.ok_or(StoreError::NotFound)?;
        if before.revoke_time.is_some() {
            return Ok(false);
        }
        let after = self.revoke(org, id, actor, now, true).await?;
        Ok(after.revoke_time == Some(now))
    }

    async fn revoke(
        &self,
        org: &OrganizationId,
        id: &KeyId,
        actor: &UserId,
        now: Micros,
        leaked: bool,
    ) -> Result<KeyRecord, StoreError> {
        let revoke = "UPDATE api_keys SET revoke_time = ?, update_time = ? \
            WHERE organization_id = ? AND id = ? AND revoke_time IS NULL";
        on_pool!(self, |p, d| {
            let mut tx = p.begin().await?;
            lock_organization!(tx, d, org.as_str());
            let revoked = sqlx::query(revoke)
                .bind(now.0)
                .bind(now.0)
                .bind(org.as_str())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let key = read_key!(tx, org.as_str(), id.as_str());
            if revoked > 0 && leaked {
                record_event!(
                    self,
                    tx,
                    d,
                    Event {
                        key: &key,
                        action: EventAction::Leaked,
                        actor,
                        time: now,
                    }
                );
            }
            if revoked > 0 {
                record_event!(
                    self,
                    tx,
                    d,
                    Event {
                        key: &key,
                        action: EventAction::Revoked,
                        actor,
                        time: now,
                    }
                );
            }
            tx.commit().await?;
            Ok(key)
        })
    }

    /// Deletes every user key of a member in an organization, each with a `DELETED`
    /// event, and returns the hashes of what was deleted (for cache invalidation).
    pub async fn remove_member(
        &self,
        org: &OrganizationId,
        user: &UserId,
        actor: &UserId,
        now: Micros,
    ) -> Result<Vec<SecretHash>, StoreError> {
        let select = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys \
             WHERE organization_id = ? AND user_id = ? AND key_type = ?"
        );
        let delete =
            "DELETE FROM api_keys WHERE organization_id = ? AND user_id = ? AND key_type = ?";
        let user_type = KeyType::User.as_i64();
        on_pool!(self, |p, d| {
            let mut tx = p.begin().await?;
            lock_organization!(tx, d, org.as_str());
            let rows: Vec<KeyRow> = sqlx::query_as(&select)
                .bind(org.as_str())
                .bind(user.as_str())
                .bind(user_type)
                .fetch_all(&mut *tx)
                .await?;
            let keys: Vec<KeyRecord> = convert(rows)?;
            for key in &keys {
                record_event!(
                    self,
                    tx,
                    d,
                    Event {
                        key,
                        action: EventAction::Deleted,
                        actor,
                        time: now,
                    }
                );
            }
            let deleted = sqlx::query(delete)
                .bind(org.as_str())
                .bind(user.as_str())
                .bind(user_type)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            for key in &keys {
                for table in ["usage_hourly", "usage_daily"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE key_id = ?"))
                        .bind(key.id.as_str())
                        .execute(&mut *tx)
                        .await?;
                }
            }
            if usize::try_from(deleted).ok() != Some(keys.len()) {
                return Err(corrupt(
                    "api_keys",
                    "remove_member deleted another count than it read",
                ));
            }
            tx.commit().await?;
            Ok(keys.into_iter().map(|k| k.secret_hash).collect())
        })
    }

    /// A page of an organization's audit trail in the order of its own event ids
    /// (`org_seq`), optionally for one key.
    pub async fn list_events(
        &self,
        org: &OrganizationId,
        key_id: Option<&KeyId>,
        after: u64,
        limit: u32,
    ) -> Result<Vec<KeyEvent>, StoreError> {
        let sql = "SELECT org_seq, key_id, organization_id, action, actor_id, event_time, \
             identity_id, CASE WHEN action = 7 THEN key_snapshot END AS policy \
             FROM key_events \
             WHERE organization_id = ? AND (? = '' OR key_id = ?) AND org_seq > ? \
             ORDER BY org_seq LIMIT ?";
        let key = key_id.map_or("", KeyId::as_str);
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows: Vec<EventRow> = on_pool!(self, |p, _d| {
            sqlx::query_as(sql)
                .bind(org.as_str())
                .bind(key)
                .bind(key)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?
        });
        convert(rows)
    }

    /// Every organization's events after `after`, oldest first, as the
    /// invalidation poll needs them.
    pub async fn events_after(&self, after: u64, limit: u32) -> Result<Vec<Change>, StoreError> {
        let sql = "SELECT id, secret_hash, event_time, identity_id FROM key_events \
            WHERE id > ? ORDER BY id LIMIT ?";
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let rows: Vec<ChangeRow> = on_pool!(self, |p, _d| {
            sqlx::query_as(sql)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?
        });
        convert(rows)
    }

    /// The hashes of keys in the grace period of a rotation (still verifying
    /// at `now`) whose chain's key was the subject of an event with an id from
    /// `first` to `last`: the invalidation poll's companion to
    /// [`Store::events_after`], since a change of a chain's newest key changes
    /// what its links in grace spend.
    pub async fn grace_links_of_events(
        &self,
        first: u64,
        last: u64,
        now: Micros,
    ) -> Result<Vec<SecretHash>, StoreError> {
        let sql = "SELECT g.secret_hash FROM key_events e \
            JOIN api_keys t ON t.secret_hash = e.secret_hash \
            JOIN api_keys g ON g.lineage_id = t.lineage_id \
            WHERE e.id >= ? AND e.id <= ? AND g.rotated_to_id IS NOT NULL \
            AND g.revoke_time IS NULL AND g.expire_time > ?";
        let (first, last) = (
            i64::try_from(first).unwrap_or(i64::MAX),
            i64::try_from(last).unwrap_or(i64::MAX),
        );
        let rows: Vec<Vec<u8>> = on_pool!(self, |p, _d| {
            sqlx::query_scalar(sql)
                .bind(first)
                .bind(last)
                .bind(now.0)
                .fetch_all(p)
                .await?
        });
        hashes_of(&rows)
    }

    /// One page of every key's hash (revoked and expired keys too: they still
    /// answer with their own code), in hash order after `after`: how the
    /// forged-key filter is loaded without one huge read.
    pub async fn key_hashes_after(
        &self,
        after: Option<&SecretHash>,
        limit: u32,
    ) -> Result<Vec<SecretHash>, StoreError> {
        let rows: Vec<Vec<u8>> = on_pool!(self, |p, _d| match after {
            None => {
                sqlx::query_scalar("SELECT secret_hash FROM api_keys ORDER BY secret_hash LIMIT ?")
                    .bind(i64::from(limit))
                    .fetch_all(p)
                    .await?
            }
            Some(after) => {
                sqlx::query_scalar(
                    "SELECT secret_hash FROM api_keys WHERE secret_hash > ? ORDER BY secret_hash LIMIT ?",
                )
                .bind(&after.as_bytes()[..])
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?
            }
        });
        hashes_of(&rows)
    }

    /// How many keys there are, revoked ones included: the filter's size.
    pub async fn key_count(&self) -> Result<u64, StoreError> {
        let n: i64 = on_pool!(self, |p, _d| sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys"
        )
        .fetch_one(p)
        .await?);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The newest event id, 0 when there is none: where a new instance starts polling.
    pub async fn last_event_id(&self) -> Result<u64, StoreError> {
        let sql = "SELECT COALESCE(MAX(id), 0) FROM key_events";
        let id: i64 = on_pool!(self, |p, _d| sqlx::query_scalar(sql).fetch_one(p).await?);
        u64::try_from(id).map_err(|_| corrupt("key_events", "negative id"))
    }

    /// The newest key of each of `lineages` (the link whose usage limits the
    /// whole chain spends), each once, in no particular order.
    pub async fn newest_links(&self, lineages: &[KeyId]) -> Result<Vec<KeyRecord>, StoreError> {
        let mut found = Vec::new();
        for chunk in lineages.chunks(MAX_HASHES_PER_READ) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT {KEY_COLUMNS} FROM api_keys \
                 WHERE rotated_to_id IS NULL AND lineage_id IN ({marks})"
            );
            let rows: Vec<KeyRow> = on_pool!(self, |p, _d| {
                let mut query = sqlx::query_as(&sql);
                for lineage in chunk {
                    query = query.bind(lineage.as_str());
                }
                query.fetch_all(p).await?
            });
            found.extend(convert::<_, KeyRecord>(rows)?);
        }
        Ok(found)
    }

    /// The hashes of the keys still in the grace period of a rotation (at
    /// `now`) that share a lineage with one of `hashes`: a change of a chain's
    /// newest key changes what those keys spend, so their cache entries go too.
    pub async fn grace_links(
        &self,
        hashes: &[SecretHash],
        now: Micros,
    ) -> Result<Vec<SecretHash>, StoreError> {
        let mut found = Vec::new();
        for chunk in hashes.chunks(MAX_HASHES_PER_READ) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT g.secret_hash FROM api_keys g \
                 JOIN api_keys t ON t.lineage_id = g.lineage_id \
                 WHERE t.secret_hash IN ({marks}) AND g.rotated_to_id IS NOT NULL \
                 AND g.revoke_time IS NULL AND g.expire_time > ?"
            );
            let rows: Vec<Vec<u8>> = on_pool!(self, |p, _d| {
                let mut query = sqlx::query_scalar(&sql);
                for hash in chunk {
                    query = query.bind(&hash.as_bytes()[..]);
                }
                query.bind(now.0).fetch_all(p).await?
            });
            found.extend(hashes_of(&rows)?);
        }
        Ok(found)
    }

    /// Whether the database answers; drives the health service.
    /// The organization's key policy; the empty policy when none was set.
    pub async fn key_policy(&self, org: &OrganizationId) -> Result<KeyPolicy, StoreError> {
        let sql = "SELECT max_lifetime, require_networks_for_bot_keys, allowed_bot_scopes, \
             max_rotation_grace FROM key_policies WHERE organization_id = ?";
        let row: Option<PolicyRow> = on_pool!(self, |p, _d| {
            sqlx::query_as(sql)
                .bind(org.as_str())
                .fetch_optional(p)
                .await?
        });
        row.map_or(Ok(KeyPolicy::default()), KeyPolicy::try_from)
    }

    /// Replaces the organization's key policy (the empty policy removes its
    /// row), with a POLICY_CHANGED event in the same transaction.
    pub async fn set_key_policy(
        &self,
        org: &OrganizationId,
        policy: &KeyPolicy,
        actor: &UserId,
        now: Micros,
    ) -> Result<(), StoreError> {
        let scopes = policy
            .allowed_bot_scopes
            .as_ref()
            .map_or(String::new(), |s| join(s.iter()));
        on_pool!(self, |p, d| {
            let mut tx = p.begin().await?;
            lock_organization!(tx, d, org.as_str());
            sqlx::query("DELETE FROM key_policies WHERE organization_id = ?")
                .bind(org.as_str())
                .execute(&mut *tx)
                .await?;
            if !policy.is_empty() {
                sqlx::query(
                    "INSERT INTO key_policies (organization_id, max_lifetime, \
                     require_networks_for_bot_keys, allowed_bot_scopes, max_rotation_grace, \
                     update_time) VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(org.as_str())
                .bind(policy.max_lifetime.map(|m| m.0))
                .bind(i64::from(policy.require_networks_for_bot_keys))
                .bind(&scopes)
                .bind(policy.max_rotation_grace.map(|m| m.0))
                .bind(now.0)
                .execute(&mut *tx)
                .await?;
            }
            record_event!(
                self,
                tx,
                d,
                PolicyEvent {
                    organization_id: org,
                    policy,
                    action: EventAction::PolicyChanged,
                    actor,
                    time: now,
                }
            );
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, |p, _d| {
            sqlx::query("SELECT 1").execute(p).await?;
        });
        Ok(())
    }
}
