//! `grpc.health.v1`, kept in step with the store, and `keygate health`, the
//! probe that asks it.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity};
use tonic_health::{ServingStatus, server::HealthReporter};

use super::{AppError, transport::error_chain};
use crate::{config::HealthArgs, store::Store};

/// How often the health service asks the store whether it answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Services whose health follows the store's.
const SERVICES: [&str; 3] = ["", "keygate.v1.KeyVerify", "keygate.v1.KeyAdmin"];

/// SERVING while the store answers, NOT_SERVING otherwise: a load balancer then
/// routes around an instance that can verify only what it has cached.
pub(super) async fn watch_store_health(
    store: Store,
    health: HealthReporter,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let ok = matches!(
            tokio::time::timeout(HEALTH_INTERVAL, store.ping()).await,
            Ok(Ok(()))
        );
        crate::metrics::store_up(ok);
        let (size, idle) = store.pool_stats();
        crate::metrics::store_pool(size, idle);
        let status = if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            for s in SERVICES {
                health.set_service_status(s, status).await;
                crate::metrics::health_serving(s, ok);
            }
            if last.is_some() {
                tracing::warn!(?status, "store health changed");
            }
            last = Some(status);
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            () = shutdown.cancelled() => break,
        }
    }
    for s in SERVICES {
        health
            .set_service_status(s, ServingStatus::NotServing)
            .await;
        crate::metrics::health_serving(s, false);
    }
}

/// Asks a running keygate whether it is SERVING; for container health checks.
///
/// Speaks TLS (and presents a client certificate) when asked to, so deployments
/// with `--tls-cert` or mTLS can probe the same way. A keygate that cannot be
/// reached and one that answers NOT_SERVING fail with different messages.
pub async fn check_health(args: HealthArgs) -> Result<(), AppError> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus as Status,
        health_client::HealthClient,
    };
    let addr = args.addr;
    let scheme = if args.tls_ca.is_some() {
        "https"
    } else {
        "http"
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| AppError::Health(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2));
    if let Some(ca) = &args.tls_ca {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| AppError::Tls(format!("cannot read {}: {e}", path.display())))
        };
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(ca)?))
            .domain_name(
                args.tls_domain
                    .clone()
                    .unwrap_or_else(|| addr.ip().to_string()),
            );
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| AppError::Tls(error_chain(&e)))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        AppError::Health(format!(
            "could not reach keygate at {addr}: {}",
            error_chain(&e)
        ))
    })?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|e| {
            let hint = if args.tls_ca.is_none() {
                "; if it serves TLS, pass --tls-ca"
            } else {
                ""
            };
            AppError::Health(format!(
                "keygate at {addr} did not answer the health check ({:?}: {}){hint}",
                e.code(),
                e.message()
            ))
        })?
        .into_inner()
        .status();
    if status == Status::Serving {
        Ok(())
    } else {
        Err(AppError::Health(format!(
            "keygate at {addr} answers {} (its store is unreachable, or it is stopping)",
            status.as_str_name()
        )))
    }
}
