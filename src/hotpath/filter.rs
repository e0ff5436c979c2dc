//! The forged-key filter: a Bloom filter of every key hash in the store, so a
//! flood of well-formed keys that do not exist costs no store read. A key the
//! filter rules out is NOT_FOUND at once, except for a few a second (the
//! bypass) that still go to the store: a key created on another instance a
//! moment ago, before this one's invalidation poll brought its hash, must
//! still verify.
//!
//! A Bloom filter rather than an xor or binary fuse filter: keys are created
//! all the time and a Bloom filter takes them one by one (`fastbloom`'s atomic
//! variant, without a lock), where the others must be rebuilt. At a 1 % false
//! positive rate it needs 9.6 bits a key. It never forgets a hash, which is
//! right: revoked and expired keys stay in the store and answer with their own
//! code. It is sized a quarter above the keys it is loaded with; when more
//! new keys were added than that room, it is rebuilt from the store.
//!
//! Until the first load finishes the filter lets everything through: a new
//! instance is only as fast as before, never wrong.

use std::{
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use fastbloom::AtomicBloomFilter;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{domain::keys::SecretHash, store::Store};

const FALSE_POSITIVES: f64 = 0.01;
/// Keys read per page while loading.
const PAGE: u32 = 10_000;
/// Sized for at least this many keys (1.2 MB), so a young store does not
/// rebuild over and over as it grows.
const MIN_CAPACITY: u64 = 1_000_000;

/// The hash is SHA-256: its first eight bytes are already uniform, so the
/// filter needs no hashing of its own.
fn h64(hash: &SecretHash) -> u64 {
    let b = hash.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

#[derive(Debug)]
struct Bloom {
    bits: AtomicBloomFilter,
    /// Keys it was sized for, and keys it was loaded with: what is left is
    /// room for keys added while it is in use.
    capacity: u64,
    loaded: AtomicU64,
}

impl Bloom {
    fn new(capacity: u64) -> Self {
        Self {
            bits: AtomicBloomFilter::with_false_pos(FALSE_POSITIVES)
                .expected_items(usize::try_from(capacity).unwrap_or(usize::MAX)),
            capacity,
            loaded: AtomicU64::new(0),
        }
    }
}

#[derive(Debug, Default)]
struct Filters {
    /// What verifications are checked against, once loaded.
    current: Option<Arc<Bloom>>,
    /// Being loaded: hashes added meanwhile go here too.
    next: Option<Arc<Bloom>>,
}

#[derive(Debug)]
pub struct KnownKeys {
    filters: RwLock<Filters>,
    ready: AtomicBool,
    added: AtomicU64,
    /// Store reads allowed a second for keys the filter rules out.
    bypass_per_second: u32,
    bypass: Mutex<(Instant, u32)>,
    grown: Notify,
}

impl KnownKeys {
    pub fn new(bypass_per_second: u32) -> Self {
        Self {
            filters: RwLock::default(),
            ready: AtomicBool::new(false),
            added: AtomicU64::new(0),
            bypass_per_second,
            bypass: Mutex::new((Instant::now(), 0)),
            grown: Notify::new(),
        }
    }

    /// A key that exists (changed here, named by an event, found by a lookup).
    pub fn insert(&self, hash: &SecretHash) {
        let filters = self.filters.read().unwrap_or_else(PoisonError::into_inner);
        let h = h64(hash);
        if let Some(next) = &filters.next {
            next.bits.insert_hash(h);
        }
        if let Some(current) = &filters.current {
            // Only hashes it did not hold count towards a rebuild: events and
            // lookups repeat known keys all the time.
            let new = !current.bits.insert_hash(h);
            let room =
                current.capacity - current.loaded.load(Ordering::Relaxed).min(current.capacity);
            if new && self.added.fetch_add(1, Ordering::Relaxed) + 1 > room {
                self.grown.notify_one();
            }
        }
    }

    /// Whether a lookup of `hash` may go to the store.
    pub fn admits(&self, hash: &SecretHash) -> bool {
        if !self.ready.load(Ordering::Acquire) {
            return true;
        }
        let known = {
            let filters = self.filters.read().unwrap_or_else(PoisonError::into_inner);
            filters
                .current
                .as_ref()
                .is_none_or(|b| b.bits.contains_hash(h64(hash)))
        };
        if known {
            return true;
        }
        let mut bypass = self.bypass.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.duration_since(bypass.0) >= Duration::from_secs(1) {
            *bypass = (now, 0);
        }
        let pass = bypass.1 < self.bypass_per_second;
        if pass {
            bypass.1 += 1;
        }
        crate::metrics::filter_ruled_out(pass);
        pass
    }

    /// Loads every hash from `store` into a fresh filter of `capacity`, then
    /// puts it in use. Hashes inserted meanwhile land in both.
    async fn load(&self, store: &Store, capacity: u64) -> Result<u64, crate::store::StoreError> {
        let started = Instant::now();
        let next = Arc::new(Bloom::new(capacity));
        self.filters
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .next = Some(Arc::clone(&next));
        let mut after: Option<SecretHash> = None;
        let mut loaded = 0u64;
        loop {
            let page = match store.key_hashes_after(after.as_ref(), PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    self.filters
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .next = None;
                    return Err(e);
                }
            };
            for hash in &page {
                next.bits.insert_hash(h64(hash));
            }
            loaded += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == PAGE as usize => after = Some(*last),
                _ => break,
            }
        }
        next.loaded.store(loaded, Ordering::Relaxed);
        {
            let mut filters = self.filters.write().unwrap_or_else(PoisonError::into_inner);
            filters.current = filters.next.take();
        }
        self.added.store(0, Ordering::Relaxed);
        self.ready.store(true, Ordering::Release);
        let took = started.elapsed();
        crate::metrics::filter_loaded(loaded, next.bits.num_bits() / 8, took);
        tracing::info!(
            keys = loaded,
            seconds = took.as_secs_f64(),
            "forged-key filter loaded"
        );
        Ok(loaded)
    }

    /// Loads the filter (retrying while the store is down), then rebuilds it
    /// larger whenever keys added since outgrow it, until `stop`.
    pub async fn run(self: Arc<Self>, store: Store, stop: CancellationToken) {
        let mut retry = Duration::from_millis(250);
        loop {
            let capacity = match store.key_count().await {
                // A quarter more than there are: room to grow before a
                // rebuild, and 10 M keys still fit in 15 MB.
                Ok(n) => n.saturating_add(n / 4).max(MIN_CAPACITY),
                Err(_) => 0,
            };
            let loaded = if capacity == 0 {
                None
            } else {
                tokio::select! {
                    r = self.load(&store, capacity) => r.ok(),
                    () = stop.cancelled() => return,
                }
            };
            if loaded.is_none() {
                tokio::select! {
                    () = tokio::time::sleep(retry) => {}
                    () = stop.cancelled() => return,
                }
                retry = (retry * 2).min(Duration::from_secs(10));
                continue;
            }
            retry = Duration::from_millis(250);
            tokio::select! {
                () = self.grown.notified() => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::keys::{KeyPrefix, Secret};

    fn hash() -> SecretHash {
        Secret::generate(&KeyPrefix::default()).hash()
    }

    #[test]
    fn only_new_keys_bring_a_rebuild_closer() {
        let filter = KnownKeys::new(0);
        let bloom = Arc::new(Bloom::new(1000));
        bloom.loaded.store(998, Ordering::Relaxed);
        filter.filters.write().expect("lock").current = Some(bloom);
        let known = hash();
        filter.insert(&known);
        for _ in 0..10 {
            filter.insert(&known);
        }
        assert_eq!(
            filter.added.load(Ordering::Relaxed),
            1,
            "repeats are not new"
        );
        filter.insert(&hash());
        filter.insert(&hash());
        assert_eq!(filter.added.load(Ordering::Relaxed), 3);
        // Room for two was left: the third new key asks for a rebuild.
        let asked = filter.grown.notified();
        tokio::pin!(asked);
        assert!(futures_poll_once(asked.as_mut()), "a rebuild was asked for");
    }

    /// Whether `f` is ready at its first poll.
    fn futures_poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        f.poll(&mut cx).is_ready()
    }

    #[test]
    fn rules_out_unknown_keys_beyond_the_bypass_and_admits_known_ones() {
        let filter = KnownKeys::new(3);
        let unknown: Vec<SecretHash> = (0..1000).map(|_| hash()).collect();
        assert!(
            unknown.iter().all(|h| filter.admits(h)),
            "not loaded: all pass"
        );
        let bloom = Arc::new(Bloom::new(1000));
        filter.filters.write().expect("lock").current = Some(bloom);
        filter.ready.store(true, Ordering::Release);
        let known: Vec<SecretHash> = (0..500).map(|_| hash()).collect();
        for h in &known {
            filter.insert(h);
        }
        assert!(known.iter().all(|h| filter.admits(h)));
        let passed = unknown.iter().filter(|h| filter.admits(h)).count();
        // 3 by the bypass, and the filter's false positives (about 1 %).
        assert!((3..=3 + 40).contains(&passed), "{passed}");
    }

    #[test]
    fn memory_per_key_at_one_percent() {
        let bloom = Bloom::new(10_000_000);
        let bytes = bloom.bits.num_bits() / 8;
        assert!(bytes <= 20 * 1024 * 1024, "{bytes} bytes for 10 M keys");
        let per_key = bytes as f64 / 10_000_000.0;
        assert!(per_key <= 2.0, "{per_key} bytes a key");
    }
}
