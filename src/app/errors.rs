//! Why keygate could not start, or stopped badly: one error for the wiring,
//! each variant saying what to change.

use std::net::SocketAddr;

/// Why keygate could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("invalid admin tokens: {0}")]
    Tokens(#[from] crate::api::grpc::auth::TokenError),
    #[error("{0}")]
    Catalog(#[from] crate::domain::scopes::CatalogError),
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
    LeakKeys(#[from] crate::domain::leaks::KeysFileError),
    #[error("cannot open the replica (--database-read-url): {0}")]
    Replica(crate::store::StoreError),
    #[error("--trusted-proxies: {0}")]
    TrustedProxies(#[from] crate::domain::networks::NetworksError),
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
