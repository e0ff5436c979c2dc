//! `KeyAdmin` over gRPC: authenticate, parse into a command, call the keys
//! service, translate. Counting and logging of refused calls is the
//! [`super::observe`] layer's, around the whole service.

use tonic::{Request, Response, Status};

use super::auth::AdminTokens;
use crate::{
    domain::commands::{
        CreateKey, GetKeyUsage, KeyRef, ListKeyEvents, ListKeys, RemoveMember, RotateKey,
        SetKeyPolicy, UpdateKey,
    },
    domain::identities::{
        CreateIdentity, GetIdentity, IdentityRef, ListIdentities, UpdateIdentity,
    },
    domain::model::{Actor, OrganizationId},
    domain::violations::field,
    proto::{self, key_admin_server::KeyAdmin},
    services::KeyService,
};

#[derive(Debug, Clone)]
pub struct AdminApi {
    keys: KeyService,
    tokens: AdminTokens,
}

impl AdminApi {
    pub fn new(keys: KeyService, tokens: AdminTokens) -> Self {
        Self { keys, tokens }
    }

    /// The caller's credentials and actor, then its message.
    fn open<T>(&self, request: Request<T>) -> Result<(Actor, T), Status> {
        let actor = self.tokens.authenticate(request.metadata())?;
        Ok((actor, request.into_inner()))
    }
}

#[tonic::async_trait]
impl KeyAdmin for AdminApi {
    async fn create_identity(
        &self,
        request: Request<proto::CreateIdentityRequest>,
    ) -> Result<Response<proto::CreateIdentityResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let identity = self
            .keys
            .create_identity(&actor, CreateIdentity::parse(&req)?)
            .await?;
        Ok(Response::new(proto::CreateIdentityResponse {
            identity: Some((&identity).into()),
        }))
    }

    async fn get_identity(
        &self,
        request: Request<proto::GetIdentityRequest>,
    ) -> Result<Response<proto::GetIdentityResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let identity = self
            .keys
            .get_identity(&actor, GetIdentity::parse(&req)?)
            .await?;
        Ok(Response::new(proto::GetIdentityResponse {
            identity: Some((&identity).into()),
        }))
    }

    async fn update_identity(
        &self,
        request: Request<proto::UpdateIdentityRequest>,
    ) -> Result<Response<proto::UpdateIdentityResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let identity = self
            .keys
            .update_identity(&actor, UpdateIdentity::parse(&req)?)
            .await?;
        Ok(Response::new(proto::UpdateIdentityResponse {
            identity: Some((&identity).into()),
        }))
    }

    async fn list_identities(
        &self,
        request: Request<proto::ListIdentitiesRequest>,
    ) -> Result<Response<proto::ListIdentitiesResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let page = self
            .keys
            .list_identities(&actor, ListIdentities::parse(&req)?)
            .await?;
        Ok(Response::new(proto::ListIdentitiesResponse {
            identities: page.items.iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn delete_identity(
        &self,
        request: Request<proto::DeleteIdentityRequest>,
    ) -> Result<Response<proto::DeleteIdentityResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let identity = IdentityRef::parse(&req.organization_id, &req.id)?;
        self.keys.delete_identity(&actor, identity).await?;
        Ok(Response::new(proto::DeleteIdentityResponse {}))
    }

    async fn set_key_policy(
        &self,
        request: Request<proto::SetKeyPolicyRequest>,
    ) -> Result<Response<proto::SetKeyPolicyResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let cmd = SetKeyPolicy::parse(&req, self.keys.context())?;
        let policy = self.keys.set_key_policy(&actor, cmd).await?;
        Ok(Response::new(proto::SetKeyPolicyResponse {
            policy: Some((&policy).into()),
        }))
    }

    async fn get_key_policy(
        &self,
        request: Request<proto::GetKeyPolicyRequest>,
    ) -> Result<Response<proto::GetKeyPolicyResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let org = field(
            "organization_id",
            OrganizationId::parse(&req.organization_id),
        )?;
        let policy = self.keys.key_policy(&actor, &org).await?;
        Ok(Response::new(proto::GetKeyPolicyResponse {
            policy: Some((&policy).into()),
        }))
    }

    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Result<Response<proto::CreateKeyResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let cmd = CreateKey::parse(&req, self.keys.context())?;
        let (key, secret) = self.keys.create(&actor, cmd).await?;
        Ok(Response::new(proto::CreateKeyResponse {
            key: Some((&key).into()),
            secret: secret.into_exposed(),
        }))
    }

    async fn get_key(
        &self,
        request: Request<proto::GetKeyRequest>,
    ) -> Result<Response<proto::GetKeyResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let key = KeyRef::parse(&req.organization_id, &req.id)?;
        let key = self.keys.get(&actor, key).await?;
        Ok(Response::new(proto::GetKeyResponse {
            key: Some((&key).into()),
        }))
    }

    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let page = self.keys.list(&actor, ListKeys::parse(&req)?).await?;
        Ok(Response::new(proto::ListKeysResponse {
            keys: page.items.iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn update_key(
        &self,
        request: Request<proto::UpdateKeyRequest>,
    ) -> Result<Response<proto::UpdateKeyResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let cmd = UpdateKey::parse(&req, self.keys.context())?;
        let key = self.keys.update(&actor, cmd).await?;
        Ok(Response::new(proto::UpdateKeyResponse {
            key: Some((&key).into()),
        }))
    }

    async fn revoke_key(
        &self,
        request: Request<proto::RevokeKeyRequest>,
    ) -> Result<Response<proto::RevokeKeyResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let key = KeyRef::parse(&req.organization_id, &req.id)?;
        let key = self.keys.revoke(&actor, key).await?;
        Ok(Response::new(proto::RevokeKeyResponse {
            key: Some((&key).into()),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<proto::RemoveMemberRequest>,
    ) -> Result<Response<proto::RemoveMemberResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let deleted = self
            .keys
            .remove_member(&actor, RemoveMember::parse(&req)?)
            .await?;
        Ok(Response::new(proto::RemoveMemberResponse {
            deleted_key_count: u32::try_from(deleted).unwrap_or(u32::MAX),
        }))
    }

    async fn rotate_key(
        &self,
        request: Request<proto::RotateKeyRequest>,
    ) -> Result<Response<proto::RotateKeyResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let (key, secret, previous) = self.keys.rotate(&actor, RotateKey::parse(&req)?).await?;
        Ok(Response::new(proto::RotateKeyResponse {
            key: Some((&key).into()),
            secret: secret.into_exposed(),
            previous_key: Some((&previous).into()),
        }))
    }

    async fn get_key_usage(
        &self,
        request: Request<proto::GetKeyUsageRequest>,
    ) -> Result<Response<proto::GetKeyUsageResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let buckets = self.keys.usage(&actor, GetKeyUsage::parse(&req)?).await?;
        Ok(Response::new(proto::GetKeyUsageResponse {
            buckets: buckets
                .into_iter()
                .map(|(start, outcomes)| proto::UsageBucket {
                    start_time: Some(start.to_timestamp()),
                    total: outcomes.iter().map(|(_, n)| n).sum(),
                    outcomes: outcomes
                        .into_iter()
                        .map(|(code, count)| proto::OutcomeCount {
                            code: i32::try_from(code).unwrap_or_default(),
                            count,
                        })
                        .collect(),
                })
                .collect(),
        }))
    }

    async fn list_key_events(
        &self,
        request: Request<proto::ListKeyEventsRequest>,
    ) -> Result<Response<proto::ListKeyEventsResponse>, Status> {
        let (actor, req) = self.open(request)?;
        let page = self
            .keys
            .events(&actor, ListKeyEvents::parse(&req)?)
            .await?;
        Ok(Response::new(proto::ListKeyEventsResponse {
            events: page.items.iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
