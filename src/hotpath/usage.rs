//! Usage counting off the request path: verifications add to counters kept in
//! the cached key itself, a background task writes them in batches. Several
//! instances' batches add up in the database (`request_count = request_count + n`),
//! so counts stay exact.
//!
//! A verification costs three atomic operations on its own cache entry (four on
//! the first call of an hour), plus, on the key's first use since the last
//! flush only, a push onto a short list of keys to flush. No map, no hashing,
//! no key id copied on the request path.
//!
//! The usage history (`GetKeyUsage`) rides on the same counters: each entry
//! counts its outcomes per UTC hour in two slots, by the hour's parity, and a
//! flush writes them in the same transaction as `request_count`, so the two
//! never drift apart. A call in the very microsecond its slot moves to a new
//! hour, racing a flush that is reading that slot, can be filed under the
//! neighbouring hour; it is never lost or counted twice.
//!
//! The store's load is bounded by a write budget (`--usage-write-budget`, rows
//! per second): a flush writes the keys that have waited longest, up to its
//! share of the budget, and the rest wait in memory, exact, in a backlog kept
//! oldest first. A key's counts are one `api_keys` row and up to two history
//! rows per outcome and hour; all of them count against the budget. On
//! shutdown everything is written, whatever the budget.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::{
    domain::model::{KeyId, Micros},
    domain::verify::Code,
    hotpath::cache::CachedKey,
    store::{Store, StoreError, UsageDelta},
};

/// Independent lists, so concurrent first uses of different keys rarely meet.
const SHARDS: usize = 16;

/// Rows per transaction when the backlog is written at shutdown.
const SHUTDOWN_ROWS: usize = 30_000;

/// One microsecond-based UTC hour.
const HOUR: i64 = 3_600_000_000;

#[derive(Debug, Clone)]
struct Pending {
    count: u64,
    last_used: Micros,
    history: History,
    /// When these counts first waited: the backlog's order.
    since: Instant,
}

impl Pending {
    fn new(since: Instant) -> Self {
        Self {
            count: 0,
            last_used: Micros(0),
            history: History::default(),
            since,
        }
    }

    fn add(&mut self, count: u64, last_used: Micros) {
        self.count += count;
        self.last_used = self.last_used.max(last_used);
    }

    fn merge(&mut self, other: Pending) {
        self.add(other.count, other.last_used);
        self.since = self.since.min(other.since);
        for (k, n) in other.history.0 {
            self.history.add(k, n);
        }
    }

    /// Rows its write touches: the key's row, and an hourly and a daily row
    /// per outcome and hour (fewer when two hours share a day).
    fn rows(&self) -> usize {
        usize::from(self.count > 0) + 2 * self.history.len()
    }
}

/// `(hour start, VerifyCode number)` → verifications, in key order (the
/// order the store writes them in). Nearly always one entry: a vector of
/// them (24 bytes an entry) rather than a `BTreeMap`, whose first node is
/// about 300 bytes, which a million keys waiting for the write budget after
/// a cold start each held (BENCHMARKS.md, run 19).
#[derive(Debug, Clone, Default)]
struct History(Vec<((i64, i64), u64)>);

impl History {
    fn add(&mut self, key: (i64, i64), n: u64) {
        match self.0.binary_search_by(|e| e.0.cmp(&key)) {
            Ok(i) => self.0[i].1 += n,
            Err(i) => self.0.insert(i, (key, n)),
        }
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Counts waiting to be written, oldest first. `order` may name a key twice, or
/// one already written: an entry counts only while `by_id` holds the key.
#[derive(Debug, Default)]
struct Backlog {
    by_id: HashMap<KeyId, Pending>,
    order: VecDeque<KeyId>,
}

impl Backlog {
    fn add(&mut self, key_id: KeyId, pending: Pending, front: bool) {
        match self.by_id.get_mut(&key_id) {
            Some(have) => {
                let older = pending.since < have.since;
                have.merge(pending);
                if older && front {
                    self.order.push_front(key_id);
                }
            }
            None => {
                if front {
                    self.order.push_front(key_id.clone());
                } else {
                    self.order.push_back(key_id.clone());
                }
                self.by_id.insert(key_id, pending);
            }
        }
    }

    /// The oldest keys, as many as fit in `rows` (at least one, so a key
    /// with more history than a whole flush's share still moves).
    fn take(&mut self, rows: usize) -> Vec<(KeyId, Pending)> {
        let mut out = Vec::new();
        let mut used = 0;
        while let Some(id) = self.order.front() {
            let Some(p) = self.by_id.get(id) else {
                self.order.pop_front();
                continue;
            };
            if !out.is_empty() && used + p.rows() > rows {
                break;
            }
            used += p.rows();
            let id = self.order.pop_front().expect("a front");
            let p = self.by_id.remove(&id).expect("present");
            out.push((id, p));
        }
        out
    }

    fn oldest(&mut self) -> Option<Instant> {
        while let Some(id) = self.order.front() {
            match self.by_id.get(id) {
                Some(p) => return Some(p.since),
                None => {
                    self.order.pop_front();
                }
            }
        }
        None
    }
}

#[derive(Debug)]
pub struct UsageRecorder {
    /// Entries counted since the last flush. An entry stays alive here even
    /// if the cache drops it meanwhile, so nothing it counted is lost.
    dirty: [Mutex<Vec<Arc<CachedKey>>>; SHARDS],
    /// Counts taken from the entries and not written yet: over the budget, or
    /// from a flush that failed.
    backlog: Mutex<Backlog>,
    /// Rows one flush may write: the budget's share of a flush interval.
    rows_per_flush: usize,
    /// Rows a second at most, whatever the interval.
    budget: usize,
    /// Flushes of the last second: when each started writing, and its rows.
    recent: Mutex<VecDeque<(Instant, usize)>>,
}

impl Default for UsageRecorder {
    /// No budget: every flush writes everything.
    fn default() -> Self {
        Self::with_rows_per_flush(usize::MAX)
    }
}

/// A panic while holding one of these locks cannot leave a half-written entry.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl UsageRecorder {
    /// At most `budget` rows a second, flushing every `interval`.
    pub fn new(budget: u32, interval: Duration) -> Self {
        let share = (f64::from(budget) * interval.as_secs_f64()).floor();
        Self {
            // At least one row per flush, or nothing would ever move.
            rows_per_flush: (share as usize).max(1),
            budget: budget as usize,
            ..Self::with_rows_per_flush(usize::MAX)
        }
    }

    fn with_rows_per_flush(rows_per_flush: usize) -> Self {
        Self {
            dirty: std::array::from_fn(|_| Mutex::new(Vec::new())),
            backlog: Mutex::new(Backlog::default()),
            rows_per_flush,
            budget: usize::MAX,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// What this flush may write: its share, less what the flushes of the last
    /// second wrote, so no second (by when writes start) exceeds the budget
    /// even when a slow flush delays the next tick's.
    fn allowance(&self, now: Instant) -> usize {
        let mut recent = lock(&self.recent);
        while recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= Duration::from_secs(1))
        {
            recent.pop_front();
        }
        let spent: usize = recent.iter().map(|(_, rows)| rows).sum();
        self.rows_per_flush.min(self.budget.saturating_sub(spent))
    }

    /// Keys whose counts wait to be written, and how long the oldest has waited.
    pub fn pending(&self) -> (usize, Duration) {
        let mut backlog = lock(&self.backlog);
        let age = backlog.oldest().map_or(Duration::ZERO, |t| t.elapsed());
        (backlog.by_id.len(), age)
    }

    /// Counts one verification of a key and its outcome; the hot path's only
    /// write.
    pub fn record(&self, key: &Arc<CachedKey>, now: Micros, code: Code) {
        if let Some(i) = code.outcome_index() {
            let number = now.0.div_euclid(HOUR);
            let hour = u32::try_from(number).unwrap_or(0);
            let slot = &key.usage.hours[usize::from(number % 2 != 0)];
            if slot.hour.load(Ordering::Acquire) != hour {
                // The first verification of this hour in this slot: what it
                // held is two hours old and was taken by a flush long ago.
                slot.hour.store(hour, Ordering::Release);
            }
            slot.by_code[i].fetch_add(1, Ordering::Relaxed);
        }
        // `last_used` and the outcome first: a flush that takes this count
        // (Acquire on `count`) also sees them.
        key.usage.last_used.fetch_max(now.0, Ordering::Relaxed);
        if key.usage.count.fetch_add(1, Ordering::AcqRel) == 0 {
            // The first use since the last flush took this entry's count: list it.
            // Later uses find a non-zero count and know it is listed.
            let shard = usize::from(key.id().as_bytes().last().copied().unwrap_or(0));
            lock(&self.dirty[shard % SHARDS]).push(Arc::clone(key));
        }
    }

    /// Moves everything counted so far into the backlog, then takes the oldest
    /// keys that fit in `rows`.
    fn take(&self, rows: usize) -> Vec<(KeyId, Pending)> {
        let now = Instant::now();
        let mut backlog = lock(&self.backlog);
        for shard in &self.dirty {
            // Swapped out under the lock, drained outside it: verifications that
            // list a key meanwhile go to the fresh list, for the next flush.
            let listed = std::mem::take(&mut *lock(shard));
            for key in listed {
                // Zeroing the count is what makes the next use list the entry again.
                let count = u64::from(key.usage.count.swap(0, Ordering::AcqRel));
                let last_used = Micros(key.usage.last_used.load(Ordering::Relaxed));
                // With the cache off, or after an invalidation, one key can have
                // several entries listed: their counts add up.
                let mut pending = Pending::new(now);
                pending.add(count, last_used);
                for slot in &key.usage.hours {
                    let hour = i64::from(slot.hour.load(Ordering::Acquire)) * HOUR;
                    for (i, n) in slot.by_code.iter().enumerate() {
                        let n = u64::from(n.swap(0, Ordering::AcqRel));
                        if let (true, Some(code)) = (n > 0, Code::from_outcome_index(i)) {
                            pending.history.add((hour, code.number()), n);
                        }
                    }
                }
                // The id was parsed when the key was read, so it parses again.
                if let (true, Ok(id)) = (
                    pending.count > 0 || !pending.history.is_empty(),
                    KeyId::parse(key.id()),
                ) {
                    backlog.add(id, pending, false);
                }
            }
        }
        backlog.take(rows)
    }

    /// Writes the oldest counts the budget allows; on failure they go back to
    /// the front of the backlog, for the next flush.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let now = Instant::now();
        let rows = self.allowance(now);
        if rows == 0 {
            return Ok(0);
        }
        let taken = self.take(rows);
        let written: usize = taken.iter().map(|(_, p)| p.rows()).sum();
        lock(&self.recent).push_back((now, written));
        self.write(store, taken).await
    }

    /// Writes everything, whatever the budget: for shutdown. In transactions
    /// of bounded size, so a large backlog commits piece by piece and a
    /// failure loses only what was not written yet.
    pub async fn flush_all(&self, store: &Store) -> Result<usize, StoreError> {
        let mut written = 0;
        loop {
            match self.flush_rows(store, SHUTDOWN_ROWS).await? {
                0 => return Ok(written),
                n => written += n,
            }
        }
    }

    async fn flush_rows(&self, store: &Store, rows: usize) -> Result<usize, StoreError> {
        self.write(store, self.take(rows)).await
    }

    async fn write(
        &self,
        store: &Store,
        taken: Vec<(KeyId, Pending)>,
    ) -> Result<usize, StoreError> {
        if taken.is_empty() {
            return Ok(0);
        }
        let batch: Vec<UsageDelta> = taken
            .iter()
            .map(|(key_id, p)| UsageDelta {
                key_id: key_id.clone(),
                count: p.count,
                last_used: p.last_used,
                history: p
                    .history
                    .0
                    .iter()
                    .map(|&((hour, code), n)| (Micros(hour), code, n))
                    .collect(),
            })
            .collect();
        match store.add_usage(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                let mut backlog = lock(&self.backlog);
                // Back in front, oldest first: pushed newest first.
                for (key_id, pending) in taken.into_iter().rev() {
                    backlog.add(key_id, pending, true);
                }
                Err(e)
            }
        }
    }

    /// Flushes every `interval` until `shutdown` is cancelled, then once more.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            match self.flush(&store).await {
                Ok(0) => {}
                Ok(n) => crate::metrics::usage_flush(n, true),
                Err(e) => {
                    crate::metrics::usage_flush(0, false);
                    tracing::warn!(error = %e, "usage flush failed; will retry");
                }
            }
            let (keys, age) = self.pending();
            crate::metrics::usage_pending(keys, age);
        }
        if let Err(e) = self.flush_all(&store).await {
            tracing::error!(error = %e, "final usage flush failed; these counts are lost");
        }
    }
}

/// Daily buckets are kept this long: as far back as one `GetKeyUsage` call
/// may ask for days (400 days), so no call finds a range half pruned.
const DAILY_RETENTION: i64 = 400 * 24 * HOUR;

/// Events (with their webhook deliveries) pruned per statement.
const EVENT_PRUNE_BATCH: u32 = 1000;

/// Deletes what is past its retention every `interval` until `stop`: hourly
/// usage buckets older than `retention`, daily ones older than 400 days, and
/// key events older than `event_retention` with their webhook deliveries, a
/// thousand rows per statement so that no prune holds a lock for long. Without
/// it one tenant's churn would grow everyone's storage for ever.
pub async fn prune_history(
    store: Store,
    clock: crate::clock::SharedClock,
    retention: Duration,
    event_retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    let retention = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
    let event_retention = i64::try_from(event_retention.as_micros()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = clock.now().0;
        for (daily, keep) in [(false, retention), (true, DAILY_RETENTION)] {
            let before = Micros(now.saturating_sub(keep));
            loop {
                match store.prune_usage_history(daily, before).await {
                    Ok(n) if n >= 1000 && !stop.is_cancelled() => {}
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "usage history prune failed; will retry");
                        break;
                    }
                }
            }
        }
        let before = Micros(now.saturating_sub(event_retention));
        loop {
            match store.prune_events(before, EVENT_PRUNE_BATCH).await {
                Ok(n) if n >= u64::from(EVENT_PRUNE_BATCH) && !stop.is_cancelled() => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "event prune failed; will retry");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::keys::{KeyPrefix, Secret},
        domain::model::KeyRecord,
    };

    fn entry(id: &KeyId) -> Arc<CachedKey> {
        let secret = Secret::generate(&KeyPrefix::default());
        Arc::new(CachedKey::new(KeyRecord::test_bot(
            id.clone(),
            &secret,
            "k",
        )))
    }

    fn totals(taken: &[(KeyId, Pending)]) -> HashMap<KeyId, (u64, Micros)> {
        let mut out = HashMap::new();
        for (id, p) in taken {
            assert!(
                out.insert(id.clone(), (p.count, p.last_used)).is_none(),
                "one delta per key"
            );
        }
        out
    }

    #[test]
    fn over_the_budget_the_oldest_keys_go_first_and_nothing_is_lost() {
        // Each key below is one verification: its row and two history rows.
        let usage = UsageRecorder::with_rows_per_flush(6);
        let ids: Vec<KeyId> = (0..5).map(|_| KeyId::generate()).collect();
        let keys: Vec<_> = ids.iter().map(entry).collect();
        for k in &keys[..3] {
            usage.record(k, Micros(1), Code::Valid);
        }
        let first = usage.take(6);
        assert_eq!(first.len(), 2, "two keys of three rows fit in six");
        assert_eq!(usage.pending().0, 1);
        let waiting = ids[..3]
            .iter()
            .find(|id| first.iter().all(|(taken, _)| taken != *id))
            .expect("one key waits")
            .clone();
        let waiting_key = &keys[ids.iter().position(|id| *id == waiting).expect("known")];
        // Newer keys, and a newer use of the waiting one, queue behind it.
        usage.record(&keys[3], Micros(2), Code::Valid);
        usage.record(waiting_key, Micros(3), Code::Valid);
        usage.record(&keys[4], Micros(4), Code::Valid);
        let second = usage.take(6);
        assert_eq!(second.len(), 2);
        assert_eq!(second[0].0, waiting, "the oldest first");
        assert_eq!(totals(&second)[&waiting], (2, Micros(3)), "both uses, once");
        let third = usage.take(6);
        assert_eq!(third.len(), 1);
        assert_eq!(usage.pending().0, 0);
        let mut all: Vec<KeyId> = [first, second, third]
            .iter()
            .flatten()
            .map(|(id, _)| id.clone())
            .collect();
        all.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut expected = ids.clone();
        expected.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(all, expected, "every key once");
        // A key with more rows than a whole flush's share still moves.
        usage.record(&keys[0], Micros(5), Code::Valid);
        assert_eq!(usage.take(1).len(), 1);
    }

    #[test]
    fn no_second_holds_more_than_the_budget() {
        let usage = UsageRecorder::new(10, Duration::from_millis(250));
        let t = Instant::now();
        assert_eq!(usage.allowance(t), 2, "a quarter second's share");
        lock(&usage.recent).push_back((t, 2));
        lock(&usage.recent).push_back((t, 7));
        assert_eq!(usage.allowance(t + Duration::from_millis(500)), 1);
        lock(&usage.recent).push_back((t + Duration::from_millis(500), 1));
        assert_eq!(usage.allowance(t + Duration::from_millis(999)), 0);
        assert_eq!(
            usage.allowance(t + Duration::from_secs(1)),
            2,
            "the first two left the window"
        );
    }

    #[test]
    fn the_budget_is_the_flush_interval_s_share() {
        let rows = |b, ms| UsageRecorder::new(b, Duration::from_millis(ms)).rows_per_flush;
        assert_eq!(rows(5000, 1000), 5000);
        assert_eq!(rows(200, 250), 50);
        assert_eq!(rows(1, 250), 1, "never zero");
    }

    #[test]
    fn a_key_used_again_after_a_flush_is_flushed_again() {
        let usage = UsageRecorder::default();
        let id = KeyId::generate();
        let key = entry(&id);
        usage.record(&key, Micros(10), Code::Valid);
        usage.record(&key, Micros(30), Code::Valid);
        usage.record(&key, Micros(20), Code::Valid);
        assert_eq!(totals(&usage.take(usize::MAX))[&id], (3, Micros(30)));
        assert!(usage.take(usize::MAX).is_empty(), "nothing new was counted");
        usage.record(&key, Micros(40), Code::Valid);
        assert_eq!(totals(&usage.take(usize::MAX))[&id], (1, Micros(40)));
    }

    #[test]
    fn entries_of_one_key_add_up() {
        // With the cache off every lookup makes a new entry for the same key.
        let usage = UsageRecorder::default();
        let id = KeyId::generate();
        let (a, b) = (entry(&id), entry(&id));
        usage.record(&a, Micros(5), Code::Valid);
        usage.record(&b, Micros(7), Code::Valid);
        usage.record(&a, Micros(6), Code::Valid);
        let other = KeyId::generate();
        usage.record(&entry(&other), Micros(1), Code::Valid);
        let t = totals(&usage.take(usize::MAX));
        assert_eq!(t[&id], (3, Micros(7)));
        assert_eq!(t[&other], (1, Micros(1)));
    }

    #[test]
    fn nothing_is_lost_to_flushes_racing_verifications() {
        const THREADS: u64 = 4;
        const EACH: u64 = 20_000;
        let usage = UsageRecorder::default();
        let keys: Vec<_> = (0..8).map(|_| entry(&KeyId::generate())).collect();
        let mut taken = 0;
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (usage, keys) = (&usage, &keys);
                    s.spawn(move || {
                        for i in 0..EACH {
                            let k = &keys[usize::try_from((i + t) % 8).expect("small")];
                            usage.record(k, Micros(i64::try_from(i).expect("small")), Code::Valid);
                        }
                    })
                })
                .collect();
            while workers.iter().any(|w| !w.is_finished()) {
                taken += usage
                    .take(usize::MAX)
                    .iter()
                    .map(|(_, p)| p.count)
                    .sum::<u64>();
            }
        });
        taken += usage
            .take(usize::MAX)
            .iter()
            .map(|(_, p)| p.count)
            .sum::<u64>();
        assert_eq!(taken, THREADS * EACH);
    }
}
