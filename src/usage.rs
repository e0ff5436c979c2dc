//! Usage counting off the request path: verifications add to in-memory counters,
//! a background task writes them in batches. Several instances' batches add up
//! in the database (`request_count = request_count + n`), so counts stay exact.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::watch;

use crate::{
    model::{KeyId, Micros},
    store::{Store, StoreError, UsageDelta},
};

/// Independent locks, so concurrent verifications of different keys rarely meet.
const SHARDS: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Pending {
    count: u64,
    last_used: Micros,
}

#[derive(Debug)]
pub struct UsageRecorder {
    shards: [Mutex<HashMap<KeyId, Pending>>; SHARDS],
}

impl Default for UsageRecorder {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }
}

impl UsageRecorder {
    fn shard(&self, id: &KeyId) -> &Mutex<HashMap<KeyId, Pending>> {
        // The last characters of a UUIDv7 are random: a free, even spread.
        let last = id.as_str().as_bytes().last().copied().unwrap_or(0);
        &self.shards[usize::from(last) % SHARDS]
    }

    /// Counts one verification of a key; the hot path's only write.
    pub fn record(&self, id: &KeyId, now: Micros) {
        self.add(id, 1, now);
    }

    fn add(&self, id: &KeyId, count: u64, last_used: Micros) {
        // A panic while holding the lock cannot leave a half-written counter.
        let mut map = self
            .shard(id)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(p) = map.get_mut(id) {
            p.count += count;
            p.last_used = p.last_used.max(last_used);
        } else {
            map.insert(id.clone(), Pending { count, last_used });
        }
    }

    /// Takes everything counted so far.
    fn take(&self) -> Vec<UsageDelta> {
        let mut out = Vec::new();
        for shard in &self.shards {
            // Drained in place: the map keeps its capacity, so the next interval's
            // verifications do not pay for growing it again.
            let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            out.extend(map.drain().map(|(key_id, p)| UsageDelta {
                key_id,
                count: p.count,
                last_used: p.last_used,
            }));
        }
        out
    }

    /// Writes what was counted; on failure the counts go back to be retried.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let batch = self.take();
        if batch.is_empty() {
            return Ok(0);
        }
        match store.add_usage(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                for d in &batch {
                    self.add(&d.key_id, d.count, d.last_used);
                }
                Err(e)
            }
        }
    }

    /// Flushes every `interval` until `shutdown` fires, then once more.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => break,
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
