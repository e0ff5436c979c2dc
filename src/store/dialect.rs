//! The few words in which MySQL and SQLite differ, as `mysql.rs` and
//! `sqlite.rs` fill them in and `sql.rs` uses them.

#[derive(Debug)]
pub(super) struct Dialect {
    /// The usage update for `n` keys, each bound as `(id, count, last_used)`:
    /// a join against the batch, linear in its size (a `CASE id WHEN …` per key
    /// is quadratic, and took a second for 1000 keys in MariaDB).
    pub usage_update: fn(n: usize) -> String,
    /// Adds `n` (bound second) to an organization's (bound first) event sequence,
    /// creating its row at `n`.
    pub bump_event_seq: &'static str,
    /// Ends an `INSERT INTO usage_… (key_id, bucket_start, code, count) VALUES …`
    /// so that an existing bucket row adds the count.
    pub history_upsert: &'static str,
    /// Deletes up to 1000 rows of table `{t}` whose `bucket_start` is before the
    /// bound parameter.
    pub prune_history: fn(table: &str) -> String,
    /// [`crate::store::KEY_COLUMNS`] of one key by organization and id, read
    /// as the latest committed row and locked for the transaction. MySQL's
    /// plain reads see the transaction's snapshot, which can be older than a
    /// write it has just waited for; SQLite's one writer sees everything.
    pub select_key_locked: &'static str,
}
