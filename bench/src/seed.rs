//! Seeding: `--keys` bot keys written straight into the store's own schema
//! through `Store::import_keys` (multi-row inserts, a thousand rows a
//! statement), before any keygate runs. One `CreateKey` call per key took
//! about an hour for a million keys; the bulk load takes well under a minute.
//! The secrets are generated here and exist only in this process's memory.

use std::time::Instant;

use keygate::{
    domain::{
        keys::{KeyPrefix, Secret, SecretHash},
        model::{KeyName, KeyRecord, Micros, OrganizationId, Owner, UserId},
        scopes::ScopeSet,
    },
    store::{PoolConfig, Store},
};

use crate::{BoxError, load::REQUIRED_SCOPE};

/// The seeded keys, index-aligned.
pub(crate) struct Seeded {
    pub(crate) ids: Vec<String>,
    pub(crate) secrets: Vec<String>,
    pub(crate) hashes: Vec<SecretHash>,
}

/// Keys built and written per transaction.
const BATCH: usize = 20_000;

/// Migrates the (fresh) database at `url` and writes `n` keys into it: 100
/// organizations, the same two scopes on every key (as keys made from one
/// template have), names `bench key <i>`.
pub(crate) async fn seed(url: &str, n: usize) -> Result<Seeded, BoxError> {
    let start = Instant::now();
    let store = Store::connect(url, &PoolConfig::default()).await?;
    store.migrate().await?;
    let prefix = KeyPrefix::default();
    let scopes = ScopeSet::parse([REQUIRED_SCOPE, "links:write"])?;
    let created_by = UserId::parse("bench")?;
    let organizations = (0..100)
        .map(|i| OrganizationId::parse(&format!("bench-org-{i}")))
        .collect::<Result<Vec<_>, _>>()?;
    let now = Micros::now();
    let mut seeded = Seeded {
        ids: Vec::with_capacity(n),
        secrets: Vec::with_capacity(n),
        hashes: Vec::with_capacity(n),
    };
    let mut records = Vec::with_capacity(BATCH.min(n));
    for i in 0..n {
        let secret = Secret::generate(&prefix);
        let key = KeyRecord::new(
            organizations[i % organizations.len()].clone(),
            Owner::Bot,
            KeyName::parse(&format!("bench key {i}"))?,
            scopes.clone(),
            &secret,
            created_by.clone(),
            now,
        );
        seeded.ids.push(key.id.as_str().to_owned());
        records.push(key);
        seeded.hashes.push(secret.hash());
        seeded.secrets.push(secret.into_exposed());
        if records.len() == BATCH || i + 1 == n {
            store.import_keys(&records).await?;
            records.clear();
            let done = i + 1;
            if done % 200_000 == 0 || done == n {
                let secs = start.elapsed().as_secs_f64();
                eprintln!(
                    "  seeded {done}/{n} keys in {secs:.1} s ({:.0}/s)",
                    done as f64 / secs
                );
            }
        }
    }
    store.close().await;
    Ok(seeded)
}
