//! The verify path's store reads, coalesced: cache misses that arrive while
//! earlier reads are still out are answered together by one
//! `WHERE secret_hash IN (…)`, instead of one query (and its connection
//! checkout and two pings) each.
//!
//! Nothing waits to form a batch. A miss is read at once when a read slot is
//! free, so under light load every read carries one hash, as before. Only when
//! all slots are busy do misses queue, and the next free slot takes all of them
//! (up to [`MAX_HASHES_PER_READ`]). The store then sees a few larger reads
//! instead of a flood of small ones, which is what a cold cache after a deploy,
//! or a flood of unknown keys, would otherwise send it.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::{
    domain::keys::SecretHash,
    domain::model::{KeyId, KeyRecord},
    hotpath::replica::ReplicaState,
    metrics::LookupMetrics,
    store::{MAX_HASHES_PER_READ, Store, StoreError},
};

/// Misses waiting for a read slot. A full queue makes callers wait their turn
/// (the gRPC server's own limits bound how many can).
const QUEUE: usize = 4096;

/// A read's answer to one caller; an error is shared by the whole read.
pub type Answer = Result<Option<KeyRecord>, Arc<StoreError>>;

#[derive(Debug)]
struct Waiter {
    hash: SecretHash,
    reply: oneshot::Sender<Answer>,
}

/// Handle on the reader task; cheap to clone. The task ends when every handle is gone.
#[derive(Debug, Clone)]
pub struct Lookups {
    queue: mpsc::Sender<Waiter>,
    counts: Arc<Counts>,
    /// The longest a caller waits, queueing included: `--database-timeout`.
    timeout: Duration,
}

/// This instance's own tally (the Prometheus counters are process-wide).
#[derive(Debug, Default)]
struct Counts {
    reads: AtomicU64,
    hashes: AtomicU64,
}

impl Lookups {
    /// Starts the reader, with at most `slots` reads out at once, each given up
    /// after `timeout`.
    ///
    /// The reader runs on `tasks` until every handle is dropped (the servers
    /// that hold them have stopped), so shutdown can wait for it.
    ///
    /// With a `replica`, reads go there while it is known to hold this
    /// instance's writes (see `crate::hotpath::replica`); what it lacks is read again
    /// from `store`, the primary, before it is called unknown.
    pub fn start(
        store: Store,
        replica: Option<(Store, Arc<ReplicaState>)>,
        slots: usize,
        timeout: Duration,
        tasks: &TaskTracker,
    ) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        let reader = Reader {
            store,
            replica,
            timeout,
            counts: Arc::clone(&counts),
            tasks: tasks.clone(),
        };
        tasks.spawn(reader.run(rx, slots.max(1)));
        Self {
            queue,
            counts,
            timeout,
        }
    }

    /// `(reads, hashes)` sent to the store so far.
    pub fn reads(&self) -> (u64, u64) {
        (
            self.counts.reads.load(Ordering::Relaxed),
            self.counts.hashes.load(Ordering::Relaxed),
        )
    }

    /// Misses waiting for a read slot.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// The key `hash` belongs to, read from the store.
    ///
    /// The answer comes within the store timeout however many misses queue ahead:
    /// each read is bounded, but a miss behind several reads of a stalled store
    /// would otherwise wait for all of them and outlive its caller's deadline.
    pub async fn find(&self, hash: SecretHash) -> Answer {
        let asked = async {
            let (reply, answer) = oneshot::channel();
            if self.queue.send(Waiter { hash, reply }).await.is_err() {
                return Err(Arc::new(StoreError::Closed));
            }
            answer
                .await
                .unwrap_or_else(|_| Err(Arc::new(StoreError::Closed)))
        };
        tokio::time::timeout(self.timeout, asked)
            .await
            .unwrap_or_else(|_| Err(Arc::new(StoreError::Timeout(self.timeout))))
    }
}

#[derive(Debug)]
struct Reader {
    /// The primary.
    store: Store,
    replica: Option<(Store, Arc<ReplicaState>)>,
    /// A read runs in a task of its own, not in the caller's request future, so
    /// no request timeout ends it: without this bound, a store that stops
    /// answering (a lost network, not a refused one) would hold every slot.
    timeout: Duration,
    counts: Arc<Counts>,
    /// Where reads run, so shutdown waits for the last of them too.
    tasks: TaskTracker,
}

impl Reader {
    async fn run(self, mut queue: mpsc::Receiver<Waiter>, slots: usize) {
        let slots = Arc::new(Semaphore::new(slots));
        let metrics = LookupMetrics::default();
        let reader = Arc::new(self);
        loop {
            // The slot comes first: while none is free, misses pile up in the
            // queue and the next read takes them all.
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let mut batch = Vec::with_capacity(MAX_HASHES_PER_READ);
            if queue.recv_many(&mut batch, MAX_HASHES_PER_READ).await == 0 {
                return;
            }
            // Callers whose deadline passed while they queued need no read.
            batch.retain(|w| !w.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            metrics.observe(batch.len());
            reader.counts.reads.fetch_add(1, Ordering::Relaxed);
            reader
                .counts
                .hashes
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let reader = Arc::clone(&reader);
            reader.tasks.clone().spawn(async move {
                reader.answer(batch).await;
                drop(slot);
            });
        }
    }

    /// The keys of `hashes`, each with the usage limits it spends: a key in
    /// the grace period of a rotation spends its chain's newest key's limits,
    /// read from the primary (a rare read: only keys in grace need it). That
    /// read failing fails no verification: the keys in grace keep the limits
    /// they were rotated with (their newest key's unless it was changed since),
    /// and their quota is taken from the newest row all the same.
    async fn read(&self, hashes: &[SecretHash]) -> Result<Vec<KeyRecord>, StoreError> {
        let mut found = self.read_rows(hashes).await?;
        let lineages: Vec<KeyId> = found
            .iter()
            .filter(|k| k.rotated_to_id.is_some())
            .map(|k| k.lineage_id.clone())
            .collect();
        if !lineages.is_empty() {
            let newest = match self.store.newest_links(&lineages).await {
                Ok(newest) => newest,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the newest keys of rotation chains; keys in grace keep their own limits");
                    return Ok(found);
                }
            };
            for key in found.iter_mut().filter(|k| k.rotated_to_id.is_some()) {
                match newest.iter().find(|n| n.lineage_id == key.lineage_id) {
                    Some(n) => {
                        key.rate_limits = n.rate_limits.clone();
                        key.quota = n.quota;
                        // And its identity's: a chain is one key for every
                        // limit it spends.
                        key.identity_id = n.identity_id.clone();
                    }
                    // A chain without a newest key of its lineage: rotated by a
                    // keygate of the previous version during an upgrade (its
                    // replacement was written without the lineage). The key
                    // spends its replacement's limits, as that version did.
                    None => {
                        if let Some(replacement) = &key.rotated_to_id {
                            key.lineage_id = replacement.clone();
                        }
                    }
                }
            }
        }
        Ok(found)
    }

    async fn read_rows(&self, hashes: &[SecretHash]) -> Result<Vec<KeyRecord>, StoreError> {
        let Some((replica, _)) = self.replica.as_ref().filter(|(_, s)| s.fresh()) else {
            return self.store.find_by_hashes(hashes).await;
        };
        // A replica that fails, or hangs past half the store timeout, is no
        // reason to fail: the primary answers in the other half.
        let asked = tokio::time::timeout(self.timeout / 2, replica.find_by_hashes(hashes)).await;
        let Ok(Ok(mut found)) = asked else {
            return self.store.find_by_hashes(hashes).await;
        };
        let missing: Vec<SecretHash> = hashes
            .iter()
            .filter(|h| !found.iter().any(|r| r.secret_hash == **h))
            .copied()
            .collect();
        if !missing.is_empty() {
            crate::metrics::replica_missing(missing.len());
            found.extend(self.store.find_by_hashes(&missing).await?);
        }
        Ok(found)
    }

    async fn answer(&self, batch: Vec<Waiter>) {
        let hashes: Vec<SecretHash> = batch.iter().map(|w| w.hash).collect();
        let read = tokio::time::timeout(self.timeout, self.read(&hashes))
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)));
        match read {
            Ok(found) => {
                for w in batch {
                    let record = found.iter().find(|r| r.secret_hash == w.hash).cloned();
                    // The caller may have gone (deadline, disconnect): nobody to tell.
                    let _ = w.reply.send(Ok(record));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for w in batch {
                    let _ = w.reply.send(Err(Arc::clone(&e)));
                }
            }
        }
    }
}
