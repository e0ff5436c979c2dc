//! `keygate-bench`: how fast keygate verifies keys, measured against what the
//! gRPC transport and the database can do at best on the same machine.
//!
//! One run drops and re-creates a MySQL/MariaDB database (its name must contain
//! `bench`), starts two keygate processes on it (one with its default caches, one
//! with both caches disabled), seeds `--keys` bot keys through `KeyAdmin.CreateKey`
//! (the secrets exist only in this process's memory), verifies every key once on
//! the cached instance so that all are cached, then measures each scenario for
//! `--duration` after a `--warmup`, `--rounds` times. Scenarios alternate inside
//! each round so that drift of the machine (other load, the database's buffer
//! pool, timers) affects all of them alike and the ratios compare like with like.
//!
//! | scenario           | what one request is                                                   |
//! |--------------------|-----------------------------------------------------------------------|
//! | `health`           | `grpc.health.v1.Health/Check` on the cached instance: the transport's ceiling |
//! | `cached`           | `VerifyKey`, a seeded key (round-robin), `required_scopes = [links:read]` |
//! | `malformed`        | `VerifyKey`, a seeded key with a wrong checksum digit                 |
//! | `unknown`          | `VerifyKey`, a well-formed key never presented before (pre-generated) |
//! | `uncached`         | `VerifyKey` on the instance started with `--cache-capacity 0 --negative-cache-capacity 0` |
//! | `select-id`        | this process: `SELECT <all columns> FROM api_keys WHERE id = ?` through an sqlx pool like keygate's |
//! | `select-hash`      | the same row `WHERE secret_hash = ?` (what keygate's store actually runs) |
//! | `select-id-noping` | as `select-id`, but the pool does not ping a connection before handing it out |
//!
//! Reading the output:
//! - Every scenario is a closed loop of `--concurrency` tasks, each sending one
//!   request, awaiting it, and sending the next; gRPC requests are spread over
//!   `--connections` HTTP/2 connections. Latency is measured by the client around
//!   the whole call, so by Little's law p50 ≈ concurrency / rps: at 64 in flight
//!   most of it is queueing, not service time.
//! - The load generator, keygate and the database share the same cores. The
//!   `cpu%` columns (100 = one core, from `/proc/<pid>/stat`) show where the cycles
//!   went: a low keygate share with a high bench share means the generator is
//!   the bottleneck, not keygate. `other` is every other process: before each
//!   scenario the bench waits (`--max-idle-wait`) for it to fall below a third
//!   of a core, and a round where it is high anyway was disturbed.
//! - The ratios `cached / health` and `uncached / select-id` are taken over the
//!   same run; `unknown` reaches the store on every call (each key is fresh), so
//!   it is store-bound like `uncached`.
//! - The cached instance gets `--cache-ttl` (default 1h) so that keys warmed at
//!   the start stay cached for the whole run; with keygate's default of 60 s,
//!   the `cached` scenario would include periodic store reads.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use keygate::{
    keys::{KeyPrefix, Secret, parse_token},
    proto::{
        CreateKeyRequest, KeyType, VerifyCode, VerifyKeyRequest, key_admin_client::KeyAdminClient,
        key_verify_client::KeyVerifyClient,
    },
};
use sqlx::{
    Connection,
    mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions},
};
use tokio::task::JoinSet;
use tonic::{Request, metadata::MetadataValue, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ADMIN_TOKEN: &str = "bench-token";
const REQUIRED_SCOPE: &str = "links:read";
const SELECT_BY_ID: &str = "SELECT id, organization_id, key_type, user_id, name, scopes, \
    allowed_hostnames, secret_hash, key_prefix, last_four, request_count, create_time, \
    update_time, last_used_time, revoke_time, expire_time, created_by FROM api_keys WHERE id = ?";
const SELECT_BY_HASH: &str = "SELECT id, organization_id, key_type, user_id, name, scopes, \
    allowed_hostnames, secret_hash, key_prefix, last_four, request_count, create_time, \
    update_time, last_used_time, revoke_time, expire_time, created_by FROM api_keys \
    WHERE secret_hash = ?";
/// Linux reports CPU time in USER_HZ ticks, 100 per second on every mainstream platform.
const TICKS_PER_SEC: f64 = 100.0;

#[derive(Debug, Parser)]
#[command(
    name = "keygate-bench",
    about = "Load-tests keygate's verify path against its baselines"
)]
struct Args {
    /// The keygate binary to start (twice).
    #[arg(long, default_value = "target/release/keygate")]
    keygate_bin: PathBuf,
    /// MySQL/MariaDB database to DROP and re-create; its name must contain `bench`.
    #[arg(
        long,
        env = "KEYGATE_BENCH_DATABASE_URL",
        default_value = "mysql://root@127.0.0.1:3306/kg_bench"
    )]
    database_url: String,
    /// Keys to seed through KeyAdmin.CreateKey.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Requests in flight during each scenario.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the gRPC requests are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured time of each scenario in each round.
    #[arg(long, default_value = "5s")]
    duration: humantime::Duration,
    /// Unmeasured load before each measured scenario.
    #[arg(long, default_value = "1s")]
    warmup: humantime::Duration,
    /// Rounds; each runs every scenario once, in order.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Pool size of each keygate instance and of the bench's own SQL baseline pools.
    #[arg(long, default_value_t = 16)]
    database_max_connections: u32,
    /// CreateKey calls in flight while seeding.
    #[arg(long, default_value_t = 32)]
    seed_concurrency: usize,
    /// Cache lifetime given to the cached instance; long enough to outlast the run.
    #[arg(long, default_value = "1h")]
    cache_ttl: humantime::Duration,
    /// Fresh unknown keys generated before timing; the `unknown` scenario uses each once.
    #[arg(long, default_value_t = 500_000)]
    unknown_keys: usize,
    /// Before each scenario, wait up to this long for other processes (another
    /// build, another test run) to leave the cores alone; 0s to not wait.
    #[arg(long, default_value = "120s")]
    max_idle_wait: humantime::Duration,
    /// Scenarios to run, comma-separated; all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    Health,
    Cached,
    Malformed,
    Unknown,
    Uncached,
    SelectId,
    SelectHash,
    SelectIdNoping,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::Cached => "cached",
            Self::Malformed => "malformed",
            Self::Unknown => "unknown",
            Self::Uncached => "uncached",
            Self::SelectId => "select-id",
            Self::SelectHash => "select-hash",
            Self::SelectIdNoping => "select-id-noping",
        }
    }
}

/// One kind of request, cloned into every load task. Cursors are shared so that
/// round-robin spreads over all keys and a fresh unknown key is never reused.
#[derive(Clone)]
enum Target {
    Health(HealthClient<Channel>),
    Verify {
        client: KeyVerifyClient<Channel>,
        keys: Arc<[String]>,
        cursor: Arc<AtomicUsize>,
        expect: VerifyCode,
    },
    ById {
        pool: MySqlPool,
        ids: Arc<[String]>,
        cursor: Arc<AtomicUsize>,
    },
    ByHash {
        pool: MySqlPool,
        hashes: Arc<[Vec<u8>]>,
        cursor: Arc<AtomicUsize>,
    },
}

enum Outcome {
    Ok,
    /// An answer, but not the one this scenario expects (a bench or keygate bug).
    Unexpected,
    Error(String),
}

fn next<'a, T>(items: &'a [T], cursor: &AtomicUsize) -> &'a T {
    &items[cursor.fetch_add(1, Relaxed) % items.len()]
}

fn verify_request(key: &str) -> VerifyKeyRequest {
    VerifyKeyRequest {
        key: key.to_owned(),
        required_scopes: vec![REQUIRED_SCOPE.to_owned()],
        ..Default::default()
    }
}

impl Target {
    async fn call(&mut self) -> Outcome {
        match self {
            Target::Health(client) => {
                let req = HealthCheckRequest {
                    service: String::new(),
                };
                match client.check(req).await {
                    Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => Outcome::Ok,
                    Ok(_) => Outcome::Unexpected,
                    Err(e) => Outcome::Error(e.to_string()),
                }
            }
            Target::Verify {
                client,
                keys,
                cursor,
                expect,
            } => match client
                .verify_key(verify_request(next::<String>(keys, cursor)))
                .await
            {
                Ok(r) if r.get_ref().code == *expect as i32 => Outcome::Ok,
                Ok(_) => Outcome::Unexpected,
                Err(e) => Outcome::Error(e.to_string()),
            },
            Target::ById { pool, ids, cursor } => {
                let q = sqlx::query(SELECT_BY_ID).bind(next(ids, cursor).as_str());
                row_outcome(q.fetch_optional(&*pool).await)
            }
            Target::ByHash {
                pool,
                hashes,
                cursor,
            } => {
                let q = sqlx::query(SELECT_BY_HASH).bind(next(hashes, cursor).as_slice());
                row_outcome(q.fetch_optional(&*pool).await)
            }
        }
    }
}

fn row_outcome<R>(r: Result<Option<R>, sqlx::Error>) -> Outcome {
    match r {
        Ok(Some(_)) => Outcome::Ok,
        Ok(None) => Outcome::Unexpected,
        Err(e) => Outcome::Error(e.to_string()),
    }
}

/// Latencies (µs) and outcomes of one load task, or of a whole phase once merged.
struct Tally {
    hist: Histogram<u64>,
    unexpected: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid"),
            unexpected: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn record(&mut self, latency: Duration, outcome: Outcome) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(us.max(1));
        match outcome {
            Outcome::Ok => {}
            Outcome::Unexpected => self.unexpected += 1,
            Outcome::Error(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.hist
            .add(&other.hist)
            .expect("histograms share their bounds");
        self.unexpected += other.unexpected;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// What one measured phase produced.
struct Phase {
    tally: Tally,
    elapsed: Duration,
    /// CPU used during the phase, per watched process, in % of one core.
    cpu: Vec<f64>,
}

impl Phase {
    fn rps(&self) -> f64 {
        self.tally.hist.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// When a load task stops starting requests.
#[derive(Clone)]
enum Until {
    Deadline(Instant),
    /// After this many requests in all, counted by the shared counter.
    Calls(Arc<AtomicUsize>, usize),
}

impl Until {
    fn more(&self) -> bool {
        match self {
            Until::Deadline(d) => Instant::now() < *d,
            Until::Calls(issued, n) => issued.fetch_add(1, Relaxed) < *n,
        }
    }
}

/// Runs `concurrency` closed-loop tasks until `until`; the phase lasts until the
/// last request in flight returns.
async fn run_load(
    targets: &[Target],
    concurrency: usize,
    until: Until,
) -> Result<(Tally, Duration), BoxError> {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..concurrency {
        let mut target = targets[i % targets.len()].clone();
        let until = until.clone();
        tasks.spawn(async move {
            let mut tally = Tally::new();
            while until.more() {
                let t0 = Instant::now();
                let outcome = target.call().await;
                tally.record(t0.elapsed(), outcome);
            }
            tally
        });
    }
    let mut total = Tally::new();
    while let Some(t) = tasks.join_next().await {
        total.merge(&t?);
    }
    Ok((total, start.elapsed()))
}

/// A keygate child process; killed if dropped while still running.
struct Instance {
    child: Child,
    addr: SocketAddr,
}

impl Instance {
    fn spawn(args: &Args, label: &str, extra: &[&str]) -> Result<Self, BoxError> {
        // keygate logs its address but does not report it otherwise: pick a free port
        // ourselves. Another process could grab it in between; unlikely on a bench box.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        // keygate's warnings go to a file: sqlx logs whole slow statements, which
        // would drown the report.
        let log = std::env::temp_dir().join(format!("keygate-bench-{label}.log"));
        eprintln!("keygate {label} logs to {}", log.display());
        let file = std::fs::File::create(&log)?;
        let child = Command::new(&args.keygate_bin)
            .arg("serve")
            .args(["--database-url", &args.database_url])
            .args([
                "--database-max-connections",
                &args.database_max_connections.to_string(),
            ])
            .args(["--listen", &addr.to_string()])
            .args([
                "--metrics-listen",
                "127.0.0.1:0",
                "--admin-tokens",
                ADMIN_TOKEN,
            ])
            .args(["--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", args.keygate_bin.display()))?;
        Ok(Self { child, addr })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        // One Endpoint::connect is one HTTP/2 connection; small requests must not
        // wait for Nagle.
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("an http:// URI built from a socket address is valid")
            .tcp_nodelay(true)
            .connect()
            .await
    }

    async fn channels(&self, n: usize) -> Result<Vec<Channel>, BoxError> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            out.push(self.channel().await?);
        }
        Ok(out)
    }

    /// Waits until the instance answers health SERVING (it migrates first).
    async fn wait_ready(&mut self) -> Result<(), BoxError> {
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("keygate exited before serving: {status}").into());
            }
            if let Ok(ch) = self.channel().await {
                let req = HealthCheckRequest {
                    service: String::new(),
                };
                if let Ok(r) = HealthClient::new(ch).check(req).await
                    && r.get_ref().status == ServingStatus::Serving as i32
                {
                    return Ok(());
                }
            }
            if Instant::now() > give_up {
                return Err(format!("keygate on {} not SERVING after 60 s", self.addr).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM (graceful: keygate flushes usage), then SIGKILL after 15 s.
    async fn stop(mut self) -> Result<(), BoxError> {
        Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        let give_up = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > give_up {
                eprintln!(
                    "keygate {} ignored SIGTERM for 15 s; killing it",
                    self.pid()
                );
                self.child.kill()?;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `VmRSS` and `VmHWM` (peak) of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kib| kib / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU ticks a process has used so far.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are fixed.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Ticks all cores spent busy (neither idle nor waiting for I/O) since boot.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = cpu
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    Some(f.iter().take(8).sum::<u64>() - f.get(3)? - f.get(4)?)
}

/// The database server's pid when it runs on this machine, to account its CPU too.
fn find_database_pid() -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        matches!(comm.trim(), "mariadbd" | "mysqld").then_some(pid)
    })
}

/// Splits `mysql://user@host:port/db?opts` into the server's URL and a checked db name.
fn split_database_url(url: &str) -> Result<(String, String), BoxError> {
    let url = url.replacen("mariadb://", "mysql://", 1);
    let (base, query) = url
        .split_once('?')
        .map_or((url.as_str(), None), |(b, q)| (b, Some(q)));
    let authority = base
        .strip_prefix("mysql://")
        .ok_or("--database-url must be mysql://…")?;
    let (server, db) = authority
        .split_once('/')
        .ok_or("--database-url must name a database")?;
    if db.is_empty() || !db.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!("database name {db:?} must be [A-Za-z0-9_]+").into());
    }
    if !db.contains("bench") {
        return Err(
            format!("refusing to drop database {db:?}: its name must contain `bench`").into(),
        );
    }
    let server_url = match query {
        Some(q) => format!("mysql://{server}/?{q}"),
        None => format!("mysql://{server}/"),
    };
    Ok((server_url, db.to_owned()))
}

async fn recreate_database(url: &str) -> Result<(), BoxError> {
    let (server_url, db) = split_database_url(url)?;
    let mut conn = MySqlConnection::connect(&server_url).await?;
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS `{db}`"))
        .execute(&mut conn)
        .await?;
    sqlx::raw_sql(&format!("CREATE DATABASE `{db}`"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// The seeded keys, index-aligned.
struct Seeded {
    ids: Arc<[String]>,
    secrets: Arc<[String]>,
    hashes: Arc<[Vec<u8>]>,
}

fn admin_request(i: usize) -> Request<CreateKeyRequest> {
    let mut req = Request::new(CreateKeyRequest {
        organization_id: format!("bench-org-{}", i % 100),
        r#type: KeyType::Bot as i32,
        name: format!("bench key {i}"),
        scopes: vec!["links:read".to_owned(), "links:write".to_owned()],
        ..Default::default()
    });
    let md = req.metadata_mut();
    md.insert(
        "authorization",
        MetadataValue::from_static("Bearer bench-token"),
    );
    md.insert("x-actor-id", MetadataValue::from_static("bench"));
    md.insert("x-actor-role", MetadataValue::from_static("admin"));
    req
}

async fn seed(channels: &[Channel], n: usize, concurrency: usize) -> Result<Seeded, BoxError> {
    let start = Instant::now();
    let cursor = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let progress = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let d = done.load(Relaxed);
                let secs = start.elapsed().as_secs_f64();
                eprintln!(
                    "  seeded {d}/{n} keys in {secs:.0} s ({:.0}/s)",
                    d as f64 / secs
                );
            }
        })
    };
    let mut tasks = JoinSet::new();
    for i in 0..concurrency.max(1) {
        let mut client = KeyAdminClient::new(channels[i % channels.len()].clone());
        let (cursor, done) = (Arc::clone(&cursor), Arc::clone(&done));
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = cursor.fetch_add(1, Relaxed);
                if i >= n {
                    return Ok::<_, tonic::Status>(mine);
                }
                let resp = client.create_key(admin_request(i)).await?.into_inner();
                let id = resp.key.map(|k| k.id).unwrap_or_default();
                mine.push((id, resp.secret));
                done.fetch_add(1, Relaxed);
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    let outcome: Result<(), BoxError> = async {
        while let Some(r) = tasks.join_next().await {
            all.extend(r??);
        }
        Ok(())
    }
    .await;
    progress.abort();
    outcome?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!("seeded {n} keys in {secs:.1} s ({:.0}/s)", n as f64 / secs);
    let hashes = all
        .iter()
        .map(|(_, s)| parse_token(s).map(|h| h.as_bytes().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "CreateKey returned a secret that does not parse")?;
    let (ids, secrets): (Vec<String>, Vec<String>) = all.into_iter().unzip();
    Ok(Seeded {
        ids: ids.into(),
        secrets: secrets.into(),
        hashes: hashes.into(),
    })
}

async fn sql_pool(url: &str, size: u32, ping: bool) -> Result<MySqlPool, BoxError> {
    // Same options as keygate's store, so that the baseline differs only in what
    // keygate adds (gRPC, decoding, checks); `ping` is keygate's test_before_acquire.
    let options = MySqlConnectOptions::from_str(&url.replacen("mariadb://", "mysql://", 1))?
        .timezone(Some("+00:00".into()))
        .charset("utf8mb4");
    Ok(MySqlPoolOptions::new()
        .max_connections(size)
        .test_before_acquire(ping)
        .connect_with(options)
        .await?)
}

/// Processes whose CPU time is reported per phase: where the cycles of the shared
/// cores went.
struct CpuWatch {
    names: Vec<&'static str>,
    pids: Vec<u32>,
}

impl CpuWatch {
    fn new(cached: &Instance, uncached: &Instance) -> Self {
        let mut w = vec![
            ("bench", std::process::id()),
            ("kg", cached.pid()),
            ("kg0", uncached.pid()),
        ];
        w.extend(find_database_pid().map(|p| ("db", p)));
        let mut names: Vec<_> = w.iter().map(|x| x.0).collect();
        // Whatever else ran meanwhile (another build, another test) took cores from us.
        names.push("other");
        Self {
            names,
            pids: w.iter().map(|x| x.1).collect(),
        }
    }

    /// Ticks of each watched process, then of the whole machine.
    fn sample(&self) -> Vec<u64> {
        let mut ticks: Vec<u64> = self
            .pids
            .iter()
            .map(|&p| cpu_ticks(p).unwrap_or(0))
            .collect();
        ticks.push(machine_busy_ticks().unwrap_or(0));
        ticks
    }

    /// % of one core each process, and everything else, used between two samples.
    fn percent(before: &[u64], after: &[u64], elapsed: Duration) -> Vec<f64> {
        let secs = elapsed.as_secs_f64();
        let mut pct: Vec<f64> = after
            .iter()
            .zip(before)
            .map(|(a, b)| a.saturating_sub(*b) as f64 / TICKS_PER_SEC / secs * 100.0)
            .collect();
        if let Some((machine, watched)) = pct.split_last_mut() {
            *machine = (*machine - watched.iter().sum::<f64>()).max(0.0);
        }
        pct
    }

    /// Waits until processes other than ours use less than a third of a core.
    async fn wait_for_quiet(&self, max: Duration) {
        let give_up = Instant::now() + max;
        let mut said = false;
        while Instant::now() < give_up {
            let before = self.sample();
            tokio::time::sleep(Duration::from_secs(1)).await;
            let other = Self::percent(&before, &self.sample(), Duration::from_secs(1));
            let other = other.last().copied().unwrap_or(0.0);
            if other < 33.0 {
                return;
            }
            if !said {
                eprintln!("  waiting: other processes use {other:.0}% of a core");
                said = true;
            }
        }
    }

    fn format(&self, cpu: &[f64]) -> String {
        let parts: Vec<String> = self
            .names
            .iter()
            .zip(cpu)
            .map(|(n, c)| format!("{n} {c:.0}"))
            .collect();
        parts.join(" / ")
    }
}

/// Everything the scenarios need, prepared before any timing starts.
struct Workload {
    cached: Vec<Channel>,
    uncached: Vec<Channel>,
    seeded: Seeded,
    malformed: Arc<[String]>,
    unknown: Arc<[String]>,
    /// Shared by every round: each unknown key is presented once in the whole run.
    unknown_cursor: Arc<AtomicUsize>,
    pool: MySqlPool,
    pool_noping: MySqlPool,
}

impl Workload {
    fn targets(&self, s: Scenario) -> Vec<Target> {
        let fresh = || Arc::new(AtomicUsize::new(0));
        let verify =
            |channels: &[Channel], keys: &Arc<[String]>, cursor: Arc<AtomicUsize>, expect| {
                let target = |ch: &Channel| Target::Verify {
                    client: KeyVerifyClient::new(ch.clone()),
                    keys: Arc::clone(keys),
                    cursor: Arc::clone(&cursor),
                    expect,
                };
                channels.iter().map(target).collect()
            };
        match s {
            Scenario::Health => self
                .cached
                .iter()
                .map(|ch| Target::Health(HealthClient::new(ch.clone())))
                .collect(),
            Scenario::Cached => verify(
                &self.cached,
                &self.seeded.secrets,
                fresh(),
                VerifyCode::Valid,
            ),
            Scenario::Malformed => verify(
                &self.cached,
                &self.malformed,
                fresh(),
                VerifyCode::Malformed,
            ),
            Scenario::Unknown => verify(
                &self.cached,
                &self.unknown,
                Arc::clone(&self.unknown_cursor),
                VerifyCode::NotFound,
            ),
            Scenario::Uncached => verify(
                &self.uncached,
                &self.seeded.secrets,
                fresh(),
                VerifyCode::Valid,
            ),
            Scenario::SelectId | Scenario::SelectIdNoping => vec![Target::ById {
                pool: if s == Scenario::SelectId {
                    &self.pool
                } else {
                    &self.pool_noping
                }
                .clone(),
                ids: Arc::clone(&self.seeded.ids),
                cursor: fresh(),
            }],
            Scenario::SelectHash => vec![Target::ByHash {
                pool: self.pool.clone(),
                hashes: Arc::clone(&self.seeded.hashes),
                cursor: fresh(),
            }],
        }
    }
}

/// A wrong last checksum digit: the cheapest malformation to build and the most
/// expensive to detect (the whole token is scanned and its CRC computed).
fn break_checksum(secret: &str) -> String {
    let mut s = secret.to_owned();
    let last = s.pop().expect("secrets are not empty");
    s.push(if last == '0' { '1' } else { '0' });
    s
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn print_phase(label: &str, p: &Phase, cpu: &CpuWatch) {
    let h = &p.tally.hist;
    println!(
        "  {label:<17}{:>8.0} rps  p50 {:>6}  p99 {:>6}  p99.9 {:>6}  max {:>7} ms  err {}+{}  cpu% {}",
        p.rps(),
        ms(h.value_at_quantile(0.50)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
        p.tally.errors,
        p.tally.unexpected,
        cpu.format(&p.cpu),
    );
    if let Some(e) = &p.tally.first_error {
        println!("    first error: {e}");
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "NOT MET" }
}

fn print_ratios(results: &BTreeMap<Scenario, Phase>) {
    let rps = |s: Scenario| results.get(&s).map(Phase::rps);
    if let (Some(c), Some(h)) = (rps(Scenario::Cached), rps(Scenario::Health)) {
        let p99 = results[&Scenario::Cached]
            .tally
            .hist
            .value_at_quantile(0.99);
        println!(
            "  cached / health rps = {:.3} (target >= 0.90: {}); cached p99 {} ms (target <= 1 ms: {})",
            c / h,
            verdict(c / h >= 0.90),
            ms(p99),
            verdict(p99 <= 1000),
        );
    }
    if let (Some(u), Some(b)) = (rps(Scenario::Uncached), rps(Scenario::SelectId)) {
        println!(
            "  uncached / select-id rps = {:.3} (target >= 0.70: {})",
            u / b,
            verdict(u / b >= 0.70)
        );
    }
    for base in [Scenario::SelectHash, Scenario::SelectIdNoping] {
        if let (Some(u), Some(b)) = (rps(Scenario::Uncached), rps(base)) {
            println!(
                "  uncached / {} rps = {:.3} (for reference)",
                base.name(),
                u / b
            );
        }
    }
}

/// Starts both instances, seeds and warms; returns them with the prepared workload.
async fn prepare(
    args: &Args,
    memory: &mut Vec<(&'static str, (f64, f64))>,
) -> Result<(Instance, Instance, Workload), BoxError> {
    let url = &args.database_url;
    eprintln!("re-creating the database");
    recreate_database(url).await?;
    // One after the other: both would otherwise race to run the migrations.
    let mut cached = Instance::spawn(
        args,
        "cached",
        &["--cache-ttl", &args.cache_ttl.to_string()],
    )?;
    cached.wait_ready().await?;
    let mut uncached = Instance::spawn(
        args,
        "uncached",
        &["--cache-capacity", "0", "--negative-cache-capacity", "0"],
    )?;
    uncached.wait_ready().await?;
    eprintln!(
        "keygate: cached on {} (pid {}), uncached on {} (pid {})",
        cached.addr,
        cached.pid(),
        uncached.addr,
        uncached.pid()
    );
    memory.push(("after start", memory_mib(cached.pid())));

    let cached_ch = cached.channels(args.connections).await?;
    let uncached_ch = uncached.channels(args.connections).await?;
    eprintln!(
        "seeding {} keys, {} CreateKey calls in flight",
        args.keys, args.seed_concurrency
    );
    let seeded = seed(&cached_ch, args.keys, args.seed_concurrency).await?;
    memory.push(("after seeding", memory_mib(cached.pid())));

    let t = Instant::now();
    let prefix = KeyPrefix::default();
    let unknown: Arc<[String]> = (0..args.unknown_keys.max(1))
        .map(|_| Secret::generate(&prefix).into_exposed())
        .collect();
    eprintln!(
        "generated {} unknown keys in {:.1} s",
        unknown.len(),
        t.elapsed().as_secs_f64()
    );
    let work = Workload {
        cached: cached_ch,
        uncached: uncached_ch,
        malformed: seeded.secrets.iter().map(|s| break_checksum(s)).collect(),
        seeded,
        unknown,
        unknown_cursor: Arc::new(AtomicUsize::new(0)),
        pool: sql_pool(url, args.database_max_connections, true).await?,
        pool_noping: sql_pool(url, args.database_max_connections, false).await?,
    };

    // CreateKey does not fill the cache: verify every key once so that all are cached.
    let t = Instant::now();
    let n = work.seeded.secrets.len();
    let until = Until::Calls(Arc::new(AtomicUsize::new(0)), n);
    let (tally, _) = run_load(&work.targets(Scenario::Cached), args.concurrency, until).await?;
    if tally.errors + tally.unexpected > 0 {
        let e = tally.first_error.unwrap_or_default();
        return Err(format!(
            "warming: {} of {n} seeded keys did not verify as VALID {e}",
            tally.errors + tally.unexpected
        )
        .into());
    }
    eprintln!(
        "verified every key once on the cached instance in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    memory.push(("after warming the cache", memory_mib(cached.pid())));
    Ok((cached, uncached, work))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = Args::parse();
    if args.scenarios.is_empty() {
        args.scenarios = Scenario::value_variants().to_vec();
    }
    args.concurrency = args.concurrency.max(1);
    let mut memory = Vec::new();
    let (cached, uncached, work) = prepare(&args, &mut memory).await?;
    let cpu = CpuWatch::new(&cached, &uncached);

    println!(
        "\nkeys {}, concurrency {}, connections {}, duration {}, warmup {}, rounds {}, pool {}",
        args.keys,
        args.concurrency,
        args.connections,
        args.duration,
        args.warmup,
        args.rounds,
        args.database_max_connections
    );
    let mut all: BTreeMap<Scenario, Vec<Phase>> = BTreeMap::new();
    for round in 1..=args.rounds {
        println!("round {round}");
        let mut this_round = BTreeMap::new();
        for &s in &args.scenarios {
            let targets = work.targets(s);
            cpu.wait_for_quiet(args.max_idle_wait.into()).await;
            let deadline =
                |d: humantime::Duration| Until::Deadline(Instant::now() + Duration::from(d));
            run_load(&targets, args.concurrency, deadline(args.warmup)).await?;
            let before = cpu.sample();
            let (tally, elapsed) =
                run_load(&targets, args.concurrency, deadline(args.duration)).await?;
            let phase = Phase {
                tally,
                elapsed,
                cpu: CpuWatch::percent(&before, &cpu.sample(), elapsed),
            };
            print_phase(s.name(), &phase, &cpu);
            this_round.insert(s, phase);
        }
        print_ratios(&this_round);
        for (s, p) in this_round {
            all.entry(s).or_default().push(p);
        }
    }
    memory.push(("after the load", memory_mib(cached.pid())));

    println!(
        "\naggregate over {} round(s): requests / total measured time, merged histograms, mean cpu%",
        args.rounds
    );
    let mut merged = BTreeMap::new();
    for (s, phases) in &all {
        let mut total = Phase {
            tally: Tally::new(),
            elapsed: Duration::ZERO,
            cpu: vec![0.0; cpu.names.len()],
        };
        for p in phases {
            total.tally.merge(&p.tally);
            total.elapsed += p.elapsed;
            for (sum, c) in total.cpu.iter_mut().zip(&p.cpu) {
                *sum += c / phases.len() as f64;
            }
        }
        print_phase(s.name(), &total, &cpu);
        let per_round: Vec<String> = phases.iter().map(|p| format!("{:.0}", p.rps())).collect();
        println!("    rps per round: {}", per_round.join(", "));
        merged.insert(*s, total);
    }
    print_ratios(&merged);
    let used = work.unknown_cursor.load(Relaxed);
    if used > work.unknown.len() {
        println!(
            "  note: {used} unknown-key calls for {} keys: some reused a key (raise --unknown-keys)",
            work.unknown.len()
        );
    }

    println!(
        "\nVmRSS (peak VmHWM) of the cached instance with {} keys:",
        args.keys
    );
    for (stage, (rss, hwm)) in &memory {
        println!("  {stage:<24} {rss:>7.1} MiB ({hwm:.1})");
    }
    let worst = memory.iter().map(|m| m.1.0).fold(0.0, f64::max);
    println!("  target <= 200 MiB: {}", verdict(worst <= 200.0));
    let (rss, hwm) = memory_mib(uncached.pid());
    println!("VmRSS of the uncached instance after the load: {rss:.1} MiB ({hwm:.1})");

    work.pool.close().await;
    work.pool_noping.close().await;
    cached.stop().await?;
    uncached.stop().await?;
    Ok(())
}
