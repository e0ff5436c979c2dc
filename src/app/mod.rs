//! Wiring only: assembles keygate from its named parts and runs it until told
//! to stop. No rule of the product lives here.
//!
//! - **services**: the keys service and the verifier (`crate::services`), over
//!   one store, one cache, one usage recorder and one clock;
//! - **transport**: the gRPC listeners with their TLS and tower stack
//!   (`transport.rs`), serving the `api::grpc` translations of those services;
//! - **background tasks** on one `TaskTracker`: the invalidation poll, the usage
//!   flush, the store-health watcher, `/metrics` and the lookup reader;
//! - **health** (`health.rs`): `grpc.health.v1` in step with the store.
//!
//! Shutdown runs in that order backwards: the servers stop accepting and drain,
//! then the background tasks stop (the usage flush writes a last time), then the
//! store closes.

mod admission;
mod connections;
mod files;
mod health;
mod http_server;
mod tls;
mod transport;

use std::{net::SocketAddr, sync::Arc};

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::Routes;
use tonic_health::pb::health_server::{Health, HealthServer};

use connections::{Lifetime, Listener};
pub use health::check_health;
use http_server::Http;
use tls::ServerTls;
use transport::Grpc;

use crate::{
    api::{
        envoy::EnvoyApi,
        grpc::{AdminApi, AdminTokens, VerifyApi, VerifyService, observe::ObserveAdminLayer},
        http::{HttpConfig, authorize::AuthorizeRoute, leaks::LeakRoute},
    },
    cache::{CacheConfig, KeyCache},
    clock::{SharedClock, SystemClock},
    config::{DatabaseArgs, Sensitive, ServeArgs},
    domain::routes::RoutePolicy,
    filter::KnownKeys,
    invalidation::Poller,
    leaks::LeakKeys,
    lookup::Lookups,
    proto::{self, key_admin_server::KeyAdminServer},
    replica::ReplicaState,
    scopes::ScopeCatalog,
    services::{
        KeyService, Verifier, authorizer::Authorizer, limiter::RateLimiter, quota::Quotas,
        shared_limits::SharedLimits,
    },
    store::{PoolConfig, Store},
    usage::UsageRecorder,
    webhooks::delivery::Webhooks,
};

/// The largest request keygate decodes; a legitimate one is a few KiB at most.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The largest Envoy check request keygate decodes: it carries the client's
/// headers (Envoy allows 60 KiB of them by default) and the request's attributes.
pub const ENVOY_MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// Why keygate could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("invalid admin tokens: {0}")]
    Tokens(#[from] crate::api::grpc::auth::TokenError),
    #[error("{0}")]
    Catalog(#[from] crate::scopes::CatalogError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("health check: {0}")]
    Health(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("--rate-limit-redis-url: {0}")]
    Redis(String),
    #[error("{0}")]
    Webhooks(#[from] crate::webhooks::delivery::WebhookConfigError),
    #[error("--leak-report-keys: {0}")]
    LeakKeys(#[from] crate::leaks::KeysFileError),
    #[error("cannot open the replica (--database-read-url): {0}")]
    Replica(crate::store::StoreError),
    #[error("--route-policy: {0}")]
    RoutePolicy(#[from] crate::domain::routes::PolicyError),
    #[error(
        "--admin-tokens (KEYGATE_ADMIN_TOKENS) is required: {0} is not a loopback address, \
         and keygate generates a token for itself only when every listener is on loopback"
    )]
    AdminTokensRequired(SocketAddr),
    #[error(
        "--http-listen {0} is not a loopback address: the HTTP listener receives API keys \
         and leaked tokens, so off the host it serves only TLS; give --tls-cert and --tls-key, \
         or listen on loopback behind a proxy on the same host"
    )]
    HttpWithoutTls(SocketAddr),
    #[error("cannot read or raise the open-file limit: {0}")]
    OpenFiles(std::io::Error),
    #[error(
        "the open-file limit ({limit}) leaves no room: --http-max-connections {http} plus \
         {reserve} for gRPC connections, the store and keygate's own files needs {}; \
         raise the hard limit (ulimit -Hn, LimitNOFILE=, the container's nofile) or \
         lower --http-max-connections", http + reserve
    )]
    NoRoom { limit: u64, http: u64, reserve: u64 },
}

/// Opens the store named by the database flags and brings its schema up to date.
pub async fn open_store(db: &DatabaseArgs) -> Result<Store, AppError> {
    let store = Store::connect(db.database_url.expose(), &pool_config(db)).await?;
    store.migrate().await?;
    Ok(store)
}

/// The pool of the store, and of its replica: the same size and wait.
fn pool_config(db: &DatabaseArgs) -> PoolConfig {
    PoolConfig {
        max_connections: db.database_max_connections,
        acquire_timeout: db.database_timeout.into(),
    }
}

/// A running keygate.
#[derive(Debug)]
pub struct App {
    addr: SocketAddr,
    /// Where KeyAdmin is served when it has a listener of its own.
    admin_addr: Option<SocketAddr>,
    /// Where the HTTP routes are served (`--http-listen`).
    http_addr: Option<SocketAddr>,
    generated_token: Option<String>,
    metrics_addr: SocketAddr,
    /// Stops the gRPC servers; background tasks are stopped after they have
    /// drained, so usage counted by the last in-flight calls is still flushed.
    stop_servers: CancellationToken,
    servers: Vec<JoinHandle<Result<(), AppError>>>,
    stop_tasks: CancellationToken,
    tasks: TaskTracker,
    store: Store,
}

/// The services every transport calls, and what they share.
struct Services {
    keys: KeyService,
    verifier: Verifier,
    /// The verifier behind the route policy, for Envoy and forward auth.
    authorizer: Authorizer,
    usage: Arc<UsageRecorder>,
    rate_limits: Arc<RateLimiter>,
    quotas: Arc<Quotas>,
    cache: Arc<KeyCache>,
    webhooks: Option<Arc<Webhooks>>,
    /// Every key hash, so forged keys cost no store read.
    known: Arc<KnownKeys>,
    replica: Option<Replica>,
}

/// Store reads a forged-key filter lets through a second for keys it rules
/// out: enough for keys created on another instance a moment ago, too few to
/// matter to the store during a flood.
const FORGED_KEY_BYPASS_PER_SECOND: u32 = 10;

/// `--database-read-url`: the replica and what this instance knows of its progress.
struct Replica {
    store: Store,
    state: Arc<ReplicaState>,
}

impl Services {
    fn build(
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
        let verifier = Verifier::new(
            lookups,
            Arc::clone(&known),
            Arc::clone(&cache),
            Arc::clone(&usage),
            Arc::clone(&rate_limits),
            Arc::clone(&quotas),
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
            .with_limits(Arc::clone(&rate_limits), Arc::clone(&quotas)),
            known,
            replica,
            usage,
            rate_limits,
            quotas,
            cache,
            webhooks,
        })
    }
}

impl App {
    /// Opens the store, migrates it, binds the listeners and starts serving, on
    /// the system clock.
    pub async fn start(args: ServeArgs) -> Result<Self, AppError> {
        Self::build(args, Arc::new(SystemClock)).await
    }

    /// As [`App::start`], reading time from `clock` (tests move it by hand).
    pub async fn build(args: ServeArgs, clock: SharedClock) -> Result<Self, AppError> {
        // Before anything changes (the store's file, the open-file limit).
        if args.admin_tokens.is_empty() {
            // A generated token is valid for every organization: on a listener
            // others can reach, one missing secret would hand them KeyAdmin.
            let listeners = [Some(args.listen), args.admin_listen, args.http_listen]
                .into_iter()
                .flatten()
                .chain([args.metrics_listen]);
            for addr in listeners {
                if !addr.ip().is_loopback() {
                    return Err(AppError::AdminTokensRequired(addr));
                }
            }
        }
        // The HTTP listener receives API keys (`/v1/authorize`) and leaked
        // tokens: off the host, only over TLS.
        if let Some(addr) = args.http_listen
            && !addr.ip().is_loopback()
            && args.tls_cert.is_none()
        {
            return Err(AppError::HttpWithoutTls(addr));
        }
        files::raise_limit(&args)?;
        let store = open_store(&args.database).await?;
        crate::metrics::store_pool_max(args.database.database_max_connections);
        let generated_token = args.admin_tokens.is_empty().then(AdminTokens::generate);
        let tokens = match &generated_token {
            Some(t) => AdminTokens::new(std::slice::from_ref(t))?,
            None => AdminTokens::new(
                &args
                    .admin_tokens
                    .iter()
                    .map(|t| t.expose().to_owned())
                    .collect::<Vec<_>>(),
            )?,
        };

        let tasks = TaskTracker::new();
        let stop_tasks = CancellationToken::new();
        // Every event this instance writes is queued for its webhook endpoints
        // in the event's own transaction.
        let store = store
            .with_webhook_endpoints(crate::webhooks::delivery::endpoint_ids(
                &args.webhook_urls(),
            )?)
            .with_key_cap(args.max_keys_per_organization);
        let replica = match &args.database_read_url {
            None => None,
            Some(url) => Some(Replica {
                store: Store::connect(url.expose(), &pool_config(&args.database))
                    .await
                    .map_err(AppError::Replica)?,
                state: Arc::new(ReplicaState::default()),
            }),
        };
        let services = Services::build(&args, &store, replica, &clock, &tasks)?;
        let (health, health_service) = tonic_health::server::health_reporter();
        let metrics_addr = start_background(
            &args,
            &store,
            &clock,
            &services,
            health,
            &tasks,
            &stop_tasks,
        )
        .await?;

        let tls = tls::load(&args)?;
        let stop_servers = CancellationToken::new();
        let Serving {
            addr,
            admin_addr,
            http_addr,
            servers,
        } = serve(
            &args,
            tls.as_ref(),
            services,
            tokens,
            health_service,
            &stop_servers,
        )?;
        tracing::info!(
            %addr,
            admin_addr = admin_addr.map(tracing::field::display),
            http_addr = http_addr.map(tracing::field::display),
            %metrics_addr,
            tls = tls.is_some(),
            mtls = args.tls_client_ca.is_some(),
            store = store.backend(),
            "keygate serving"
        );
        Ok(Self {
            addr,
            admin_addr,
            http_addr,
            generated_token,
            metrics_addr,
            stop_servers,
            servers,
            stop_tasks,
            tasks,
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

    /// Where the HTTP routes are served (the address actually bound), when
    /// `--http-listen` is set.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The admin token generated because none was configured.
    pub fn generated_token(&self) -> Option<&str> {
        self.generated_token.as_deref()
    }

    /// Stops accepting, lets in-flight calls finish, flushes usage, closes the store.
    pub async fn shutdown(self) -> Result<(), AppError> {
        // Both servers stop accepting at once and drain in parallel; the
        // background tasks only stop once neither has a call in flight.
        self.stop_servers.cancel();
        let mut served = Ok(());
        for server in self.servers {
            let result = server.await.map_err(AppError::from).and_then(|r| r);
            if served.is_ok() {
                served = result;
            }
        }
        self.stop_tasks.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.store.close().await;
        served
    }
}

/// The invalidation poll, the usage flush, the health watcher and `/metrics`;
/// returns where `/metrics` listens.
async fn start_background(
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
    tasks.spawn(crate::usage::prune_history(
        store.clone(),
        Arc::clone(clock),
        args.usage_history_retention.into(),
        args.event_retention.into(),
        args.usage_history_prune_interval.into(),
        stop.clone(),
    ));
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

/// The servers running, and where.
struct Serving {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    servers: Vec<JoinHandle<Result<(), AppError>>>,
}

/// Binds the listeners and starts serving them: KeyVerify, Envoy's
/// authorization, health and reflection on `--listen`, KeyAdmin there too or
/// alone on `--admin-listen`, and the HTTP routes on `--http-listen`.
fn serve(
    args: &ServeArgs,
    tls: Option<&ServerTls>,
    services: Services,
    tokens: AdminTokens,
    health_service: HealthServer<impl Health>,
    stop: &CancellationToken,
) -> Result<Serving, AppError> {
    let http_keys = services.keys.clone();
    let verify = VerifyService::new(VerifyApi::new(services.verifier), MAX_MESSAGE_BYTES);
    let envoy = AuthorizationServer::new(EnvoyApi::new(services.authorizer.clone()))
        .max_decoding_message_size(ENVOY_MAX_MESSAGE_BYTES);
    // Counting and logging wrap the whole service, so no RPC is left out.
    let admin = tower::ServiceBuilder::new()
        .layer(ObserveAdminLayer)
        .service(
            KeyAdminServer::new(AdminApi::new(services.keys, tokens))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        );
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // Lets grpcurl decode the google.rpc.BadRequest details of our errors.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(proto::ENVOY_AUTHZ_DESCRIPTOR_SET)
    };
    let base_routes = || -> Result<Routes, AppError> {
        Ok(Routes::new(health_service.clone())
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?))
    };
    // The instance's calls in progress, shared by both gRPC listeners.
    let admission = admission::AdmissionLayer::new(args.max_in_flight);
    let request_timeout: std::time::Duration = args.request_timeout.into();
    let grpc_lifetime = Lifetime {
        idle: args.grpc_idle_timeout.into(),
        max_age: Some(args.grpc_max_connection_age.into()),
        grace: request_timeout + std::time::Duration::from_secs(1),
    };
    let grpc = |routes: Routes| {
        Grpc::new(
            transport::services(routes, &admission),
            args.max_concurrent_requests_per_connection,
            request_timeout,
        )
    };
    let grpc_tls = tls.map(|t| t.acceptor(b"h2"));
    let listen_error = |addr| move |source| AppError::Listen { addr, source };

    // Every listener is bound before any server starts, so a busy port fails
    // the start without leaving another listener serving.
    let main_tcp = connections::bind(args.listen).map_err(listen_error(args.listen))?;
    let addr = main_tcp.local_addr().map_err(listen_error(args.listen))?;
    let admin_tcp = match args.admin_listen {
        None => None,
        Some(a) => Some(connections::bind(a).map_err(listen_error(a))?),
    };
    let admin_addr = match &admin_tcp {
        None => None,
        Some(l) => Some(l.local_addr().map_err(listen_error(addr))?),
    };
    let http = match args.http_listen {
        None => None,
        Some(http_listen) => {
            let leaks = args
                .leak_report_keys
                .as_deref()
                .map(LeakKeys::load)
                .transpose()?
                .map(|keys| Arc::new(LeakRoute::new(keys, http_keys)));
            let config = HttpConfig {
                authorize: AuthorizeRoute::new(services.authorizer.clone()),
                leaks,
                request_timeout,
            };
            let tcp = connections::bind(http_listen).map_err(listen_error(http_listen))?;
            Some((tcp, config))
        }
    };

    let mut servers = Vec::new();
    // With an admin listener of its own, KeyAdmin is not routed on the main
    // one at all (calls there get UNIMPLEMENTED), so a network policy on the
    // admin port is the whole story.
    let mut main_routes = base_routes()?.add_service(verify).add_service(envoy);
    match admin_tcp {
        None => main_routes = main_routes.add_service(admin),
        Some(tcp) => {
            let listener = Listener {
                name: "grpc",
                tcp,
                tls: grpc_tls.clone(),
                max_connections: None,
                lifetime: grpc_lifetime,
            };
            let protocol = grpc(base_routes()?.add_service(admin));
            let stop = stop.clone();
            servers.push(tokio::spawn(async move {
                connections::serve(listener, protocol, stop).await;
                Ok(())
            }));
        }
    }
    let mut http_addr = None;
    if let Some((tcp, config)) = http {
        http_addr = tcp.local_addr().ok();
        let header_timeout: std::time::Duration = args.http_header_timeout.into();
        let listener = Listener {
            name: "http",
            tcp,
            tls: tls.map(|t| t.acceptor(b"http/1.1")),
            max_connections: Some(args.http_max_connections),
            // On HTTP/1 hyper's header clock closes an idle connection first;
            // this is the same bound for a connection hyper has not started.
            lifetime: Lifetime {
                idle: header_timeout,
                max_age: None,
                grace: request_timeout + std::time::Duration::from_secs(1),
            },
        };
        let protocol = Http::new(crate::api::http::router(config), header_timeout);
        let stop = stop.clone();
        servers.push(tokio::spawn(async move {
            connections::serve(listener, protocol, stop).await;
            Ok(())
        }));
    }
    let listener = Listener {
        name: "grpc",
        tcp: main_tcp,
        tls: grpc_tls,
        max_connections: None,
        lifetime: grpc_lifetime,
    };
    let protocol = grpc(main_routes);
    let stop = stop.clone();
    servers.push(tokio::spawn(async move {
        connections::serve(listener, protocol, stop).await;
        Ok(())
    }));
    Ok(Serving {
        addr,
        admin_addr,
        http_addr,
        servers,
    })
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
