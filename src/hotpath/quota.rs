//! Quotas on the verify path: exact across instances, restarts and crashes,
//! because the store hands out every credit. A key's quota belongs to its
//! lineage (its rotation chain): every link spends the chain's newest key's
//! quota, and the store's takes go to that key's row. An identity's quota is
//! the same machinery on the identity's row, spent by every key it owns.
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
//! What the store said was left is remembered for [`KNOWN_FOR`], so a key over
//! its quota does not cost a store write per call. What is remembered is the
//! number left, not "exhausted": a call refused for a cost of 1000 leaves the
//! 500 credits still there spendable at once by cheaper calls, and every
//! answer's `remaining` is what is left. A change of the key's limit ends that
//! memory at once, and gives the credits leased under the old limit back.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use metrics::{Counter, Gauge, counter, gauge};
use tokio_util::sync::CancellationToken;

use super::limiter::LimitStatus;
use crate::{
    domain::Error,
    domain::limits::{LimitsOwner, Quota, QuotaPeriod},
    domain::model::Micros,
    store::{QuotaTake, Store, StoreError},
};

/// A key unused this long gives its leased credits back.
pub const IDLE: Micros = Micros(2_000_000);
/// How long the store's "this many credits left" is believed without asking
/// it again (a call needing more than that is refused without a round trip).
const KNOWN_FOR: Micros = Micros(1_000_000);
/// Largest lease: 1000 credits, and at most a twentieth of the limit.
const MAX_LEASE: u64 = 1_000;
/// After a failed take, how long calls beyond the leased credits fail at once.
const STORE_DOWN_FOR: Micros = Micros(1_000_000);
/// The longest the final give-back on shutdown may take: with the store down,
/// the credits are lost for the period instead of holding up the exit.
const FINAL_GIVE_BACK: Duration = Duration::from_secs(5);
/// How often idle leases are looked for.
const SWEEP: Duration = Duration::from_millis(500);

/// A lineage's quota lease, held (with nothing leased) while its quota changes.
#[derive(Debug)]
pub struct Held {
    _lease: tokio::sync::OwnedMutexGuard<Lease>,
}

/// The quota's answer to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaDecision {
    pub allowed: bool,
    pub status: LimitStatus,
}

#[derive(Debug, Default)]
pub struct Lease {
    /// The period the credits belong to, and its kind.
    period: Micros,
    kind: Option<QuotaPeriod>,
    credits: u64,
    /// The row's `quota_used` after our last take (our unspent credits included).
    used: u64,
    limit: u64,
    /// Credits to ask for next time.
    size: u64,
    last_take: Option<Micros>,
    last_use: Micros,
    /// As of this time the store had this many credits left beyond ours.
    known_left: Option<(Micros, u64)>,
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
    leases: Mutex<HashMap<LimitsOwner, Arc<tokio::sync::Mutex<Lease>>>>,
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

    fn lease(&self, id: &LimitsOwner) -> Arc<tokio::sync::Mutex<Lease>> {
        Arc::clone(lock(&self.leases).entry(id.clone()).or_default())
    }

    /// Spends `cost` credits of `quota` (0: is one credit left), or refuses
    /// when fewer are left. With the store unreachable only credits already
    /// leased are spent; beyond them the answer is UNAVAILABLE.
    pub async fn spend(
        &self,
        owner: &LimitsOwner,
        quota: Quota,
        cost: u32,
        now: Micros,
    ) -> Result<QuotaDecision, Error> {
        let period = quota.period.start(now);
        let need = u64::from(cost.max(1));
        let entry = self.lease(owner);
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
        if lease.kind != Some(quota.period) {
            // Credits of another kind of period are gone with it (the store
            // takes none back).
            self.metrics.leased.decrement(lease.credits as f64);
            lease.credits = 0;
            lease.known_left = None;
            lease.kind = Some(quota.period);
        }
        if lease.limit != quota.limit {
            // Credits leased under another limit go back first: spent, they
            // would count against a limit that no longer holds.
            self.return_credits(owner, &mut lease).await;
            lease.limit = quota.limit;
        }
        lease.last_use = now;
        if lease.credits < need {
            if lease.store_down_until.is_some_and(|t| now.0 < t.0) {
                // The store just failed this key: answer at once rather than
                // queue every call behind another timeout.
                return Err(Error::Unavailable);
            }
            let known_short = lease.known_left.is_some_and(|(at, left)| {
                now.0 < at.0 + KNOWN_FOR.0 && lease.credits + left < need
            });
            if !known_short {
                self.take(owner, &mut lease, need, quota, now).await?;
            }
        }
        let allowed = lease.credits >= need;
        if allowed && cost > 0 {
            lease.credits -= u64::from(cost);
            self.metrics.leased.decrement(f64::from(cost));
        }
        // The row counts our unspent credits as used: what is left is the
        // rest of the limit plus those.
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
                remaining,
                reset: quota.period.next_start(now),
            },
        })
    }

    /// Puts back `cost` credits that [`Quotas::spend`] spent at `now` for a
    /// call refused later on (by its identity's quota): a refused call
    /// consumes nothing. They go back into this instance's lease, which the
    /// store already counts, so nothing is written; if the lease has moved to
    /// another period or limit since, they are gone with the old one.
    pub async fn refund(&self, owner: &LimitsOwner, quota: Quota, cost: u32, now: Micros) {
        if cost == 0 {
            return;
        }
        let entry = self.lease(owner);
        let mut lease = entry.lock().await;
        if lease.period == quota.period.start(now)
            && lease.kind == Some(quota.period)
            && lease.limit == quota.limit
        {
            lease.credits += u64::from(cost);
            self.metrics.leased.increment(f64::from(cost));
        }
    }

    /// Gives this owner's leased credits back and keeps any verification
    /// from leasing more until the returned [`Held`] is dropped: for a change
    /// of the quota, which must find no credit leased against the old one.
    pub async fn hold(&self, lineage: &LimitsOwner, now: Micros) -> Held {
        let entry = self.lease(lineage);
        let mut lease = entry.lock_owned().await;
        self.return_credits(lineage, &mut lease).await;
        // The next use starts from nothing: no credits, nothing known of
        // the store, no limit (so it takes afresh under the new one).
        *lease = Lease {
            last_use: now,
            ..Lease::default()
        };
        Held { _lease: lease }
    }

    /// Returns the lease's unspent credits to the store. Whatever the
    /// outcome they are this lease's no more: a return that failed may have
    /// committed all the same, and returning again could hand them out twice
    /// (at worst they are lost for the period, never granted twice).
    async fn return_credits(&self, lineage: &LimitsOwner, lease: &mut Lease) {
        lease.known_left = None;
        let Some(kind) = lease.kind.filter(|_| lease.credits > 0) else {
            return;
        };
        let returned = tokio::time::timeout(
            self.timeout,
            self.store
                .return_quota(lineage, lease.period, kind, lease.credits),
        )
        .await
        .unwrap_or(Err(StoreError::Timeout(self.timeout)));
        self.metrics.leased.decrement(lease.credits as f64);
        match returned {
            Ok(()) => {
                self.metrics.return_ok.increment(1);
                lease.used = lease.used.saturating_sub(lease.credits);
            }
            Err(e) => {
                self.metrics.return_error.increment(1);
                tracing::warn!(key_id = %lineage, error = %e, credits = lease.credits,
                    "could not give quota credits back; they are lost for this period");
            }
        }
        lease.credits = 0;
    }

    /// Takes at least `need - credits` more credits from the store.
    async fn take(
        &self,
        id: &LimitsOwner,
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
            self.store
                .take_quota(id, lease.period, quota.period, short, want),
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
                lease.known_left = None;
                Ok(())
            }
            Ok(QuotaTake::Exhausted { used, limit }) => {
                self.metrics.take_exhausted.increment(1);
                lease.used = used;
                lease.known_left = Some((now, limit.saturating_sub(used)));
                Ok(())
            }
            Ok(QuotaTake::NoQuota) => {
                // The cache is behind the store: the key's quota was removed (or
                // the key deleted); its new state reaches the cache within the
                // invalidation interval. Until then, spend nothing.
                lease.known_left = Some((now, 0));
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
        let entries: Vec<(LimitsOwner, Arc<tokio::sync::Mutex<Lease>>)> = lock(&self.leases)
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
                self.return_credits(&id, &mut lease).await;
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
