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

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use crate::{
    cache::CachedKey,
    domain::verify::Code,
    model::{KeyId, Micros},
    store::{Store, StoreError, UsageDelta},
};

/// Independent lists, so concurrent first uses of different keys rarely meet.
const SHARDS: usize = 16;

/// One microsecond-based UTC hour.
const HOUR: i64 = 3_600_000_000;

#[derive(Debug, Clone, Default)]
struct Pending {
    count: u64,
    last_used: Micros,
    /// `(hour start, VerifyCode number)` → verifications.
    history: BTreeMap<(i64, i64), u64>,
}

impl Pending {
    fn add(&mut self, count: u64, last_used: Micros) {
        self.count += count;
        self.last_used = self.last_used.max(last_used);
    }
}

#[derive(Debug)]
pub struct UsageRecorder {
    /// Entries counted since the last flush. An entry stays alive here even
    /// if the cache drops it meanwhile, so nothing it counted is lost.
    dirty: [Mutex<Vec<Arc<CachedKey>>>; SHARDS],
    /// Counts of a failed flush, written with the next one.
    retry: Mutex<HashMap<KeyId, Pending>>,
}

impl Default for UsageRecorder {
    fn default() -> Self {
        Self {
            dirty: std::array::from_fn(|_| Mutex::new(Vec::new())),
            retry: Mutex::new(HashMap::new()),
        }
    }
}

/// A panic while holding one of these locks cannot leave a half-written entry.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl UsageRecorder {
    /// Counts one verification of a key and its outcome; the hot path's only
    /// write.
    pub fn record(&self, key: &Arc<CachedKey>, now: Micros, code: Code) {
        if let Some(i) = code.outcome_index() {
            let hour = now.0.div_euclid(HOUR) * HOUR;
            let slot = &key.usage.hours[usize::from(now.0.div_euclid(HOUR) % 2 != 0)];
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
            let shard = usize::from(key.id.as_str().as_bytes().last().copied().unwrap_or(0));
            lock(&self.dirty[shard % SHARDS]).push(Arc::clone(key));
        }
    }

    /// Takes everything counted so far, one delta per key.
    fn take(&self) -> Vec<UsageDelta> {
        let mut by_id = std::mem::take(&mut *lock(&self.retry));
        for shard in &self.dirty {
            // Swapped out under the lock, drained outside it: verifications that
            // list a key meanwhile go to the fresh list, for the next flush.
            let listed = std::mem::take(&mut *lock(shard));
            for key in listed {
                // Zeroing the count is what makes the next use list the entry again.
                let count = key.usage.count.swap(0, Ordering::AcqRel);
                let last_used = Micros(key.usage.last_used.load(Ordering::Relaxed));
                // With the cache off, or after an invalidation, one key can have
                // several entries listed: their counts add up.
                let pending = by_id.entry(key.id.clone()).or_insert(Pending {
                    last_used,
                    ..Pending::default()
                });
                pending.add(count, last_used);
                for slot in &key.usage.hours {
                    let hour = slot.hour.load(Ordering::Acquire);
                    for (i, n) in slot.by_code.iter().enumerate() {
                        let n = n.swap(0, Ordering::AcqRel);
                        if let (true, Some(code)) = (n > 0, Code::from_outcome_index(i)) {
                            *pending.history.entry((hour, code.number())).or_default() += n;
                        }
                    }
                }
            }
        }
        by_id
            .into_iter()
            .filter(|(_, p)| p.count > 0 || !p.history.is_empty())
            .map(|(key_id, p)| UsageDelta {
                key_id,
                count: p.count,
                last_used: p.last_used,
                history: p
                    .history
                    .into_iter()
                    .map(|((hour, code), n)| (Micros(hour), code, n))
                    .collect(),
            })
            .collect()
    }

    /// Writes what was counted; on failure the counts are kept for the next flush.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(0);
        }
        match store.add_usage(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                let mut retry = lock(&self.retry);
                for d in batch {
                    let pending = retry.entry(d.key_id).or_insert(Pending {
                        last_used: d.last_used,
                        ..Pending::default()
                    });
                    pending.add(d.count, d.last_used);
                    for (hour, code, n) in d.history {
                        *pending.history.entry((hour.0, code)).or_default() += n;
                    }
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
        }
        if let Err(e) = self.flush(&store).await {
            tracing::error!(error = %e, "final usage flush failed; these counts are lost");
        }
    }
}

/// Daily buckets are kept this long (DESIGN §14).
const DAILY_RETENTION: i64 = 400 * 24 * HOUR;

/// Deletes usage history past its retention every `interval` until `stop`:
/// hourly buckets older than `retention`, daily ones older than 400 days, a
/// thousand rows per statement so that no prune holds a lock for long.
pub async fn prune_history(
    store: Store,
    clock: crate::clock::SharedClock,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    let retention = i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        keys::{KeyPrefix, Secret},
        model::KeyRecord,
    };

    fn entry(id: &KeyId) -> Arc<CachedKey> {
        let secret = Secret::generate(&KeyPrefix::default());
        Arc::new(CachedKey::new(KeyRecord::test_bot(
            id.clone(),
            &secret,
            "k",
        )))
    }

    fn totals(deltas: &[UsageDelta]) -> HashMap<KeyId, (u64, Micros)> {
        let mut out = HashMap::new();
        for d in deltas {
            assert!(
                out.insert(d.key_id.clone(), (d.count, d.last_used))
                    .is_none(),
                "one delta per key"
            );
        }
        out
    }

    #[test]
    fn a_key_used_again_after_a_flush_is_flushed_again() {
        let usage = UsageRecorder::default();
        let id = KeyId::generate();
        let key = entry(&id);
        usage.record(&key, Micros(10), Code::Valid);
        usage.record(&key, Micros(30), Code::Valid);
        usage.record(&key, Micros(20), Code::Valid);
        assert_eq!(totals(&usage.take())[&id], (3, Micros(30)));
        assert!(usage.take().is_empty(), "nothing new was counted");
        usage.record(&key, Micros(40), Code::Valid);
        assert_eq!(totals(&usage.take())[&id], (1, Micros(40)));
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
        let t = totals(&usage.take());
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
                taken += usage.take().iter().map(|d| d.count).sum::<u64>();
            }
        });
        taken += usage.take().iter().map(|d| d.count).sum::<u64>();
        assert_eq!(taken, THREADS * EACH);
    }
}
