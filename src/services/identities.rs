//! The identity calls of `KeyAdmin`, on the keys service: admins only, each
//! change written with its event, then applied to this instance's identity
//! cache and quota leases (other instances learn it from the event poll).

use crate::{
    domain::Error,
    domain::identities::{
        CreateIdentity, GetIdentity, IdentityId, IdentityRecord, IdentityRef, ListIdentities,
        UpdateIdentity,
    },
    domain::limits::LimitsOwner,
    domain::model::{Actor, Micros},
    domain::paging::{Page, TokenKind},
    domain::policy,
    services::keys::{Change, KeyService},
};

const ADMINS_ONLY: &str = "only admins manage identities";

impl KeyService {
    pub async fn create_identity(
        &self,
        actor: &Actor,
        cmd: CreateIdentity,
    ) -> Result<IdentityRecord, Error> {
        policy::require_admin(actor, ADMINS_ONLY)?;
        let now = self.clock.now();
        let identity = IdentityRecord {
            id: IdentityId::generate(),
            organization_id: cmd.organization_id,
            external_id: cmd.external_id,
            metadata: cmd.metadata,
            rate_limits: cmd.rate_limits,
            quota: cmd.quota,
            quota_used: 0,
            quota_period_start: cmd.quota.map_or(Micros(0), |q| q.period.start(now)),
            create_time: now,
            update_time: now,
        };
        self.store.create_identity(&identity, &actor.id).await?;
        self.changed(
            actor,
            &identity.organization_id,
            &[],
            Change::Identity(&identity.id, "identity_created"),
        );
        Ok(identity)
    }

    pub async fn get_identity(
        &self,
        actor: &Actor,
        cmd: GetIdentity,
    ) -> Result<IdentityRecord, Error> {
        policy::require_admin(actor, ADMINS_ONLY)?;
        let found = self
            .stored(self.store.get_identity(&cmd.organization_id, &cmd.name))
            .await?
            .ok_or(Error::NotFound)?;
        Ok(found.as_of(self.clock.now()))
    }

    pub async fn list_identities(
        &self,
        actor: &Actor,
        cmd: ListIdentities,
    ) -> Result<Page<IdentityRecord>, Error> {
        policy::require_admin(actor, ADMINS_ONLY)?;
        let now = self.clock.now();
        let rows: Vec<IdentityRecord> = self
            .stored(self.store.list_identities(
                &cmd.organization_id,
                cmd.after.as_ref(),
                cmd.page_size + 1,
            ))
            .await?
            .into_iter()
            .map(|i| i.as_of(now))
            .collect();
        Ok(Page::cut(rows, cmd.page_size, TokenKind::Identities, |i| {
            i.id.as_str().to_owned()
        }))
    }

    /// As `UpdateKey` for a key's limits: credits this instance leased under
    /// the old quota go back first, and none are leased until the change is
    /// written; calls already made count against new rate limits at once.
    pub async fn update_identity(
        &self,
        actor: &Actor,
        cmd: UpdateIdentity,
    ) -> Result<IdentityRecord, Error> {
        policy::require_admin(actor, ADMINS_ONLY)?;
        let UpdateIdentity { identity, patch } = cmd;
        let now = self.clock.now();
        let owner = LimitsOwner::Identity(identity.id.clone());
        let held = match (&self.limits, patch.quota.is_some()) {
            (Some(limits), true) => Some(limits.quotas.hold(&owner, now).await),
            _ => None,
        };
        let updated = self
            .store
            .update_identity(
                &identity.organization_id,
                &identity.id,
                &patch,
                &actor.id,
                now,
            )
            .await?;
        if let Some(state) = &self.limits {
            if let Some(limits) = &patch.rate_limits {
                state.rate_limits.follow(&owner, limits, now);
            }
            state.identities.invalidate(&identity.id);
        }
        self.changed(
            actor,
            &identity.organization_id,
            &[],
            Change::Identity(&identity.id, "identity_updated"),
        );
        drop(held);
        Ok(updated.as_of(now))
    }

    /// Refused (FAILED_PRECONDITION) while a live key belongs to it.
    pub async fn delete_identity(&self, actor: &Actor, cmd: IdentityRef) -> Result<(), Error> {
        policy::require_admin(actor, ADMINS_ONLY)?;
        let now = self.clock.now();
        self.store
            .delete_identity(&cmd.organization_id, &cmd.id, &actor.id, now)
            .await?;
        if let Some(state) = &self.limits {
            state.identities.invalidate(&cmd.id);
        }
        self.changed(
            actor,
            &cmd.organization_id,
            &[],
            Change::Identity(&cmd.id, "identity_deleted"),
        );
        Ok(())
    }
}
