//! Rate limits on the verify path. Each instance keeps one bucket per limit of
//! every key it has seen recently (the arithmetic is in `crate::domain::limits`); with
//! `--rate-limit-redis-url` the fleet shares buckets in Redis through
//! `super::shared_limits`.
//!
//! Buckets belong to a key's lineage (its rotation chain), not to the key: every
//! link of a chain spends the same buckets, and a rotation, with or without
//! grace, carries the calls already made over to the replacement.
//!
//! Calls leased from the fleet and not spent go back to it: when their lease
//! ends (at the key's next call, or by [`RateLimiter::run`]'s sweep), and all of
//! them when the instance stops. A crash, Redis failing the give-back, or a
//! change of the key's limits loses them (which errs towards refusing).
//!
//! The local state is bounded whatever the number of keys: a moka cache of at
//! most `capacity` keys, each entry forgotten once its longest window has passed
//! without a call (an empty bucket is the same as no bucket). Size pressure
//! evicts the least-used keys first; an evicted key starts again from an empty
//! bucket, so the capacity must exceed the number of keys with limits that are
//! busy at once (documented in docs/LIMITS.md).

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use moka::{Expiry, sync::Cache};

use super::shared_limits::{SharedLimits, SharedReply};
use crate::{
    domain::limits::{Bucket, Gauge, LimitsOwner, MAX_WINDOW, RateLimit, RateLimits},
    domain::model::Micros,
};

/// Where a key stands against one of its limits after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitStatus {
    pub name: String,
    pub limit: u64,
    pub remaining: u64,
    /// When the full limit is available again; `None` for a quota that never resets.
    pub reset: Option<Micros>,
}

/// The rate limits' answer to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    /// The exceeded limit when refused, else the one with the fewest calls left.
    pub status: LimitStatus,
    /// When refused: how long until the call would fit; `None` when it never
    /// can (its cost exceeds a limit's whole `limit`).
    pub retry_after: Option<Micros>,
}

/// A call of `cost` can never pass `limits`: one of them is smaller than it.
fn never_fits(limits: &RateLimits, cost: u32) -> bool {
    limits.iter().any(|l| u64::from(cost) > l.limit)
}

/// One key's buckets, in the order of its limits.
#[derive(Debug)]
struct KeyBuckets {
    limits: RateLimits,
    buckets: Vec<Bucket>,
    /// Credits leased from the shared buckets and not yet spent (Redis only).
    lease: Lease,
    /// Leased credits whose lease ended unspent, to be given back to the
    /// shared buckets (Redis only).
    unspent: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Lease {
    credits: u64,
    until: Micros,
    /// Fleet-wide calls left when the lease was granted, for answers.
    remaining: u64,
}

impl KeyBuckets {
    fn new(limits: &RateLimits) -> Self {
        Self {
            limits: limits.clone(),
            buckets: vec![Bucket::default(); limits.len()],
            lease: Lease::default(),
            unspent: 0,
        }
    }

    /// Moves the credits of an ended lease to `unspent` and returns everything
    /// there is to give back (`all`: the live lease's credits too).
    fn take_unspent(&mut self, now: Micros, all: bool) -> u64 {
        if all || self.lease.until <= now {
            self.unspent += std::mem::take(&mut self.lease.credits);
        }
        std::mem::take(&mut self.unspent)
    }

    /// Follows a change of the key's limits: a bucket whose limit keeps its name
    /// keeps the calls it holds (rescaled); a new limit starts empty.
    fn follow(&mut self, limits: &RateLimits, now: Micros) {
        if &self.limits == limits {
            return;
        }
        let buckets = limits
            .iter()
            .map(|l| {
                self.limits
                    .iter()
                    .zip(&self.buckets)
                    .find(|(old, _)| old.name == l.name)
                    .map_or_else(Bucket::default, |(old, b)| {
                        let mut b = *b;
                        b.rescale(old, l, now);
                        b
                    })
            })
            .collect();
        self.limits = limits.clone();
        self.buckets = buckets;
        // Calls leased under the old limits are dropped, not given back: what
        // a call weighs in the shared buckets depends on the limit, so giving
        // them back under the new one could free more than was taken. Losing
        // them errs towards refusing.
        self.unspent = 0;
        self.lease = Lease::default();
    }

    /// Every limit's gauge for `cost`; the answer's limit is the first refused
    /// one, or the one with the fewest calls left.
    fn gauge(&self, cost: u32, now: Micros) -> (usize, Gauge) {
        let mut pick: Option<(usize, Gauge)> = None;
        for (i, (l, b)) in self.limits.iter().zip(&self.buckets).enumerate() {
            let g = b.gauge(l, cost, now);
            let better = match pick {
                None => true,
                Some((_, p)) if !p.allowed => false,
                Some((_, p)) => !g.allowed || g.remaining < p.remaining,
            };
            if better {
                pick = Some((i, g));
            }
        }
        pick.unwrap_or((
            0,
            Gauge {
                allowed: true,
                remaining: 0,
                reset: now,
                retry_after: Micros(0),
            },
        ))
    }

    /// This instance's own answer: every limit checked, the call counted in
    /// each when all of them take it.
    fn decide(&mut self, cost: u32, now: Micros) -> RateDecision {
        let (i, g) = self.gauge(cost, now);
        if g.allowed && cost > 0 {
            self.take(cost, now);
        }
        RateDecision {
            allowed: g.allowed,
            status: self.status(i, g.remaining, g.reset),
            retry_after: (!g.allowed && !never_fits(&self.limits, cost)).then_some(g.retry_after),
        }
    }

    fn take(&mut self, cost: u32, now: Micros) {
        for (l, b) in self.limits.iter().zip(self.buckets.iter_mut()) {
            b.take(l, cost, now);
        }
    }

    fn status(&self, i: usize, remaining: u64, reset: Micros) -> LimitStatus {
        let l: Option<&RateLimit> = self.limits.iter().nth(i);
        LimitStatus {
            name: l.map(|l| l.name.as_str().to_owned()).unwrap_or_default(),
            limit: l.map_or(0, |l| l.limit),
            remaining,
            reset: Some(reset),
        }
    }
}

type Entry = Arc<Mutex<KeyBuckets>>;

/// Forgets a key's buckets once its longest window has passed since the last call.
struct IdleForLongestWindow;

impl IdleForLongestWindow {
    fn of(entry: &Entry) -> Option<Duration> {
        let longest = lock(entry)
            .limits
            .iter()
            .map(|l| l.window)
            .max()
            .unwrap_or(MAX_WINDOW);
        Some(Duration::from_micros(u64::try_from(longest.0).unwrap_or(0)))
    }
}

impl Expiry<LimitsOwner, Entry> for IdleForLongestWindow {
    fn expire_after_create(&self, _: &LimitsOwner, entry: &Entry, _: Instant) -> Option<Duration> {
        Self::of(entry)
    }

    fn expire_after_read(
        &self,
        _: &LimitsOwner,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
        _: Instant,
    ) -> Option<Duration> {
        Self::of(entry)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
pub struct RateLimiter {
    local: Cache<LimitsOwner, Entry>,
    shared: Option<SharedLimits>,
}

impl RateLimiter {
    pub fn new(capacity: u64, shared: Option<SharedLimits>) -> Self {
        Self {
            local: Cache::builder()
                .max_capacity(capacity)
                .expire_after(IdleForLongestWindow)
                .build(),
            shared,
        }
    }

    fn entry(&self, owner: &LimitsOwner, limits: &RateLimits) -> Entry {
        self.local
            .get_with_by_ref(owner, || Arc::new(Mutex::new(KeyBuckets::new(limits))))
    }

    /// Checks every rate limit of `owner` (`limits`) for a call of `cost` (0:
    /// would one call pass) and, when all pass and `cost` > 0, counts the call
    /// in each. A refused call counts nowhere. `None` when there are no limits.
    pub async fn check(
        &self,
        owner: &LimitsOwner,
        limits: &RateLimits,
        cost: u32,
        now: Micros,
    ) -> Option<RateDecision> {
        if limits.is_empty() {
            return None;
        }
        let entry = self.entry(owner, limits);
        let give;
        {
            let mut b = lock(&entry);
            b.follow(limits, now);
            let (i, g) = b.gauge(cost, now);
            // This instance's own calls already exceed a limit: so does the
            // fleet's, and no shared state can change that answer.
            if !g.allowed || self.shared.is_none() {
                return Some(b.decide(cost, now));
            }
            let lease = b.lease;
            if lease.until > now && lease.credits >= u64::from(cost.max(1)) {
                // Credits already leased from the fleet: a certain local answer.
                if cost > 0 {
                    b.lease.credits -= u64::from(cost);
                    b.take(cost, now);
                }
                let remaining = lease.remaining + b.lease.credits;
                return Some(RateDecision {
                    allowed: true,
                    status: b.status(i, remaining, g.reset),
                    retry_after: None,
                });
            }
            give = b.take_unspent(now, false);
        }
        let shared = self.shared.as_ref()?;
        if give > 0 {
            shared.give_back(owner, limits, give, now).await;
        }
        let want = if cost == 0 {
            0
        } else {
            shared.lease_size(limits).max(u64::from(cost))
        };
        let reply = shared
            .lease(owner, limits, u64::from(cost.max(1)), want, now)
            .await;
        let mut b = lock(&entry);
        b.follow(limits, now);
        match reply {
            // Redis is unreachable: count alone, as without Redis (the metric
            // and the log line are `shared_limits`' business).
            None => Some(b.decide(cost, now)),
            Some(SharedReply::Granted {
                credits,
                remaining,
                reset,
                index,
            }) => {
                if cost > 0 {
                    b.take(cost, now);
                    // Concurrent calls of this instance may have leased too:
                    // their unexpired credits add up rather than being
                    // dropped, and expired ones go back to the fleet.
                    let left = if b.lease.until > now {
                        b.lease.credits
                    } else {
                        b.unspent += b.lease.credits;
                        0
                    };
                    b.lease = Lease {
                        credits: left + credits.saturating_sub(u64::from(cost)),
                        until: Micros(now.0 + shared.lease_lifetime(limits).0),
                        remaining,
                    };
                }
                let remaining = remaining + b.lease.credits;
                Some(RateDecision {
                    allowed: true,
                    status: b.status(index, remaining, reset),
                    retry_after: None,
                })
            }
            // Calls of this instance that leased while this one waited on
            // Redis, or gave calls back, may have left credits here: they are
            // this call's before the fleet's refusal is.
            Some(SharedReply::Refused { .. })
                if b.lease.until > now && b.lease.credits >= u64::from(cost.max(1)) =>
            {
                if cost > 0 {
                    b.lease.credits -= u64::from(cost);
                    b.take(cost, now);
                }
                let (i, g) = b.gauge(cost, now);
                let remaining = b.lease.remaining + b.lease.credits;
                Some(RateDecision {
                    allowed: true,
                    status: b.status(i, remaining, g.reset),
                    retry_after: None,
                })
            }
            Some(SharedReply::Refused {
                index,
                retry_after,
                reset,
            }) => Some(RateDecision {
                allowed: false,
                status: b.status(index, 0, reset),
                retry_after: Some(retry_after),
            }),
        }
    }

    /// Applies a change of a lineage's limits to its buckets now: calls
    /// already made count against the new limits from the moment of the
    /// change. (Without this, an instance would rescale at the key's next
    /// call, having drained the time in between at the old rate.)
    pub fn follow(&self, lineage: &LimitsOwner, limits: &RateLimits, now: Micros) {
        if let Some(entry) = self.local.get(lineage) {
            lock(&entry).follow(limits, now);
        }
    }

    /// Gives the fleet back what this instance leased and did not spend:
    /// ended leases (`all` false), or every lease (`all`: shutting down).
    pub async fn give_back_unspent(&self, now: Micros, all: bool) {
        let Some(shared) = &self.shared else { return };
        let due: Vec<(LimitsOwner, RateLimits, u64)> = self
            .local
            .iter()
            .filter_map(|(id, entry)| {
                let mut b = lock(&entry);
                let n = b.take_unspent(now, all);
                (n > 0).then(|| ((*id).clone(), b.limits.clone(), n))
            })
            .collect();
        for (id, limits, n) in due {
            shared.give_back(&id, &limits, n, now).await;
        }
    }

    /// Gives ended leases back every half second until `shutdown`, then all of
    /// them. Without Redis there is nothing to give back and this returns.
    pub async fn run(
        self: Arc<Self>,
        clock: crate::clock::SharedClock,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        if self.shared.is_none() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            self.give_back_unspent(clock.now(), false).await;
        }
        self.give_back_unspent(clock.now(), true).await;
    }

    /// Gives back a call counted by [`RateLimiter::check`] whose verification was
    /// then refused by a later limit: a refused call consumes nothing.
    ///
    /// With Redis the call goes back to the fleet at once, not into this
    /// instance's lease: the quota's last credits may be leased by another
    /// instance, which then needs this call to spend them. Kept here, each
    /// instance would hold what the other needs and the fleet would pass less
    /// than its limit.
    pub async fn give_back(
        &self,
        owner: &LimitsOwner,
        limits: &RateLimits,
        cost: u32,
        now: Micros,
    ) {
        if cost == 0 {
            return;
        }
        if let Some(entry) = self.local.get(owner) {
            let mut b = lock(&entry);
            for (l, bucket) in b.limits.clone().iter().zip(b.buckets.iter_mut()) {
                bucket.give_back(l, cost);
            }
        }
        if let Some(shared) = &self.shared {
            shared.give_back(owner, limits, u64::from(cost), now).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{domain::limits::LimitName, domain::model::KeyId};

    const T0: Micros = Micros(1_000_000_000_000);
    const MINUTE: i64 = 60_000_000;

    /// A key's lineage with one limit of `limit` calls a minute.
    struct Limited(LimitsOwner, RateLimits);

    impl Limited {
        async fn check(
            &self,
            limiter: &RateLimiter,
            cost: u32,
            now: Micros,
        ) -> Option<RateDecision> {
            limiter.check(&self.0, &self.1, cost, now).await
        }
    }

    fn limited(limit: u64) -> Limited {
        Limited(
            LimitsOwner::Lineage(KeyId::generate()),
            RateLimits::new(vec![RateLimit {
                name: LimitName::parse("per_minute").expect("name"),
                limit,
                window: Micros(MINUTE),
            }])
            .expect("limits"),
        )
    }

    /// On a clock moved by hand: a burst passes exactly `limit` calls, the
    /// next is refused with when it would fit, and the window's end frees it.
    #[tokio::test]
    async fn a_burst_passes_the_limit_exactly_and_the_window_frees_it() {
        let limiter = RateLimiter::new(100, None);
        let key = limited(3);
        for left in [2, 1, 0] {
            let d = key.check(&limiter, 1, T0).await.expect("limited");
            assert!(d.allowed);
            assert_eq!(d.status.remaining, left);
        }
        let refused = key.check(&limiter, 1, T0).await.expect("limited");
        assert!(!refused.allowed);
        let wait = refused.retry_after.expect("it will fit later");
        assert!(wait.0 > 0 && wait.0 <= MINUTE, "{wait:?}");
        // A question (cost 0) consumes nothing, refused or not.
        assert!(!key.check(&limiter, 0, T0).await.expect("limited").allowed);
        assert!(
            key.check(&limiter, 1, Micros(T0.0 + MINUTE))
                .await
                .expect("limited")
                .allowed
        );
    }

    #[tokio::test]
    async fn a_cost_above_the_whole_limit_never_fits_and_gets_no_retry_after() {
        let limiter = RateLimiter::new(100, None);
        let key = limited(5);
        let d = key.check(&limiter, 6, T0).await.expect("limited");
        assert!(!d.allowed);
        assert_eq!(d.retry_after, None);
        assert_eq!(
            key.check(&limiter, 5, T0)
                .await
                .expect("limited")
                .status
                .remaining,
            0
        );
    }

    #[tokio::test]
    async fn a_key_without_rate_limits_is_not_limited() {
        let key = Limited(
            LimitsOwner::Lineage(KeyId::generate()),
            RateLimits::default(),
        );
        assert!(
            key.check(&RateLimiter::new(100, None), 1, T0)
                .await
                .is_none()
        );
    }
}
