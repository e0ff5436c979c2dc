//! A key's usage limits (rate limits and quotas, docs/LIMITS.md) as parsed values, and the arithmetic the
//! limiters share: the rate-limit algorithm and the quota periods. Nothing here
//! holds state or reads a clock; `hotpath::limiter` and `hotpath::quota` do.
//!
//! # Why GCRA, in integers
//! A rate limit is a generic cell rate algorithm (a leaky bucket written as one
//! number per limit): a bucket of `limit` calls that drains `limit` calls per
//! `window`. An idle key passes a burst of exactly `limit` calls, and once
//! `window` has gone by the bucket is empty again, which is what the contract asks.
//! Its worst case over any `window`-long interval is a full burst at the start
//! plus what drains during the interval: `2 × limit − 1` calls, never `2 × limit`
//! (a fixed-window counter allows `2 × limit` across a boundary; a sliding-window
//! counter only estimates). The state is 32 bytes a limit, whatever the traffic.
//!
//! The arithmetic is exact integers, not floats: one call weighs `window` units
//! and the bucket drains `limit` units a microsecond, so one window drains exactly
//! `limit × window` units, the bucket's size, and a burst on an idle key is exactly
//! `limit` however the numbers divide. `governor` (the well-kept GCRA crate) was
//! not used: it keeps its own state per limiter and cannot check several limits of
//! one key together and consume from all of them only when every one passes,
//! which is what "a refused call consumes nothing" needs.

use std::fmt;

use crate::domain::identities::IdentityId;
use crate::domain::model::{Invalid, KeyId, Micros};

/// Whose rate limits and quota a verification spends: a key's rotation chain
/// (every link spends the newest key's), or the identity that owns the key
/// (every key of it spends the identity's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LimitsOwner {
    Lineage(KeyId),
    Identity(IdentityId),
}

/// A chain is its first key's id, as it always was in shared counters'
/// names; an identity is marked, so no chain and identity can share one.
impl fmt::Display for LimitsOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lineage(id) => f.write_str(id.as_str()),
            Self::Identity(id) => write!(f, "identity:{id}"),
        }
    }
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// `window` bounds: 1 s to 30 days.
pub const MIN_WINDOW: Micros = Micros(MICROS_PER_SECOND);
pub const MAX_WINDOW: Micros = Micros(30 * MICROS_PER_DAY);
pub const MAX_RATE_LIMITS: usize = 8;
/// `limit` above this is refused: 10¹² calls a window is beyond any real
/// deployment and keeps the integer arithmetic below comfortably inside u128.
pub const MAX_LIMIT: u64 = 1_000_000_000_000;

/// A rate limit's name: `[a-z][a-z0-9_]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitName(Box<str>);

impl LimitName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let mut bytes = s.bytes();
        let ok = (1..=63).contains(&s.len())
            && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
            && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(Invalid("must match [a-z][a-z0-9_]{0,62}"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// At most `limit` calls in a `window`, as a burst on an idle key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub name: LimitName,
    pub limit: u64,
    /// Whole milliseconds, 1 s to 30 days, in microseconds.
    pub window: Micros,
}

impl RateLimit {
    pub fn limit_invalid(limit: u64) -> Option<Invalid> {
        match limit {
            0 => Some(Invalid("must be at least 1")),
            n if n > MAX_LIMIT => Some(Invalid("must be at most 1000000000000")),
            _ => None,
        }
    }

    pub fn window_invalid(window: Micros) -> Option<Invalid> {
        if window < MIN_WINDOW || window > MAX_WINDOW {
            Some(Invalid("must be from 1s to 30 days"))
        } else if window.0 % 1_000 != 0 {
            Some(Invalid("must be a whole number of milliseconds"))
        } else {
            None
        }
    }
}

/// A key's rate limits: at most [`MAX_RATE_LIMITS`], names unique, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimits(Vec<RateLimit>);

impl RateLimits {
    /// Checks the set's own rules; each limit is already valid on its own.
    pub fn new(limits: Vec<RateLimit>) -> Result<Self, Invalid> {
        if limits.len() > MAX_RATE_LIMITS {
            return Err(Invalid("at most 8 rate limits per key"));
        }
        for (i, l) in limits.iter().enumerate() {
            if limits[..i].iter().any(|o| o.name == l.name) {
                return Err(Invalid("rate limit names must be unique per key"));
            }
        }
        Ok(Self(limits))
    }

    pub fn iter(&self) -> std::slice::Iter<'_, RateLimit> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Stored form: `name:limit:window_ms` items, space-separated (no name holds
    /// a space or a colon).
    pub fn encode(&self) -> String {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|l| format!("{}:{}:{}", l.name.as_str(), l.limit, l.window.0 / 1_000))
            .collect();
        items.join(" ")
    }

    pub fn decode(s: &str) -> Result<Self, Invalid> {
        const BAD: Invalid = Invalid("not a stored rate-limit list");
        let mut limits = Vec::new();
        for item in s.split(' ').filter(|i| !i.is_empty()) {
            let mut parts = item.split(':');
            let (Some(name), Some(limit), Some(ms), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(BAD);
            };
            let limit: u64 = limit.parse().map_err(|_| BAD)?;
            let ms: i64 = ms.parse().map_err(|_| BAD)?;
            let window = Micros(ms.checked_mul(1_000).ok_or(BAD)?);
            if RateLimit::limit_invalid(limit).is_some()
                || RateLimit::window_invalid(window).is_some()
            {
                return Err(BAD);
            }
            limits.push(RateLimit {
                name: LimitName::parse(name)?,
                limit,
                window,
            });
        }
        Self::new(limits)
    }
}

/// When a quota's credits come back. Stored as the proto enum's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriod {
    Day,
    Month,
    Total,
}

impl QuotaPeriod {
    pub fn as_i64(self) -> i64 {
        match self {
            Self::Day => 1,
            Self::Month => 2,
            Self::Total => 3,
        }
    }

    /// Start of the UTC period `now` lies in; 0 for a period that never ends.
    pub fn start(self, now: Micros) -> Micros {
        match self {
            Self::Day => Micros(now.0.div_euclid(MICROS_PER_DAY) * MICROS_PER_DAY),
            Self::Month => month_start(now, 0),
            Self::Total => Micros(0),
        }
    }

    /// Start of the next period, `None` when the period never ends.
    pub fn next_start(self, now: Micros) -> Option<Micros> {
        match self {
            Self::Day => Some(Micros(self.start(now).0 + MICROS_PER_DAY)),
            Self::Month => Some(month_start(now, 1)),
            Self::Total => None,
        }
    }
}

impl TryFrom<i64> for QuotaPeriod {
    type Error = Invalid;

    fn try_from(n: i64) -> Result<Self, Invalid> {
        match n {
            1 => Ok(Self::Day),
            2 => Ok(Self::Month),
            3 => Ok(Self::Total),
            _ => Err(Invalid("not a quota period")),
        }
    }
}

/// The first day of `now`'s UTC month, moved `months_ahead` months on, as
/// microseconds. The calendar comes from the `time` crate.
fn month_start(now: Micros, months_ahead: u8) -> Micros {
    let date = time::OffsetDateTime::from_unix_timestamp(now.0.div_euclid(MICROS_PER_SECOND))
        .map_or(time::Date::MIN, |t| t.date());
    let (mut year, mut month) = (date.year(), date.month());
    for _ in 0..months_ahead {
        if month == time::Month::December {
            year += 1;
        }
        month = month.next();
    }
    let first = time::Date::from_calendar_date(year, month, 1).unwrap_or(time::Date::MAX);
    Micros(first.midnight().assume_utc().unix_timestamp() * MICROS_PER_SECOND)
}

/// Credits per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub limit: u64,
    pub period: QuotaPeriod,
}

/// A stored quota's use as of `now`, as `(used, period start)`: a stored
/// period that has ended used nothing of the current one (the row itself
/// moves on at its next take). Keys and identities keep their quotas alike.
pub fn quota_as_of(quota: Option<Quota>, used: u64, start: Micros, now: Micros) -> (u64, Micros) {
    match quota {
        Some(q) if q.period.start(now) != start => (0, q.period.start(now)),
        _ => (used, start),
    }
}

/// A stored quota's use in its stored period, and when that period ends;
/// `None` without a quota.
pub fn quota_usage(
    quota: Option<Quota>,
    used: u64,
    start: Micros,
) -> Option<(u64, Option<Micros>)> {
    let q = quota?;
    Some((used, q.period.next_start(start)))
}

impl Quota {
    pub fn limit_invalid(limit: u64) -> Option<Invalid> {
        match limit {
            0 => Some(Invalid("must be at least 1")),
            n if n > i64::MAX as u64 => Some(Invalid("must be at most 9223372036854775807")),
            _ => None,
        }
    }
}

/// One rate limit's bucket. `level` is in units where a call weighs `window`
/// and a microsecond drains `limit` (see the module header); `at` is when
/// `level` was last brought up to date.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    level: u128,
    at: i64,
}

/// What a bucket says of `cost` calls now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauge {
    pub allowed: bool,
    /// Calls left after this call (if it is allowed and consumes).
    pub remaining: u64,
    /// When the bucket is empty again.
    pub reset: Micros,
    /// How long until `cost` calls would fit; 0 when they fit now.
    pub retry_after: Micros,
}

impl Bucket {
    fn drained(self, limit: &RateLimit, now: Micros) -> u128 {
        let elapsed = u128::try_from(now.0.saturating_sub(self.at)).unwrap_or(0);
        self.level
            .saturating_sub(elapsed.saturating_mul(u128::from(limit.limit)))
    }

    /// Whether `cost` calls fit now (`cost` 0 asks about one call), without
    /// changing anything.
    pub fn gauge(self, limit: &RateLimit, cost: u32, now: Micros) -> Gauge {
        let window = u128::try_from(limit.window.0).unwrap_or(u128::MAX);
        let rate = u128::from(limit.limit);
        let size = rate * window;
        let level = self.drained(limit, now);
        let ask = u128::from(cost.max(1)) * window;
        let allowed = level + ask <= size;
        let after = if allowed && cost > 0 {
            level + ask
        } else {
            level
        };
        let to_micros =
            |units: u128| Micros(i64::try_from(units.div_ceil(rate)).unwrap_or(i64::MAX));
        Gauge {
            allowed,
            remaining: u64::try_from((size - after.min(size)) / window).unwrap_or(u64::MAX),
            reset: Micros(now.0.saturating_add(to_micros(after).0)),
            retry_after: if allowed {
                Micros(0)
            } else {
                to_micros(level + ask - size)
            },
        }
    }

    /// Adds `cost` calls to the bucket (the caller checked they fit).
    pub fn take(&mut self, limit: &RateLimit, cost: u32, now: Micros) {
        let window = u128::try_from(limit.window.0).unwrap_or(u128::MAX);
        self.level = self.drained(limit, now) + u128::from(cost) * window;
        self.at = now.0.max(self.at);
    }

    /// Gives back `cost` calls taken by a call that was then refused.
    pub fn give_back(&mut self, limit: &RateLimit, cost: u32) {
        let window = u128::try_from(limit.window.0).unwrap_or(u128::MAX);
        self.level = self.level.saturating_sub(u128::from(cost) * window);
    }

    /// The same calls in flight, measured against a changed limit: an update of a
    /// key's limits applies at once and hands out no fresh burst.
    pub fn rescale(&mut self, from: &RateLimit, to: &RateLimit, now: Micros) {
        if from.limit == to.limit && from.window == to.window {
            return;
        }
        let level = self.drained(from, now);
        let (wf, wt) = (from.window.0 as u128, to.window.0 as u128);
        self.level = level
            .checked_mul(wt)
            .map_or_else(|| level / wf * wt, |l| l / wf);
        self.at = now.0.max(self.at);
    }

    /// Whether the bucket is empty at `now`: its state can be forgotten.
    pub fn is_empty(self, limit: &RateLimit, now: Micros) -> bool {
        self.drained(limit, now) == 0
    }
}

impl fmt::Display for LimitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(n: u64, window_s: i64) -> RateLimit {
        RateLimit {
            name: LimitName::parse("per_window").expect("name"),
            limit: n,
            window: Micros(window_s * MICROS_PER_SECOND),
        }
    }

    /// Calls of cost 1 at `times`, each taken when allowed; returns the times allowed.
    fn run(l: &RateLimit, times: impl IntoIterator<Item = i64>) -> Vec<i64> {
        let mut b = Bucket::default();
        let mut passed = Vec::new();
        for t in times {
            let now = Micros(t);
            if b.gauge(l, 1, now).allowed {
                b.take(l, 1, now);
                passed.push(t);
            }
        }
        passed
    }

    #[test]
    fn a_burst_on_an_idle_key_passes_exactly_limit_then_again_after_a_window() {
        for (n, w) in [(5, 1), (3, 7), (1000, 60), (7, 2_592_000), (1, 1)] {
            let l = limit(n, w);
            let start = 1_700_000_000 * MICROS_PER_SECOND;
            let burst = |at: i64| std::iter::repeat_n(at, (n * 2 + 3) as usize);
            let window = w * MICROS_PER_SECOND;
            let passed = run(&l, burst(start).chain(burst(start + window)));
            let first = passed.iter().filter(|t| **t == start).count();
            let second = passed.iter().filter(|t| **t == start + window).count();
            assert_eq!((first, second), (n as usize, n as usize), "limit {n}/{w}s");
        }
    }

    #[test]
    fn a_moment_before_the_window_ends_the_bucket_is_not_yet_empty() {
        let l = limit(5, 10);
        let mut b = Bucket::default();
        for _ in 0..5 {
            b.take(&l, 1, Micros(0));
        }
        let g = b.gauge(&l, 5, Micros(10 * MICROS_PER_SECOND - 1));
        assert!(!g.allowed);
        assert_eq!(g.retry_after, Micros(1));
        assert_eq!(g.reset, Micros(10 * MICROS_PER_SECOND));
    }

    /// Calls every `step` µs for 5 windows: the most that pass in any
    /// window-long interval stays below 2 × limit (the documented worst case is
    /// 2 × limit − 1, reached by a burst then steady calls).
    #[test]
    fn worst_case_over_any_window_long_interval_is_below_twice_the_limit() {
        for (n, w, step) in [(5_u64, 1_i64, 1_000_i64), (10, 2, 7_919), (100, 1, 101)] {
            let l = limit(n, w);
            let window = w * MICROS_PER_SECOND;
            let passed = run(&l, (0..5 * window).step_by(step as usize));
            let mut worst = 0;
            for (i, t) in passed.iter().enumerate() {
                let within = passed[i..].iter().take_while(|u| **u < t + window).count();
                worst = worst.max(within);
            }
            assert!(worst < 2 * n as usize, "{worst} in a window for limit {n}");
            assert!(worst >= 2 * n as usize - 2, "the bound is reached: {worst}");
        }
    }

    #[test]
    fn cost_weighs_several_calls_and_zero_asks_without_taking() {
        let l = limit(10, 1);
        let mut b = Bucket::default();
        assert_eq!(b.gauge(&l, 7, Micros(0)).remaining, 3);
        b.take(&l, 7, Micros(0));
        assert!(!b.gauge(&l, 4, Micros(0)).allowed);
        let zero = b.gauge(&l, 0, Micros(0));
        assert!(zero.allowed);
        assert_eq!(zero.remaining, 3, "cost 0 consumes nothing");
        b.give_back(&l, 7);
        assert_eq!(b.gauge(&l, 10, Micros(0)).remaining, 0);
        assert!(b.gauge(&l, 10, Micros(0)).allowed);
    }

    #[test]
    fn a_changed_limit_keeps_the_calls_already_made() {
        let (from, to) = (limit(10, 1), limit(4, 1));
        let mut b = Bucket::default();
        for _ in 0..5 {
            b.take(&from, 1, Micros(0));
        }
        b.rescale(&from, &to, Micros(0));
        assert!(!b.gauge(&to, 1, Micros(0)).allowed, "5 made, 4 allowed");
        let wider = limit(10, 2);
        b.rescale(&to, &wider, Micros(0));
        assert_eq!(b.gauge(&wider, 1, Micros(0)).remaining, 4);
    }

    #[test]
    fn periods_start_at_utc_day_and_month_boundaries() {
        // 2026-11-30T23:59:59.999999Z and the next microsecond.
        let last = Micros(1_796_083_199_999_999);
        let next = Micros(last.0 + 1);
        assert_eq!(
            QuotaPeriod::Day.start(last),
            Micros(1_796_083_199_999_999 - 86_399_999_999)
        );
        assert_eq!(QuotaPeriod::Day.next_start(last), Some(next));
        assert_eq!(QuotaPeriod::Month.start(next), next, "2026-12-01");
        assert_eq!(QuotaPeriod::Month.next_start(last), Some(next));
        // 2026-11-01T00:00:00Z
        assert_eq!(
            QuotaPeriod::Month.start(last),
            Micros(1_793_491_200 * MICROS_PER_SECOND)
        );
        assert_eq!(QuotaPeriod::Total.start(last), Micros(0));
        assert_eq!(QuotaPeriod::Total.next_start(last), None);
        // 2028-02-29 is in February of a leap year; March starts 2028-03-01.
        let leap = Micros(1_835_395_200 * MICROS_PER_SECOND);
        assert_eq!(
            QuotaPeriod::Month.next_start(leap),
            Some(Micros(1_835_481_600 * MICROS_PER_SECOND))
        );
    }

    #[test]
    fn every_month_from_1970_to_2400_follows_the_last() {
        let mut start = Micros(0);
        for _ in 0..(2400 - 1970) * 12 {
            let next = QuotaPeriod::Month.next_start(start).expect("months end");
            let days = (next.0 - start.0) / MICROS_PER_DAY;
            assert!((28..=31).contains(&days), "{days} days from {start:?}");
            assert_eq!(QuotaPeriod::Month.start(Micros(next.0 - 1)), start);
            assert_eq!(QuotaPeriod::Month.start(next), next);
            start = next;
        }
        // 2400-01-01T00:00:00Z
        assert_eq!(start, Micros(13_569_465_600 * MICROS_PER_SECOND));
    }

    #[test]
    fn stored_rate_limits_round_trip_and_bad_ones_are_refused() {
        let limits = RateLimits::new(vec![
            limit(5, 1),
            RateLimit {
                name: LimitName::parse("daily").expect("name"),
                limit: 1_000,
                window: Micros(86_400_000_000),
            },
        ])
        .expect("limits");
        assert_eq!(
            RateLimits::decode(&limits.encode()).expect("round trip"),
            limits
        );
        assert_eq!(
            RateLimits::decode("").expect("empty"),
            RateLimits::default()
        );
        for bad in [
            "x",
            "a:1",
            "a:0:1000",
            "a:1:999",
            "A:1:1000",
            "a:1:1000:2",
            "a:1:1000 a:2:1000",
        ] {
            assert!(RateLimits::decode(bad).is_err(), "{bad}");
        }
    }
}
