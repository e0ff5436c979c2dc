//! The keys service: every KeyAdmin operation, with its store, its cache and
//! its audit log. A change is written (with its event, in the store's
//! transaction), then invalidated in this instance's cache, then logged, in
//! [`KeyService::changed`] and nowhere else, so no new operation can forget the
//! invalidation that makes a revocation take effect at once.

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::{
    clock::SharedClock,
    domain::keys::{KeyPrefix, Secret, SecretHash, parse_token},
    domain::leaks::{self, Label, ReportedToken, TOKEN_TYPE, Verdict},
    domain::limits::LimitsOwner,
    domain::model::{Actor, KeyEvent, KeyId, KeyRecord, Micros, OrganizationId, Role, UserId},
    domain::scopes::ScopeCatalog,
    domain::{
        Error,
        commands::{
            Context, CreateKey, GetKeyUsage, KeyRef, ListKeyEvents, ListKeys, RemoveMember,
            RotateKey, SetKeyPolicy, UpdateKey,
        },
        key_policy::KeyPolicy,
        lifecycle::{self, Operation},
        paging::{Page, TokenKind},
        policy,
    },
    hotpath::cache::KeyCache,
    hotpath::filter::KnownKeys,
    hotpath::identities::IdentityCache,
    hotpath::limiter::RateLimiter,
    hotpath::quota::Quotas,
    hotpath::replica::ReplicaState,
    store::{KeyFilter, MAX_HASHES_PER_READ, Store, StoreError},
};

/// What a change did, for its log line.
pub(super) enum Change<'a> {
    Key(&'a KeyId, &'static str),
    MemberRemoved(&'a UserId),
    Identity(&'a crate::domain::identities::IdentityId, &'static str),
}

#[derive(Debug, Clone)]
pub struct KeyService {
    pub(super) store: Store,
    cache: Arc<KeyCache>,
    prefix: KeyPrefix,
    catalog: Option<Arc<ScopeCatalog>>,
    pub(super) clock: SharedClock,
    /// `--database-timeout`: the longest an operation waits on the store,
    /// whatever it waits for (a connection, a lock, a stalled network).
    store_timeout: Duration,
    /// Learns every key this instance creates, at once.
    filter: Arc<KnownKeys>,
    /// Told of every write, so verify-path reads avoid a replica that lacks it.
    replica: Option<Arc<ReplicaState>>,
    /// This instance's rate-limit buckets and quota leases: a change of a
    /// key's or an identity's limits applies to them at once (see
    /// [`KeyService::update`]).
    pub(super) limits: Option<LimitsState>,
}

/// The verify path's usage-limit state, which a change of limits must reach
/// at once on this instance.
#[derive(Debug, Clone)]
pub(super) struct LimitsState {
    pub(super) rate_limits: Arc<RateLimiter>,
    pub(super) quotas: Arc<Quotas>,
    pub(super) identities: Arc<IdentityCache>,
}

impl KeyService {
    pub fn new(
        store: Store,
        cache: Arc<KeyCache>,
        prefix: KeyPrefix,
        catalog: Option<Arc<ScopeCatalog>>,
        clock: SharedClock,
        store_timeout: Duration,
    ) -> Self {
        Self {
            filter: Arc::new(KnownKeys::new(0)),
            replica: None,
            limits: None,
            store,
            cache,
            prefix,
            catalog,
            clock,
            store_timeout,
        }
    }

    /// Who must hear of this service's writes on the verify path: the
    /// forged-key filter, and the replica's progress when there is one.
    pub fn with_read_side(
        mut self,
        filter: Arc<KnownKeys>,
        replica: Option<Arc<ReplicaState>>,
    ) -> Self {
        self.filter = filter;
        self.replica = replica;
        self
    }

    /// The verify path's usage-limit state, which an update of a key's limits
    /// must reach at once on this instance.
    pub fn with_limits(
        mut self,
        rate_limits: Arc<RateLimiter>,
        quotas: Arc<Quotas>,
        identities: Arc<IdentityCache>,
    ) -> Self {
        self.limits = Some(LimitsState {
            rate_limits,
            quotas,
            identities,
        });
        self
    }

    /// What request parsing may consult: the catalog, and this service's time.
    pub fn context(&self) -> Context<'_> {
        Context {
            catalog: self.catalog.as_deref(),
            now: self.clock.now(),
        }
    }

    /// Runs one store read within the store timeout: a read that waits on the
    /// store ends UNAVAILABLE in time, never at the request timeout. Writes are
    /// not cut short here: one given up during its commit may still have
    /// committed, and an UNAVAILABLE answer would invite a retry that duplicates
    /// it. Their waits are bounded by the store itself (the pool's acquire
    /// timeout, MySQL's lock-wait timeouts and SQLite's busy timeout, all set to
    /// `--database-timeout`).
    pub(super) async fn stored<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, Error> {
        tokio::time::timeout(self.store_timeout, op)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.store_timeout)))
            .map_err(Error::from)
    }

    /// After a change was written: drop the keys from this instance's cache
    /// (other instances learn it from the event poll) and log who did what.
    pub(super) fn changed(
        &self,
        actor: &Actor,
        org: &OrganizationId,
        hashes: &[SecretHash],
        what: Change<'_>,
    ) {
        if let Some(replica) = &self.replica {
            replica.wrote();
        }
        for h in hashes {
            self.cache.invalidate(h);
            self.filter.insert(h);
        }
        match what {
            Change::Key(key_id, action) => tracing::info!(
                actor = actor.id.as_str(),
                role = ?actor.role,
                organization_id = org.as_str(),
                key_id = key_id.as_str(),
                action,
                "key changed"
            ),
            Change::Identity(id, action) => tracing::info!(
                actor = actor.id.as_str(),
                organization_id = org.as_str(),
                identity_id = id.as_str(),
                action,
                "identity changed"
            ),
            Change::MemberRemoved(user_id) => tracing::info!(
                actor = actor.id.as_str(),
                organization_id = org.as_str(),
                user_id = user_id.as_str(),
                deleted = hashes.len(),
                action = "member_removed",
                "key changed"
            ),
        }
    }

    /// The organization's key policy, read for each change it governs: a
    /// change of policy applies to the next request on every instance, with
    /// nothing to invalidate. A request already past this read when the policy
    /// changes finishes under the policy it read.
    async fn key_policy_of(&self, org: &OrganizationId) -> Result<KeyPolicy, Error> {
        self.stored(self.store.key_policy(org)).await
    }

    /// `SetKeyPolicy`: admins only; recorded as an event (and a webhook).
    pub async fn set_key_policy(
        &self,
        actor: &Actor,
        cmd: SetKeyPolicy,
    ) -> Result<KeyPolicy, Error> {
        policy::require_admin(actor, "only admins set the key policy")?;
        let now = self.clock.now();
        self.store
            .set_key_policy(&cmd.organization_id, &cmd.policy, &actor.id, now)
            .await?;
        if let Some(replica) = &self.replica {
            replica.wrote();
        }
        tracing::info!(
            actor = actor.id.as_str(),
            organization_id = cmd.organization_id.as_str(),
            action = "key_policy_set",
            "key policy changed"
        );
        Ok(cmd.policy)
    }

    /// `GetKeyPolicy`: admins only.
    pub async fn key_policy(
        &self,
        actor: &Actor,
        org: &OrganizationId,
    ) -> Result<KeyPolicy, Error> {
        policy::require_admin(actor, "only admins read the key policy")?;
        self.key_policy_of(org).await
    }

    /// A key the actor may act on; another organization's key does not exist for it.
    async fn accessible(&self, actor: &Actor, key: &KeyRef) -> Result<KeyRecord, Error> {
        let record = self
            .stored(self.store.get_key(&key.organization_id, &key.id))
            .await?
            .ok_or(Error::NotFound)?;
        policy::may_act_on(actor, &record)?;
        Ok(record)
    }

    /// Creates a key; its secret is returned here and exists nowhere else.
    pub async fn create(
        &self,
        actor: &Actor,
        cmd: CreateKey,
    ) -> Result<(KeyRecord, Secret), Error> {
        let owner = policy::owner_of_new_key(actor, cmd.key_type)?;
        policy::may_set_limits(actor, !cmd.rate_limits.is_empty(), cmd.quota.is_some())?;
        policy::may_set_identity(actor, cmd.identity_id.is_some())?;
        let now = self.clock.now();
        let expire_time = self.key_policy_of(&cmd.organization_id).await?.admit_new(
            cmd.key_type,
            &cmd.scopes,
            &cmd.allowed_networks,
            cmd.expire_time,
            now,
        )?;
        let secret = Secret::generate(&self.prefix);
        let key = KeyRecord {
            allowed_hostnames: cmd.allowed_hostnames,
            allowed_networks: cmd.allowed_networks,
            bound_principals: cmd.bound_principals,
            metadata: cmd.metadata,
            expire_time,
            rate_limits: cmd.rate_limits,
            quota: cmd.quota,
            quota_period_start: cmd.quota.map_or(Micros(0), |q| q.period.start(now)),
            identity_id: cmd.identity_id,
            ..KeyRecord::new(
                cmd.organization_id,
                owner,
                cmd.name,
                cmd.scopes,
                &secret,
                actor.id.clone(),
                now,
            )
        };
        self.store.create_key(&key).await?;
        // Someone may have presented this exact secret before it existed: the
        // negative cache must not keep answering NOT_FOUND.
        self.changed(
            actor,
            &key.organization_id,
            &[key.secret_hash],
            Change::Key(&key.id, "created"),
        );
        Ok((key, secret))
    }

    pub async fn get(&self, actor: &Actor, key: KeyRef) -> Result<KeyRecord, Error> {
        let record = self.accessible(actor, &key).await?;
        Ok(record.as_of(self.clock.now()))
    }

    pub async fn list(&self, actor: &Actor, cmd: ListKeys) -> Result<Page<KeyRecord>, Error> {
        // The filters apply to every role: a member's own keys are user keys, so
        // a member asking for bot keys gets none (the owner filter excludes them).
        let filter = KeyFilter {
            user_id: policy::list_owner(actor, cmd.user_id)?,
            organization_id: cmd.organization_id,
            key_type: cmd.key_type,
            include_revoked: cmd.include_revoked,
            after: cmd.after,
            limit: cmd.page_size + 1,
        };
        let now = self.clock.now();
        let rows: Vec<KeyRecord> = self
            .stored(self.store.list_keys(&filter))
            .await?
            .into_iter()
            .map(|k| k.as_of(now))
            .collect();
        Ok(Page::cut(rows, cmd.page_size, TokenKind::Keys, |k| {
            k.id.as_str().to_owned()
        }))
    }

    /// Changes a live key (the only state in which a key changes, see
    /// `domain::lifecycle`; the store checks it against the locked row).
    pub async fn update(&self, actor: &Actor, cmd: UpdateKey) -> Result<KeyRecord, Error> {
        let UpdateKey { key, patch } = cmd;
        let current = self.accessible(actor, &key).await?;
        policy::may_set_limits(actor, patch.rate_limits.is_some(), patch.quota.is_some())?;
        policy::may_set_identity(actor, patch.identity_id.is_some())?;
        self.key_policy_of(&key.organization_id)
            .await?
            .admit_update(&current, &patch)?;
        let now = self.clock.now();
        // Credits this instance leased under the old quota go back before the
        // quota changes (a new quota starts from nothing, so none may stay
        // leased against it), and no verification leases more until the
        // change is written.
        let held = match (&self.limits, patch.quota.is_some()) {
            (Some(limits), true) => Some(
                limits
                    .quotas
                    .hold(&LimitsOwner::Lineage(current.lineage_id.clone()), now)
                    .await,
            ),
            _ => None,
        };
        let allowed = move |k: &KeyRecord| lifecycle::check(k, Operation::Update, now);
        let updated = self
            .store
            .update_key(
                &key.organization_id,
                &key.id,
                &patch,
                &actor.id,
                now,
                &allowed,
            )
            .await?;
        if let (Some(state), Some(limits)) = (&self.limits, &patch.rate_limits) {
            // Calls already made count against the new limits from this
            // moment, not from the next verification.
            state.rate_limits.follow(
                &LimitsOwner::Lineage(updated.lineage_id.clone()),
                limits,
                now,
            );
        }
        let mut hashes = vec![current.secret_hash];
        if current.rotated_from_id.is_some() {
            hashes.extend(self.grace_links(&current.secret_hash, now).await);
        }
        self.changed(
            actor,
            &key.organization_id,
            &hashes,
            Change::Key(&key.id, "updated"),
        );
        // Only now: a verification that waited for the lease reads the key
        // again (its cache entry is gone) and spends under the new quota.
        drop(held);
        Ok(updated.as_of(now))
    }

    /// The keys in grace of `hash`'s rotation chain, which spend its newest
    /// key's limits and so must see a change of them. Best effort: when the
    /// store cannot say, the invalidation poll reaches them in its interval.
    async fn grace_links(&self, hash: &SecretHash, now: Micros) -> Vec<SecretHash> {
        match self.stored(self.store.grace_links(&[*hash], now)).await {
            Ok(links) => links,
            Err(e) => {
                tracing::warn!(error = ?e, "could not read a rotation chain's keys in grace; the invalidation poll will reach them");
                Vec::new()
            }
        }
    }

    /// Replaces a key with a new one that copies its settings; returns the new
    /// key, its secret (here and nowhere else) and the old key after the change.
    pub async fn rotate(
        &self,
        actor: &Actor,
        cmd: RotateKey,
    ) -> Result<(KeyRecord, Secret, KeyRecord), Error> {
        let old = self.accessible(actor, &cmd.key).await?;
        let now = self.clock.now();
        let expire_time = self
            .key_policy_of(&old.organization_id)
            .await?
            .admit_rotation(&old, cmd.grace, now)?;
        let secret = Secret::generate(&self.prefix);
        let new = KeyRecord {
            id: KeyId::generate(),
            secret_hash: secret.hash(),
            key_prefix: secret.key_prefix(),
            last_four: secret.last_four(),
            request_count: 0,
            create_time: now,
            update_time: now,
            last_used_time: None,
            revoke_time: None,
            created_by: actor.id.clone(),
            // Set from the locked row in the store's transaction.
            quota_used: 0,
            quota_period_start: old.quota.map_or(Micros(0), |q| q.period.start(now)),
            rotated_to_id: None,
            rotated_from_id: Some(old.id.clone()),
            expire_time,
            ..old.clone()
        };
        let grace_until = cmd.grace.map(|g| Micros(now.0.saturating_add(g.0)));
        let allowed = move |k: &KeyRecord| lifecycle::check(k, Operation::Rotate, now);
        let (previous, new) = self
            .store
            .rotate_key(&old.id, &new, grace_until, now, &allowed)
            .await?;
        self.changed(
            actor,
            &old.organization_id,
            &[old.secret_hash, new.secret_hash],
            Change::Key(&old.id, "rotated"),
        );
        Ok((new.as_of(now), secret, previous.as_of(now)))
    }

    /// Revokes every live key a (verified) leak report names, each with events
    /// `LEAKED` and `REVOKED` by `actor`, and answers each token in order. A
    /// token that is not a keygate key, or names no key, is a false positive; so
    /// is a key revoked already (nothing left to do).
    pub async fn report_leaks(&self, tokens: &[ReportedToken]) -> Result<Vec<Verdict>, Error> {
        self.report_leaks_as(leaks::ACTOR, tokens).await
    }

    /// As [`KeyService::report_leaks`], with the revocations' events by
    /// `actor`: `secret-scanning` for a signed report, `public-report` for an
    /// anonymous one. Either may revoke any key whose whole secret it names, in
    /// any organization: whoever holds the secret could use the key anyway.
    pub async fn report_leaks_as(
        &self,
        actor: &str,
        tokens: &[ReportedToken],
    ) -> Result<Vec<Verdict>, Error> {
        let actor = &Actor {
            id: UserId::parse(actor).map_err(|_| Error::Internal)?,
            role: Role::Admin,
        };
        let hashes: Vec<Option<SecretHash>> =
            tokens.iter().map(|t| parse_token(&t.token).ok()).collect();
        let wanted: Vec<SecretHash> = hashes.iter().flatten().copied().collect();
        let mut found = HashMap::new();
        for chunk in wanted.chunks(MAX_HASHES_PER_READ) {
            for key in self.stored(self.store.find_by_hashes(chunk)).await? {
                found.insert(key.secret_hash, key);
            }
        }
        let now = self.clock.now();
        let mut labels: HashMap<SecretHash, Label> = HashMap::new();
        for hash in &wanted {
            if labels.contains_key(hash) {
                continue;
            }
            let label = match found.get(hash) {
                Some(key) if key.revoke_time.is_none() => {
                    let revoked = self
                        .store
                        .revoke_leaked(&key.organization_id, &key.id, &actor.id, now)
                        .await?;
                    if revoked {
                        self.changed(
                            actor,
                            &key.organization_id,
                            &[key.secret_hash],
                            Change::Key(&key.id, "revoked as leaked"),
                        );
                    }
                    Label::TruePositive
                }
                _ => Label::FalsePositive,
            };
            labels.insert(*hash, label);
        }
        Ok(tokens
            .iter()
            .zip(&hashes)
            .map(|(t, hash)| Verdict {
                token_hash: hash.unwrap_or_else(|| SecretHash::of(&t.token)).to_hex(),
                token_type: TOKEN_TYPE,
                label: hash
                    .and_then(|h| labels.get(&h).copied())
                    .unwrap_or(Label::FalsePositive),
            })
            .collect())
    }

    /// A key's usage history: buckets oldest first, each with its start and its
    /// `(VerifyCode number, count)` outcomes in code order, empty ones left out.
    pub async fn usage(
        &self,
        actor: &Actor,
        cmd: GetKeyUsage,
    ) -> Result<Vec<(Micros, Vec<(i64, u64)>)>, Error> {
        let key = self.accessible(actor, &cmd.key).await?;
        let rows = self
            .stored(
                self.store
                    .usage_history(&key.id, cmd.daily, cmd.from, cmd.to),
            )
            .await?;
        let mut buckets: Vec<(Micros, Vec<(i64, u64)>)> = Vec::new();
        for (start, code, n) in rows.into_iter().filter(|(_, _, n)| *n > 0) {
            match buckets.last_mut() {
                Some((s, outcomes)) if *s == start => outcomes.push((code, n)),
                _ => buckets.push((start, vec![(code, n)])),
            }
        }
        Ok(buckets)
    }

    /// Revoking a revoked key succeeds and keeps the first revoke time.
    pub async fn revoke(&self, actor: &Actor, key: KeyRef) -> Result<KeyRecord, Error> {
        self.accessible(actor, &key).await?;
        let now = self.clock.now();
        let revoked = self
            .store
            .revoke_key(&key.organization_id, &key.id, &actor.id, now)
            .await?;
        self.changed(
            actor,
            &key.organization_id,
            &[revoked.secret_hash],
            Change::Key(&key.id, "revoked"),
        );
        Ok(revoked.as_of(now))
    }

    /// Deletes every user key of a member; returns how many.
    pub async fn remove_member(&self, actor: &Actor, cmd: RemoveMember) -> Result<usize, Error> {
        policy::require_admin(actor, "only admins remove members")?;
        let now = self.clock.now();
        let hashes = self
            .store
            .remove_member(&cmd.organization_id, &cmd.user_id, &actor.id, now)
            .await?;
        self.changed(
            actor,
            &cmd.organization_id,
            &hashes,
            Change::MemberRemoved(&cmd.user_id),
        );
        Ok(hashes.len())
    }

    pub async fn events(&self, actor: &Actor, cmd: ListKeyEvents) -> Result<Page<KeyEvent>, Error> {
        policy::require_admin(actor, "only admins read the audit trail")?;
        let rows = self
            .stored(self.store.list_events(
                &cmd.organization_id,
                cmd.key_id.as_ref(),
                cmd.after,
                cmd.page_size + 1,
            ))
            .await?;
        Ok(Page::cut(rows, cmd.page_size, TokenKind::Events, |e| {
            e.id.to_string()
        }))
    }
}
