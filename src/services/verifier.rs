//! The verifier: a parsed [`Verification`] in, an [`Outcome`] out, whatever the
//! transport. It finds the key (cache, then a coalesced store read), applies the
//! contract's checks (`domain::verify`) and counts usage; it never waits on a
//! write.

use std::sync::Arc;

use crate::{
    cache::{CachedKey, KeyCache, Lookup},
    clock::SharedClock,
    domain::{
        Error,
        verify::{Code, Verification, check},
    },
    keys::SecretHash,
    lookup::Lookups,
    usage::UsageRecorder,
};

/// A verification's answer. `key` is set whenever the key was found.
#[derive(Debug)]
pub struct Outcome {
    pub code: Code,
    pub key: Option<Arc<CachedKey>>,
    pub missing_scopes: Vec<String>,
}

impl Outcome {
    fn without_key(code: Code) -> Self {
        Self {
            code,
            key: None,
            missing_scopes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Verifier {
    lookups: Lookups,
    cache: Arc<KeyCache>,
    usage: Arc<UsageRecorder>,
    clock: SharedClock,
}

impl Verifier {
    pub fn new(
        lookups: Lookups,
        cache: Arc<KeyCache>,
        usage: Arc<UsageRecorder>,
        clock: SharedClock,
    ) -> Self {
        Self {
            lookups,
            cache,
            usage,
            clock,
        }
    }

    /// A denial is an outcome; an error is only the store being unreachable for
    /// a key that is not cached (never NOT_FOUND for what may exist).
    pub async fn verify(&self, v: &Verification<'_>) -> Result<Outcome, Error> {
        let hash = match v.presented() {
            Ok(hash) => hash,
            Err(code) => return Ok(Outcome::without_key(code)),
        };
        let Some(key) = self.lookup(hash).await? else {
            return Ok(Outcome::without_key(Code::NotFound));
        };
        let now = self.clock.now();
        self.usage.record(&key, now);
        let (code, missing_scopes) = check(&key, v, now);
        tracing::debug!(key_id = %key.id, ?code, "verified");
        Ok(Outcome {
            code,
            key: Some(key),
            missing_scopes,
        })
    }

    async fn lookup(&self, hash: SecretHash) -> Result<Option<Arc<CachedKey>>, Error> {
        match self.cache.get(&hash) {
            Lookup::Found(k) => Ok(Some(k)),
            Lookup::Unknown => Ok(None),
            Lookup::Miss(ticket) => {
                let record = self
                    .lookups
                    .find(hash)
                    .await
                    .map_err(|e| Error::from(&*e))?;
                Ok(self.cache.fill(ticket, hash, record))
            }
        }
    }
}
