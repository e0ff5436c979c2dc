//! A key's life against a reference model. Random sequences of CreateKey,
//! UpdateKey (every mask path), RotateKey (with and without grace), RevokeKey,
//! CreateIdentity, UpdateIdentity (its limits), VerifyKey (with costs) and
//! clock steps run against the real service, in
//! process, on a clock the test holds, on both stores; every answer is compared
//! with what a small model of keys, rotation chains, rate limits, quotas and
//! time says: the admin call's status code, and the verification's code, each
//! limit's `remaining` and whether a `retry_after` is given. A failing sequence
//! is shrunk to a short one and printed.
//!
//! The model is deliberately plain: a key is a few flags; a chain (lineage) has
//! one set of limits, one bucket per rate limit (the generic cell rate
//! algorithm as its definition reads: a bucket of `limit × window` units that
//! drains `limit` units a microsecond, a call weighing `window`) and one quota
//! count; an identity has the same, shared by every key that names it and
//! checked after the key's own, all or nothing. It does no I/O.
//!
//! `KEYGATE_MODEL_CASES` sets the number of sequences per store (default 48).

use std::{
    cell::RefCell,
    rc::Rc,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
};

use keygate::{
    clock::{Clock, SharedClock},
    domain::model::Micros,
    proto::{
        self, CreateKeyRequest, KeyType, ListKeysRequest, Quota, QuotaPeriod, RateLimit,
        RevokeKeyRequest, RotateKeyRequest, UpdateKeyRequest, VerifyCode, VerifyKeyRequest,
        key_admin_client::KeyAdminClient, key_verify_client::KeyVerifyClient,
    },
};
use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, TestRunner},
};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};
use prost_types::FieldMask;
use tonic::{Code, Request, transport::Channel};

use crate::support::*;

const SEC: i64 = 1_000_000;
const DAY: i64 = 86_400 * SEC;
/// 2027-01-01T06:00:00Z: where the first sequence's clock starts. Each
/// sequence starts a whole number of days later than the last, so the model,
/// which counts from 0, agrees with the service on where days begin.
const BASE: i64 = 1_798_783_200 * SEC;
const ACTOR: &str = "m1";

// ----------------------------------------------------------------- the model

#[derive(Debug, Clone, PartialEq, Eq)]
struct Limit {
    name: &'static str,
    limit: u64,
    window_s: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Period {
    Day,
    Total,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QuotaCfg {
    limit: u64,
    period: Period,
}

/// One rate limit's bucket: `level` units as of `at`.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    level: u128,
    at: i64,
}

#[derive(Debug, Clone)]
struct Lineage {
    limits: Vec<Limit>,
    buckets: Vec<Bucket>,
    quota: Option<QuotaCfg>,
    used: u64,
    period_start: i64,
}

#[derive(Debug, Clone)]
struct MKey {
    lineage: usize,
    user: bool,
    revoked: bool,
    rotated: bool,
    expire: Option<i64>,
    /// Holds `stats:read` as well as `links:read`.
    wide: bool,
    /// The identity whose limits the key also spends.
    identity: Option<usize>,
}

/// One change of an UpdateKey, by mask path.
#[derive(Debug, Clone)]
enum Change {
    Name,
    Scopes {
        wide: bool,
    },
    Expire(Option<i64>),
    RateLimits(Vec<Limit>),
    Quota(Option<QuotaCfg>),
    /// The key joins an identity (by index, when there is one) or leaves it.
    Identity(Option<Index>),
}

#[derive(Debug, Clone)]
enum Op {
    Create {
        user: bool,
        limits: Vec<Limit>,
        quota: Option<QuotaCfg>,
        expire_in_s: Option<i64>,
        identity: Option<Index>,
    },
    CreateIdentity {
        limits: Vec<Limit>,
        quota: Option<QuotaCfg>,
    },
    /// Only `RateLimits` and `Quota` changes.
    UpdateIdentity {
        identity: Index,
        changes: Vec<Change>,
    },
    Update {
        key: Index,
        changes: Vec<Change>,
    },
    Rotate {
        key: Index,
        grace_s: Option<i64>,
    },
    Revoke {
        key: Index,
    },
    Verify {
        key: Index,
        cost: Option<u32>,
        wants_stats: bool,
    },
    Step {
        seconds: i64,
    },
}

/// What the model says the last operation answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Admin(Code),
    Verify {
        code: VerifyCode,
        rate_remaining: Option<u64>,
        quota_remaining: Option<u64>,
        retry_after: bool,
    },
    Nothing,
}

#[derive(Debug, Clone)]
struct Model {
    /// Microseconds since the sequence's start.
    now: i64,
    keys: Vec<MKey>,
    lineages: Vec<Lineage>,
    identities: Vec<Lineage>,
    expected: Expected,
}

fn period_start(p: Period, now: i64) -> i64 {
    match p {
        Period::Day => (BASE + now).div_euclid(DAY),
        Period::Total => 0,
    }
}

impl Bucket {
    fn drained(self, l: &Limit, now: i64) -> u128 {
        let elapsed = u128::try_from(now - self.at).unwrap_or(0);
        self.level.saturating_sub(elapsed * u128::from(l.limit))
    }
}

fn window(l: &Limit) -> u128 {
    u128::try_from(l.window_s * SEC).expect("positive")
}

impl Lineage {
    fn new(limits: &[Limit], quota: Option<QuotaCfg>, now: i64) -> Self {
        Self {
            limits: limits.to_vec(),
            buckets: vec![Bucket::default(); limits.len()],
            quota,
            used: 0,
            period_start: quota.map_or(0, |q| period_start(q.period, now)),
        }
    }

    /// A change of the limits: a limit that keeps its name keeps the calls
    /// made, measured against the new limit from now; a new one starts
    /// empty. A quota keeps its use while its period stays the same.
    fn change(&mut self, change: &Change, now: i64) {
        match change {
            Change::RateLimits(new) => {
                let buckets = new
                    .iter()
                    .map(|n| {
                        match self
                            .limits
                            .iter()
                            .zip(&self.buckets)
                            .find(|(o, _)| o.name == n.name)
                        {
                            None => Bucket::default(),
                            Some((o, b)) if o.limit == n.limit && o.window_s == n.window_s => *b,
                            Some((o, b)) => Bucket {
                                level: b.drained(o, now) * window(n) / window(o),
                                at: now.max(b.at),
                            },
                        }
                    })
                    .collect();
                self.limits = new.clone();
                self.buckets = buckets;
            }
            Change::Quota(q) => {
                match (self.quota, q) {
                    (_, None) => {
                        self.used = 0;
                        self.period_start = 0;
                    }
                    (Some(old), Some(new)) if old.period == new.period => {}
                    (_, Some(new)) => {
                        self.used = 0;
                        self.period_start = period_start(new.period, now);
                    }
                }
                self.quota = *q;
            }
            _ => {}
        }
    }

    /// Every rate limit checked for `cost` at `now`, nothing taken:
    /// `(allowed, remaining of the reported limit, never fits)`, `None`
    /// without rate limits. The reported limit is the first refusing one, or
    /// else the one with the fewest calls left.
    fn rate(&self, cost: u32, now: i64) -> Option<(bool, u64, bool)> {
        let ask = u128::from(cost.max(1));
        let mut pick: Option<(bool, u64)> = None;
        for (lim, b) in self.limits.iter().zip(&self.buckets) {
            let (w, size) = (window(lim), u128::from(lim.limit) * window(lim));
            let level = b.drained(lim, now);
            let allowed = level + ask * w <= size;
            let after = if allowed && cost > 0 {
                level + u128::from(cost) * w
            } else {
                level
            };
            let remaining = u64::try_from((size - after.min(size)) / w).expect("small");
            pick = match pick {
                None => Some((allowed, remaining)),
                Some((false, r)) => Some((false, r)),
                Some((true, r)) if !allowed || remaining < r => Some((allowed, remaining)),
                p => p,
            };
        }
        let never = self.limits.iter().any(|lim| u64::from(cost) > lim.limit);
        pick.map(|(allowed, remaining)| (allowed, remaining, never))
    }

    fn take_rate(&mut self, cost: u32, now: i64) {
        if cost > 0 {
            for (lim, b) in self.limits.iter().zip(self.buckets.iter_mut()) {
                b.level = b.drained(lim, now) + u128::from(cost) * window(lim);
                b.at = now.max(b.at);
            }
        }
    }

    /// The quota checked for `cost` at `now` (its period moved on first),
    /// nothing taken: `(allowed, remaining after the call, retry_after)`.
    fn quota(&mut self, cost: u32, now: i64) -> Option<(bool, u64, bool)> {
        let q = self.quota?;
        let start = period_start(q.period, now);
        if start != self.period_start {
            self.used = 0;
            self.period_start = start;
        }
        let need = u64::from(cost.max(1));
        if self.used + need > q.limit {
            let retry = q.period == Period::Day && u64::from(cost) <= q.limit;
            return Some((false, q.limit - self.used.min(q.limit), retry));
        }
        Some((true, q.limit - self.used - u64::from(cost), false))
    }
}

/// Of two limits' remaining counts, the smaller (the key's on a tie), as the
/// answer reports it.
fn fewest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b < a { b } else { a }),
        (a, b) => a.or(b),
    }
}

impl Model {
    fn key(&self, i: &Index) -> usize {
        i.index(self.keys.len())
    }

    fn live(&self, k: &MKey) -> bool {
        !k.revoked && !k.rotated && k.expire.is_none_or(|t| t > self.now)
    }

    fn identity(&self, i: Option<&Index>) -> Option<usize> {
        (!self.identities.is_empty())
            .then(|| i.map(|i| i.index(self.identities.len())))
            .flatten()
    }

    fn create(
        &mut self,
        user: bool,
        limits: &[Limit],
        quota: Option<QuotaCfg>,
        expire_in_s: Option<i64>,
        identity: Option<usize>,
    ) -> Code {
        // The database's rule: a user key counts until it is revoked or
        // rotated, expired or not.
        if user && self.keys.iter().any(|k| k.user && !k.revoked && !k.rotated) {
            return Code::AlreadyExists;
        }
        self.lineages.push(Lineage::new(limits, quota, self.now));
        self.keys.push(MKey {
            lineage: self.lineages.len() - 1,
            user,
            revoked: false,
            rotated: false,
            expire: expire_in_s.map(|s| self.now + s * SEC),
            wide: false,
            identity,
        });
        Code::Ok
    }

    fn update(&mut self, i_key: usize, changes: &[Change]) -> Code {
        if !self.live(&self.keys[i_key]) {
            return Code::FailedPrecondition;
        }
        let now = self.now;
        let line = self.keys[i_key].lineage;
        for change in changes {
            match change {
                Change::Name => {}
                Change::Scopes { wide } => self.keys[i_key].wide = *wide,
                Change::Expire(s) => self.keys[i_key].expire = s.map(|s| now + s * SEC),
                Change::RateLimits(_) | Change::Quota(_) => {
                    self.lineages[line].change(change, now);
                }
                Change::Identity(i) => self.keys[i_key].identity = self.identity(i.as_ref()),
            }
        }
        Code::Ok
    }

    fn rotate(&mut self, i: usize, grace_s: Option<i64>) -> Code {
        if !self.live(&self.keys[i]) {
            return Code::FailedPrecondition;
        }
        // The replacement copies the key (its expiry too) and joins its chain.
        self.keys.push(self.keys[i].clone());
        let old = &mut self.keys[i];
        old.rotated = true;
        match grace_s {
            None => old.revoked = true,
            Some(g) => {
                let until = self.now + g * SEC;
                old.expire = Some(old.expire.map_or(until, |e| e.min(until)));
            }
        }
        Code::Ok
    }

    fn verify(&mut self, i: usize, cost: Option<u32>, wants_stats: bool) -> Expected {
        let plain = |code| Expected::Verify {
            code,
            rate_remaining: None,
            quota_remaining: None,
            retry_after: false,
        };
        let now = self.now;
        let k = &self.keys[i];
        if k.revoked {
            return plain(VerifyCode::Revoked);
        }
        if k.expire.is_some_and(|t| t <= now) {
            return plain(VerifyCode::Expired);
        }
        if wants_stats && !k.wide {
            return plain(VerifyCode::InsufficientScope);
        }
        let cost = cost.unwrap_or(1);
        // A chain is one key: every link spends its newest key's identity.
        let line = k.lineage;
        let identity = self
            .keys
            .iter()
            .find(|n| n.lineage == line && !n.rotated)
            .map_or(k.identity, |n| n.identity);
        // The key's rate limits, then the identity's: the first refusal
        // stands, and nothing is taken.
        let key_rate = self.lineages[line].rate(cost, now);
        let identity_rate = identity.and_then(|i| self.identities[i].rate(cost, now));
        for (allowed, remaining, never) in [key_rate, identity_rate].into_iter().flatten() {
            if !allowed {
                return Expected::Verify {
                    code: VerifyCode::RateLimited,
                    rate_remaining: Some(remaining),
                    quota_remaining: None,
                    retry_after: !never,
                };
            }
        }
        let rate_remaining = fewest(key_rate.map(|r| r.1), identity_rate.map(|r| r.1));
        // The key's quota, then the identity's; a refusal takes nothing, so
        // the rate limit has what it had before the call.
        let key_quota = self.lineages[line].quota(cost, now);
        let identity_quota = identity.and_then(|i| self.identities[i].quota(cost, now));
        for (allowed, remaining, retry_after) in [key_quota, identity_quota].into_iter().flatten() {
            if !allowed {
                return Expected::Verify {
                    code: VerifyCode::QuotaExceeded,
                    rate_remaining: rate_remaining.map(|r| r + u64::from(cost)),
                    quota_remaining: Some(remaining),
                    retry_after,
                };
            }
        }
        let spend = |l: &mut Lineage| {
            if l.quota.is_some() {
                l.used += u64::from(cost);
            }
            l.take_rate(cost, now);
        };
        spend(&mut self.lineages[line]);
        if let Some(i) = identity {
            spend(&mut self.identities[i]);
        }
        Expected::Verify {
            code: VerifyCode::Valid,
            rate_remaining,
            quota_remaining: fewest(key_quota.map(|q| q.1), identity_quota.map(|q| q.1)),
            retry_after: false,
        }
    }
}

fn limits_strategy() -> impl Strategy<Value = Vec<Limit>> {
    let one = |name: &'static str| {
        (
            prop::sample::select(vec![1_u64, 2, 3, 5, 10]),
            prop::sample::select(vec![1_i64, 10, 60, 3_600]),
        )
            .prop_map(move |(limit, window_s)| Limit {
                name,
                limit,
                window_s,
            })
    };
    prop_oneof![
        2 => Just(Vec::new()),
        3 => one("a").prop_map(|a| vec![a]),
        1 => (one("a"), one("b")).prop_map(|(a, b)| vec![a, b]),
    ]
}

fn quota_strategy() -> impl Strategy<Value = Option<QuotaCfg>> {
    let cfg = (
        prop::sample::select(vec![1_u64, 3, 10, 1_500]),
        prop_oneof![Just(Period::Day), Just(Period::Total)],
    )
        .prop_map(|(limit, period)| QuotaCfg { limit, period });
    prop_oneof![1 => Just(None), 2 => cfg.prop_map(Some)]
}

fn change_strategy() -> impl Strategy<Value = Change> {
    prop_oneof![
        Just(Change::Name),
        any::<bool>().prop_map(|wide| Change::Scopes { wide }),
        prop::option::of(prop::sample::select(vec![5_i64, 60, 3_600, 2 * 86_400]))
            .prop_map(Change::Expire),
        limits_strategy().prop_map(Change::RateLimits),
        quota_strategy().prop_map(Change::Quota),
        prop::option::of(any::<Index>()).prop_map(Change::Identity),
    ]
}

fn identity_change_strategy() -> impl Strategy<Value = Change> {
    prop_oneof![
        limits_strategy().prop_map(Change::RateLimits),
        quota_strategy().prop_map(Change::Quota),
    ]
}

/// One change per mask path, as a caller would send them.
fn distinct(mut changes: Vec<Change>) -> Vec<Change> {
    let mut seen = Vec::new();
    changes.retain(|c| {
        let path = std::mem::discriminant(c);
        let new = !seen.contains(&path);
        seen.push(path);
        new
    });
    changes
}

impl ReferenceStateMachine for Model {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            now: 0,
            keys: Vec::new(),
            lineages: Vec::new(),
            identities: Vec::new(),
            expected: Expected::Nothing,
        })
        .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        let create = (
            any::<bool>(),
            limits_strategy(),
            quota_strategy(),
            prop::option::of(prop::sample::select(vec![5_i64, 60, 3_600, 2 * 86_400])),
            prop::option::weighted(0.6, any::<Index>()),
        )
            .prop_map(|(user, limits, quota, expire_in_s, identity)| Op::Create {
                user,
                limits,
                quota,
                expire_in_s,
                identity,
            });
        let create_identity = (limits_strategy(), quota_strategy())
            .prop_map(|(limits, quota)| Op::CreateIdentity { limits, quota });
        let update_identity = (
            any::<Index>(),
            prop::collection::vec(identity_change_strategy(), 1..3),
        )
            .prop_map(|(identity, changes)| Op::UpdateIdentity {
                identity,
                changes: distinct(changes),
            });
        let step = prop::sample::select(vec![1_i64, 5, 30, 600, 3_600, 86_400])
            .prop_map(|seconds| Op::Step { seconds });
        if state.keys.is_empty() {
            return prop_oneof![3 => create, 2 => create_identity, 1 => step].boxed();
        }
        let update = (
            any::<Index>(),
            prop::collection::vec(change_strategy(), 1..4),
        )
            .prop_map(|(key, changes)| Op::Update {
                key,
                changes: distinct(changes),
            });
        let rotate = (
            any::<Index>(),
            prop::option::of(prop::sample::select(vec![1_i64, 60, 3_600])),
        )
            .prop_map(|(key, grace_s)| Op::Rotate { key, grace_s });
        let revoke = any::<Index>().prop_map(|key| Op::Revoke { key });
        let verify = (
            any::<Index>(),
            prop::option::of(prop::sample::select(vec![0_u32, 1, 2, 5, 1_000])),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(key, cost, wants_stats)| Op::Verify {
                key,
                cost,
                wants_stats,
            });
        prop_oneof![
            2 => create,
            1 => create_identity,
            2 => update_identity,
            3 => update,
            3 => rotate,
            1 => revoke,
            10 => verify,
            3 => step,
        ]
        .boxed()
    }

    fn preconditions(state: &Model, op: &Op) -> bool {
        match op {
            Op::Create { .. } | Op::CreateIdentity { .. } | Op::Step { .. } => true,
            Op::UpdateIdentity { .. } => !state.identities.is_empty(),
            _ => !state.keys.is_empty(),
        }
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        state.expected = match op {
            Op::Create {
                user,
                limits,
                quota,
                expire_in_s,
                identity,
            } => {
                let identity = state.identity(identity.as_ref());
                Expected::Admin(state.create(*user, limits, *quota, *expire_in_s, identity))
            }
            Op::CreateIdentity { limits, quota } => {
                let identity = Lineage::new(limits, *quota, state.now);
                state.identities.push(identity);
                Expected::Admin(Code::Ok)
            }
            Op::UpdateIdentity { identity, changes } => {
                let i = identity.index(state.identities.len());
                for change in changes {
                    let now = state.now;
                    state.identities[i].change(change, now);
                }
                Expected::Admin(Code::Ok)
            }
            Op::Update { key, changes } => {
                let i = state.key(key);
                Expected::Admin(state.update(i, changes))
            }
            Op::Rotate { key, grace_s } => {
                let i = state.key(key);
                Expected::Admin(state.rotate(i, *grace_s))
            }
            Op::Revoke { key } => {
                let i = state.key(key);
                state.keys[i].revoked = true;
                Expected::Admin(Code::Ok)
            }
            Op::Verify {
                key,
                cost,
                wants_stats,
            } => {
                let i = state.key(key);
                state.verify(i, *cost, *wants_stats)
            }
            Op::Step { seconds } => {
                state.now += seconds * SEC;
                Expected::Nothing
            }
        };
        state
    }
}

// ------------------------------------------------------- the real service

/// A clock that moves only when the test moves it, so that the model and the
/// service agree to the microsecond.
#[derive(Debug)]
struct Frozen(AtomicI64);

impl Clock for Frozen {
    fn now(&self) -> Micros {
        Micros(self.0.load(Ordering::SeqCst))
    }
}

/// One keygate per store, shared by every sequence on that store; each
/// sequence has an organization and a stretch of time of its own.
struct Harness {
    rt: tokio::runtime::Runtime,
    admin: KeyAdminClient<Channel>,
    verify: KeyVerifyClient<Channel>,
    clock: Arc<Frozen>,
    sequences: RefCell<i64>,
}

thread_local! {
    static HARNESS: RefCell<Option<Rc<Harness>>> = const { RefCell::new(None) };
}

struct Sut {
    h: Rc<Harness>,
    org: String,
    base: i64,
    /// The model's keys in order: id and secret.
    keys: Vec<(String, String)>,
    /// The model's identities' ids, in order.
    identities: Vec<String>,
}

fn call<T>(msg: T) -> Request<T> {
    as_actor(ACTOR, "admin", msg)
}

fn rate_limits(limits: &[Limit]) -> Vec<RateLimit> {
    limits
        .iter()
        .map(|l| RateLimit {
            name: l.name.into(),
            limit: l.limit,
            window: Some(prost_types::Duration {
                seconds: l.window_s,
                nanos: 0,
            }),
        })
        .collect()
}

fn quota(q: Option<QuotaCfg>) -> Option<Quota> {
    q.map(|q| Quota {
        limit: q.limit,
        period: match q.period {
            Period::Day => QuotaPeriod::Day,
            Period::Total => QuotaPeriod::Total,
        }
        .into(),
    })
}

fn code_of<T>(r: &Result<T, tonic::Status>) -> Code {
    r.as_ref().map_or_else(tonic::Status::code, |_| Code::Ok)
}

impl Sut {
    fn at(&self, seconds_from_now: i64) -> prost_types::Timestamp {
        Micros(self.h.clock.now().0 + seconds_from_now * SEC).to_timestamp()
    }

    fn admin_op(&mut self, op: &Op, model: &Model) -> Code {
        let h = Rc::clone(&self.h);
        let mut admin = h.admin.clone();
        let org = self.org.clone();
        // Indexes resolve against the key list before the operation.
        let index = |i: &Index| i.index(self.keys.len());
        let identity = |i: Option<&Index>| -> String {
            match i {
                Some(i) if !self.identities.is_empty() => {
                    self.identities[i.index(self.identities.len())].clone()
                }
                _ => String::new(),
            }
        };
        match op {
            Op::CreateIdentity { limits, quota: q } => {
                let req = proto::CreateIdentityRequest {
                    organization_id: org,
                    external_id: format!("customer-{}", self.identities.len()),
                    rate_limits: rate_limits(limits),
                    quota: quota(*q),
                    ..Default::default()
                };
                let r = h.rt.block_on(admin.create_identity(call(req)));
                if let Ok(r) = &r {
                    let id = r.get_ref().identity.as_ref().expect("identity").id.clone();
                    self.identities.push(id);
                }
                code_of(&r)
            }
            Op::UpdateIdentity {
                identity: i,
                changes,
            } => {
                let mut req = proto::UpdateIdentityRequest {
                    organization_id: org,
                    id: identity(Some(i)),
                    ..Default::default()
                };
                let mut paths = Vec::new();
                for change in changes {
                    match change {
                        Change::RateLimits(l) => {
                            req.rate_limits = rate_limits(l);
                            paths.push("rate_limits".to_owned());
                        }
                        Change::Quota(q) => {
                            req.quota = quota(*q);
                            paths.push("quota".to_owned());
                        }
                        other => unreachable!("no identity change: {other:?}"),
                    }
                }
                req.update_mask = Some(FieldMask { paths });
                code_of(&h.rt.block_on(admin.update_identity(call(req))))
            }
            Op::Create {
                user,
                limits,
                quota: q,
                expire_in_s,
                identity: i,
            } => {
                let req = CreateKeyRequest {
                    organization_id: org,
                    r#type: if *user { KeyType::User } else { KeyType::Bot }.into(),
                    name: "model".into(),
                    scopes: vec!["links:read".into()],
                    expire_time: expire_in_s.map(|s| self.at(s)),
                    rate_limits: rate_limits(limits),
                    quota: quota(*q),
                    identity_id: identity(i.as_ref()),
                    ..Default::default()
                };
                let r = h.rt.block_on(admin.create_key(call(req)));
                if let Ok(r) = &r {
                    let r = r.get_ref();
                    let id = r.key.as_ref().expect("key").id.clone();
                    self.keys.push((id, r.secret.clone()));
                }
                code_of(&r)
            }
            Op::Update { key, changes } => {
                let (id, _) = &self.keys[index(key)];
                let mut req = UpdateKeyRequest {
                    organization_id: org,
                    id: id.clone(),
                    update_mask: Some(FieldMask::default()),
                    ..Default::default()
                };
                let mut paths = Vec::new();
                for change in changes {
                    match change {
                        Change::Name => {
                            req.name = "renamed".into();
                            paths.push("name");
                        }
                        Change::Scopes { wide } => {
                            req.scopes = if *wide {
                                vec!["links:read".into(), "stats:read".into()]
                            } else {
                                vec!["links:read".into()]
                            };
                            paths.push("scopes");
                        }
                        Change::Expire(s) => {
                            req.expire_time = s.map(|s| self.at(s));
                            paths.push("expire_time");
                        }
                        Change::RateLimits(l) => {
                            req.rate_limits = rate_limits(l);
                            paths.push("rate_limits");
                        }
                        Change::Quota(q) => {
                            req.quota = quota(*q);
                            paths.push("quota");
                        }
                        Change::Identity(i) => {
                            req.identity_id = identity(i.as_ref());
                            paths.push("identity_id");
                        }
                    }
                }
                req.update_mask = Some(FieldMask {
                    paths: paths.into_iter().map(str::to_owned).collect(),
                });
                code_of(&h.rt.block_on(admin.update_key(call(req))))
            }
            Op::Rotate { key, grace_s } => {
                let (id, _) = &self.keys[index(key)];
                let req = RotateKeyRequest {
                    organization_id: org,
                    id: id.clone(),
                    grace_period: grace_s
                        .map(|seconds| prost_types::Duration { seconds, nanos: 0 }),
                };
                let r = h.rt.block_on(admin.rotate_key(call(req)));
                if let Ok(r) = &r {
                    let r = r.get_ref();
                    let id = r.key.as_ref().expect("key").id.clone();
                    self.keys.push((id, r.secret.clone()));
                }
                code_of(&r)
            }
            Op::Revoke { key } => {
                let (id, _) = &self.keys[index(key)];
                let req = RevokeKeyRequest {
                    organization_id: org,
                    id: id.clone(),
                };
                code_of(&h.rt.block_on(admin.revoke_key(call(req))))
            }
            _ => unreachable!("{op:?} is no admin call ({} keys)", model.keys.len()),
        }
    }

    /// A member never holds two live user keys: not revoked, not rotated,
    /// not expired, as the service itself lists them.
    fn live_user_keys(&self) -> usize {
        let h = Rc::clone(&self.h);
        let now = h.clock.now().0;
        let keys =
            h.rt.block_on(h.admin.clone().list_keys(call(ListKeysRequest {
                organization_id: self.org.clone(),
                r#type: KeyType::User.into(),
                user_id: ACTOR.into(),
                page_size: 1_000,
                ..Default::default()
            })))
            .expect("list")
            .into_inner()
            .keys;
        keys.iter()
            .filter(|k: &&proto::ApiKey| {
                !k.revoked
                    && k.rotated_to_id.is_empty()
                    && k.expire_time
                        .as_ref()
                        .is_none_or(|t| t.seconds * SEC + i64::from(t.nanos / 1_000) > now)
            })
            .count()
    }
}

struct KeyLife;

impl StateMachineTest for KeyLife {
    type SystemUnderTest = Sut;
    type Reference = Model;

    fn init_test(_: &Model) -> Sut {
        let h = HARNESS.with(|h| Rc::clone(h.borrow().as_ref().expect("a harness")));
        let n = {
            let mut s = h.sequences.borrow_mut();
            *s += 1;
            *s
        };
        let base = BASE + n * 1_000 * DAY;
        h.clock.0.store(base, Ordering::SeqCst);
        Sut {
            org: format!("model{n}"),
            h,
            base,
            keys: Vec::new(),
            identities: Vec::new(),
        }
    }

    fn apply(mut sut: Sut, model: &Model, op: Op) -> Sut {
        let actual = match &op {
            Op::Step { .. } => {
                sut.h.clock.0.store(sut.base + model.now, Ordering::SeqCst);
                Expected::Nothing
            }
            Op::Verify {
                key,
                cost,
                wants_stats,
            } => {
                // The model has applied the operation; the key list is as before it.
                let (_, secret) = &sut.keys[key.index(sut.keys.len())];
                let req = VerifyKeyRequest {
                    cost: *cost,
                    ..verify_req(
                        secret,
                        &[if *wants_stats {
                            "stats:read"
                        } else {
                            "links:read"
                        }],
                    )
                };
                let r = sut
                    .h
                    .rt
                    .block_on(sut.h.verify.clone().verify_key(req))
                    .expect("a verification is an answer, not an error")
                    .into_inner();
                Expected::Verify {
                    code: r.code(),
                    rate_remaining: r.rate_limit.as_ref().map(|l| l.remaining),
                    quota_remaining: r.quota.as_ref().map(|l| l.remaining),
                    retry_after: r.retry_after.is_some(),
                }
            }
            admin => {
                let code = sut.admin_op(admin, model);
                Expected::Admin(code)
            }
        };
        assert_eq!(actual, model.expected, "after {op:?}");
        if matches!(actual, Expected::Admin(_)) {
            assert!(sut.live_user_keys() <= 1, "two live user keys after {op:?}");
        }
        sut
    }
}

fn run_model(backend: Backend) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let clock = Arc::new(Frozen(AtomicI64::new(BASE)));
    let (db, app) = rt.block_on(async {
        let db = TestDb::create(backend).await;
        let app = start_app_on_clock(&db, &[], Arc::clone(&clock) as SharedClock)
            .await
            .expect("keygate starts");
        (db, app)
    });
    let channel = rt.block_on(connect(app.addr()));
    let harness = Rc::new(Harness {
        admin: KeyAdminClient::new(channel.clone()),
        verify: KeyVerifyClient::new(channel),
        clock,
        sequences: RefCell::new(0),
        rt,
    });
    HARNESS.with(|h| *h.borrow_mut() = Some(Rc::clone(&harness)));
    let cases = std::env::var("KEYGATE_MODEL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(48);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config.clone());
    let result = runner.run(
        &Model::sequential_strategy(1..40),
        |(initial, ops, seen)| {
            KeyLife::test_sequential(config.clone(), initial, ops, seen);
            Ok(())
        },
    );
    HARNESS.with(|h| h.borrow_mut().take());
    let harness = Rc::into_inner(harness).expect("the last sequence is over");
    harness.rt.block_on(async {
        app.shutdown().await.expect("stop");
        db.drop_db().await;
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn a_keys_life_matches_the_model_on_sqlite() {
    run_model(Backend::Sqlite);
}

#[test]
fn a_keys_life_matches_the_model_on_mariadb() {
    run_model(Backend::MySql);
}
