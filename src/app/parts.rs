//! The named parts every transport calls, built once from the flags: the keys
//! service, the verifier and the edge's authorizer, over one store, one key
//! cache, one usage recorder, one set of limiters and one clock.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use super::AppError;
use crate::{
    clock::SharedClock,
    config::ServeArgs,
    domain::{keys::Sensitive, routes::RoutePolicy, scopes::ScopeCatalog},
    hotpath::{
        cache::{CacheConfig, KeyCache},
        filter::KnownKeys,
        identities::IdentityCache,
        limiter::RateLimiter,
        lookup::Lookups,
        quota::Quotas,
        replica::ReplicaState,
        shared_limits::SharedLimits,
        usage::UsageRecorder,
    },
    services::{KeyService, Verifier, authorizer::Authorizer},
    store::Store,
    webhooks::delivery::Webhooks,
};

/// The services every transport calls, and what they share.
pub(super) struct Services {
    pub(super) keys: KeyService,
    pub(super) verifier: Verifier,
    /// The verifier behind the route policy, for Envoy and forward auth.
    pub(super) authorizer: Authorizer,
    pub(super) usage: Arc<UsageRecorder>,
    pub(super) rate_limits: Arc<RateLimiter>,
    pub(super) quotas: Arc<Quotas>,
    pub(super) cache: Arc<KeyCache>,
    pub(super) identities: Arc<IdentityCache>,
    pub(super) webhooks: Option<Arc<Webhooks>>,
    /// Every key hash, so forged keys cost no store read.
    pub(super) known: Arc<KnownKeys>,
    pub(super) replica: Option<Replica>,
}

/// Store reads a forged-key filter lets through a second for keys it rules
/// out: enough for keys created on another instance a moment ago, too few to
/// matter to the store during a flood.
const FORGED_KEY_BYPASS_PER_SECOND: u32 = 10;

/// `--database-read-url`: the replica and what this instance knows of its progress.
pub(super) struct Replica {
    pub(super) store: Store,
    pub(super) state: Arc<ReplicaState>,
}

impl Services {
    pub(super) fn build(
        args: &ServeArgs,
        store: &Store,
        replica: Option<Replica>,
        clock: &SharedClock,
        tasks: &TaskTracker,
    ) -> Result<Self, AppError> {
        let catalog = args
            .scope_catalog
            .as_deref()
            .map(ScopeCatalog::load)
            .transpose()?
            .map(Arc::new);
        let cache = Arc::new(KeyCache::new(&CacheConfig {
            capacity: args.cache_capacity,
            max_bytes: args.cache_max_bytes,
            ttl: args.cache_ttl.into(),
            negative_capacity: args.negative_cache_capacity,
            negative_ttl: args.negative_cache_ttl.into(),
        }));
        let usage = Arc::new(UsageRecorder::new(
            args.usage_write_budget,
            args.usage_flush_interval.into(),
        ));
        let redis_ca = match &args.rate_limit_redis_ca {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                AppError::Redis(format!(
                    "cannot read --rate-limit-redis-ca {}: {e}",
                    path.display()
                ))
            })?),
        };
        let shared_limits = args
            .rate_limit_redis_url
            .as_ref()
            .map(|url| SharedLimits::new(url.expose(), redis_ca))
            .transpose()
            // The URL may hold a password: name the problem, not the URL.
            .map_err(|e| {
                AppError::Redis(format!(
                    "not a usable Redis URL or --rate-limit-redis-ca ({:?})",
                    e.kind()
                ))
            })?;
        // Rate-limit state is kept for as many keys as the key cache holds.
        let rate_limits = Arc::new(RateLimiter::new(args.cache_capacity.max(1), shared_limits));
        // Checked before anything starts: a bad URL or secret stops the start.
        let webhooks = (!args.webhook_url.is_empty())
            .then(|| {
                Webhooks::new(
                    store.clone(),
                    &args.webhook_urls(),
                    args.webhook_secret.as_ref().map(Sensitive::expose),
                    Arc::clone(clock),
                )
            })
            .transpose()?
            .map(Arc::new);
        let quotas = Arc::new(Quotas::new(
            store.clone(),
            args.database.database_timeout.into(),
        ));
        // Fewer reads than pool connections: under load misses queue behind
        // them and are read together, and admin writes, the usage flush and the
        // invalidation poll keep connections of their own.
        let known = Arc::new(KnownKeys::new(FORGED_KEY_BYPASS_PER_SECOND));
        let replica_ref = replica.as_ref();
        let lookups = Lookups::start(
            store.clone(),
            replica_ref.map(|r| (r.store.clone(), Arc::clone(&r.state))),
            usize::from(args.lookup_concurrency),
            args.database.database_timeout.into(),
            tasks,
        );
        // As many identities as keys, each trusted as long as a key is.
        let identities = Arc::new(IdentityCache::new(
            store.clone(),
            args.cache_capacity,
            args.cache_ttl.into(),
            args.database.database_timeout.into(),
        ));
        let verifier = Verifier::new(
            lookups,
            Arc::clone(&known),
            Arc::clone(&cache),
            Arc::clone(&usage),
            Arc::clone(&rate_limits),
            Arc::clone(&quotas),
            Arc::clone(&identities),
            Arc::clone(clock),
        );
        // Checked before anything starts: a bad policy stops the start.
        let policy = args
            .route_policy
            .as_deref()
            .map(RoutePolicy::load)
            .transpose()?
            .map(Arc::new);
        Ok(Self {
            authorizer: Authorizer::new(verifier.clone(), policy),
            verifier,
            keys: KeyService::new(
                store.clone(),
                Arc::clone(&cache),
                args.key_prefix.clone(),
                catalog,
                Arc::clone(clock),
                args.database.database_timeout.into(),
            )
            .with_read_side(
                Arc::clone(&known),
                replica_ref.map(|r| Arc::clone(&r.state)),
            )
            .with_limits(
                Arc::clone(&rate_limits),
                Arc::clone(&quotas),
                Arc::clone(&identities),
            ),
            known,
            replica,
            usage,
            rate_limits,
            quotas,
            cache,
            identities,
            webhooks,
        })
    }
}
