//! Assembles keygate from its parts and runs it until told to stop.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    cache::{CacheConfig, KeyCache},
    config::{DatabaseArgs, ServeArgs},
    invalidation::Poller,
    proto::{self, key_admin_server::KeyAdminServer, key_verify_server::KeyVerifyServer},
    scopes::ScopeCatalog,
    service::{AdminService, AdminTokens, VerifyService},
    store::{PoolConfig, Store},
    usage::UsageRecorder,
};

/// The largest request keygate decodes; a legitimate one is a few KiB at most.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// How often the health service asks the store whether it answers.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Services whose health follows the store's.
const SERVICES: [&str; 3] = ["", "keygate.v1.KeyVerify", "keygate.v1.KeyAdmin"];

/// Why keygate could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("invalid admin tokens: {0}")]
    Tokens(#[from] crate::service::auth::TokenError),
    #[error("{0}")]
    Catalog(#[from] crate::scopes::CatalogError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("health check: {0}")]
    Health(String),
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Opens the store named by the database flags and brings its schema up to date.
pub async fn open_store(db: &DatabaseArgs) -> Result<Store, AppError> {
    let config = PoolConfig {
        max_connections: db.database_max_connections,
        acquire_timeout: db.database_timeout.into(),
    };
    let store = Store::connect(&db.database_url, &config).await?;
    store.migrate().await?;
    Ok(store)
}

/// A running keygate.
#[derive(Debug)]
pub struct App {
    addr: SocketAddr,
    generated_token: Option<String>,
    /// Stops the gRPC server; background tasks are stopped after it has drained,
    /// so usage counted by the last in-flight calls is still flushed.
    stop_server: watch::Sender<bool>,
    stop_tasks: watch::Sender<bool>,
    server: JoinHandle<Result<(), AppError>>,
    background: Vec<JoinHandle<()>>,
    store: Store,
}

impl App {
    /// Opens the store, migrates it, binds the listener and starts serving.
    pub async fn start(args: ServeArgs) -> Result<Self, AppError> {
        let store = open_store(&args.database).await?;

        let generated_token = args.admin_tokens.is_empty().then(AdminTokens::generate);
        let tokens = match &generated_token {
            Some(t) => AdminTokens::new(std::slice::from_ref(t))?,
            None => AdminTokens::new(&args.admin_tokens)?,
        };
        let catalog = args
            .scope_catalog
            .as_deref()
            .map(ScopeCatalog::load)
            .transpose()?
            .map(Arc::new);

        let cache = Arc::new(KeyCache::new(&CacheConfig {
            capacity: args.cache_capacity,
            ttl: args.cache_ttl.into(),
            negative_capacity: args.negative_cache_capacity,
            negative_ttl: args.negative_cache_ttl.into(),
        }));
        let usage = Arc::new(UsageRecorder::default());
        let poller = Poller::start(store.clone(), Arc::clone(&cache)).await?;
        let (stop_tasks, tasks_rx) = watch::channel(false);
        let (stop_server, mut server_rx) = watch::channel(false);

        let (health, health_service) = tonic_health::server::health_reporter();
        let background = vec![
            tokio::spawn(poller.run(args.invalidation_interval.into(), tasks_rx.clone())),
            tokio::spawn(Arc::clone(&usage).run(
                store.clone(),
                args.usage_flush_interval.into(),
                tasks_rx.clone(),
            )),
            tokio::spawn(watch_store_health(store.clone(), health, tasks_rx.clone())),
        ];

        let verify =
            KeyVerifyServer::new(VerifyService::new(store.clone(), Arc::clone(&cache), usage))
                .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let admin = KeyAdminServer::new(AdminService::new(
            store.clone(),
            cache,
            tokens,
            args.key_prefix.clone(),
            catalog,
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // Lets grpcurl decode the google.rpc.BadRequest details of our errors.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        let incoming = TcpIncoming::bind(args.listen)
            .map_err(|source| AppError::Listen {
                addr: args.listen,
                source,
            })?
            // Verify responses are small and latency-bound: never wait to coalesce them.
            .with_nodelay(Some(true));
        let addr = incoming.local_addr().map_err(|source| AppError::Listen {
            addr: args.listen,
            source,
        })?;

        let server = Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(verify)
            .add_service(admin)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_rx.changed().await;
            });
        let server = tokio::spawn(async move { server.await.map_err(AppError::from) });
        tracing::info!(%addr, store = store.backend(), "keygate serving");

        Ok(Self {
            addr,
            generated_token,
            stop_server,
            stop_tasks,
            server,
            background,
            store,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin token generated because none was configured.
    pub fn generated_token(&self) -> Option<&str> {
        self.generated_token.as_deref()
    }

    /// Stops accepting, lets in-flight calls finish, flushes usage, closes the store.
    pub async fn shutdown(self) -> Result<(), AppError> {
        let _ = self.stop_server.send(true);
        let served = self.server.await;
        let _ = self.stop_tasks.send(true);
        for task in self.background {
            task.await?;
        }
        self.store.close().await;
        served?
    }
}

/// SERVING while the store answers, NOT_SERVING otherwise: a load balancer then
/// routes around an instance that can verify only what it has cached.
async fn watch_store_health(
    store: Store,
    health: HealthReporter,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        let ok = matches!(
            tokio::time::timeout(HEALTH_INTERVAL, store.ping()).await,
            Ok(Ok(()))
        );
        let status = if ok {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            for s in SERVICES {
                health.set_service_status(s, status).await;
            }
            if last.is_some() {
                tracing::warn!(?status, "store health changed");
            }
            last = Some(status);
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = shutdown.changed() => break,
        }
    }
    for s in SERVICES {
        health
            .set_service_status(s, ServingStatus::NotServing)
            .await;
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Asks a running keygate whether it is SERVING; for container health checks.
pub async fn check_health(addr: SocketAddr) -> Result<(), AppError> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| AppError::Health(e.to_string()))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|e| AppError::Health(e.message().to_owned()))?
        .into_inner()
        .status();
    if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
        Ok(())
    } else {
        Err(AppError::Health(format!("{status:?}")))
    }
}
