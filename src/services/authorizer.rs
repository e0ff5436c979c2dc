//! Authorization of a proxied request (Envoy ext_authz, HTTP forward auth): the
//! route policy says which scopes the method and path need, then the verifier
//! checks the key exactly as `VerifyKey` would (limits, usage and all). The two
//! transports only read their request into an [`EdgeRequest`] and write the
//! [`Decision`] back.

use std::{borrow::Cow, net::IpAddr, sync::Arc};

use crate::{
    domain::model::OrganizationId,
    domain::scopes::parse_scope,
    domain::{
        Error,
        routes::{NormalPath, RoutePolicy},
        verify::Verification,
        violations::Violations,
    },
    services::{Outcome, Verifier},
};

/// What a proxy tells keygate about the request it holds. Its `Debug` shows
/// no key.
#[derive(Clone, Copy, Default)]
pub struct EdgeRequest<'a> {
    pub method: &'a str,
    /// The original path (query included), when the proxy sent it.
    pub path: Option<&'a str>,
    /// The presented key; empty when the request carried none.
    pub key: &'a str,
    pub origin: &'a str,
    pub referer: &'a str,
    /// Space-separated scopes the proxy's own configuration adds for this route
    /// (Envoy `context_extensions["keygate_required_scopes"]`).
    pub extra_scopes: &'a str,
    /// Only a key of this organization passes, when not empty
    /// (Envoy `context_extensions["keygate_organization_id"]`).
    pub organization_id: &'a str,
    /// The presenter's address, as the proxy established it; `None` when it
    /// could not (a key restricted to networks is then refused).
    pub client_ip: Option<IpAddr>,
    /// The presenter's authenticated workload identity; empty for none.
    pub client_principal: &'a str,
}

impl std::fmt::Debug for EdgeRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            method,
            path,
            key,
            origin,
            referer,
            extra_scopes,
            organization_id,
            client_ip,
            client_principal,
        } = self;
        f.debug_struct("EdgeRequest")
            .field("method", method)
            .field("path", path)
            .field("key", &crate::domain::keys::Redacted(key))
            .field("origin", origin)
            .field("referer", referer)
            .field("extra_scopes", extra_scopes)
            .field("organization_id", organization_id)
            .field("client_ip", client_ip)
            .field("client_principal", client_principal)
            .finish()
    }
}

/// The answer to a proxied request.
#[derive(Debug)]
pub enum Decision {
    /// No route of the policy allows the request (the key was not looked at).
    RouteNotAllowed(String),
    Verified(Outcome),
}

#[derive(Debug, Clone)]
pub struct Authorizer {
    verifier: Verifier,
    /// `None`: every route needs only a valid key.
    policy: Option<Arc<RoutePolicy>>,
}

impl Authorizer {
    pub fn new(verifier: Verifier, policy: Option<Arc<RoutePolicy>>) -> Self {
        Self { verifier, policy }
    }

    /// What "now" is for the limits' reset times in an answer.
    pub fn now(&self) -> crate::domain::model::Micros {
        self.verifier.now()
    }

    /// The route first: a request no route allows is refused before its key
    /// costs a lookup. Scopes from the policy and from the proxy are added
    /// together, so neither source can lower what the other requires.
    pub async fn authorize(&self, r: &EdgeRequest<'_>) -> Result<Decision, Error> {
        // The policy's own list, borrowed: copied only when the proxy adds to it.
        let mut scopes: Cow<'_, [String]> = Cow::Borrowed(&[]);
        if let Some(policy) = &self.policy {
            let Some(raw) = r.path else {
                return Ok(Decision::RouteNotAllowed(
                    "the proxy did not say which path was requested".into(),
                ));
            };
            let path = match NormalPath::parse(raw) {
                Ok(path) => path,
                Err(e) => return Ok(Decision::RouteNotAllowed(e.to_string())),
            };
            match policy.required_scopes(r.method, &path) {
                Some(required) => scopes = Cow::Borrowed(required),
                None => {
                    return Ok(Decision::RouteNotAllowed(
                        "no route of the policy allows this method and path".into(),
                    ));
                }
            }
        }
        for s in r.extra_scopes.split_ascii_whitespace() {
            parse_scope(s).map_err(|e| {
                Error::Invalid(Violations::one(
                    "context_extensions.keygate_required_scopes",
                    format!("{s:?}: {e}"),
                ))
            })?;
            if !scopes.iter().any(|have| have == s) {
                scopes.to_mut().push(s.to_owned());
            }
        }
        if !r.organization_id.is_empty() {
            OrganizationId::check(r.organization_id).map_err(|e| {
                Error::Invalid(Violations::one(
                    "context_extensions.keygate_organization_id",
                    e.to_string(),
                ))
            })?;
        }
        let v = Verification::new(r.key, &scopes, r.origin, r.referer, r.organization_id, None)
            .map_err(Error::Invalid)?
            .presented_from(r.client_ip, r.client_principal);
        Ok(Decision::Verified(self.verifier.verify(&v).await?))
    }
}
