//! Verify-path reads from a MySQL replica (`--database-read-url`): cache
//! misses, the invalidation poll and the forged-key filter read there, so the
//! primary only sees writes, admin reads and what the replica cannot answer.
//!
//! A replica lags, and that must not weaken revocation. Two rules keep it:
//! - a key the replica does not have is read again from the primary before it
//!   is NOT_FOUND (it may have been created a moment ago);
//! - after this instance writes, its misses go to the primary until the
//!   replica is known to hold that write. The invalidation poll learns it: it
//!   samples the primary's newest event id, and once it has seen every event
//!   up to that id on the replica, everything committed before the sample is
//!   there. So a revocation takes effect at once on the instance that made
//!   it, and on the others within the poll interval plus the replica's lag
//!   (their polls read the replica, and the revocation's event and row arrive
//!   there in one transaction).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Behind by more than this, the replica is not read for misses.
pub const MAX_LAG: Duration = Duration::from_secs(5);

/// What this instance knows of its replica's progress. Times are nanoseconds
/// after `base`, plus one, so that 0 means never.
#[derive(Debug)]
pub struct ReplicaState {
    base: Instant,
    /// The last primary sample the replica was seen to have caught up with.
    synced: AtomicU64,
    /// When this instance's last write committed.
    wrote: AtomicU64,
}

impl Default for ReplicaState {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            synced: AtomicU64::new(0),
            wrote: AtomicU64::new(0),
        }
    }
}

impl ReplicaState {
    fn at(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX) + 1
    }

    /// A write of this instance has committed: until the replica has it, read
    /// the primary.
    pub fn wrote(&self) {
        self.wrote
            .fetch_max(self.at(Instant::now()), Ordering::AcqRel);
    }

    /// The replica holds everything the primary had committed at `sampled`.
    pub fn synced(&self, sampled: Instant) {
        self.synced.fetch_max(self.at(sampled), Ordering::AcqRel);
    }

    /// Whether a miss may be read from the replica: it holds this instance's
    /// writes, and it is not further behind than [`MAX_LAG`] (a stalled
    /// replica would otherwise feed every key that leaves the cache back
    /// into it as it was).
    pub fn fresh(&self) -> bool {
        let synced = self.synced.load(Ordering::Acquire);
        synced != 0
            && synced > self.wrote.load(Ordering::Acquire)
            && self.lag().is_some_and(|lag| lag <= MAX_LAG)
    }

    /// How far behind the replica is known to be, at most: the time since the
    /// primary state it was last seen to hold (`None` before the first sync).
    pub fn lag(&self) -> Option<Duration> {
        match self.synced.load(Ordering::Acquire) {
            0 => None,
            s => Some(
                self.base
                    .elapsed()
                    .saturating_sub(Duration::from_nanos(s - 1)),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_sends_reads_to_the_primary_until_the_replica_has_it() {
        let state = ReplicaState::default();
        assert!(!state.fresh(), "never synced: the primary");
        state.synced(Instant::now());
        assert!(state.fresh());
        let before_write = Instant::now();
        state.wrote();
        assert!(
            !state.fresh(),
            "a sample from before the write proves nothing"
        );
        state.synced(before_write);
        assert!(!state.fresh());
        state.synced(Instant::now());
        assert!(state.fresh());
        assert!(state.lag().is_some_and(|l| l < Duration::from_secs(1)));
        let recent = ReplicaState::default();
        std::thread::sleep(Duration::from_millis(5));
        recent.synced(recent.base);
        assert!(recent.fresh(), "synced at its start, a few ms ago");
        assert!(recent.lag().is_some_and(|l| l >= Duration::from_millis(5)));
    }

    #[test]
    fn a_replica_too_far_behind_is_not_read() {
        let base = Instant::now()
            .checked_sub(MAX_LAG + Duration::from_secs(1))
            .expect("the machine has been up a few seconds");
        let state = ReplicaState {
            base,
            ..ReplicaState::default()
        };
        state.synced(base);
        assert!(state.lag().is_some_and(|l| l > MAX_LAG));
        assert!(!state.fresh(), "last seen caught up over {MAX_LAG:?} ago");
        state.synced(Instant::now());
        assert!(state.fresh());
    }
}
