//! The background tasks, on one `TaskTracker` and stopped by one token (see
//! docs/ARCHITECTURE.md for the table of what each does and when it stops).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{AppError, health, parts::Services};
use crate::{clock::SharedClock, config::ServeArgs, hotpath::invalidation::Poller, store::Store};

/// The invalidation poll, the usage flush, the health watcher and `/metrics`;
/// returns where `/metrics` listens.
pub(super) async fn start_background(
    args: &ServeArgs,
    store: &Store,
    clock: &SharedClock,
    services: &Services,
    health: tonic_health::server::HealthReporter,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<SocketAddr, AppError> {
    // The verify path's reads: from the replica when there is one.
    let replica = services.replica.as_ref();
    let reads = replica.map_or_else(|| store.clone(), |r| r.store.clone());
    let poller = Poller::start(
        reads.clone(),
        Arc::clone(&services.cache),
        Arc::clone(&services.identities),
        Arc::clone(&services.known),
        replica.map(|r| (store.clone(), Arc::clone(&r.state))),
    )
    .await?;
    tasks.spawn(Arc::clone(&services.known).run(reads, stop.clone()));
    tasks.spawn(poller.run(args.invalidation_interval.into(), stop.clone()));
    tasks.spawn(Arc::clone(&services.usage).run(
        store.clone(),
        args.usage_flush_interval.into(),
        stop.clone(),
    ));
    tasks.spawn(crate::hotpath::usage::prune_history(
        store.clone(),
        Arc::clone(clock),
        args.usage_history_retention.into(),
        args.event_retention.into(),
        args.usage_history_prune_interval.into(),
        stop.clone(),
    ));
    // Notices: every instance looks; the store's claim sends each once.
    if !Duration::from(args.notice_interval).is_zero() {
        tasks.spawn(
            crate::services::notices::Notices::new(
                store.clone(),
                Arc::clone(clock),
                args.dormant_after.into(),
            )
            .run(args.notice_interval.into(), stop.clone()),
        );
    }
    // After the servers have drained, so no call spends credits meanwhile; the
    // last sweep gives every unspent credit back before the store closes.
    tasks.spawn(Arc::clone(&services.quotas).run(Arc::clone(clock), stop.clone()));
    // Likewise for calls leased from Redis' shared buckets and not spent.
    tasks.spawn(Arc::clone(&services.rate_limits).run(Arc::clone(clock), stop.clone()));
    if let Some(webhooks) = &services.webhooks {
        tasks.spawn(Arc::clone(webhooks).run(stop.clone()));
    }
    tasks.spawn(health::watch_store_health(
        store.clone(),
        health,
        stop.clone(),
    ));
    let (metrics_addr, metrics) = crate::metrics::serve(args.metrics_listen, stop.clone())
        .await
        .map_err(|source| AppError::Listen {
            addr: args.metrics_listen,
            source,
        })?;
    tasks.spawn(metrics);
    Ok(metrics_addr)
}
