//! The verify path's in-process caches: found keys by hash, and a negative cache
//! that absorbs floods of well-formed unknown keys. Both are bounded and both
//! are only ever a copy of the store.
//!
//! Found keys are read on every verification, so that cache is quick_cache
//! (S3-FIFO: a read is a hash probe under a shard's read lock and one atomic
//! store). moka, which the negative cache and the rate limiter keep, reads the
//! clock and queues a record of every read for its housekeeping: with the TTL
//! check, about 480 instructions of a cached `VerifyKey`, against about 200 now
//! (callgrind, BENCHMARKS.md run 12). The found cache's time to live is checked here,
//! against the verifier's clock, when an entry is read.
//!
//! A store read can race an invalidation: the read returns the row as it was
//! before a revocation, the revocation drops the entry, then the read inserts the
//! stale row. A generation counter closes that window: every invalidation bumps
//! it, and a read inserts its result only if no invalidation happened since the
//! read began, checked after the insert so that an invalidation landing between
//! the check and the insert is still honoured.

use std::{
    collections::HashMap,
    sync::{
        Arc, LazyLock, Mutex, PoisonError, Weak,
        atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use moka::sync::Cache;
use quick_cache::{Lifecycle, Weighter};

use crate::{
    domain::hostnames::AllowedHostnames,
    domain::identities::IdentityId,
    domain::keys::SecretHash,
    domain::limits::{LimitsOwner, Quota, RateLimits},
    domain::model::{KeyRecord, Micros},
    domain::networks::{AllowedNetworks, BoundPrincipals},
    domain::scopes::ScopeSet,
    metrics::CacheMetrics,
    proto,
};

/// What verification needs of a key, and nothing else: the cache holds up to
/// `--cache-capacity` of these, so every field counts (a million cached keys
/// took 513 MiB of RSS, docs/CAPACITY.md; `entry_size_is_pinned` below keeps
/// the entry's share of it).
///
/// The key's strings are kept once, in the encoded answer: the id,
/// organization id, user id and name are read back from it by their place
/// (protobuf writes a string field's bytes as they are). What most keys do
/// not have (an expiry, hostnames, networks, principals, limits, an
/// identity) costs them one pointer together; scope sets are shared between
/// keys that have the same scopes.
#[derive(Debug)]
pub struct CachedKey {
    /// The key, scopes included, as `VerifyKey` answers encode it
    /// (`proto::VerifiedKey`): made once here so an answer copies bytes
    /// instead of cloning strings (see `api::grpc::answer`).
    encoded: Box<[u8]>,
    pub scopes: Arc<ScopeSet>,
    /// What few keys have, behind one pointer.
    extras: Option<Box<Extras>>,
    /// Verifications since the last usage flush (see `usage`).
    pub(crate) usage: Usage,
    bot: bool,
}

/// What most keys do not have: an expiry or revocation, hostnames,
/// networks, principals, usage limits, an identity.
#[derive(Debug, Default)]
struct Extras {
    revoke_time: Option<Micros>,
    expire_time: Option<Micros>,
    hostnames: AllowedHostnames,
    networks: AllowedNetworks,
    principals: BoundPrincipals,
    limits: Option<KeyLimits>,
    /// The identity that owns the key: its limits are spent after the key's,
    /// and the answer carries it (`hotpath::identities` caches it apart, so
    /// a change of it reaches all its keys with one invalidation).
    identity_id: Option<IdentityId>,
}

/// A key's usage limits and whose buckets they spend.
#[derive(Debug)]
pub struct KeyLimits {
    /// The key's lineage (its rotation chain): every link of a chain spends
    /// the same buckets and quota.
    pub owner: LimitsOwner,
    pub rate_limits: RateLimits,
    pub quota: Option<Quota>,
}

/// String field `number` (1 id, 2 organization id, 4 user id, 5 name) of
/// an encoded `VerifiedKey`, or "" when it is absent. Read from the bytes
/// each time rather than kept as offsets: the fields come first in the
/// message, a read steps over at most four of them, and only a request
/// that names an organization, the edge's headers and the usage flush ask.
/// The bytes were encoded by prost from `&str`s, so they are well formed
/// and UTF-8.
fn string_field(encoded: &[u8], number: u32) -> &str {
    let mut buf = encoded;
    while let Some((tag, bytes)) = next_field(&mut buf) {
        if tag == number {
            return std::str::from_utf8(bytes).unwrap_or_default();
        }
        if tag > number {
            break;
        }
    }
    ""
}

/// The next field of an encoded `VerifiedKey`: its number, and its bytes
/// when it is length-delimited (empty for a varint). `None` at the end, or
/// at a field of another wire type: the string fields come before any.
/// Tags and lengths under 128, the usual case, are read without prost's
/// general varint decoder.
fn next_field<'a>(buf: &mut &'a [u8]) -> Option<(u32, &'a [u8])> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let (tag, wire) = match buf.first() {
        Some(&key) if key < 0x80 => {
            *buf = &buf[1..];
            (
                u32::from(key >> 3),
                WireType::try_from(u64::from(key & 7)).ok()?,
            )
        }
        _ => decode_key(buf).ok()?,
    };
    match wire {
        WireType::LengthDelimited => {
            let len = match buf.first() {
                Some(&len) if len < 0x80 => {
                    *buf = &buf[1..];
                    usize::from(len)
                }
                _ => usize::try_from(decode_varint(buf).ok()?).ok()?,
            };
            let (bytes, rest) = buf.split_at_checked(len)?;
            *buf = rest;
            Some((tag, bytes))
        }
        WireType::Varint => {
            match buf.first() {
                Some(&byte) if byte < 0x80 => *buf = &buf[1..],
                _ => {
                    decode_varint(buf).ok()?;
                }
            }
            Some((tag, &[][..]))
        }
        _ => None,
    }
}

/// What the edge tells the upstream about a key, read in one pass over its
/// encoded answer ([`CachedKey::identity_fields`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IdentityFields<'a> {
    pub id: &'a [u8],
    pub organization_id: &'a [u8],
    /// Empty for a bot key.
    pub user_id: &'a [u8],
}

impl CachedKey {
    pub fn new(record: KeyRecord) -> Self {
        let verified = proto::VerifiedKey {
            id: record.id.as_str().to_owned(),
            organization_id: record.organization_id.as_str().to_owned(),
            r#type: proto::KeyType::from(record.owner.key_type()) as i32,
            user_id: record
                .owner
                .user_id()
                .map(|u| u.as_str().to_owned())
                .unwrap_or_default(),
            name: record.name.as_str().to_owned(),
            scopes: record.scopes.to_vec(),
            expire_time: record.expire_time.map(|t| t.to_timestamp()),
            rotated_to_id: record
                .rotated_to_id
                .as_ref()
                .map(|id| id.as_str().to_owned())
                .unwrap_or_default(),
            metadata: record.metadata.to_map(),
            // Cached apart (`hotpath::identities`) and appended to the
            // encoded answer.
            identity: None,
        };
        let encoded = prost::Message::encode_to_vec(&verified).into_boxed_slice();
        let has_limits = !record.rate_limits.is_empty() || record.quota.is_some();
        // Every link of a rotation chain spends the chain's limits: the links
        // never hold two quotas or two bursts at once, and a rotation carries
        // the calls already made over.
        let limits = has_limits.then_some(KeyLimits {
            owner: LimitsOwner::Lineage(record.lineage_id),
            rate_limits: record.rate_limits,
            quota: record.quota,
        });
        let extras = (limits.is_some()
            || record.identity_id.is_some()
            || record.revoke_time.is_some()
            || record.expire_time.is_some()
            || !record.allowed_hostnames.is_empty()
            || !record.allowed_networks.is_empty()
            || !record.bound_principals.is_empty())
        .then(|| {
            Box::new(Extras {
                revoke_time: record.revoke_time,
                expire_time: record.expire_time,
                hostnames: record.allowed_hostnames,
                networks: record.allowed_networks,
                principals: record.bound_principals,
                limits,
                identity_id: record.identity_id,
            })
        });
        Self {
            encoded,
            bot: verified.r#type == proto::KeyType::Bot as i32,
            scopes: interned(record.scopes),
            extras,
            usage: Usage::default(),
        }
    }

    pub fn revoke_time(&self) -> Option<Micros> {
        self.extras.as_ref()?.revoke_time
    }

    pub fn expire_time(&self) -> Option<Micros> {
        self.extras.as_ref()?.expire_time
    }

    /// The identity that owns the key, if any.
    pub fn identity_id(&self) -> Option<&IdentityId> {
        self.extras.as_ref()?.identity_id.as_ref()
    }

    pub fn id(&self) -> &str {
        string_field(&self.encoded, 1)
    }

    pub fn organization_id(&self) -> &str {
        string_field(&self.encoded, 2)
    }

    /// Empty for a bot key.
    pub fn user_id(&self) -> &str {
        string_field(&self.encoded, 4)
    }

    /// The id, organization and user as bytes, in one pass: an edge answer
    /// writes all three on every allowed request.
    pub fn identity_fields(&self) -> IdentityFields<'_> {
        let mut fields = IdentityFields::default();
        let mut buf = &self.encoded[..];
        while let Some((tag, bytes)) = next_field(&mut buf) {
            match tag {
                1 => fields.id = bytes,
                2 => fields.organization_id = bytes,
                // A bot key has no user: nothing after its type is read.
                3 if self.bot => break,
                3 => {}
                4 => fields.user_id = bytes,
                _ => break,
            }
        }
        fields
    }

    pub fn name(&self) -> &str {
        string_field(&self.encoded, 5)
    }

    pub fn is_bot(&self) -> bool {
        self.bot
    }

    /// About how many bytes this entry holds, its own and on the heap: what
    /// the cache weighs it by, so that a tenant's large keys (64 hostnames,
    /// 128 scopes) take their share of `--cache-max-bytes`, not one slot.
    /// A shared scope set is counted whole in every key that holds it: the
    /// bound errs on the safe side.
    pub fn approx_bytes(&self) -> u64 {
        let heap = self.encoded.len()
            + self.scopes.iter().map(|s| s.len() + 16).sum::<usize>()
            + self.extras.as_ref().map_or(0, |x| {
                std::mem::size_of::<Extras>()
                    + x.hostnames
                        .iter()
                        .map(|h| h.to_string().len() + 32)
                        .sum::<usize>()
                    + x.networks.heap_bytes()
                    + x.principals.heap_bytes()
                    + x.limits.as_ref().map_or(0, |l| {
                        l.rate_limits.len()
                            * std::mem::size_of::<crate::domain::limits::RateLimit>()
                            * 2
                            + match &l.owner {
                                LimitsOwner::Lineage(id) => id.as_str().len(),
                                LimitsOwner::Identity(id) => id.as_str().len(),
                            }
                    })
                    + x.identity_id.as_ref().map_or(0, |i| i.as_str().len() + 16)
            });
        // The Arc's counters, and the cache's own entry (hash, deadline).
        let fixed = std::mem::size_of::<Self>() + 16 + std::mem::size_of::<Entry>() + 32;
        u64::try_from(heap + fixed).unwrap_or(u64::MAX)
    }

    /// Whether a verification of this key has usage limits of its own.
    pub fn has_limits(&self) -> bool {
        self.limits().is_some()
    }

    pub fn limits(&self) -> Option<&KeyLimits> {
        self.extras.as_ref()?.limits.as_ref()
    }

    /// The key as a `VerifyKey` answer encodes it (`proto::VerifiedKey`).
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The key as a verification answer shows it (for tests and tools: the
    /// verify path sends `encoded` as it is).
    pub fn verified(&self) -> proto::VerifiedKey {
        prost::Message::decode(&*self.encoded).unwrap_or_default()
    }
}

/// Keys with the same scopes share one set: most of an organization's keys
/// were made from the same few templates, and a set is a vector of strings.
/// The table holds weak references, swept of dead ones whenever it has
/// doubled since the last sweep, so it never outgrows the live sets by more
/// than twice.
fn interned(scopes: ScopeSet) -> Arc<ScopeSet> {
    #[derive(Default)]
    struct Table {
        sets: HashMap<ScopeSet, Weak<ScopeSet>>,
        swept_at: usize,
    }
    static TABLE: LazyLock<Mutex<Table>> = LazyLock::new(Mutex::default);
    let mut table = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(live) = table.sets.get(&scopes).and_then(Weak::upgrade) {
        return live;
    }
    if table.sets.len() >= table.swept_at.max(1024) * 2 {
        table.sets.retain(|_, w| w.strong_count() > 0);
        table.swept_at = table.sets.len();
    }
    let set = Arc::new(scopes);
    table.sets.insert((*set).clone(), Arc::downgrade(&set));
    set
}

/// What a key without extras answers for them.
static NO_HOSTNAMES: AllowedHostnames = AllowedHostnames::NONE;
static NO_NETWORKS: AllowedNetworks = AllowedNetworks::NONE;
static NO_PRINCIPALS: BoundPrincipals = BoundPrincipals::NONE;

/// The domain's checks read a cached key as they would its record.
impl crate::domain::verify::KeyFacts for CachedKey {
    fn revoke_time(&self) -> Option<Micros> {
        CachedKey::revoke_time(self)
    }
    fn expire_time(&self) -> Option<Micros> {
        CachedKey::expire_time(self)
    }
    fn organization_id(&self) -> &str {
        CachedKey::organization_id(self)
    }
    fn allowed_hostnames(&self) -> &AllowedHostnames {
        self.extras.as_ref().map_or(&NO_HOSTNAMES, |x| &x.hostnames)
    }
    fn allowed_networks(&self) -> &AllowedNetworks {
        self.extras.as_ref().map_or(&NO_NETWORKS, |x| &x.networks)
    }
    fn bound_principals(&self) -> &BoundPrincipals {
        self.extras
            .as_ref()
            .map_or(&NO_PRINCIPALS, |x| &x.principals)
    }
    fn scopes(&self) -> &ScopeSet {
        &self.scopes
    }
}

/// One cache entry's verifications since the last flush: counted here, in the
/// entry, so a verification touches no shared map; `usage.rs` reads and resets
/// it (the dependency points from usage to the cache, never back). 32-bit
/// counts: a flush takes them every second or so, and even a store outage
/// moves them to the flush's backlog at every attempt.
#[derive(Debug, Default)]
pub struct Usage {
    pub(crate) count: AtomicU32,
    pub(crate) last_used: AtomicI64,
    /// The same verifications by UTC hour and outcome, for the usage history:
    /// two slots, by the hour's parity, so a flush (every second) always finds
    /// the previous hour's counts in their own slot while the next hour fills
    /// the other one. Fixed size: no allocation on the verify path.
    pub(crate) hours: [HourSlot; 2],
}

/// Outcome counts of one UTC hour (`hour` is its number since 1970).
#[derive(Debug, Default)]
pub struct HourSlot {
    pub(crate) hour: AtomicU32,
    pub(crate) by_code: [AtomicU32; OUTCOMES],
}

/// Outcomes a verification that found its key can have (codes 1 and 5–13).
pub const OUTCOMES: usize = 10;

/// Sizes and lifetimes; a capacity of 0 disables that cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub capacity: u64,
    /// The found cache's bound in bytes ([`CachedKey::approx_bytes`]).
    pub max_bytes: u64,
    pub ttl: Duration,
    pub negative_capacity: u64,
    pub negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 100_000,
            max_bytes: 128 << 20,
            ttl: Duration::from_secs(60),
            negative_capacity: 100_000,
            negative_ttl: Duration::from_secs(10),
        }
    }
}

/// What the cache knows of a hash.
#[derive(Debug)]
pub enum Lookup {
    Found(Arc<CachedKey>),
    /// Recently looked up and not in the store.
    Unknown,
    /// Not cached: read the store, then hand the result to [`KeyCache::fill`].
    Miss(Ticket),
}

/// Every verification hashes its key's hash to look it up: foldhash, seeded
/// per process, rather than the default SipHash, which costs several times more
/// on 32 bytes and buys no extra safety here (the bytes are SHA-256 output).
type Hasher = foldhash::fast::RandomState;

/// Proof of when a store read began, for [`KeyCache::fill`]: the invalidation
/// generation then, and the time, from which the entry's time to live runs.
#[derive(Debug)]
pub struct Ticket {
    generation: u64,
    now: Micros,
}

/// A found key and when it stops being served from the cache.
#[derive(Debug, Clone)]
struct Entry {
    key: Arc<CachedKey>,
    until: Micros,
}

/// Counts the entries the found cache drops for room (not our own removals).
#[derive(Debug, Clone)]
struct CountEvictions(metrics::Counter);

impl Lifecycle<SecretHash, Entry> for CountEvictions {
    type RequestState = ();

    fn on_evict(&self, (): &mut (), _: SecretHash, _: Entry) {
        self.0.increment(1);
    }
}

type Found = quick_cache::sync::Cache<SecretHash, Entry, BySize, Hasher, CountEvictions>;

/// Weighs an entry by its size, and at least by an equal share of the byte
/// bound between `--cache-capacity` entries: the byte bound then also keeps
/// the count, and one tenant's large keys cannot take everyone's memory.
#[derive(Debug, Clone, Copy)]
struct BySize {
    floor: u64,
}

impl Weighter<SecretHash, Entry> for BySize {
    fn weight(&self, _: &SecretHash, entry: &Entry) -> u64 {
        entry.key.approx_bytes().max(self.floor)
    }
}

/// quick_cache sizes its table for this many entries at start and grows it as
/// needed: a large `--cache-capacity` costs memory only once it is used.
const INITIAL_ENTRIES: u64 = 16_384;

/// quick_cache splits its capacity evenly between shards, and keys do not
/// split evenly: at exactly `--cache-capacity`, 100 000 keys read in turn
/// missed about 150 times a second (keygate-bench), each miss evicting another
/// key. The headroom lets that many keys fit (the fullest of its shards is
/// about 3 % above the mean at 100 000 keys); the cache holds at most
/// `capacity + capacity / 16 + 256` keys.
fn room(capacity: u64) -> u64 {
    capacity.saturating_add(capacity / 16).saturating_add(256)
}

#[derive(Debug)]
pub struct KeyCache {
    found: Option<Found>,
    ttl: Micros,
    unknown: Option<Cache<SecretHash, (), Hasher>>,
    generation: AtomicU64,
    metrics: CacheMetrics,
}

impl KeyCache {
    pub fn new(config: &CacheConfig) -> Self {
        let metrics = CacheMetrics::default();
        let found = (config.capacity > 0 && config.max_bytes > 0).then(|| {
            let bytes = room(config.max_bytes);
            Found::with(
                usize::try_from(config.capacity.min(INITIAL_ENTRIES)).unwrap_or(usize::MAX),
                bytes,
                BySize {
                    floor: (bytes / room(config.capacity)).max(1),
                },
                Hasher::default(),
                CountEvictions(metrics.evictions.clone()),
            )
        });
        let unknown = (config.negative_capacity > 0).then(|| {
            Cache::builder()
                .max_capacity(config.negative_capacity)
                .time_to_live(config.negative_ttl)
                .build_with_hasher(Hasher::default())
        });
        Self {
            found,
            ttl: Micros(i64::try_from(config.ttl.as_micros()).unwrap_or(i64::MAX)),
            unknown,
            generation: AtomicU64::new(0),
            metrics,
        }
    }

    /// What the cache knows of `hash` at `now` (the verifier's clock).
    pub fn get(&self, hash: &SecretHash, now: Micros) -> Lookup {
        if let Some(found) = &self.found
            && let Some(hit) = found.get(hash)
        {
            // A clock that went back makes `now` earlier than the fill: the
            // entry is not trusted then either.
            if now < hit.until && hit.until.0 - now.0 <= self.ttl.0 {
                self.metrics.hits.increment(1);
                return Lookup::Found(hit.key);
            }
            // Past its time to live: read again. Only this entry goes, not a
            // fresher one another call put there meanwhile.
            if found
                .remove_if(hash, |e| Arc::ptr_eq(&e.key, &hit.key))
                .is_some()
            {
                self.metrics.evictions.increment(1);
            }
        }
        if self.unknown.as_ref().is_some_and(|c| c.contains_key(hash)) {
            self.metrics.negative_hits.increment(1);
            return Lookup::Unknown;
        }
        self.metrics.misses.increment(1);
        Lookup::Miss(Ticket {
            generation: self.generation.load(Ordering::Acquire),
            now,
        })
    }

    /// Caches the result of a store read that began at `ticket`, unless an
    /// invalidation happened since; returns the entry to answer with either way.
    pub fn fill(
        &self,
        ticket: Ticket,
        hash: SecretHash,
        record: Option<KeyRecord>,
    ) -> Option<Arc<CachedKey>> {
        let entry = record.map(|r| Arc::new(CachedKey::new(r)));
        match &entry {
            Some(e) => {
                if let Some(c) = &self.found {
                    let until = Micros(ticket.now.0.saturating_add(self.ttl.0));
                    c.insert(
                        hash,
                        Entry {
                            key: Arc::clone(e),
                            until,
                        },
                    );
                }
            }
            None => {
                if let Some(c) = &self.unknown {
                    c.insert(hash, ());
                }
            }
        }
        if self.generation.load(Ordering::Acquire) != ticket.generation {
            self.metrics.stale_fills_dropped.increment(1);
            self.remove(&hash);
        }
        entry
    }

    /// Forgets a key on this instance: called after a local change and for every
    /// change another instance made (see `invalidation`).
    pub fn invalidate(&self, hash: &SecretHash) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.remove(hash);
    }

    fn remove(&self, hash: &SecretHash) {
        if let Some(c) = &self.found {
            c.remove(hash);
        }
        if let Some(c) = &self.unknown {
            c.invalidate(hash);
        }
    }

    /// Entries of the positive cache, for metrics and tests.
    pub fn len(&self) -> u64 {
        self.found.as_ref().map_or(0, |c| c.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::keys::{KeyPrefix, Secret};
    use crate::domain::model::KeyId;

    const NOW: Micros = Micros(1_700_000_000_000_000);

    fn record(secret: &Secret, name: &str) -> KeyRecord {
        KeyRecord::test_bot(KeyId::generate(), secret, name)
    }

    fn ticket(cache: &KeyCache, hash: &SecretHash) -> Ticket {
        match cache.get(hash, NOW) {
            Lookup::Miss(t) => t,
            other => panic!("expected a miss, got {other:?}"),
        }
    }

    #[test]
    fn a_read_is_cached_when_nothing_raced_it() {
        let cache = KeyCache::new(&CacheConfig::default());
        let secret = Secret::generate(&KeyPrefix::default());
        let t = ticket(&cache, &secret.hash());
        cache.fill(t, secret.hash(), Some(record(&secret, "fresh")));
        assert!(
            matches!(cache.get(&secret.hash(), NOW), Lookup::Found(k) if k.verified().name == "fresh")
        );
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_cached() {
        let cache = KeyCache::new(&CacheConfig::default());
        let secret = Secret::generate(&KeyPrefix::default());
        // The read begins, a revocation commits and invalidates, then the read
        // returns the row as it was before: it answers this call but is not kept.
        let t = ticket(&cache, &secret.hash());
        cache.invalidate(&secret.hash());
        let answered = cache.fill(t, secret.hash(), Some(record(&secret, "stale")));
        assert!(answered.is_some());
        assert!(matches!(cache.get(&secret.hash(), NOW), Lookup::Miss(_)));
    }

    #[test]
    fn unknown_keys_are_remembered_until_invalidated() {
        let cache = KeyCache::new(&CacheConfig::default());
        let secret = Secret::generate(&KeyPrefix::default());
        let t = ticket(&cache, &secret.hash());
        assert!(cache.fill(t, secret.hash(), None).is_none());
        assert!(matches!(cache.get(&secret.hash(), NOW), Lookup::Unknown));
        cache.invalidate(&secret.hash());
        assert!(matches!(cache.get(&secret.hash(), NOW), Lookup::Miss(_)));
    }

    #[test]
    fn capacity_zero_disables_caching() {
        let cache = KeyCache::new(&CacheConfig {
            capacity: 0,
            negative_capacity: 0,
            ..CacheConfig::default()
        });
        let secret = Secret::generate(&KeyPrefix::default());
        let t = ticket(&cache, &secret.hash());
        cache.fill(t, secret.hash(), Some(record(&secret, "k")));
        assert!(matches!(cache.get(&secret.hash(), NOW), Lookup::Miss(_)));
        let other = Secret::generate(&KeyPrefix::default());
        let t = ticket(&cache, &other.hash());
        cache.fill(t, other.hash(), None);
        assert!(matches!(cache.get(&other.hash(), NOW), Lookup::Miss(_)));
    }

    #[test]
    fn memory_is_bounded_by_capacity() {
        let cache = KeyCache::new(&CacheConfig {
            capacity: 100,
            ..CacheConfig::default()
        });
        for _ in 0..2000 {
            let secret = Secret::generate(&KeyPrefix::default());
            let t = ticket(&cache, &secret.hash());
            cache.fill(t, secret.hash(), Some(record(&secret, "k")));
        }
        assert!(cache.len() <= room(100), "{}", cache.len());
    }

    /// Keys of 128 scopes each, tens of times the size of a usual one, fill a
    /// 1 MiB cache by their bytes, long before its count; small keys still
    /// fit by count.
    #[test]
    fn large_entries_are_bounded_by_bytes_not_by_count() {
        let max_bytes = 1 << 20;
        let cache = KeyCache::new(&CacheConfig {
            capacity: 100_000,
            max_bytes,
            ..CacheConfig::default()
        });
        let scopes: Vec<String> = (0..128).map(|i| format!("service{i:03}:read")).collect();
        let mut weights = Vec::new();
        for _ in 0..2_000 {
            let secret = Secret::generate(&KeyPrefix::default());
            let mut r = record(&secret, "large");
            r.scopes = ScopeSet::parse(&scopes).expect("scopes");
            let t = ticket(&cache, &secret.hash());
            if let Some(key) = cache.fill(t, secret.hash(), Some(r)) {
                weights.push(key.approx_bytes());
            }
        }
        let each = weights[0];
        assert!(each > 5_000, "a key of 128 scopes weighs {each} bytes");
        let held = cache.len();
        assert!(
            held * each <= room(max_bytes),
            "{held} keys of {each} bytes"
        );
        assert!(
            held >= 100,
            "the bound is the bytes, not fewer keys: {held}"
        );
    }

    #[test]
    fn an_entry_is_served_for_its_time_to_live_and_not_after() {
        let cache = KeyCache::new(&CacheConfig {
            ttl: Duration::from_secs(60),
            ..CacheConfig::default()
        });
        let secret = Secret::generate(&KeyPrefix::default());
        let t = ticket(&cache, &secret.hash());
        cache.fill(t, secret.hash(), Some(record(&secret, "k")));
        let at = |seconds: i64| cache.get(&secret.hash(), Micros(NOW.0 + seconds * 1_000_000));
        assert!(matches!(at(59), Lookup::Found(_)));
        assert!(matches!(at(60), Lookup::Miss(_)));
        // Expired entries are gone, not merely hidden: the next read fills again.
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn a_clock_that_went_back_does_not_extend_an_entry() {
        let cache = KeyCache::new(&CacheConfig::default());
        let secret = Secret::generate(&KeyPrefix::default());
        let t = ticket(&cache, &secret.hash());
        cache.fill(t, secret.hash(), Some(record(&secret, "k")));
        assert!(matches!(cache.get(&secret.hash(), NOW), Lookup::Found(_)));
        assert!(matches!(
            cache.get(&secret.hash(), Micros(NOW.0 - 1)),
            Lookup::Miss(_)
        ));
    }

    #[test]
    fn as_many_keys_as_the_capacity_all_fit() {
        let cache = KeyCache::new(&CacheConfig {
            capacity: 20_000,
            ..CacheConfig::default()
        });
        let hashes: Vec<SecretHash> = (0..20_000)
            .map(|_| {
                let secret = Secret::generate(&KeyPrefix::default());
                let t = ticket(&cache, &secret.hash());
                cache.fill(t, secret.hash(), Some(record(&secret, "k")));
                secret.hash()
            })
            .collect();
        let missing = hashes
            .iter()
            .filter(|h| !matches!(cache.get(h, NOW), Lookup::Found(_)))
            .count();
        assert_eq!(missing, 0);
    }
}

#[cfg(test)]
mod size {
    use super::*;
    use crate::domain::keys::{KeyPrefix, Secret};
    use crate::domain::model::{KeyId, Owner, UserId};

    /// What one cached key costs, pinned: a change that grows the entry
    /// fails here and has to say why in docs/CAPACITY.md. The figures are
    /// the inline entry and the heap beside it for a usual key (a bot key,
    /// two scopes, a short name, no restrictions, no limits).
    #[test]
    fn entry_size_is_pinned() {
        assert_eq!(std::mem::size_of::<Usage>(), 104);
        assert_eq!(std::mem::size_of::<CachedKey>(), 144);
        let secret = Secret::generate(&KeyPrefix::default());
        let mut record = KeyRecord::test_bot(KeyId::generate(), &secret, "bench key 12345");
        record.scopes = ScopeSet::parse(["links:read", "links:write"]).expect("scopes");
        let key = CachedKey::new(record);
        // id 36, organization 11, name 15, two scopes, with their tags.
        assert!(key.encoded().len() <= 110, "{}", key.encoded().len());
        assert!(key.approx_bytes() <= 400, "{}", key.approx_bytes());
    }

    #[test]
    fn the_answers_strings_are_read_back_in_place() {
        let secret = Secret::generate(&KeyPrefix::default());
        let id = KeyId::generate();
        let name = "é".repeat(255);
        let mut record = KeyRecord::test_bot(id.clone(), &secret, &name);
        record.owner = Owner::User(UserId::parse("user-7").expect("user"));
        let key = CachedKey::new(record.clone());
        assert_eq!(key.id(), id.as_str());
        assert_eq!(key.organization_id(), record.organization_id.as_str());
        assert_eq!(key.user_id(), "user-7");
        assert_eq!(key.name(), name);
        assert!(!key.is_bot());
        assert_eq!(
            key.identity_fields(),
            IdentityFields {
                id: id.as_str().as_bytes(),
                organization_id: record.organization_id.as_str().as_bytes(),
                user_id: b"user-7",
            }
        );
        let bot = CachedKey::new(KeyRecord::test_bot(KeyId::generate(), &secret, "b"));
        assert_eq!(bot.user_id(), "");
        assert_eq!(bot.identity_fields().user_id, b"");
        assert_eq!(bot.identity_fields().id, bot.id().as_bytes());
        assert!(bot.is_bot());
    }

    #[test]
    fn keys_with_the_same_scopes_share_one_set() {
        let secret = Secret::generate(&KeyPrefix::default());
        let scopes = ScopeSet::parse(["a:read", "b:write"]).expect("scopes");
        let make = || {
            let mut r = KeyRecord::test_bot(KeyId::generate(), &secret, "k");
            r.scopes = scopes.clone();
            CachedKey::new(r)
        };
        let (one, two) = (make(), make());
        assert!(Arc::ptr_eq(&one.scopes, &two.scopes));
    }
}
