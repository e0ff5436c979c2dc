//! Everything prepared before timing starts: a fresh bench database, the two
//! keygate children (cached and uncached), keys seeded through the public API,
//! the malformed and unknown keys, the SQL baselines' pools, and the requests
//! each scenario sends. Kept out of `main` so that the run's outline stays short.

use std::{
    sync::{Arc, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use keygate::{
    domain::keys::{KeyPrefix, Secret, SecretHash},
    proto::{
        CreateKeyRequest, KeyType, Quota, QuotaPeriod, RateLimit, VerifyCode,
        key_admin_client::KeyAdminClient,
    },
};
use sqlx::mysql::MySqlPool;
use tonic::{Request, metadata::MetadataValue, transport::Channel};
use tonic_health::pb::health_client::HealthClient;

use crate::{
    Args, BoxError, Scenario,
    database::{recreate_database, sql_pool},
    instance::{ADMIN_TOKEN, Instance},
    load::{CheckTemplates, REQUIRED_SCOPE, Target, Until, run_load},
    procfs::memory_mib,
    seed,
};

/// The rate limit and quota of the `one-key-limited` key: counted on every call,
/// never reached in a run.
fn limited_request() -> Request<CreateKeyRequest> {
    let mut req = admin_request(0);
    let body = req.get_mut();
    body.name = "bench limited key".into();
    // An organization of its own: the seeded ones hold up to 10 000 keys
    // each at a million keys, keygate's default cap of live keys.
    body.organization_id = "bench-limited".into();
    body.rate_limits = vec![RateLimit {
        name: "per_second".into(),
        limit: 1_000_000_000,
        window: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
    }];
    body.quota = Some(Quota {
        limit: 1_000_000_000_000,
        period: QuotaPeriod::Total.into(),
    });
    req
}

/// The seeded keys, index-aligned.
pub(crate) struct Seeded {
    ids: Arc<[String]>,
    secrets: Arc<[String]>,
    hashes: Arc<[SecretHash]>,
}

fn admin_request(i: usize) -> Request<CreateKeyRequest> {
    let mut req = Request::new(CreateKeyRequest {
        organization_id: format!("bench-org-{}", i % 100),
        r#type: KeyType::Bot as i32,
        name: format!("bench key {i}"),
        scopes: vec![REQUIRED_SCOPE.to_owned(), "links:write".to_owned()],
        ..Default::default()
    });
    let md = req.metadata_mut();
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    md.insert(
        "authorization",
        bearer.parse().expect("the admin token is printable ASCII"),
    );
    md.insert("x-actor-id", MetadataValue::from_static("bench"));
    md.insert("x-actor-role", MetadataValue::from_static("admin"));
    req
}

/// How the cached instance started with `--keys` keys in the store, and what
/// each key it then cached cost.
pub(crate) struct Startup {
    /// From the process's start to health SERVING.
    pub(crate) start_to_serving: Duration,
    /// The forged-key filter's load (its own figure), and from the process's
    /// start to the filter in use.
    pub(crate) filter: (Duration, Duration),
    /// RSS after verifying every key once, minus RSS before, per key.
    pub(crate) bytes_per_key: f64,
}

/// Everything the scenarios need, prepared before any timing starts.
pub(crate) struct Workload {
    cached: Vec<Channel>,
    uncached: Vec<Channel>,
    seeded: Seeded,
    malformed: Arc<[String]>,
    pub(crate) unknown: Arc<[String]>,
    /// Shared by every round: each unknown key is presented once in the whole run.
    pub(crate) unknown_cursor: Arc<AtomicUsize>,
    pub(crate) pool: MySqlPool,
    pub(crate) pool_noping: MySqlPool,
    /// One seeded key without limits, and one key with them.
    one_key: Arc<[String]>,
    one_key_limited: Arc<[String]>,
    /// Envoy's request for any seeded key, encoded once per key length.
    check_templates: Arc<CheckTemplates>,
    /// `/v1/authorize` on the cached instance.
    authorize_url: Arc<str>,
    /// `/healthz` on the same listener.
    healthz_url: Arc<str>,
    http: reqwest::Client,
}

impl Workload {
    pub(crate) fn targets(&self, s: Scenario) -> Vec<Target> {
        let fresh = || Arc::new(AtomicUsize::new(0));
        let verify =
            |channels: &[Channel], keys: &Arc<[String]>, cursor: Arc<AtomicUsize>, expect| {
                let target = |ch: &Channel| Target::Verify {
                    client: tonic::client::Grpc::new(ch.clone()),
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
            Scenario::OneKey => verify(&self.cached, &self.one_key, fresh(), VerifyCode::Valid),
            Scenario::OneKeyLimited => verify(
                &self.cached,
                &self.one_key_limited,
                fresh(),
                VerifyCode::Valid,
            ),
            Scenario::ExtAuthz => self
                .cached
                .iter()
                .map(|ch| Target::Check {
                    client: tonic::client::Grpc::new(ch.clone()),
                    keys: Arc::clone(&self.seeded.secrets),
                    cursor: fresh(),
                    templates: Arc::clone(&self.check_templates),
                })
                .collect(),
            Scenario::ForwardAuth => vec![Target::Forward {
                client: self.http.clone(),
                url: Arc::clone(&self.authorize_url),
                keys: Arc::clone(&self.seeded.secrets),
                cursor: fresh(),
            }],
            Scenario::HttpHealth => vec![Target::HttpHealth {
                client: self.http.clone(),
                url: Arc::clone(&self.healthz_url),
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

/// Starts both instances, seeds and warms; returns them with the prepared workload.
pub(crate) async fn prepare(
    args: &Args,
    memory: &mut Vec<(&'static str, (f64, f64))>,
) -> Result<(Instance, Instance, Workload, Startup), BoxError> {
    let url = &args.database_url;
    eprintln!("re-creating the database");
    recreate_database(url).await?;
    eprintln!("seeding {} keys in bulk", args.keys);
    let seeded = seed::seed(url, args.keys).await?;
    let seeded = Seeded {
        ids: seeded.ids.into(),
        secrets: seeded.secrets.into(),
        hashes: seeded.hashes.into(),
    };
    // One after the other: the uncached instance's store reads would
    // otherwise slow the cached one's start and filter load.
    let http_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let capacity = args.keys.saturating_add(1_000).to_string();
    // Room for every key at several times the bytes it is expected to take.
    let max_bytes = (args.keys.max(100_000) as u64 * 4_096).to_string();
    let started = Instant::now();
    let mut cached = Instance::spawn(
        args,
        "cached",
        &[
            "--cache-ttl",
            &args.cache_ttl.to_string(),
            "--cache-capacity",
            &capacity,
            "--cache-max-bytes",
            &max_bytes,
            "--http-listen",
            &http_addr.to_string(),
        ],
    )?;
    cached.wait_ready().await?;
    let start_to_serving = started.elapsed();
    let filter = cached.filter_loaded(args.keys).await?;
    memory.push(("after start", memory_mib(cached.pid())));
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

    let cached_ch = cached.channels(args.connections).await?;
    let uncached_ch = uncached.channels(args.connections).await?;
    let limited = KeyAdminClient::new(cached_ch[0].clone())
        .create_key(limited_request())
        .await?
        .into_inner()
        .secret;
    let before_warming = memory_mib(cached.pid());
    memory.push(("before warming", before_warming));

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
    let one_key: Arc<[String]> = seeded.secrets.iter().take(1).cloned().collect();
    let work = Workload {
        check_templates: Arc::new(CheckTemplates::new(&seeded.secrets)?),
        authorize_url: Arc::from(format!("http://{http_addr}/v1/authorize")),
        healthz_url: Arc::from(format!("http://{http_addr}/healthz")),
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(args.concurrency)
            .tcp_nodelay(true)
            .build()?,
        one_key,
        one_key_limited: Arc::from(vec![limited]),
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
    let (tally, _) = run_load(
        &work.targets(Scenario::OneKeyLimited),
        1,
        Until::Calls(Arc::new(AtomicUsize::new(0)), 1),
    )
    .await?;
    if tally.errors + tally.unexpected > 0 {
        return Err(format!("warming the limited key: {:?}", tally.first_error).into());
    }
    memory.push(("after warming the cache", memory_mib(cached.pid())));
    let waited = cached.usage_written().await?;
    eprintln!(
        "the warming's usage counts were written {:.1} s later",
        waited.as_secs_f64()
    );
    let after_warming = memory_mib(cached.pid());
    memory.push(("usage counts written", after_warming));
    let startup = Startup {
        start_to_serving,
        filter,
        bytes_per_key: (after_warming.0 - before_warming.0) * 1024.0 * 1024.0
            / args.keys.max(1) as f64,
    };
    Ok((cached, uncached, work, startup))
}
