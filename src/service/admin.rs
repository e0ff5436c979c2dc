//! `KeyAdmin`: key management for trusted internal callers.

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};

use super::{
    auth::AdminTokens,
    error::{ApiError, Violations},
    paging::{self, TokenKind},
};
use crate::{
    cache::KeyCache,
    hostnames::{AllowedHostnames, HostnamePattern, HostnamesError},
    keys::{self, KeyPrefix, Secret},
    model::{
        Actor, KeyId, KeyName, KeyPatch, KeyRecord, KeyType, Micros, OrganizationId, Owner, Role,
        UserId,
    },
    proto::{self, key_admin_server::KeyAdmin},
    scopes::{ScopeCatalog, ScopeSet, ScopeSetError, parse_scope},
    store::{KeyFilter, Store, StoreError},
};

#[derive(Debug, Clone)]
pub struct AdminService {
    store: Store,
    cache: Arc<KeyCache>,
    tokens: AdminTokens,
    prefix: KeyPrefix,
    catalog: Option<Arc<ScopeCatalog>>,
    /// `--database-timeout`: the longest a call waits on the store, whatever it
    /// waits for (a connection, a lock, a stalled network).
    store_timeout: Duration,
}

impl AdminService {
    pub fn new(
        store: Store,
        cache: Arc<KeyCache>,
        tokens: AdminTokens,
        prefix: KeyPrefix,
        catalog: Option<Arc<ScopeCatalog>>,
        store_timeout: Duration,
    ) -> Self {
        Self {
            store,
            cache,
            tokens,
            prefix,
            catalog,
            store_timeout,
        }
    }

    /// Runs one store operation within the store timeout: a call that waits on
    /// the store ends UNAVAILABLE in time, never CANCELLED by the request timeout.
    /// A write given up here is rolled back unless its commit was already sent.
    async fn stored<T>(
        &self,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ApiError> {
        tokio::time::timeout(self.store_timeout, op)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.store_timeout)))
            .map_err(ApiError::from)
    }

    fn authenticate<T>(&self, request: &Request<T>) -> Result<Actor, ApiError> {
        self.tokens.authenticate(request.metadata())
    }

    /// Scopes of a request, checked against the grammar and the catalog; every bad
    /// one is named by its index in the request (within the violations' cap).
    fn parse_scopes(&self, v: &mut Violations, scopes: &[String]) -> Option<ScopeSet> {
        let set = match ScopeSet::parse(scopes) {
            Ok(set) => set,
            Err(ScopeSetError::Invalid { .. }) => {
                for (index, scope) in scopes.iter().enumerate() {
                    if let Err(e) = parse_scope(scope) {
                        v.add(format!("scopes[{index}]"), e.to_string());
                    }
                }
                return None;
            }
            Err(e) => {
                v.add("scopes", e.to_string());
                return None;
            }
        };
        let Some(catalog) = self.catalog.as_ref() else {
            return Some(set);
        };
        let mut known = true;
        for (index, scope) in scopes.iter().enumerate() {
            if parse_scope(scope).is_ok_and(|s| !catalog.allows(s)) {
                v.add(
                    format!("scopes[{index}]"),
                    format!("{scope:?} is not in the scope catalog"),
                );
                known = false;
            }
        }
        known.then_some(set)
    }

    /// A key the actor may act on; another organization's key does not exist for it.
    async fn accessible_key(
        &self,
        actor: &Actor,
        org: &OrganizationId,
        id: &KeyId,
    ) -> Result<KeyRecord, ApiError> {
        let key = self
            .stored(self.store.get_key(org, id))
            .await?
            .ok_or(ApiError::NotFound)?;
        if key.is_accessible_by(actor) {
            Ok(key)
        } else {
            Err(ApiError::PermissionDenied(
                "members may only act on their own user keys",
            ))
        }
    }

    fn audit(actor: &Actor, org: &OrganizationId, key_id: &KeyId, action: &'static str) {
        tracing::info!(
            actor = actor.id.as_str(),
            role = ?actor.role,
            organization_id = org.as_str(),
            key_id = key_id.as_str(),
            action,
            "key changed"
        );
    }
}

/// A value a caller pasted a secret into by mistake: storing it would put the
/// secret in the database, which keygate promises never happens.
fn contains_secret(value: &str) -> bool {
    value
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|word| keys::parse_token(word).is_ok())
}

const SECRET_HERE: &str = "looks like an API key; a secret must never be stored here";

fn parse_name(v: &mut Violations, name: &str) -> Option<KeyName> {
    if contains_secret(name) {
        v.add("name", SECRET_HERE);
        return None;
    }
    v.check("name", KeyName::parse(name))
}

/// Every bad entry is named by its index (within the violations' cap), not only
/// the first: one round trip tells the caller all it must fix.
fn parse_hostnames(v: &mut Violations, hosts: &[String]) -> Option<AllowedHostnames> {
    let mut bad = false;
    for (i, host) in hosts.iter().enumerate() {
        if contains_secret(host) {
            v.add(format!("allowed_hostnames[{i}]"), SECRET_HERE);
            bad = true;
        } else if let Err(e) = host.parse::<HostnamePattern>() {
            v.add(format!("allowed_hostnames[{i}]"), e.to_string());
            bad = true;
        }
    }
    if bad {
        return None;
    }
    match AllowedHostnames::parse(hosts) {
        Ok(h) => Some(h),
        Err(e @ HostnamesError::TooMany(_)) => {
            v.add("allowed_hostnames", e.to_string());
            None
        }
        Err(HostnamesError::Invalid { index, source, .. }) => {
            v.add(format!("allowed_hostnames[{index}]"), source.to_string());
            None
        }
    }
}

/// An expiry must lie in the future when it is set.
fn parse_expiry(
    v: &mut Violations,
    ts: Option<&prost_types::Timestamp>,
    now: Micros,
) -> Option<Option<Micros>> {
    let Some(ts) = ts else { return Some(None) };
    let t = v.check("expire_time", Micros::from_timestamp(ts))?;
    if t <= now {
        v.add("expire_time", "must be in the future");
        return None;
    }
    Some(Some(t))
}

fn require_admin(actor: &Actor, what: &'static str) -> Result<(), ApiError> {
    match actor.role {
        Role::Admin => Ok(()),
        Role::Member => Err(ApiError::PermissionDenied(what)),
    }
}

/// Runs a parse that records violations and then fails with all of them.
fn parsed<T>(v: Violations, value: Option<T>) -> Result<T, ApiError> {
    v.finish()?;
    value.ok_or(ApiError::Internal)
}

/// The RPC bodies; the `KeyAdmin` impl below wraps each to count and log it.
impl AdminService {
    async fn create(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Result<Response<proto::CreateKeyResponse>, Status> {
        let actor = self.authenticate(&request)?;
        let req = request.into_inner();
        let now = Micros::now();
        let mut v = Violations::default();
        let org = v.check(
            "organization_id",
            OrganizationId::parse(&req.organization_id),
        );
        let key_type = match proto::KeyType::try_from(req.r#type) {
            Ok(proto::KeyType::User) => Some(KeyType::User),
            Ok(proto::KeyType::Bot) => Some(KeyType::Bot),
            _ => {
                v.add("type", "must be KEY_TYPE_USER or KEY_TYPE_BOT");
                None
            }
        };
        let name = parse_name(&mut v, &req.name);
        let scopes = self.parse_scopes(&mut v, &req.scopes);
        let hosts = parse_hostnames(&mut v, &req.allowed_hostnames);
        let expire = parse_expiry(&mut v, req.expire_time.as_ref(), now);
        let (org, key_type, name, scopes, hosts, expire) = parsed(
            v,
            (|| Some((org?, key_type?, name?, scopes?, hosts?, expire?)))(),
        )?;

        let owner = match key_type {
            KeyType::User => Owner::User(actor.id.clone()),
            KeyType::Bot => {
                require_admin(&actor, "only admins create bot keys")?;
                Owner::Bot
            }
        };
        let secret = Secret::generate(&self.prefix);
        let key = KeyRecord {
            id: KeyId::generate(),
            organization_id: org,
            owner,
            name,
            scopes,
            allowed_hostnames: hosts,
            secret_hash: secret.hash(),
            key_prefix: secret.key_prefix(),
            last_four: secret.last_four(),
            request_count: 0,
            create_time: now,
            update_time: now,
            last_used_time: None,
            revoke_time: None,
            expire_time: expire,
            created_by: actor.id.clone(),
        };
        self.stored(self.store.create_key(&key)).await?;
        // Someone may have presented this exact secret before it existed.
        self.cache.invalidate(&key.secret_hash);
        Self::audit(&actor, &key.organization_id, &key.id, "created");
        Ok(Response::new(proto::CreateKeyResponse {
            key: Some((&key).into()),
            secret: secret.into_exposed(),
        }))
    }

    async fn get(
        &self,
        request: Request<proto::GetKeyRequest>,
    ) -> Result<Response<proto::GetKeyResponse>, Status> {
        let actor = self.authenticate(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let org = v.check(
            "organization_id",
            OrganizationId::parse(&req.organization_id),
        );
        let id = v.check("id", KeyId::parse(&req.id));
        let (org, id) = parsed(v, org.zip(id))?;
        let key = self.accessible_key(&actor, &org, &id).await?;
        Ok(Response::new(proto::GetKeyResponse {
            key: Some((&key).into()),
        }))
    }

    async fn list(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        let actor = self.authenticate(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let org = v.check(
            "organization_id",
            OrganizationId::parse(&req.organization_id),
        );
        let limit = v.check("page_size", paging::page_size(req.page_size));
        let after = v
            .check(
                "page_token",
                paging::decode(TokenKind::Keys, &req.page_token),
            )
            .and_then(|p| match p.map(|p| KeyId::parse(&p)).transpose() {
                Ok(after) => Some(after),
                Err(_) => {
                    v.add("page_token", "is not a page token returned by this list");
                    None
                }
            });
        let key_type = match proto::KeyType::try_from(req.r#type) {
            Ok(proto::KeyType::Unspecified) => Some(None),
            Ok(proto::KeyType::User) => Some(Some(KeyType::User)),
            Ok(proto::KeyType::Bot) => Some(Some(KeyType::Bot)),
            Err(_) => {
                v.add("type", "must be a KeyType value");
                None
            }
        };
        let user = if req.user_id.is_empty() {
            Some(None)
        } else {
            v.check("user_id", UserId::parse(&req.user_id)).map(Some)
        };
        let (org, limit, after, key_type, user) =
            parsed(v, (|| Some((org?, limit?, after?, key_type?, user?)))())?;

        // Members see their own user keys only, whatever they ask for.
        let user = match actor.role {
            Role::Admin => user,
            Role::Member => match user {
                Some(u) if u != actor.id => {
                    return Err(
                        ApiError::PermissionDenied("members may only list their own keys").into(),
                    );
                }
                _ => Some(actor.id.clone()),
            },
        };
        // The filters apply to every role: a member's own keys are user keys, so
        // a member asking for bot keys gets none (the owner filter excludes them).
        let filter = KeyFilter {
            organization_id: org,
            key_type,
            user_id: user,
            include_revoked: req.include_revoked,
            after,
            // One more than asked tells whether another page follows.
            limit: limit + 1,
        };
        let mut keys = self.stored(self.store.list_keys(&filter)).await?;
        let next_page_token = if keys.len() > limit as usize {
            keys.truncate(limit as usize);
            keys.last()
                .map(|k| paging::encode(TokenKind::Keys, k.id.as_str()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListKeysResponse {
            keys: keys.iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    async fn update(
        &self,
        request: Request<proto::UpdateKeyRequest>,
    ) -> Result<Response<proto::UpdateKeyResponse>, Status> {
        let actor = self.authenticate(&request)?;
        let req = request.into_inner();
        let now = Micros::now();
        let mut v = Violations::default();
        let org = v.check(
            "organization_id",
            OrganizationId::parse(&req.organization_id),
        );
        let id = v.check("id", KeyId::parse(&req.id));
        let mut patch = KeyPatch::default();
        match req.update_mask.as_ref().map(|m| m.paths.as_slice()) {
            None | Some([]) => v.add(
                "update_mask",
                "is required: name the fields to change (name, scopes, allowed_hostnames, expire_time)",
            ),
            Some(paths) => {
                for (i, path) in paths.iter().enumerate() {
                    match path.as_str() {
                        "name" => patch.name = parse_name(&mut v, &req.name),
                        "scopes" => patch.scopes = self.parse_scopes(&mut v, &req.scopes),
                        "allowed_hostnames" => {
                            patch.allowed_hostnames = parse_hostnames(&mut v, &req.allowed_hostnames);
                        }
                        "expire_time" => {
                            patch.expire_time = parse_expiry(&mut v, req.expire_time.as_ref(), now);
                        }
                        _ => v.add(
                            format!("update_mask.paths[{i}]"),
                            format!(
                                "unknown path {path:?}: expected name, scopes, allowed_hostnames or expire_time"
                            ),
                        ),
                    }
                }
            }
        }
        let (org, id) = parsed(v, org.zip(id))?;

        let key = self.accessible_key(&actor, &org, &id).await?;
        let updated = self
            .stored(self.store.update_key(&org, &id, &patch, &actor.id, now))
            .await?;
        self.cache.invalidate(&key.secret_hash);
        Self::audit(&actor, &org, &id, "updated");
        Ok(Response::new(proto::UpdateKeyResponse {
            key: Some((&updated).into()),
        }))
    }

    async fn revoke(
        &self,
        request: Request<proto::RevokeKeyRequest>,
    ) -> Result<Response<proto::RevokeKeyResponse>, Status> {
        let actor = self.authenticate(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let org = v.check(
            "organization_id",
            OrganizationId::parse(&req.organization_id),
        );
        let id = v.check("id", KeyId::parse(&req.id));
        let (org, id) = parsed(v, org.zip(id))?;

        self.accessible_key(&actor, &org, &id).await?;
        let key = self
            .stored(self.store.revoke_key(&org, &id, &actor.id, Micros::now()))
            .await?;
        self.cache.invalidate(&key.secret_hash);
        Self::audit(&actor, &org, &id, "revoked");
        Ok(Response::new(proto::RevokeKeyResponse {
            key: Some((&key).into()),
        }))
    }

    async fn remove(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Result<Response<proto::RemoveMemberResponse>, Status> {
        let actor = self.authenticate(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let org = v.check(
            "organization_id",
            OrganizationId::parse(&req.organization_id),
        );
        let user = v.check("user_id", UserId::parse(&req.user_id));
        let (org, user) = parsed(v, org.zip(user))?;
        require_admin(&actor, "only admins remove members")?;

        let hashes = self
            .stored(
                self.store
                    .remove_member(&org, &user, &actor.id, Micros::now()),
            )
            .await?;
        for h in &hashes {
            self.cache.invalidate(h);
        }
        tracing::info!(
            actor = actor.id.as_str(),
            organization_id = org.as_str(),
            user_id = user.as_str(),
            deleted = hashes.len(),
            action = "member_removed",
            "key changed"
        );
        Ok(Response::new(proto::RemoveMemberResponse {
            deleted_key_count: u32::try_from(hashes.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn events(
        &self,
        request: Request<proto::ListKeyEventsRequest>,
    ) -> Result<Response<proto::ListKeyEventsResponse>, Status> {
        let actor = self.authenticate(&request)?;
        let req = request.into_inner();
        let mut v = Violations::default();
        let org = v.check(
            "organization_id",
            OrganizationId::parse(&req.organization_id),
        );
        let key_id = if req.key_id.is_empty() {
            Some(None)
        } else {
            v.check("key_id", KeyId::parse(&req.key_id)).map(Some)
        };
        let limit = v.check("page_size", paging::page_size(req.page_size));
        let after = v
            .check(
                "page_token",
                paging::decode(TokenKind::Events, &req.page_token),
            )
            .and_then(|p| match p.map(|p| p.parse::<u64>()).transpose() {
                Ok(after) => Some(after.unwrap_or(0)),
                Err(_) => {
                    v.add("page_token", "is not a page token returned by this list");
                    None
                }
            });
        let (org, key_id, limit, after) = parsed(v, (|| Some((org?, key_id?, limit?, after?)))())?;
        require_admin(&actor, "only admins read the audit trail")?;

        let mut events = self
            .stored(
                self.store
                    .list_events(&org, key_id.as_ref(), after, limit + 1),
            )
            .await?;
        let next_page_token = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events
                .last()
                .map(|e| paging::encode(TokenKind::Events, &e.id.to_string()))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListKeyEventsResponse {
            events: events.iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}

/// Counts every call by method and status, and logs each refused one: a denied
/// admin call is something an operator wants to see.
fn observed<T>(method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
    let code = result.as_ref().err().map_or(tonic::Code::Ok, Status::code);
    crate::metrics::admin_request(method, code);
    if let (tonic::Code::Unauthenticated | tonic::Code::PermissionDenied, Err(status)) =
        (code, &result)
    {
        tracing::info!(method, code = ?code, reason = status.message(), "admin call denied");
    }
    result
}

#[tonic::async_trait]
impl KeyAdmin for AdminService {
    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Result<Response<proto::CreateKeyResponse>, Status> {
        observed("CreateKey", self.create(request).await)
    }

    async fn get_key(
        &self,
        request: Request<proto::GetKeyRequest>,
    ) -> Result<Response<proto::GetKeyResponse>, Status> {
        observed("GetKey", self.get(request).await)
    }

    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        observed("ListKeys", self.list(request).await)
    }

    async fn update_key(
        &self,
        request: Request<proto::UpdateKeyRequest>,
    ) -> Result<Response<proto::UpdateKeyResponse>, Status> {
        observed("UpdateKey", self.update(request).await)
    }

    async fn revoke_key(
        &self,
        request: Request<proto::RevokeKeyRequest>,
    ) -> Result<Response<proto::RevokeKeyResponse>, Status> {
        observed("RevokeKey", self.revoke(request).await)
    }

    async fn remove_member(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Result<Response<proto::RemoveMemberResponse>, Status> {
        observed("RemoveMember", self.remove(request).await)
    }

    async fn list_key_events(
        &self,
        request: Request<proto::ListKeyEventsRequest>,
    ) -> Result<Response<proto::ListKeyEventsResponse>, Status> {
        observed("ListKeyEvents", self.events(request).await)
    }
}
