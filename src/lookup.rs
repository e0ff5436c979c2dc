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

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::{
    keys::SecretHash,
    metrics::LookupMetrics,
    model::KeyRecord,
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
}

/// This instance's own tally (the Prometheus counters are process-wide).
#[derive(Debug, Default)]
struct Counts {
    reads: AtomicU64,
    hashes: AtomicU64,
}

impl Lookups {
    /// Starts the reader, with at most `slots` reads out at once.
    pub fn start(store: Store, slots: usize) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let counts = Arc::new(Counts::default());
        tokio::spawn(read_loop(store, rx, slots.max(1), Arc::clone(&counts)));
        Self { queue, counts }
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
    pub async fn find(&self, hash: SecretHash) -> Answer {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Waiter { hash, reply }).await.is_err() {
            return Err(Arc::new(StoreError::Unavailable(sqlx::Error::PoolClosed)));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(Arc::new(StoreError::Unavailable(sqlx::Error::PoolClosed))))
    }
}

async fn read_loop(
    store: Store,
    mut queue: mpsc::Receiver<Waiter>,
    slots: usize,
    counts: Arc<Counts>,
) {
    let slots = Arc::new(Semaphore::new(slots));
    let metrics = LookupMetrics::default();
    loop {
        // The slot comes first: while none is free, misses pile up in the queue
        // and the next read takes them all.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_HASHES_PER_READ);
        if queue.recv_many(&mut batch, MAX_HASHES_PER_READ).await == 0 {
            return;
        }
        metrics.observe(batch.len());
        counts.reads.fetch_add(1, Ordering::Relaxed);
        counts
            .hashes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let store = store.clone();
        tokio::spawn(async move {
            answer(&store, batch).await;
            drop(slot);
        });
    }
}

async fn answer(store: &Store, batch: Vec<Waiter>) {
    let hashes: Vec<SecretHash> = batch.iter().map(|w| w.hash).collect();
    match store.find_by_hashes(&hashes).await {
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
