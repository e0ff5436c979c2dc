//! `keygate-bench`: how fast keygate verifies keys, measured against what the
//! gRPC transport and the database can do at best on the same machine.
//!
//! One run drops and re-creates a MySQL/MariaDB database (its name must contain
//! `bench`), seeds `--keys` bot keys in bulk into its tables (`seed`: the secrets
//! exist only in this process's memory), starts two keygate processes on it (one
//! with a cache for every key, one with both caches disabled) and times the
//! first one's start (`start to SERVING`, `filter load`), verifies every key once on
//! the cached instance so that all are cached (`bytes per cached key`: its RSS
//! after, minus before, per key), then measures each scenario for
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
//! | `one-key`          | `VerifyKey`, always the same seeded key, which has no usage limits     |
//! | `one-key-limited`  | `VerifyKey`, always one key with a rate limit and a quota it never reaches (every call counted in both; quota credits leased from the store) |
//! | `ext-authz`        | Envoy's `Authorization/Check` on the cached instance: a seeded key (round-robin) as `Authorization: Bearer`, `GET /api/links`, `links:read` from `context_extensions`; encoded once per key length, the key written into a copy per call |
//! | `forward-auth`     | `GET /v1/authorize` on the cached instance's `--http-listen` (HTTP/1.1 keep-alive, `--concurrency` connections), the same key and path as nginx would send |
//! | `http-health`      | `GET /healthz` on the same listener, the same way: the HTTP transport's ceiling |
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
//! - The ratios `cached / health`, `uncached / select-id`,
//!   `one-key-limited / one-key`, `ext-authz / cached` and `forward-auth / http-health`
//!   are taken over the same run; `unknown` reaches the store on every call (each key is fresh), so
//!   it is store-bound like `uncached`.
//! - The cached instance gets `--cache-ttl` (default 1h) so that keys warmed at
//!   the start stay cached for the whole run; with keygate's default of 60 s,
//!   the `cached` scenario would include periodic store reads.
//!
//! This file holds the flags and the run's outline (rounds of scenarios, then the
//! aggregate); the pieces live beside it: `workload` (database, keygate children,
//! seeding, the requests of each scenario), `instance` (one keygate child), `load`
//! (the closed-loop load and its histograms), `database` (the SQL baselines),
//! `procfs` (CPU and memory from `/proc`) and `report` (the printed lines).

mod database;
mod instance;
mod load;
mod procfs;
mod report;
mod seed;
mod workload;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use clap::{Parser, ValueEnum};

use crate::{
    load::{Phase, Tally, Until, run_load},
    procfs::{CpuWatch, memory_mib},
    report::{print_phase, print_ratios, verdict},
    workload::prepare,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    /// Keys to seed (in bulk, into the store's tables, before keygate starts).
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
    OneKey,
    OneKeyLimited,
    ExtAuthz,
    ForwardAuth,
    HttpHealth,
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
            Self::OneKey => "one-key",
            Self::OneKeyLimited => "one-key-limited",
            Self::ExtAuthz => "ext-authz",
            Self::ForwardAuth => "forward-auth",
            Self::HttpHealth => "http-health",
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = Args::parse();
    if args.scenarios.is_empty() {
        args.scenarios = Scenario::value_variants().to_vec();
    }
    args.concurrency = args.concurrency.max(1);
    let mut memory = Vec::new();
    let (cached, uncached, work, startup) = prepare(&args, &mut memory).await?;
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
            let store_before = database::status(&work.pool).await?;
            let (tally, elapsed) =
                run_load(&targets, args.concurrency, deadline(args.duration)).await?;
            let store_after = database::status(&work.pool).await?;
            let phase = Phase {
                tally,
                elapsed,
                cpu: CpuWatch::percent(&before, &cpu.sample(), elapsed),
            };
            print_phase(s.name(), &phase, &cpu);
            let per_second: Vec<String> = database::STATUS
                .iter()
                .zip(store_before.iter().zip(&store_after))
                .map(|(name, (b, a))| {
                    format!(
                        "{name} {:.0}",
                        a.saturating_sub(*b) as f64 / elapsed.as_secs_f64()
                    )
                })
                .collect();
            println!("    store per second: {}", per_second.join(", "));
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
    println!(
        "start to SERVING: {:.2} s",
        startup.start_to_serving.as_secs_f64()
    );
    println!(
        "filter load: {:.2} s (in use {:.2} s after the start)",
        startup.filter.0.as_secs_f64(),
        startup.filter.1.as_secs_f64()
    );
    println!("bytes per cached key: {:.0}", startup.bytes_per_key);
    println!(
        "  target <= 600: {}",
        verdict(startup.bytes_per_key <= 600.0)
    );
    let (rss, hwm) = memory_mib(uncached.pid());
    println!("VmRSS of the uncached instance after the load: {rss:.1} MiB ({hwm:.1})");

    work.pool.close().await;
    work.pool_noping.close().await;
    cached.stop().await?;
    uncached.stop().await?;
    Ok(())
}
