//! Quotas on the verify path (DESIGN §8): exact across instances, restarts and
//! crashes, because the store hands out every credit.
//!
//! An instance takes credits in blocks (a lease) with the store's conditional
//! `UPDATE … WHERE quota_used + n <= quota_limit` and spends them from memory;
//! the row counts leased credits as used, so no two instances can spend the
//! same credit and a crash can only lose the credits of its open leases, never
//! hand out more than the limit. The block grows while a key is busy (fewer
//! round trips) and stays a small share of the limit (few credits stranded on
//! one instance while another runs short); unspent credits go back to the store
//! once a key has been idle for [`IDLE`], and on shutdown.
//!
//! An exhausted quota is remembered for [`EXHAUSTED_FOR`], so a key over its
//! quota does not cost a store write per call; a change of the key's limit ends
//! that memory at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use metrics::{Counter, Gauge, counter, gauge};
use tokio_util::sync::CancellationToken;

use super::limiter::LimitStatus;
use crate::{
    cache::CachedKey,
    domain::Error,
    limits::Quota,
    model::{KeyId, Micros},
    store::{QuotaTake, Store, StoreError},
};

/// A key unused this long gives its leased credits back.
pub const IDLE: Micros = Micros(2_000_000);
/// How long "no credits left" is believed without asking the store again.
const EXHAUSTED_FOR: Micros = Micros(1_000_000);
/// Largest lease: 1000 credits, and at most a twentieth of the limit.
const MAX_LEASE: u64 = 1_000;
/// After a failed take, how long calls beyond the leased credits fail at once.
const STORE_DOWN_FOR: Micros = Micros(1_000_000);
/// The longest the final give-back on shutdown may take: with the store down,
/// the credits are lost for the period instead of holding up the exit.
const FINAL_GIVE_BACK: Duration = Duration::from_secs(5);
/// How often idle leases are looked for.
const SWEEP: Duration = Duration::from_millis(500);

/// The quota's answer to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaDecision {
    pub allowed: bool,
    pub status: LimitStatus,
}

#[derive(Debug, Default)]
struct Lease {
    /// The period the credits belong to.
    period: Micros,
    credits: u64,
    /// The row's `quota_used` after our last take (our unspent credits included).
    used: u64,
    limit: u64,
    /// Credits to ask for next time.
    size: u64,
    last_take: Option<Micros>,
    last_use: Micros,
    /// "No credits left" as of this time, for this limit.
    exhausted: Option<(Micros, u64)>,
    /// The store failed a take for this key; until then calls beyond the
    /// leased credits fail at once.
    store_down_until: Option<Micros>,
}

#[derive(Debug)]
struct Metrics {
    take_ok: Counter,
    take_exhausted: Counter,
    take_error: Counter,
    return_ok: Counter,
    return_error: Counter,
    leased: Gauge,
}

#[derive(Debug)]
pub struct Quotas {
    store: Store,
    timeout: Duration,
    leases: Mutex<HashMap<KeyId, Arc<tokio::sync::Mutex<Lease>>>>,
    metrics: Metrics,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Quotas {
    pub fn new(store: Store, timeout: Duration) -> Self {
        let take = |result: &'static str| counter!("keygate_quota_lease_round_trips_total", "operation" => "take", "result" => result);
        let give = |result: &'static str| counter!("keygate_quota_lease_round_trips_total", "operation" => "return", "result" => result);
        Self {
            store,
            timeout,
            leases: Mutex::new(HashMap::new()),
            metrics: Metrics {
                take_ok: take("ok"),
                take_exhausted: take("exhausted"),
                take_error: take("error"),
                return_ok: give("ok"),
                return_error: give("error"),
                leased: gauge!("keygate_quota_leased_credits"),
            },
        }
    }

    fn lease(&self, id: &KeyId) -> Arc<tokio::sync::Mutex<Lease>> {
        Arc::clone(lock(&self.leases).entry(id.clone()).or_default())
    }

    /// Spends `cost` credits of `quota` (0: is one credit left), or refuses
    /// when fewer are left. With the store unreachable only credits already
    /// leased are spent; beyond them the answer is UNAVAILABLE.
    pub async fn spend(
        &self,
        key: &CachedKey,
        quota: Quota,
        cost: u32,
        now: Micros,
    ) -> Result<QuotaDecision, Error> {
        let period = quota.period.start(now);
        let need = u64::from(cost.max(1));
        let entry = self.lease(&key.limits_id);
        let mut lease = entry.lock().await;
        if lease.period != period {
            // Credits of an ended period are gone with it (the store agrees).
            self.metrics.leased.decrement(lease.credits as f64);
            *lease = Lease {
                period,
                size: 1,
                ..Lease::default()
            };
        }
        lease.limit = quota.limit;
        lease.last_use = now;
        if lease.credits < need {
            if lease.store_down_until.is_some_and(|t| now.0 < t.0) {
                // The store just failed this key: answer at once rather than
                // queue every call behind another timeout.
                return Err(Error::Unavailable);
            }
            let believed_exhausted = lease
                .exhausted
                .is_some_and(|(at, limit)| limit == quota.limit && now.0 < at.0 + EXHAUSTED_FOR.0);
            if !believed_exhausted {
                self.take(&key.limits_id, &mut lease, need, quota, now)
                    .await?;
            }
        }
        let allowed = lease.credits >= need;
        if allowed && cost > 0 {
            lease.credits -= u64::from(cost);
            self.metrics.leased.decrement(f64::from(cost));
        }
        let remaining = quota
            .limit
            .saturating_sub(lease.used)
            .saturating_add(lease.credits)
            .min(quota.limit);
        Ok(QuotaDecision {
            allowed,
            status: LimitStatus {
                name: "quota".into(),
                limit: quota.limit,
                remaining: if allowed {
                    remaining
                } else {
                    lease.credits.min(remaining)
                },
                reset: quota.period.next_start(now),
            },
        })
    }

    /// Takes at least `need - credits` more credits from the store.
    async fn take(
        &self,
        id: &KeyId,
        lease: &mut Lease,
        need: u64,
        quota: Quota,
        now: Micros,
    ) -> Result<(), Error> {
        // A key taken from again within a second is busy: lease more next time;
        // an unhurried one goes back to single credits.
        lease.size = match lease.last_take {
            Some(t) if now.0 - t.0 < 1_000_000 => lease.size.saturating_mul(2),
            _ => 1,
        }
        .clamp(1, (quota.limit / 20).clamp(1, MAX_LEASE));
        let short = need - lease.credits;
        let want = short.max(lease.size);
        let taken = tokio::time::timeout(
            self.timeout,
            self.store.take_quota(id, lease.period, short, want),
        )
        .await
        .unwrap_or(Err(StoreError::Timeout(self.timeout)));
        match taken {
            Ok(QuotaTake::Taken { credits, used, .. }) => {
                self.metrics.take_ok.increment(1);
                self.metrics.leased.increment(credits as f64);
                lease.credits += credits;
                lease.used = used;
                lease.store_down_until = None;
                lease.last_take = Some(now);
                lease.exhausted = None;
                Ok(())
            }
            Ok(QuotaTake::Exhausted { used, .. }) => {
                self.metrics.take_exhausted.increment(1);
                lease.used = used;
                lease.exhausted = Some((now, quota.limit));
                Ok(())
            }
            Ok(QuotaTake::NoQuota) => {
                // The cache is behind the store: the key's quota was removed (or
                // the key deleted); its new state reaches the cache within the
                // invalidation interval. Until then, spend nothing.
                lease.exhausted = Some((now, quota.limit));
                Ok(())
            }
            Err(e) => {
                self.metrics.take_error.increment(1);
                lease.store_down_until = Some(Micros(now.0 + STORE_DOWN_FOR.0));
                tracing::warn!(key_id = %id, error = %e, "could not take quota credits from the store");
                Err(Error::from(&e))
            }
        }
    }

    /// Gives back the credits of leases idle since `idle_since` (all of them
    /// with `None`), and forgets leases with nothing left to give.
    pub async fn give_back(&self, idle_since: Option<Micros>) {
        let entries: Vec<(KeyId, Arc<tokio::sync::Mutex<Lease>>)> = lock(&self.leases)
            .iter()
            .map(|(id, l)| (id.clone(), Arc::clone(l)))
            .collect();
        for (id, entry) in entries {
            let Ok(mut lease) = entry.try_lock() else {
                continue; // in use right now: not idle
            };
            if idle_since.is_some_and(|t| lease.last_use > t) {
                continue;
            }
            if lease.credits > 0 {
                let returned = tokio::time::timeout(
                    self.timeout,
                    self.store.return_quota(&id, lease.period, lease.credits),
                )
                .await
                .unwrap_or(Err(StoreError::Timeout(self.timeout)));
                match returned {
                    Ok(()) => {
                        self.metrics.return_ok.increment(1);
                        self.metrics.leased.decrement(lease.credits as f64);
                        lease.credits = 0;
                    }
                    Err(e) => {
                        // The return may have committed all the same (a timeout
                        // says nothing about that); returning again could hand
                        // the credits out twice. They are dropped: at worst
                        // lost for the period, never granted twice.
                        self.metrics.return_error.increment(1);
                        self.metrics.leased.decrement(lease.credits as f64);
                        tracing::warn!(key_id = %id, error = %e, credits = lease.credits,
                            "could not give quota credits back; they are lost for this period");
                        lease.credits = 0;
                    }
                }
            }
            drop(lease);
            // Forget it unless a call took it up meanwhile (it holds a clone).
            let mut leases = lock(&self.leases);
            if leases.get(&id).is_some_and(|l| Arc::strong_count(l) == 2) {
                leases.remove(&id);
            }
        }
    }

    /// Gives idle leases back every half second until `shutdown`, then all of them.
    pub async fn run(
        self: Arc<Self>,
        clock: crate::clock::SharedClock,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(SWEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => break,
            }
            let now = clock.now();
            self.give_back(Some(Micros(now.0 - IDLE.0))).await;
        }
        if tokio::time::timeout(FINAL_GIVE_BACK, self.give_back(None))
            .await
            .is_err()
        {
            tracing::warn!(
                "quota credits not given back before shutdown; they are lost for this period"
            );
        }
    }
}
