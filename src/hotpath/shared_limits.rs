//! Rate limits shared by a fleet through Redis (`--rate-limit-redis-url`).
//!
//! The fleet's buckets live in Redis, one per limit of a key, with the same
//! algorithm as an instance's own (a GCRA "theoretical arrival time" per limit,
//! see `crate::domain::limits`). A call does not go to Redis each time: an instance
//! leases a few calls at once (every limit of the key checked and charged
//! together, in one script) and spends them locally until they are gone or
//! their short lifetime ends. Calls are charged when leased, so the fleet never
//! passes more than the shared bucket allows; leased calls an instance does not
//! spend in time are given back (`GIVE_BACK_SCRIPT`), so a burst on the fleet
//! is not refused while calls sit unspent on another instance (docs/LIMITS.md
//! gives the one bound the other way). A local refusal needs no Redis at all:
//! an instance whose own calls exceed a limit knows the fleet's do too.
//!
//! Redis unreachable: the instance counts alone (as without Redis), says so in
//! `keygate_rate_limit_redis_up` and one log line, and tries Redis again after a
//! second; the connection manager reconnects by itself.

use std::{
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use metrics::{Counter, Gauge, counter, gauge};
use redis::{
    Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use crate::{
    domain::limits::RateLimits,
    domain::{limits::LimitsOwner, model::Micros},
};

/// The longest a verification waits on Redis before counting alone.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, calls count alone this long before Redis is tried again,
/// so an outage costs one timeout a second, not one per call.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Checks every limit of one key and leases `want` calls (at least `need`) when
/// all of them allow it; `want` 0 only asks whether `need` calls would pass.
/// KEYS: one per limit. ARGV: now (µs), need, want, then limit and window (µs)
/// per key. Floats are exact up to 2^53 µs (year 2255); a small slack absorbs
/// rounding in the division. Returns {granted, refused limit (1-based, 0 none),
/// retry after µs, fewest calls left, its limit (1-based), µs until it is full}.
const LEASE_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local need = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local tats, fits = {}, {}
local grant = want
local refused, retry = 0, 0
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  local fit = math.floor((window - (tat - now)) * limit / window + 1e-6)
  if fit < 0 then fit = 0 end
  fits[i] = fit
  if fit < need and refused == 0 then
    refused = i
    retry = math.ceil((tat - now) + need * window / limit - window)
  end
  if fit < grant then grant = fit end
end
if refused > 0 then
  return {0, refused, retry, 0, refused, math.ceil(tats[refused] - now)}
end
local least, least_i, reset = -1, 1, 0
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 + 2 * i])
  local window = tonumber(ARGV[3 + 2 * i])
  local tat = tats[i] + grant * window / limit
  if grant > 0 then
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
  end
  local left = fits[i] - grant
  if least < 0 or left < least then
    least, least_i, reset = left, i, math.ceil(tat - now)
  end
end
return {grant, 0, 0, least, least_i, reset}
";

/// Gives `n` leased, unspent calls back to every limit of one key: each
/// limit's theoretical arrival time moves back by what `n` calls weigh, never
/// before now (an empty bucket is as empty as it gets). KEYS: one per limit.
/// ARGV: now (µs), n, then limit and window (µs) per key.
const GIVE_BACK_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
for i = 1, #KEYS do
  local limit = tonumber(ARGV[1 + 2 * i])
  local window = tonumber(ARGV[2 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat > now then
    tat = tat - n * window / limit
    if tat > now then
      redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
    else
      redis.call('DEL', KEYS[i])
    end
  end
end
return 1
";

/// Appends one key, and its limit and window as arguments, per rate limit of
/// `id`: what both scripts take after their own arguments.
fn add_limits(invocation: &mut redis::ScriptInvocation<'_>, id: &LimitsOwner, limits: &RateLimits) {
    for l in limits.iter() {
        // The braces keep every limit of a key in one Redis Cluster slot.
        invocation
            .key(format!("keygate:rl:{{{id}}}:{}", l.name))
            .arg(l.limit)
            .arg(l.window.0);
    }
}

/// Redis' answer to a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedReply {
    /// `credits` calls are this instance's; `remaining` are left to the fleet
    /// in limit `index` (the one with the fewest), full again at `reset`.
    Granted {
        credits: u64,
        remaining: u64,
        reset: Micros,
        index: usize,
    },
    /// Limit `index` cannot take `need` calls before `retry_after`.
    Refused {
        index: usize,
        retry_after: Micros,
        reset: Micros,
    },
}

#[derive(Debug)]
struct Metrics {
    ok: Counter,
    errors: Counter,
    up: Gauge,
}

pub struct SharedLimits {
    connection: ConnectionManager,
    script: Script,
    give_back_script: Script,
    /// Set while Redis is considered down: until when calls count alone.
    down_until: Mutex<Option<Instant>>,
    down: AtomicBool,
    metrics: Metrics,
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLimits")
            .field("down", &self.down)
            .finish_non_exhaustive()
    }
}

impl SharedLimits {
    /// Checks the URL now; connects on first use, so a Redis that is down at
    /// start does not keep keygate from starting (it counts alone meanwhile).
    /// `ca`: PEM certificates that a `rediss://` server's certificate must
    /// chain to, instead of the system's CAs.
    pub fn new(url: &str, ca: Option<Vec<u8>>) -> Result<Self, redis::RedisError> {
        let client = match ca {
            None => Client::open(url)?,
            Some(root_cert) => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        let up = gauge!("keygate_rate_limit_redis_up");
        up.set(1.0);
        Ok(Self {
            connection,
            script: Script::new(LEASE_SCRIPT),
            give_back_script: Script::new(GIVE_BACK_SCRIPT),
            down_until: Mutex::new(None),
            down: AtomicBool::new(false),
            metrics: Metrics {
                ok: counter!("keygate_rate_limit_redis_round_trips_total", "result" => "ok"),
                errors: counter!("keygate_rate_limit_redis_round_trips_total", "result" => "error"),
                up,
            },
        })
    }

    /// Calls leased at once: a few percent of the smallest limit, so that a
    /// fleet's unspent leases stay a small share of it, and at most 100, so one
    /// instance cannot hoard a busy key's calls.
    pub fn lease_size(&self, limits: &RateLimits) -> u64 {
        let smallest = limits.iter().map(|l| l.limit).min().unwrap_or(1);
        (smallest / 50).clamp(1, 100)
    }

    /// How long leased calls may be spent: a twentieth of the shortest window,
    /// at most half a second, so calls leased in one window are spent close to it.
    pub fn lease_lifetime(&self, limits: &RateLimits) -> Micros {
        let shortest = limits.iter().map(|l| l.window.0).min().unwrap_or(0);
        Micros((shortest / 20).min(500_000))
    }

    /// Leases calls from the fleet's buckets of `id`; `None` when Redis cannot
    /// answer now (the caller counts alone).
    pub async fn lease(
        &self,
        id: &LimitsOwner,
        limits: &RateLimits,
        need: u64,
        want: u64,
        now: Micros,
    ) -> Option<SharedReply> {
        if self.down.load(Ordering::Relaxed) {
            let until = *self
                .down_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if until.is_some_and(|t| Instant::now() < t) {
                return None;
            }
        }
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(now.0).arg(need).arg(want);
        add_limits(&mut invocation, id, limits);
        let mut connection = self.connection.clone();
        let reply = tokio::time::timeout(
            REDIS_TIMEOUT,
            invocation.invoke_async::<Vec<i64>>(&mut connection),
        )
        .await;
        let values = match reply {
            Ok(Ok(v)) if v.len() == 6 => v,
            Ok(Ok(v)) => {
                self.failed(&format!("unexpected reply of {} values", v.len()));
                return None;
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                return None;
            }
            Err(_) => {
                self.failed("no answer within 250ms");
                return None;
            }
        };
        self.metrics.ok.increment(1);
        if self.down.swap(false, Ordering::Relaxed) {
            self.metrics.up.set(1.0);
            tracing::info!("Redis answers again: rate limits are shared across instances again");
        }
        let n = |i: usize| u64::try_from(values[i]).unwrap_or(0);
        let index = |i: usize| usize::try_from(values[i]).unwrap_or(1).saturating_sub(1);
        let at = |i: usize| Micros(now.0.saturating_add(values[i].max(0)));
        Some(if values[1] > 0 {
            SharedReply::Refused {
                index: index(1),
                retry_after: Micros(values[2].max(0)),
                reset: at(5),
            }
        } else {
            SharedReply::Granted {
                credits: n(0),
                remaining: n(3),
                reset: at(5),
                index: index(4),
            }
        })
    }

    /// Gives `n` leased calls of `id` back to the fleet. When Redis cannot
    /// take them now they are dropped, not retried: a give-back that timed out
    /// may have happened all the same, and giving twice would let the fleet
    /// pass more than the limit.
    pub async fn give_back(&self, id: &LimitsOwner, limits: &RateLimits, n: u64, now: Micros) {
        if self.down.load(Ordering::Relaxed) {
            return;
        }
        let mut invocation = self.give_back_script.prepare_invoke();
        invocation.arg(now.0).arg(n);
        add_limits(&mut invocation, id, limits);
        let mut connection = self.connection.clone();
        let reply = tokio::time::timeout(
            REDIS_TIMEOUT,
            invocation.invoke_async::<i64>(&mut connection),
        )
        .await;
        match reply {
            Ok(Ok(_)) => self.metrics.ok.increment(1),
            Ok(Err(e)) => self.failed(&e.to_string()),
            Err(_) => self.failed("no answer within 250ms"),
        }
    }

    fn failed(&self, error: &str) {
        self.metrics.errors.increment(1);
        *self
            .down_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + RETRY_AFTER);
        if !self.down.swap(true, Ordering::Relaxed) {
            self.metrics.up.set(0.0);
            tracing::warn!(
                error,
                "Redis does not answer: rate limits are counted by this instance alone until it does"
            );
        }
    }
}
