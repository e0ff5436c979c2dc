//! The identities the verify path has seen, cached apart from the keys that
//! name them: an identity with 10 000 keys is one entry, its metadata is held
//! once, and a change of it (`UpdateIdentity` on any instance) ends one entry,
//! not 10 000.
//!
//! Like the key cache it is only ever a copy of the store: a read takes the
//! invalidation generation before it starts, and its result is dropped if an
//! invalidation came in meanwhile. Concurrent misses of one identity wait for
//! one read (quick_cache's placeholder), so a popular customer's keys cost one
//! store read when its entry expires, not one per call. Reads go to the
//! primary: there are few of them, and a replica behind an `UpdateIdentity`
//! this instance just made would put the old limits back.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::{
    domain::Error,
    domain::identities::{IdentityId, IdentityRecord},
    domain::limits::{LimitsOwner, Quota, RateLimits},
    domain::model::Micros,
    proto,
    store::{Store, StoreError},
};

/// Field number of `identity` in `keygate.v1.VerifiedKey`.
const VERIFIED_KEY_IDENTITY: u32 = 10;

/// What verification needs of an identity: its limits, and its part of the
/// answer, encoded once.
#[derive(Debug)]
pub struct CachedIdentity {
    pub owner: LimitsOwner,
    pub rate_limits: RateLimits,
    pub quota: Option<Quota>,
    /// `VerifiedKey.identity` (tag and length included): `id`,
    /// `organization_id`, `external_id` and `metadata`, appended to the key's
    /// own encoded fields in each answer.
    field: Box<[u8]>,
}

impl CachedIdentity {
    pub fn new(record: &IdentityRecord) -> Self {
        let shown = proto::Identity {
            id: record.id.as_str().to_owned(),
            organization_id: record.organization_id.as_str().to_owned(),
            external_id: record.external_id.as_str().to_owned(),
            metadata: record.metadata.to_map(),
            ..Default::default()
        };
        let mut field = Vec::new();
        prost::encoding::message::encode(VERIFIED_KEY_IDENTITY, &shown, &mut field);
        Self {
            owner: LimitsOwner::Identity(record.id.clone()),
            rate_limits: record.rate_limits.clone(),
            quota: record.quota,
            field: field.into_boxed_slice(),
        }
    }

    pub fn has_limits(&self) -> bool {
        !self.rate_limits.is_empty() || self.quota.is_some()
    }

    /// The encoded `VerifiedKey.identity` field.
    pub fn encoded_field(&self) -> &[u8] {
        &self.field
    }
}

#[derive(Debug, Clone)]
struct Entry {
    /// `None`: no such identity (deleted while dead keys still name it).
    identity: Option<Arc<CachedIdentity>>,
    until: Micros,
}

#[derive(Debug)]
pub struct IdentityCache {
    store: Store,
    entries: quick_cache::sync::Cache<IdentityId, Entry>,
    ttl: Micros,
    timeout: Duration,
    generation: AtomicU64,
}

impl IdentityCache {
    /// `capacity` identities, each trusted for `ttl` without a store read.
    pub fn new(store: Store, capacity: u64, ttl: Duration, timeout: Duration) -> Self {
        Self {
            store,
            entries: quick_cache::sync::Cache::new(
                usize::try_from(capacity.max(1)).unwrap_or(usize::MAX),
            ),
            ttl: Micros(i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX)),
            timeout,
            generation: AtomicU64::new(0),
        }
    }

    /// The identity `id` as of `now` (the verifier's clock) if the cache has
    /// it and its time to live has not passed: `Some(None)` is a cached "no
    /// such identity". Synchronous, so a hit costs the verify path no future.
    pub fn cached(&self, id: &IdentityId, now: Micros) -> Option<Option<Arc<CachedIdentity>>> {
        let hit = self.entries.get(id)?;
        if now < hit.until && hit.until.0 - now.0 <= self.ttl.0 {
            return Some(hit.identity);
        }
        self.entries.remove_if(id, |e| e.until == hit.until);
        None
    }

    /// The identity `id` as of `now`, from the cache or the store; `None`
    /// when the store has no such identity.
    pub async fn get(
        &self,
        id: &IdentityId,
        now: Micros,
    ) -> Result<Option<Arc<CachedIdentity>>, Error> {
        if let Some(hit) = self.cached(id, now) {
            return Ok(hit);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let entry = self
            .entries
            .get_or_insert_async(id, async {
                let read = tokio::time::timeout(self.timeout, self.store.identity_by_id(id))
                    .await
                    .unwrap_or(Err(StoreError::Timeout(self.timeout)))
                    .map_err(|e| Error::from(&e))?;
                Ok::<_, Error>(Entry {
                    identity: read.map(|r| Arc::new(CachedIdentity::new(&r))),
                    until: Micros(now.0.saturating_add(self.ttl.0)),
                })
            })
            .await?;
        if self.generation.load(Ordering::Acquire) != generation {
            // An invalidation came in while the store was read: answer this
            // call with what was read, but do not keep it.
            self.entries.remove_if(id, |e| e.until == entry.until);
        }
        Ok(entry.identity)
    }

    /// Forgets an identity on this instance: after a local change, and for
    /// every change the invalidation poll reads.
    pub fn invalidate(&self, id: &IdentityId) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.remove(id);
    }
}
