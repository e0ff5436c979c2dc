//! Command line and environment. Every flag can also be set through a
//! `KEYGATE_*` variable, so containers and operators' scripts need no arguments.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::domain::keys::{KeyPrefix, Sensitive};

#[derive(Debug, Parser)]
#[command(
    name = "keygate",
    version,
    about = "Issues, scopes and verifies API keys over gRPC"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "KEYGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve keygate: gRPC (KeyVerify, KeyAdmin, Envoy ext_authz, health), and the
    /// HTTP and metrics listeners when configured (migrates the database first).
    Serve(Box<ServeArgs>),
    /// Apply the embedded database migrations and exit.
    Migrate(DatabaseArgs),
    /// Ask a running keygate's grpc.health.v1 service; exit 0 only when SERVING
    /// (for container health checks).
    Health(HealthArgs),
}

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Address of the keygate to ask.
    #[arg(long, env = "KEYGATE_HEALTH_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: SocketAddr,

    /// Speak TLS, trusting this CA certificate (PEM): for a keygate started with
    /// `--tls-cert`.
    #[arg(long, env = "KEYGATE_HEALTH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// The name the server's certificate must carry (default: the host of `--addr`).
    #[arg(long, env = "KEYGATE_HEALTH_TLS_DOMAIN", requires = "tls_ca")]
    pub tls_domain: Option<String>,

    /// Client certificate (PEM) for a keygate that requires mTLS (`--tls-client-ca`).
    #[arg(long, env = "KEYGATE_HEALTH_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,

    /// The client certificate's private key (PEM).
    #[arg(long, env = "KEYGATE_HEALTH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Store")]
pub struct DatabaseArgs {
    /// `sqlite://FILE` (created if missing) or `mysql://user:password@host:port/db`.
    #[arg(
        long,
        env = "KEYGATE_DATABASE_URL",
        default_value = "sqlite://keygate.db",
        hide_env_values = true
    )]
    pub database_url: Sensitive,

    /// Connections in the store's pool.
    #[arg(long, env = "KEYGATE_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,

    /// How long a call waits for a store connection before answering UNAVAILABLE.
    #[arg(long, env = "KEYGATE_DATABASE_TIMEOUT", default_value = "2s")]
    pub database_timeout: humantime::Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// `mysql://…` of a replica of `--database-url`: cache misses, the
    /// invalidation poll and the forged-key filter read there; writes and admin
    /// reads stay on the primary.
    #[arg(
        help_heading = "Store",
        long,
        env = "KEYGATE_DATABASE_READ_URL",
        hide_env_values = true
    )]
    pub database_read_url: Option<Sensitive>,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address of the gRPC server.
    #[arg(
        help_heading = "Listeners",
        long,
        env = "KEYGATE_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,

    /// Most live keys one organization may have; a create past it is refused
    /// RESOURCE_EXHAUSTED, so one tenant cannot grow everyone's storage and
    /// memory.
    #[arg(help_heading = "Keys and admin", 
        long,
        env = "KEYGATE_MAX_KEYS_PER_ORGANIZATION",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub max_keys_per_organization: u64,

    /// Comma-separated service tokens accepted by KeyAdmin; one is generated
    /// (and shown only to a terminal, or in a file of mode 0600) when none is
    /// set and every listener is on loopback.
    #[arg(
        help_heading = "Keys and admin",
        long,
        env = "KEYGATE_ADMIN_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_tokens: Vec<Sensitive>,

    /// Prefix of the keys this deployment issues (keys of any prefix verify).
    #[arg(
        help_heading = "Keys and admin",
        long,
        env = "KEYGATE_KEY_PREFIX",
        default_value = "kg_live"
    )]
    pub key_prefix: KeyPrefix,

    /// Address of the Prometheus metrics endpoint.
    #[arg(
        help_heading = "Listeners",
        long,
        env = "KEYGATE_METRICS_LISTEN",
        default_value = "127.0.0.1:9464"
    )]
    pub metrics_listen: SocketAddr,

    /// How often to poll the event table for other instances' changes.
    #[arg(
        help_heading = "Cache",
        long,
        env = "KEYGATE_INVALIDATION_INTERVAL",
        default_value = "250ms"
    )]
    pub invalidation_interval: humantime::Duration,

    /// A file of allowed scopes, one per line; without it any well-formed scope is accepted.
    #[arg(help_heading = "Keys and admin", long, env = "KEYGATE_SCOPE_CATALOG")]
    pub scope_catalog: Option<PathBuf>,

    /// Store reads the verify path keeps out at once. Cache misses that arrive
    /// while they are busy queue and are read together (up to 64 keys a read),
    /// so fewer reads mean larger ones and less work for the store.
    #[arg(help_heading = "Store", 
        long,
        env = "KEYGATE_LOOKUP_CONCURRENCY",
        default_value_t = 4,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub lookup_concurrency: u16,

    /// Keys held in the verify cache; 0 disables it.
    #[arg(
        help_heading = "Cache",
        long,
        env = "KEYGATE_CACHE_CAPACITY",
        default_value_t = 100_000
    )]
    pub cache_capacity: u64,

    /// Bytes the verify cache may hold (`128MiB`; also KiB, GiB or plain
    /// bytes): each key weighs its size, so large keys take their share and
    /// not one slot.
    #[arg(help_heading = "Cache", 
        long,
        env = "KEYGATE_CACHE_MAX_BYTES",
        default_value = "128MiB",
        value_parser = parse_bytes
    )]
    pub cache_max_bytes: u64,

    /// How long a cached key is trusted without asking the store.
    #[arg(
        help_heading = "Cache",
        long,
        env = "KEYGATE_CACHE_TTL",
        default_value = "60s"
    )]
    pub cache_ttl: humantime::Duration,

    /// Unknown keys remembered, to absorb floods of made-up keys; 0 disables it.
    #[arg(
        help_heading = "Cache",
        long,
        env = "KEYGATE_NEGATIVE_CACHE_CAPACITY",
        default_value_t = 100_000
    )]
    pub negative_cache_capacity: u64,

    /// How long an unknown key is remembered.
    #[arg(
        help_heading = "Cache",
        long,
        env = "KEYGATE_NEGATIVE_CACHE_TTL",
        default_value = "10s"
    )]
    pub negative_cache_ttl: humantime::Duration,

    /// How often usage counts are written to the store.
    #[arg(
        help_heading = "Usage and retention",
        long,
        env = "KEYGATE_USAGE_FLUSH_INTERVAL",
        default_value = "1s",
        value_parser = parse_flush_interval
    )]
    pub usage_flush_interval: humantime::Duration,

    /// Usage rows written per second at most (key rows and usage-history rows);
    /// counts above it wait in memory, oldest first, and are all written on
    /// shutdown.
    #[arg(help_heading = "Usage and retention", 
        long,
        env = "KEYGATE_USAGE_WRITE_BUDGET",
        default_value_t = 5000,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub usage_write_budget: u32,

    /// HTTP listener for forward auth (`/v1/authorize`: nginx, Traefik, Caddy)
    /// and leak reports (GitHub's at `POST /v1/leaks/github`, anyone's at
    /// `POST /v1/leaks/report`); off by default.
    #[arg(help_heading = "Listeners", long, env = "KEYGATE_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// How long an HTTP client may take to send a request's headers. The
    /// clock starts as soon as a connection waits for a request, so it is
    /// also how long an HTTP/1 keep-alive connection may stay idle (hyper has
    /// one timer for both).
    #[arg(help_heading = "Connections", 
        long,
        env = "KEYGATE_HTTP_HEADER_TIMEOUT",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    pub http_header_timeout: humantime::Duration,

    /// Most connections the HTTP listener holds open; more are closed at once
    /// (and counted), so a flood of idle connections cannot take the open
    /// files the gRPC listener, the store and Redis need.
    #[arg(help_heading = "Connections", 
        long,
        env = "KEYGATE_HTTP_MAX_CONNECTIONS",
        default_value_t = 1024,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub http_max_connections: usize,

    /// TOML route policy: the scopes each method and path needs when keygate
    /// authorizes requests for a proxy (Envoy ext_authz, `/v1/authorize`).
    /// Without it every route needs only a valid key.
    #[arg(
        help_heading = "Edge (Envoy and forward auth)",
        long,
        env = "KEYGATE_ROUTE_POLICY"
    )]
    pub route_policy: Option<PathBuf>,

    /// Proxies in front of the HTTP listener whose word forward auth takes,
    /// comma-separated CIDRs or addresses: from a peer in these networks, the
    /// presenter's address is the right-most `X-Forwarded-For` entry that is
    /// not itself a trusted proxy, and its workload identity is
    /// `X-Client-Principal`. From any other peer both headers are ignored and
    /// the presenter is the peer itself.
    #[arg(
        help_heading = "Edge (Envoy and forward auth)",
        long,
        env = "KEYGATE_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_trusted_proxy
    )]
    pub trusted_proxies: Vec<String>,

    /// GitHub's secret-scanning public keys (`{"public_keys": [...]}` JSON), to
    /// check the signature of leak reports; needs `--http-listen`.
    #[arg(
        help_heading = "Webhooks and leak reports",
        long,
        env = "KEYGATE_LEAK_REPORT_KEYS",
        requires = "http_listen"
    )]
    pub leak_report_keys: Option<PathBuf>,

    /// Endpoints every key event is POSTed to, comma-separated (signed with
    /// `--webhook-secret`).
    #[arg(
        help_heading = "Webhooks and leak reports",
        long,
        env = "KEYGATE_WEBHOOK_URL",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhook_url: Vec<Sensitive>,

    /// `whsec_<base64>`: the Standard Webhooks signing secret; required with
    /// `--webhook-url`.
    #[arg(
        help_heading = "Webhooks and leak reports",
        long,
        env = "KEYGATE_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<Sensitive>,

    /// `redis://host:port/db`, or `rediss://` for TLS: share rate-limit
    /// counters across instances through this Redis; without it each instance
    /// counts alone.
    #[arg(
        help_heading = "Limits",
        long,
        env = "KEYGATE_RATE_LIMIT_REDIS_URL",
        hide_env_values = true
    )]
    pub rate_limit_redis_url: Option<Sensitive>,

    /// PEM CA certificates a `rediss://` server's certificate must chain to
    /// (default: the system's CAs). Its name is verified either way.
    #[arg(
        help_heading = "Limits",
        long,
        env = "KEYGATE_RATE_LIMIT_REDIS_CA",
        requires = "rate_limit_redis_url"
    )]
    pub rate_limit_redis_ca: Option<PathBuf>,

    /// How long key events (the audit trail) and their webhook deliveries are
    /// kept; older ones are deleted in batches of 1000.
    #[arg(help_heading = "Usage and retention", 
        long,
        env = "KEYGATE_EVENT_RETENTION",
        default_value = "400d",
        value_parser = parse_positive_duration
    )]
    pub event_retention: humantime::Duration,

    /// How long hourly usage-history buckets are kept (daily ones: 400 days).
    #[arg(
        help_heading = "Usage and retention",
        long,
        env = "KEYGATE_USAGE_HISTORY_RETENTION",
        default_value = "35d"
    )]
    pub usage_history_retention: humantime::Duration,

    /// A live key unused this long gets a `key.dormant` notice (once per
    /// stretch of disuse).
    #[arg(
        help_heading = "Usage and retention",
        long,
        env = "KEYGATE_DORMANT_AFTER",
        default_value = "90d",
        value_parser = parse_positive_duration
    )]
    pub dormant_after: humantime::Duration,

    /// How often each instance looks for notices due (`key.expiring`,
    /// `key.dormant`, `quota.low`, `quota.exhausted`); each goes out once,
    /// whichever instance finds it first. 0 looks for none on this instance.
    #[arg(
        help_heading = "Usage and retention",
        long,
        env = "KEYGATE_NOTICE_INTERVAL",
        default_value = "60s"
    )]
    pub notice_interval: humantime::Duration,

    /// How often old usage history is pruned (tests shorten it).
    #[arg(
        help_heading = "Usage and retention",
        long,
        env = "KEYGATE_USAGE_HISTORY_PRUNE_INTERVAL",
        default_value = "60s",
        hide = true
    )]
    pub usage_history_prune_interval: humantime::Duration,

    /// Tokio worker threads; defaults to the number of cores.
    #[arg(help_heading = "Connections", long, env = "KEYGATE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// PEM certificate chain of every listener (gRPC, admin, HTTP); with
    /// `--tls-key`, they serve TLS only.
    #[arg(
        help_heading = "TLS",
        long,
        env = "KEYGATE_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(
        help_heading = "TLS",
        long,
        env = "KEYGATE_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s); when set, every client must present a certificate
    /// signed by one of them (mTLS). Needs `--tls-cert` and `--tls-key`.
    #[arg(
        help_heading = "TLS",
        long,
        env = "KEYGATE_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve KeyAdmin only on this address (with the same TLS and limits);
    /// `--listen` then serves KeyVerify, health and reflection.
    #[arg(help_heading = "Listeners", long, env = "KEYGATE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Calls one connection may have in progress; more are refused at once with
    /// RESOURCE_EXHAUSTED instead of queueing.
    #[arg(help_heading = "Connections", 
        long,
        env = "KEYGATE_MAX_CONCURRENT_REQUESTS_PER_CONNECTION",
        default_value_t = 1024,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_concurrent_requests_per_connection: usize,

    /// gRPC calls in progress on the whole instance (health checks aside);
    /// past it new calls are answered RESOURCE_EXHAUSTED at once instead of
    /// queueing, so an overloaded instance stays fast for what it accepts.
    #[arg(help_heading = "Connections", 
        long,
        env = "KEYGATE_MAX_IN_FLIGHT",
        default_value_t = 4096,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    pub max_in_flight: usize,

    /// How long a gRPC connection may stay open, idle or not; then it is
    /// closed gracefully (calls in progress finish, clients reconnect on their
    /// next call), so clients spread over instances added since they connected.
    #[arg(help_heading = "Connections", 
        long,
        env = "KEYGATE_GRPC_MAX_CONNECTION_AGE",
        default_value = "30m",
        value_parser = parse_positive_duration
    )]
    pub grpc_max_connection_age: humantime::Duration,

    /// How long a gRPC connection may go without a call in progress (pings
    /// do not count); then it is closed gracefully (GOAWAY), and the client
    /// reconnects on its next call.
    #[arg(help_heading = "Connections", 
        long,
        env = "KEYGATE_GRPC_IDLE_TIMEOUT",
        default_value = "5m",
        value_parser = parse_positive_duration
    )]
    pub grpc_idle_timeout: humantime::Duration,

    /// Longest a call may take (a shorter client deadline wins); then it is
    /// answered CANCELLED.
    #[arg(help_heading = "Connections", 
        long,
        env = "KEYGATE_REQUEST_TIMEOUT",
        default_value = "5s",
        value_parser = parse_positive_duration
    )]
    pub request_timeout: humantime::Duration,
}

/// A size in bytes, with an optional `KiB`, `MiB` or `GiB`.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 134217728 or 128MiB"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        other => return Err(format!("unknown unit {other:?}: use KiB, MiB or GiB")),
    };
    n.checked_shl(shift)
        .filter(|b| b >> shift == n && *b > 0)
        .ok_or_else(|| format!("{s:?} must be greater than zero and fit in 64 bits"))
}

/// One `--trusted-proxies` entry, checked as a key's network would be.
fn parse_trusted_proxy(s: &str) -> Result<String, String> {
    crate::domain::networks::AllowedNetworks::parse([s])
        .map(|_| s.trim().to_owned())
        .map_err(|e| match e {
            crate::domain::networks::NetworksError::Invalid { reason, .. } => reason,
            other => other.to_string(),
        })
}

/// A humantime duration greater than zero.
fn parse_positive_duration(s: &str) -> Result<humantime::Duration, String> {
    let d: humantime::Duration = s.parse().map_err(|e| format!("{e}"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// The longest `--usage-flush-interval`. A cached key counts its uses in
/// 32-bit counters (they are most of a cache entry) that every flush takes:
/// in an hour, a key verified 100 000 times a second reaches 360 million of
/// the 4 294 million they hold.
const MAX_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

fn parse_flush_interval(s: &str) -> Result<humantime::Duration, String> {
    let d = parse_positive_duration(s)?;
    if *d > MAX_FLUSH_INTERVAL {
        return Err(format!(
            "must be at most {}: usage counts wait in memory until a flush takes them",
            humantime::format_duration(MAX_FLUSH_INTERVAL)
        ));
    }
    Ok(d)
}

impl ServeArgs {
    /// `--webhook-url`'s entries, credentials and all, for the webhook sender.
    pub fn webhook_urls(&self) -> Vec<String> {
        self.webhook_url
            .iter()
            .map(|u| u.expose().to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parsed_flags_print_no_secret() {
        let cli = Cli::parse_from([
            "keygate",
            "serve",
            "--database-url",
            "mysql://keygate:db-pa55word@db.internal:3306/keygate?ssl-ca=/ca.pem",
            "--database-read-url",
            "mysql://reader:replica-pa55word@replica.internal/keygate",
            "--admin-tokens",
            "first-admin-t0ken,second-admin-t0ken",
            "--webhook-url",
            "https://hooks.example.com/k?token=hook-t0ken,https://u:hook-pa55word@b.example.com/",
            "--webhook-secret",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "--rate-limit-redis-url",
            "rediss://:redis-pa55word@cache.internal:6380/0",
        ]);
        let shown = format!("{cli:?} {cli:#?}");
        for secret in [
            "db-pa55word",
            "replica-pa55word",
            "first-admin-t0ken",
            "second-admin-t0ken",
            "hook-t0ken",
            "hook-pa55word",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "redis-pa55word",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // What an operator needs to recognise the value is still there.
        assert!(
            shown.contains("mysql://***@db.internal:3306/keygate"),
            "{shown}"
        );
        assert!(shown.contains("https://hooks.example.com/k"), "{shown}");
        let Command::Serve(args) = cli.command else {
            panic!("serve")
        };
        assert_eq!(args.admin_tokens[1].expose(), "second-admin-t0ken");
    }

    /// Past an hour the cache entries' 32-bit usage counts could wrap before
    /// a flush takes them: refused at the start, with the bound.
    #[test]
    fn the_usage_flush_interval_is_at_most_an_hour() {
        let parse = |v: &str| {
            Cli::try_parse_from(["keygate", "serve", "--usage-flush-interval", v])
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(parse("1h"), Ok(()));
        assert_eq!(parse("10ms"), Ok(()));
        let refused = parse("61m").expect_err("over an hour");
        assert!(refused.contains("must be at most 1h"), "{refused}");
        let refused = parse("0s").expect_err("zero");
        assert!(refused.contains("greater than zero"), "{refused}");
    }
}
