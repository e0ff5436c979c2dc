//! Cross-instance cache invalidation: every instance polls the event table for
//! events newer than the last it saw and drops the keys they name from its cache.
//!
//! Auto-increment ids are handed out at insert but become visible at commit, so
//! a slow transaction can commit id 7 after id 8 was already seen. Ids skipped
//! over are therefore remembered as gaps and looked for again until they show up
//! or `GAP_WAIT` passes (a rolled-back transaction leaves a gap for good).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::{
    domain::model::Micros,
    hotpath::cache::KeyCache,
    hotpath::filter::KnownKeys,
    hotpath::identities::IdentityCache,
    hotpath::replica::ReplicaState,
    store::{Store, StoreError},
};

/// Longer than any transaction that writes an event can reasonably stay open.
const GAP_WAIT: Duration = Duration::from_secs(30);
/// Enough for any realistic burst of concurrent writes; older gaps are dropped first.
const MAX_GAPS: usize = 10_000;
const PAGE: u32 = 1000;
/// How far back a new instance starts: an event with a lower id than the newest
/// may still be uncommitted, and is then caught as a gap.
const START_WINDOW: u64 = 1000;

#[derive(Debug)]
pub struct Poller {
    /// Where events are read: the replica when there is one.
    store: Store,
    cache: Arc<KeyCache>,
    /// An identity event ends the identity's entry here.
    identities: Arc<IdentityCache>,
    /// Every key an event names exists: the forged-key filter learns of keys
    /// created on other instances here.
    filter: Arc<KnownKeys>,
    /// With a replica: the primary, sampled each poll to learn how far the
    /// replica has come (see `crate::hotpath::replica`).
    primary: Option<(Store, Arc<ReplicaState>)>,
    /// Highest event id seen.
    high: u64,
    /// Ids below `high` not seen yet, with when they were first missed.
    gaps: BTreeMap<u64, Instant>,
}

impl Poller {
    /// Starts a little before the newest event: this instance's cache begins
    /// empty, so only events still in flight can concern it; re-reading committed
    /// ones costs a few no-op invalidations.
    pub async fn start(
        store: Store,
        cache: Arc<KeyCache>,
        identities: Arc<IdentityCache>,
        filter: Arc<KnownKeys>,
        primary: Option<(Store, Arc<ReplicaState>)>,
    ) -> Result<Self, StoreError> {
        let high = store.last_event_id().await?.saturating_sub(START_WINDOW);
        Ok(Self {
            store,
            cache,
            identities,
            filter,
            primary,
            high,
            gaps: BTreeMap::new(),
        })
    }

    /// One poll: reads every event not yet seen and invalidates its key.
    pub async fn poll_once(&mut self) -> Result<usize, StoreError> {
        // Sampled before the replica is read: once every event up to this id
        // has been seen there, the replica holds all the primary had now.
        // A primary that cannot be asked only leaves the replica's progress
        // unknown (misses after a local write keep reading the primary, which
        // then fail anyway): the replica's events are still applied.
        let sample = match &self.primary {
            Some((primary, _)) => {
                let at = Instant::now();
                primary
                    .last_event_id()
                    .await
                    .ok()
                    .map(|newest| (at, newest))
            }
            None => None,
        };
        let invalidated = self.read_events().await?;
        if let (Some((at, newest)), Some((_, state))) = (sample, &self.primary) {
            let seen_all_to = self.gaps.keys().next().map_or(self.high, |g| g - 1);
            if seen_all_to >= newest {
                state.synced(at);
            }
            if let Some(lag) = state.lag() {
                crate::metrics::replica_lag(lag);
            }
        }
        Ok(invalidated)
    }

    async fn read_events(&mut self) -> Result<usize, StoreError> {
        let now = Instant::now();
        self.gaps
            .retain(|_, since| now.duration_since(*since) < GAP_WAIT);
        let mut from = self
            .gaps
            .keys()
            .next()
            .map_or(self.high, |lowest| lowest - 1);
        let mut invalidated = 0;
        loop {
            let events = self.store.events_after(from, PAGE).await?;
            let wall = Micros::now();
            // Links in grace spend their chain's newest key's limits, so a
            // change of that key reaches them too. Read before anything of
            // this page is applied: a failed read leaves the page to the next
            // poll. Their grace is checked with a day of slack: an instance
            // whose clock runs ahead of this one may still count them in
            // grace, and an extra invalidation costs nothing.
            let links = match (events.first(), events.last()) {
                (Some(first), Some(last)) => {
                    let since = Micros(wall.0 - 86_400_000_000);
                    self.store
                        .grace_links_of_events(first.id, last.id, since)
                        .await?
                }
                _ => Vec::new(),
            };
            for hash in &links {
                self.cache.invalidate(hash);
            }
            for event in &events {
                let (id, hash, time) = (event.id, &event.hash, &event.time);
                if id > self.high {
                    // A jump larger than MAX_GAPS (a mass rollback) keeps only its newest part.
                    let first = (self.high + 1).max(id.saturating_sub(MAX_GAPS as u64));
                    for missing in first..id {
                        self.gaps.insert(missing, now);
                    }
                    self.high = id;
                } else if self.gaps.remove(&id).is_none() {
                    continue;
                }
                self.cache.invalidate(hash);
                self.filter.insert(hash);
                if let Some(identity) = &event.identity_id {
                    self.identities.invalidate(identity);
                }
                crate::metrics::invalidation_lag(Duration::from_micros(
                    u64::try_from(wall.0 - time.0).unwrap_or(0),
                ));
                invalidated += 1;
            }
            while self.gaps.len() > MAX_GAPS {
                self.gaps.pop_first();
            }
            match events.last() {
                Some(last) if events.len() == PAGE as usize => from = last.id,
                _ => return Ok(invalidated),
            }
        }
    }

    /// Polls every `interval` until `shutdown` is cancelled.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match self.poll_once().await {
                Ok(_) if failing => {
                    tracing::info!("invalidation poll recovered");
                    failing = false;
                }
                Ok(_) => {}
                // Logged once per outage, not four times a second.
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "invalidation poll failed; cached keys may be stale until it recovers");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }
}
