//! Wiring only: assembles keygate from its named parts and runs it until told
//! to stop. No rule of the product lives here.
//!
//! - **parts** (`parts.rs`): the keys service, the verifier and the edge's
//!   authorizer (`crate::services`), over one store, one cache, one usage
//!   recorder, one set of limiters and one clock;
//! - **listeners** (`listeners.rs`): every listener bound before any serves,
//!   each on the one accept loop (`connections.rs`: the connection cap, TLS from
//!   `tls.rs`, idle and age timeouts), speaking gRPC (`transport.rs`, behind
//!   `admission.rs`) or HTTP (`http_server.rs`);
//! - **background tasks** (`tasks.rs`) on one `TaskTracker`: the filter load,
//!   the invalidation poll, the usage flush, retention pruning, the lease
//!   sweeps, webhooks, the store-health watcher and `/metrics`;
//! - **health** (`health.rs`): `grpc.health.v1` in step with the store;
//! - **errors** (`errors.rs`): why keygate could not start, each saying what to
//!   change; **files** (`files.rs`): the open-file limit.
//!
//! Shutdown runs in that order backwards: the servers stop accepting and drain,
//! then the background tasks stop (the usage flush writes a last time), then the
//! store closes.

mod admission;
mod connections;
mod errors;
mod files;
mod health;
mod http_server;
mod listeners;
mod parts;
mod tasks;
mod tls;
mod transport;

use std::{net::SocketAddr, sync::Arc};

use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use errors::AppError;
pub use health::check_health;
pub use listeners::{ENVOY_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES};
use listeners::{Serving, serve};
use parts::{Replica, Services};
use tasks::start_background;

use crate::{
    api::grpc::AdminTokens,
    clock::{SharedClock, SystemClock},
    config::{DatabaseArgs, ServeArgs},
    hotpath::replica::ReplicaState,
    store::{PoolConfig, Store},
};

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
