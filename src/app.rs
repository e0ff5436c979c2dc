//! Assembles keygate from its parts and runs it until told to stop.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    cache::{CacheConfig, KeyCache},
    config::{DatabaseArgs, HealthArgs, ServeArgs},
    invalidation::Poller,
    lookup::Lookups,
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
/// How long a client may take to complete the TLS handshake; tonic runs handshakes
/// off the accept loop, but without a bound a silent client would hold one forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
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
    #[error("TLS: {0}")]
    Tls(String),
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
    /// Where KeyAdmin is served when it has a listener of its own.
    admin_addr: Option<SocketAddr>,
    generated_token: Option<String>,
    metrics_addr: SocketAddr,
    /// Stops the gRPC server; background tasks are stopped after it has drained,
    /// so usage counted by the last in-flight calls is still flushed.
    stop_server: watch::Sender<bool>,
    stop_tasks: watch::Sender<bool>,
    server: JoinHandle<Result<(), AppError>>,
    admin_server: Option<JoinHandle<Result<(), AppError>>>,
    background: Vec<JoinHandle<()>>,
    store: Store,
}

impl App {
    /// Opens the store, migrates it, binds the listener and starts serving.
    pub async fn start(args: ServeArgs) -> Result<Self, AppError> {
        let store = open_store(&args.database).await?;
        crate::metrics::store_pool_max(args.database.database_max_connections);

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
        let (stop_server, server_rx) = watch::channel(false);

        let (health, health_service) = tonic_health::server::health_reporter();
        let mut background = vec![
            tokio::spawn(poller.run(args.invalidation_interval.into(), tasks_rx.clone())),
            tokio::spawn(Arc::clone(&usage).run(
                store.clone(),
                args.usage_flush_interval.into(),
                tasks_rx.clone(),
            )),
            tokio::spawn(watch_store_health(store.clone(), health, tasks_rx.clone())),
        ];
        let (metrics_addr, metrics_task) =
            crate::metrics::serve(args.metrics_listen, tasks_rx.clone())
                .await
                .map_err(|source| AppError::Listen {
                    addr: args.metrics_listen,
                    source,
                })?;
        background.push(metrics_task);

        // Fewer reads than pool connections: under load misses queue behind
        // them and are read together, and admin writes, the usage flush and the
        // invalidation poll keep connections of their own.
        let lookups = Lookups::start(
            store.clone(),
            usize::from(args.lookup_concurrency),
            args.database.database_timeout.into(),
        );
        let verify = KeyVerifyServer::new(VerifyService::new(lookups, Arc::clone(&cache), usage))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let admin = KeyAdminServer::new(AdminService::new(
            store.clone(),
            cache,
            tokens,
            args.key_prefix.clone(),
            catalog,
            args.database.database_timeout.into(),
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // Lets grpcurl decode the google.rpc.BadRequest details of our errors.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        let tls = load_tls(&args)?;
        let limits = Limits {
            per_connection: args.max_concurrent_requests_per_connection,
            request_timeout: args.request_timeout.into(),
        };

        // Both listeners are bound before either server starts, so a busy admin
        // port fails the start without leaving the main server running.
        let (incoming, addr) = bind(args.listen)?;
        let admin_listener = args.admin_listen.map(bind).transpose()?;
        let admin_addr = admin_listener.as_ref().map(|(_, a)| *a);

        // With an admin listener of its own, KeyAdmin is not routed on the main
        // one at all (calls there get UNIMPLEMENTED), so a network policy on the
        // admin port is the whole story.
        let (shared_admin, separate_admin) = match admin_listener {
            None => (Some(admin), None),
            Some((admin_incoming, _)) => {
                let router = server_builder(tls.as_ref(), limits)?
                    .add_service(health_service.clone())
                    .add_service(reflection().build_v1()?)
                    .add_service(reflection().build_v1alpha()?)
                    .add_service(admin);
                (None, Some((router, admin_incoming)))
            }
        };
        let main = server_builder(tls.as_ref(), limits)?
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?)
            .add_service(verify)
            .add_optional_service(shared_admin);

        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.changed().await;
        };
        let admin_server = separate_admin.map(|(router, admin_incoming)| {
            let serve =
                router.serve_with_incoming_shutdown(admin_incoming, stopped(server_rx.clone()));
            tokio::spawn(async move { serve.await.map_err(AppError::from) })
        });
        let serve = main.serve_with_incoming_shutdown(incoming, stopped(server_rx));
        let server = tokio::spawn(async move { serve.await.map_err(AppError::from) });
        tracing::info!(
            %addr,
            admin_addr = admin_addr.map(tracing::field::display),
            %metrics_addr,
            tls = tls.is_some(),
            mtls = args.tls_client_ca.is_some(),
            store = store.backend(),
            "keygate serving"
        );

        Ok(Self {
            addr,
            admin_addr,
            generated_token,
            metrics_addr,
            stop_server,
            stop_tasks,
            server,
            admin_server,
            background,
            store,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where `/metrics` is served (the address actually bound).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The address KeyAdmin is served on when `--admin-listen` is set (the one
    /// actually bound, useful with port 0); otherwise KeyAdmin is on [`App::addr`].
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The admin token generated because none was configured.
    pub fn generated_token(&self) -> Option<&str> {
        self.generated_token.as_deref()
    }

    /// Stops accepting, lets in-flight calls finish, flushes usage, closes the store.
    pub async fn shutdown(self) -> Result<(), AppError> {
        // Both servers stop accepting at once and drain in parallel; the
        // background tasks only stop once neither has a call in flight.
        let _ = self.stop_server.send(true);
        let served = self.server.await;
        let admin_served = match self.admin_server {
            Some(server) => server.await,
            None => Ok(Ok(())),
        };
        let _ = self.stop_tasks.send(true);
        for task in self.background {
            task.await?;
        }
        self.store.close().await;
        served??;
        admin_served?
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
            _ = shutdown.changed() => break,
        }
    }
    for s in SERVICES {
        health
            .set_service_status(s, ServingStatus::NotServing)
            .await;
        crate::metrics::health_serving(s, false);
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

/// See [`crate::codec::caller_fault_status`].
type StatusRewrite = fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>;

/// The transport limits every listener applies to each of its connections.
#[derive(Debug, Clone, Copy)]
struct Limits {
    per_connection: usize,
    request_timeout: Duration,
}

/// Binds `addr`; returns the listener and the address actually bound.
fn bind(addr: SocketAddr) -> Result<(TcpIncoming, SocketAddr), AppError> {
    let listen_error = |source| AppError::Listen { addr, source };
    let incoming = TcpIncoming::bind(addr)
        .map_err(listen_error)?
        // Verify responses are small and latency-bound: never wait to coalesce them.
        .with_nodelay(Some(true));
    let bound = incoming.local_addr().map_err(listen_error)?;
    Ok((incoming, bound))
}

/// A server with keygate's transport settings; the main and the admin listener
/// are both built here, so they enforce the same TLS and limits.
fn server_builder(
    tls: Option<&ServerTlsConfig>,
    limits: Limits,
) -> Result<
    Server<
        tower::layer::util::Stack<
            tower::util::MapResponseLayer<StatusRewrite>,
            tower::layer::util::Identity,
        >,
    >,
    AppError,
> {
    // tonic stacks these three per connection, in a fixed order that is the one
    // we want (tonic 0.14 `MakeSvc::call`): load shed -> concurrency limit ->
    // timeout -> our services.
    let builder = Server::builder()
        // Per connection rather than global: one client flooding its connection
        // cannot take the slots of the others. HTTP/2 multiplexes every call of
        // a tonic Channel onto one connection, so this bounds a client's calls.
        .concurrency_limit_per_connection(limits.per_connection)
        // Outside the limit: when every slot is taken a call is refused at once
        // instead of waiting in a queue that grows without bound. tonic maps
        // tower's `Overloaded` to RESOURCE_EXHAUSTED ("Too many active requests
        // for the connection"), so clients see the gRPC code for overload and
        // may retry with backoff. A refused call never reaches the timeout.
        .load_shed(true)
        // Inside the limit: the clock starts once a call holds a slot, so it
        // bounds how long a slot can be held (a stalled store, a client that
        // never finishes its request body). tonic answers CANCELLED ("Timeout
        // expired"); a shorter `grpc-timeout` sent by the client wins.
        .timeout(limits.request_timeout)
        // Around every service: a request refused before its handler ran (bad
        // bytes, too large) gets the code that says it was the caller's fault.
        .layer(tower::util::MapResponseLayer::new(
            crate::codec::caller_fault_status as StatusRewrite,
        ));
    match tls {
        None => Ok(builder),
        Some(tls) => builder
            .tls_config(tls.clone())
            .map_err(|e| AppError::Tls(error_chain(&e))),
    }
}

/// Reads the TLS flags: `None` for plaintext. Loads and checks the PEM files now,
/// so a bad certificate or key fails the start with its path and reason.
fn load_tls(args: &ServeArgs) -> Result<Option<ServerTlsConfig>, AppError> {
    let (cert, key) = match (&args.tls_cert, &args.tls_key) {
        (None, None) if args.tls_client_ca.is_some() => {
            return Err(AppError::Tls(
                "--tls-client-ca needs --tls-cert and --tls-key".into(),
            ));
        }
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(AppError::Tls(
                "--tls-cert and --tls-key must be given together".into(),
            ));
        }
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| AppError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &args.tls_client_ca {
        // Required, not merely accepted: rustls then ends every handshake
        // without a certificate chaining to this CA before any call is read.
        config = config
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(false);
    }
    // tonic parses the PEM only when the config is applied: do it once here to
    // report which files are wrong.
    Server::builder().tls_config(config.clone()).map_err(|e| {
        let mut files = format!("{} / {}", cert.display(), key.display());
        if let Some(ca) = &args.tls_client_ca {
            files = format!("{files} / {}", ca.display());
        }
        AppError::Tls(format!("cannot use {files}: {}", error_chain(&e)))
    })?;
    Ok(Some(config))
}

/// An error and its sources, as one line: tonic's own message is only "transport error".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
