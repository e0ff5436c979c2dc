//! The verifier: a parsed [`Verification`] in, an [`Outcome`] out, whatever the
//! transport. It finds the key (cache, then a coalesced store read), applies the
//! contract's checks (`domain::verify`), then the key's usage limits (rate limits,
//! then quota: a call refused by either consumes nothing), and counts usage. It
//! never waits on a usage write; a quota may wait on the store for credits.

use std::sync::Arc;

use crate::{
    clock::SharedClock,
    domain::keys::SecretHash,
    domain::model::Micros,
    domain::{
        Error,
        verify::{Code, Verification, check},
    },
    hotpath::cache::{CachedKey, KeyCache, Lookup, Ticket},
    hotpath::filter::KnownKeys,
    hotpath::limiter::{LimitStatus, RateLimiter},
    hotpath::lookup::Lookups,
    hotpath::quota::Quotas,
    hotpath::usage::UsageRecorder,
};

/// A verification's answer. `key` is set whenever the key was found.
///
/// 48 bytes: every transport moves it through several futures, so what only
/// a key with limits has is boxed, and allocated only for such a key.
#[derive(Debug)]
pub struct Outcome {
    pub code: Code,
    pub key: Option<Arc<CachedKey>>,
    pub missing_scopes: Vec<String>,
    /// Set when the checks reached the key's limits.
    pub limits: Option<Box<Limits>>,
}

/// What a verification found of the key's usage limits.
#[derive(Debug, Default)]
pub struct Limits {
    /// The key's rate limit with the fewest calls left (or the exceeded one),
    /// when it has rate limits.
    pub rate_limit: Option<LimitStatus>,
    /// The key's quota, when it has one and the rate limits let the call by.
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
    clock: SharedClock,
}

impl Verifier {
    pub fn new(
        lookups: Lookups,
        filter: Arc<KnownKeys>,
        cache: Arc<KeyCache>,
        usage: Arc<UsageRecorder>,
        rate_limits: Arc<RateLimiter>,
        quotas: Arc<Quotas>,
        clock: SharedClock,
    ) -> Self {
        Self {
            lookups,
            filter,
            cache,
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
        let mut outcome = Outcome {
            code,
            key: None,
            missing_scopes,
            limits: None,
        };
        if code == Code::Valid && key.has_limits() {
            let mut limits = Box::<Limits>::default();
            Box::pin(self.limit(&key, v.cost(), now, &mut outcome.code, &mut limits)).await?;
            outcome.limits = Some(limits);
        }
        // Every verification that found the key counts, with its outcome; a
        // call that failed UNAVAILABLE (its quota could not be asked) is no
        // verification and counts nowhere.
        self.usage.record(&key, now, outcome.code);
        tracing::debug!(key_id = %key.id, code = ?outcome.code, "verified");
        outcome.key = Some(key);
        Ok(outcome)
    }

    /// The usage limits, after every other check: rate limits first (all of
    /// them), then the quota. A call the quota refuses gives its rate-limit
    /// calls back, so a refused call consumes nothing anywhere.
    async fn limit(
        &self,
        key: &CachedKey,
        cost: u32,
        now: Micros,
        code: &mut Code,
        limits: &mut Limits,
    ) -> Result<(), Error> {
        if let Some(rate) = self.rate_limits.check(key, cost, now).await {
            limits.rate_limit = Some(rate.status);
            if !rate.allowed {
                *code = Code::RateLimited;
                limits.retry_after = rate.retry_after;
                return Ok(());
            }
        }
        let Some(quota) = key.quota else {
            return Ok(());
        };
        let spent = self.quotas.spend(key, quota, cost, now).await;
        let refused = !spent.as_ref().is_ok_and(|q| q.allowed);
        if refused && let Some(rate) = limits.rate_limit.as_mut() {
            self.rate_limits.give_back(key, cost, now).await;
            // The answer tells what is left, and this call took nothing.
            rate.remaining = rate
                .remaining
                .saturating_add(u64::from(cost))
                .min(rate.limit);
        }
        let decision = spent?;
        if !decision.allowed {
            *code = Code::QuotaExceeded;
            // A cost above the whole quota never fits, whenever it resets.
            limits.retry_after = (u64::from(cost) <= quota.limit)
                .then_some(decision.status.reset)
                .flatten()
                .map(|r| Micros(r.0 - now.0));
        }
        limits.quota = Some(decision.status);
        Ok(())
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
