//! The verifier: a parsed [`Verification`] in, an [`Outcome`] out, whatever the
//! transport. It finds the key (cache, then a coalesced store read) and its
//! identity, applies the contract's checks (`domain::verify`), then the usage
//! limits: the key's rate limits and quota, then its identity's, all or
//! nothing (a call refused by any of them consumes nothing anywhere), and
//! counts usage. It never waits on a usage write; a quota may wait on the
//! store for credits.

use std::sync::Arc;

use crate::{
    clock::SharedClock,
    domain::keys::SecretHash,
    domain::limits::{LimitsOwner, Quota, RateLimits},
    domain::model::Micros,
    domain::{
        Error,
        verify::{Code, Verification, check},
    },
    hotpath::cache::{CachedKey, KeyCache, Lookup, Ticket},
    hotpath::filter::KnownKeys,
    hotpath::identities::{CachedIdentity, IdentityCache},
    hotpath::limiter::{LimitStatus, RateDecision, RateLimiter},
    hotpath::lookup::Lookups,
    hotpath::quota::Quotas,
    hotpath::usage::UsageRecorder,
};

/// A verification's answer. `key` is set whenever the key was found, and
/// `identity` whenever that key has one (and it could be read).
///
/// 56 bytes: every transport moves it through several futures, so what only
/// a key with limits has is boxed, and allocated only for such a key.
#[derive(Debug)]
pub struct Outcome {
    pub code: Code,
    pub key: Option<Arc<CachedKey>>,
    pub identity: Option<Arc<CachedIdentity>>,
    pub missing_scopes: Vec<String>,
    /// Set when the checks reached the key's limits.
    pub limits: Option<Box<Limits>>,
}

/// What a verification found of the usage limits of the key and its identity.
/// An identity's limits are named `identity.<name>` and `identity.quota`, so
/// an answer tells whose limit it reports.
#[derive(Debug, Default)]
pub struct Limits {
    /// The rate limit with the fewest calls left (or the exceeded one), of
    /// the key's and the identity's.
    pub rate_limit: Option<LimitStatus>,
    /// The quota with the fewest credits left (or the exceeded one), when
    /// the rate limits let the call by.
    pub quota: Option<LimitStatus>,
    /// With `RateLimited` and `QuotaExceeded`, unless the call can never pass
    /// (its cost exceeds the limit) or the quota never resets.
    pub retry_after: Option<Micros>,
}

impl Outcome {
    fn without_key(code: Code) -> Self {
        Self {
            code,
            key: None,
            identity: None,
            missing_scopes: Vec::new(),
            limits: None,
        }
    }

    pub fn rate_limit(&self) -> Option<&LimitStatus> {
        self.limits.as_ref()?.rate_limit.as_ref()
    }

    pub fn quota(&self) -> Option<&LimitStatus> {
        self.limits.as_ref()?.quota.as_ref()
    }

    pub fn retry_after(&self) -> Option<Micros> {
        self.limits.as_ref()?.retry_after
    }
}

#[derive(Debug, Clone)]
pub struct Verifier {
    lookups: Lookups,
    filter: Arc<KnownKeys>,
    cache: Arc<KeyCache>,
    usage: Arc<UsageRecorder>,
    rate_limits: Arc<RateLimiter>,
    quotas: Arc<Quotas>,
    identities: Arc<IdentityCache>,
    clock: SharedClock,
}

impl Verifier {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        lookups: Lookups,
        filter: Arc<KnownKeys>,
        cache: Arc<KeyCache>,
        usage: Arc<UsageRecorder>,
        rate_limits: Arc<RateLimiter>,
        quotas: Arc<Quotas>,
        identities: Arc<IdentityCache>,
        clock: SharedClock,
    ) -> Self {
        Self {
            lookups,
            filter,
            cache,
            identities,
            usage,
            rate_limits,
            quotas,
            clock,
        }
    }

    /// The verifier's clock: what "now" is for the limits' reset times.
    pub fn now(&self) -> Micros {
        self.clock.now()
    }

    /// A denial is an outcome; an error is only the store being unreachable for
    /// a key that is not cached (never NOT_FOUND for what may exist).
    ///
    /// The store read and the limits are boxed: their futures are several
    /// hundred bytes each (the handler's future was 1.5 KiB with them inline),
    /// copied on every call for paths that a cached key without limits never
    /// takes. A boxed path costs one allocation when taken.
    pub async fn verify(&self, v: &Verification<'_>) -> Result<Outcome, Error> {
        let hash = match v.presented() {
            Ok(hash) => hash,
            Err(code) => return Ok(Outcome::without_key(code)),
        };
        let now = self.clock.now();
        let key = match self.cache.get(&hash, now) {
            Lookup::Found(k) => Some(k),
            Lookup::Unknown => None,
            // A key the filter rules out is not in the store: no read. The
            // ticket is dropped, so no unknown-key entry is cached either.
            Lookup::Miss(_) if !self.filter.admits(&hash) => None,
            Lookup::Miss(ticket) => Box::pin(self.read(hash, ticket)).await?,
        };
        let Some(key) = key else {
            return Ok(Outcome::without_key(Code::NotFound));
        };
        let (code, missing_scopes) = check(&*key, v, now);
        // A cached identity is read in place; only a miss pays for the
        // boxed store read's future.
        let identity = match key.identity_id() {
            None => None,
            Some(id) => match self.identities.cached(id, now) {
                Some(hit) => hit,
                None => match Box::pin(self.identities.get(id, now)).await {
                    Ok(identity) => identity,
                    // Without its identity a valid key's limits cannot be
                    // checked; a refusal stands without it.
                    Err(e) if code == Code::Valid => return Err(e),
                    Err(_) => None,
                },
            },
        };
        let mut outcome = Outcome {
            code,
            key: None,
            identity: None,
            missing_scopes,
            limits: None,
        };
        let identity_limited = identity.as_ref().is_some_and(|i| i.has_limits());
        if code == Code::Valid && (key.has_limits() || identity_limited) {
            let mut limits = Box::<Limits>::default();
            let identity = identity.as_deref().filter(|i| i.has_limits());
            Box::pin(self.limit(
                &key,
                identity,
                v.cost(),
                now,
                &mut outcome.code,
                &mut limits,
            ))
            .await?;
            outcome.limits = Some(limits);
        }
        outcome.identity = identity;
        // Every verification that found the key counts, with its outcome; a
        // call that failed UNAVAILABLE (its quota could not be asked) is no
        // verification and counts nowhere.
        self.usage.record(&key, now, outcome.code);
        tracing::debug!(key_id = key.id(), code = ?outcome.code, "verified");
        outcome.key = Some(key);
        Ok(outcome)
    }

    /// The usage limits, after every other check: the key's rate limits,
    /// the identity's, the key's quota, the identity's quota. A call refused
    /// by one gives back what the earlier ones took, so a refused call
    /// consumes nothing anywhere.
    async fn limit(
        &self,
        key: &CachedKey,
        identity: Option<&CachedIdentity>,
        cost: u32,
        now: Micros,
        code: &mut Code,
        limits: &mut Limits,
    ) -> Result<(), Error> {
        let key_limits = key.limits();
        let key_rate = match key_limits {
            Some(l) => {
                self.rate_limits
                    .check(&l.owner, &l.rate_limits, cost, now)
                    .await
            }
            None => None,
        };
        if let Some(RateDecision {
            allowed: false,
            status,
            retry_after,
        }) = key_rate
        {
            *code = Code::RateLimited;
            limits.rate_limit = Some(status);
            limits.retry_after = retry_after;
            return Ok(());
        }
        let identity_rate = match identity {
            Some(i) => self
                .rate_limits
                .check(&i.owner, &i.rate_limits, cost, now)
                .await
                .map(|mut d| {
                    // In place, not `format!`: the formatting machinery was
                    // a fifth of what an identity's limit added to a call
                    // (callgrind, BENCHMARKS.md run 18).
                    d.status.name.insert_str(0, "identity.");
                    d
                }),
            None => None,
        };
        // The rate limits taken so far, to give back if a later limit refuses.
        // Fixed arrays, not Vecs: no allocation on the verify path.
        let mut taken: [Option<(&LimitsOwner, &RateLimits)>; 2] = [None, None];
        if let Some(l) = key_limits.filter(|_| key_rate.is_some()) {
            taken[0] = Some((&l.owner, &l.rate_limits));
        }
        if let Some(RateDecision {
            allowed: false,
            status,
            retry_after,
        }) = identity_rate
        {
            self.give_back_rates(&taken, cost, now).await;
            *code = Code::RateLimited;
            limits.rate_limit = Some(status);
            limits.retry_after = retry_after;
            return Ok(());
        }
        if let Some(i) = identity.filter(|_| identity_rate.is_some()) {
            taken[1] = Some((&i.owner, &i.rate_limits));
        }
        limits.rate_limit =
            fewest_left(key_rate.map(|d| d.status), identity_rate.map(|d| d.status));
        let quotas = [
            key_limits.and_then(|l| l.quota.map(|q| (&l.owner, q, "quota"))),
            identity.and_then(|i| i.quota.map(|q| (&i.owner, q, "identity.quota"))),
        ];
        let mut spent: [Option<(&LimitsOwner, Quota)>; 2] = [None, None];
        for (slot, (owner, quota, name)) in quotas
            .into_iter()
            .enumerate()
            .filter_map(|(i, q)| Some((i, q?)))
        {
            let decision = self.quotas.spend(owner, quota, cost, now).await;
            let refused = !decision.as_ref().is_ok_and(|q| q.allowed);
            if refused {
                // Nothing of this call may stay spent: the rate limits, and
                // the quotas that allowed it before this one refused.
                self.give_back_rates(&taken, cost, now).await;
                if let Some(rate) = limits.rate_limit.as_mut() {
                    // The answer tells what is left, and this call took nothing.
                    rate.remaining = rate
                        .remaining
                        .saturating_add(u64::from(cost))
                        .min(rate.limit);
                }
                for (owner, quota) in spent.iter().flatten() {
                    self.quotas.refund(owner, *quota, cost, now).await;
                }
            }
            let mut decision = decision?;
            decision.status.name = name.to_owned();
            if !decision.allowed {
                *code = Code::QuotaExceeded;
                // A cost above the whole quota never fits, whenever it resets.
                limits.retry_after = (u64::from(cost) <= quota.limit)
                    .then_some(decision.status.reset)
                    .flatten()
                    .map(|r| Micros(r.0 - now.0));
                limits.quota = Some(decision.status);
                return Ok(());
            }
            spent[slot] = Some((owner, quota));
            limits.quota = fewest_left(limits.quota.take(), Some(decision.status));
        }
        Ok(())
    }

    async fn give_back_rates(
        &self,
        taken: &[Option<(&LimitsOwner, &RateLimits)>],
        cost: u32,
        now: Micros,
    ) {
        for (owner, limits) in taken.iter().flatten() {
            self.rate_limits.give_back(owner, limits, cost, now).await;
        }
    }

    /// A cache miss the filter let through: the store, then the cache.
    async fn read(
        &self,
        hash: SecretHash,
        ticket: Ticket,
    ) -> Result<Option<Arc<CachedKey>>, Error> {
        let record = self
            .lookups
            .find(hash)
            .await
            .map_err(|e| Error::from(&*e))?;
        if record.is_some() {
            self.filter.insert(&hash);
        }
        Ok(self.cache.fill(ticket, hash, record))
    }
}

/// Of two limits' states, the one with fewer calls left (the first on a tie):
/// the one a client runs into first.
fn fewest_left(a: Option<LimitStatus>, b: Option<LimitStatus>) -> Option<LimitStatus> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.remaining < a.remaining { b } else { a }),
        (a, b) => a.or(b),
    }
}
