//! `VerifyKey`'s rules: what a verification asks, and the contract's check order
//! once the key is known. Transports (gRPC `VerifyKey`, and later ext_authz and
//! HTTP forward auth) parse their own requests into a [`Verification`] and
//! translate the [`Code`] back; the order of checks lives only here.

use std::net::IpAddr;

use super::violations::{Violations, field};
use crate::{
    domain::hostnames::AllowedHostnames,
    domain::keys::{self, SecretHash},
    domain::model::{KeyRecord, Micros, OrganizationId},
    domain::networks::{AllowedNetworks, BoundPrincipals, parse_client_ip},
    domain::scopes::{ScopeSet, parse_scope},
};

/// A verification's outcome; the contract's `VerifyCode` without its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Valid,
    Missing,
    Malformed,
    NotFound,
    Revoked,
    Expired,
    OrganizationMismatch,
    HostnameBlocked,
    InsufficientScope,
    RateLimited,
    QuotaExceeded,
    NetworkBlocked,
    PrincipalMismatch,
}

impl Code {
    /// The contract's `VerifyCode` number, as the usage history stores it.
    pub fn number(self) -> i64 {
        match self {
            Self::Valid => 1,
            Self::Missing => 2,
            Self::Malformed => 3,
            Self::NotFound => 4,
            Self::Revoked => 5,
            Self::Expired => 6,
            Self::OrganizationMismatch => 7,
            Self::HostnameBlocked => 8,
            Self::InsufficientScope => 9,
            Self::RateLimited => 10,
            Self::QuotaExceeded => 11,
            Self::NetworkBlocked => 12,
            Self::PrincipalMismatch => 13,
        }
    }

    /// What the code means to the end client in HTTP: 200 valid, 401 for no
    /// usable key (2–6), 403 for a key that may not do this (7–9, 12–13), 429
    /// for a spent limit (10–11). Every entry point that
    /// answers in HTTP terms (Envoy, forward auth) takes it from here.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Valid => 200,
            Self::Missing | Self::Malformed | Self::NotFound | Self::Revoked | Self::Expired => 401,
            Self::OrganizationMismatch
            | Self::HostnameBlocked
            | Self::InsufficientScope
            | Self::NetworkBlocked
            | Self::PrincipalMismatch => 403,
            Self::RateLimited | Self::QuotaExceeded => 429,
        }
    }

    /// Position among the outcomes of a verification that found its key (the
    /// ones the usage history counts); `None` for the others.
    pub fn outcome_index(self) -> Option<usize> {
        match self {
            Self::Valid => Some(0),
            Self::Missing | Self::Malformed | Self::NotFound => None,
            other => usize::try_from(other.number() - 4).ok(),
        }
    }

    /// The code at an outcome position (the inverse of `outcome_index`).
    pub fn from_outcome_index(i: usize) -> Option<Self> {
        [
            Self::Valid,
            Self::Revoked,
            Self::Expired,
            Self::OrganizationMismatch,
            Self::HostnameBlocked,
            Self::InsufficientScope,
            Self::RateLimited,
            Self::QuotaExceeded,
            Self::NetworkBlocked,
            Self::PrincipalMismatch,
        ]
        .get(i)
        .copied()
    }
}

/// What a caller asks of a presented key, borrowed from its request: the verify
/// path copies nothing it does not have to. Its `Debug` shows no key.
#[derive(Clone, Copy)]
pub struct Verification<'a> {
    key: &'a str,
    /// Each well-formed: the fields are private, so [`Verification::new`],
    /// which checks them, is the only way to make one.
    required_scopes: &'a [String],
    origin: &'a str,
    referer: &'a str,
    /// Only a key of this organization passes, when set.
    organization_id: Option<&'a str>,
    /// The presenter's address, when the caller gave one (IPv4-mapped
    /// addresses already made IPv4).
    client_ip: Option<IpAddr>,
    /// The presenter's workload identity; empty when the caller gave none.
    client_principal: &'a str,
    /// Rate-limit calls and quota credits this call consumes; 0 asks whether a
    /// call of cost 1 would pass and consumes nothing.
    cost: u32,
}

impl std::fmt::Debug for Verification<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a field added here must be shown (or hidden) here.
        let Self {
            key,
            required_scopes,
            origin,
            referer,
            organization_id,
            client_ip,
            client_principal,
            cost,
        } = self;
        f.debug_struct("Verification")
            .field("key", &crate::domain::keys::Redacted(key))
            .field("required_scopes", required_scopes)
            .field("origin", origin)
            .field("referer", referer)
            .field("organization_id", organization_id)
            .field("client_ip", client_ip)
            .field("client_principal", client_principal)
            .field("cost", cost)
            .finish()
    }
}

/// The most one call may consume.
pub const MAX_COST: u32 = 1_000;

impl<'a> Verification<'a> {
    /// The caller's own mistakes come first: a malformed required scope,
    /// organization or client address is a bug to fix (INVALID_ARGUMENT), not
    /// a denial.
    pub fn new(
        key: &'a str,
        required_scopes: &'a [String],
        origin: &'a str,
        referer: &'a str,
        organization_id: &'a str,
        cost: Option<u32>,
    ) -> Result<Self, Violations> {
        let cost = cost.unwrap_or(1);
        if cost > MAX_COST {
            return Err(Violations::one(
                "cost",
                format!("must be at most {MAX_COST}, got {cost}"),
            ));
        }
        if let Some((i, e)) = required_scopes
            .iter()
            .enumerate()
            .find_map(|(i, s)| parse_scope(s).err().map(|e| (i, e)))
        {
            return Err(Violations::one(
                format!("required_scopes[{i}]"),
                e.to_string(),
            ));
        }
        let organization_id = if organization_id.is_empty() {
            None
        } else {
            field("organization_id", OrganizationId::check(organization_id))?;
            Some(organization_id)
        };
        Ok(Self {
            key,
            required_scopes,
            origin,
            referer,
            organization_id,
            client_ip: None,
            client_principal: "",
            cost,
        })
    }

    /// Who presented the key, as the caller saw it: its address (empty when
    /// the caller does not know it) and its authenticated workload identity
    /// (empty when it has none). A malformed address is the caller's bug.
    pub fn presented_by(
        mut self,
        client_ip: &str,
        client_principal: &'a str,
    ) -> Result<Self, Violations> {
        if !client_ip.is_empty() {
            self.client_ip = Some(field("client_ip", parse_client_ip(client_ip))?);
        }
        self.client_principal = client_principal;
        Ok(self)
    }

    /// The same, for a transport that has the address parsed already.
    pub fn presented_from(mut self, client_ip: Option<IpAddr>, client_principal: &'a str) -> Self {
        self.client_ip = client_ip;
        self.client_principal = client_principal;
        self
    }

    pub fn key(&self) -> &'a str {
        self.key
    }

    pub fn required_scopes(&self) -> &'a [String] {
        self.required_scopes
    }

    pub fn origin(&self) -> &'a str {
        self.origin
    }

    pub fn referer(&self) -> &'a str {
        self.referer
    }

    pub fn organization_id(&self) -> Option<&'a str> {
        self.organization_id
    }

    pub fn cost(&self) -> u32 {
        self.cost
    }

    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    pub fn client_principal(&self) -> &'a str {
        self.client_principal
    }

    /// The checks before any lookup: no key is MISSING; a wrong shape, length or
    /// checksum is MALFORMED and never reaches the cache or the store.
    pub fn presented(&self) -> Result<SecretHash, Code> {
        if self.key.is_empty() {
            return Err(Code::Missing);
        }
        keys::parse_token(self.key).map_err(|_| Code::Malformed)
    }
}

/// What the checks read of a key: the stored record has it, and so does the
/// hot path's cached form of it, which the domain does not know.
pub trait KeyFacts {
    fn revoke_time(&self) -> Option<Micros>;
    fn expire_time(&self) -> Option<Micros>;
    fn organization_id(&self) -> &str;
    fn allowed_hostnames(&self) -> &AllowedHostnames;
    fn allowed_networks(&self) -> &AllowedNetworks;
    fn bound_principals(&self) -> &BoundPrincipals;
    fn scopes(&self) -> &ScopeSet;
}

impl KeyFacts for KeyRecord {
    fn revoke_time(&self) -> Option<Micros> {
        self.revoke_time
    }
    fn expire_time(&self) -> Option<Micros> {
        self.expire_time
    }
    fn organization_id(&self) -> &str {
        self.organization_id.as_str()
    }
    fn allowed_hostnames(&self) -> &AllowedHostnames {
        &self.allowed_hostnames
    }
    fn allowed_networks(&self) -> &AllowedNetworks {
        &self.allowed_networks
    }
    fn bound_principals(&self) -> &BoundPrincipals {
        &self.bound_principals
    }
    fn scopes(&self) -> &ScopeSet {
        &self.scopes
    }
}

/// The checks of the contract's table that follow a successful lookup, in order
/// up to the usage limits (which need state: `services::verifier` applies them),
/// with the missing scopes (each once, in the order asked) when that is the answer.
/// Expiry is read against `now` on every call, never cached.
pub fn check(key: &impl KeyFacts, v: &Verification<'_>, now: Micros) -> (Code, Vec<String>) {
    if key.revoke_time().is_some() {
        return (Code::Revoked, Vec::new());
    }
    if key.expire_time().is_some_and(|t| t <= now) {
        return (Code::Expired, Vec::new());
    }
    if v.organization_id
        .is_some_and(|org| org != key.organization_id())
    {
        return (Code::OrganizationMismatch, Vec::new());
    }
    if !key.allowed_hostnames().allows(v.origin, v.referer) {
        return (Code::HostnameBlocked, Vec::new());
    }
    // Fail closed: a key restricted to networks or principals is refused when
    // the caller cannot say who presented it; otherwise leaving the attribute
    // out would be a way around the restriction.
    let networks = key.allowed_networks();
    if !networks.is_empty() && !v.client_ip.is_some_and(|ip| networks.allows(ip)) {
        return (Code::NetworkBlocked, Vec::new());
    }
    let principals = key.bound_principals();
    if !principals.is_empty()
        && (v.client_principal.is_empty() || !principals.allows(v.client_principal))
    {
        return (Code::PrincipalMismatch, Vec::new());
    }
    let mut missing: Vec<String> = Vec::new();
    for s in v.required_scopes {
        // Fails closed: a scope that does not parse is granted by no key
        // (`new` refuses one, so this only matters if that check is ever
        // skipped).
        let granted = parse_scope(s).is_ok_and(|s| key.scopes().grants(s));
        if !granted && !missing.contains(s) {
            missing.push(s.clone());
        }
    }
    if missing.is_empty() {
        (Code::Valid, missing)
    } else {
        (Code::InsufficientScope, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::hostnames::AllowedHostnames,
        domain::keys::{KeyPrefix, Secret},
        domain::model::{KeyId, KeyRecord},
    };

    const NOW: Micros = Micros(1_000_000_000_000);

    /// A change to a key record, applied before it is cached.
    type Fix = Box<dyn Fn(&mut KeyRecord)>;

    fn key(change: impl FnOnce(&mut KeyRecord)) -> KeyRecord {
        let secret = Secret::generate(&KeyPrefix::default());
        let mut record = KeyRecord::test_bot(KeyId::generate(), &secret, "k");
        change(&mut record);
        record
    }

    /// Each check is reached only once every earlier one passes: revoked, then
    /// expired, then the organization, the hostname, and the scopes.
    #[test]
    fn the_checks_run_in_the_contracts_order() {
        let scopes = vec!["links:write".to_owned()];
        let v = Verification::new("k", &scopes, "https://evil.test", "", "other", None)
            .and_then(|v| v.presented_by("192.0.2.7", "spiffe://acme.test/ns/api"))
            .expect("valid");
        let mut fixes: Vec<(Code, Fix)> = vec![
            (Code::Revoked, Box::new(|_| {})),
            (Code::Expired, Box::new(|r| r.revoke_time = None)),
            (
                Code::OrganizationMismatch,
                Box::new(|r| r.expire_time = None),
            ),
            (
                Code::HostnameBlocked,
                Box::new(|r| r.organization_id = OrganizationId::parse("other").expect("org")),
            ),
            (
                Code::NetworkBlocked,
                Box::new(|r| r.allowed_hostnames = AllowedHostnames::default()),
            ),
            (
                Code::PrincipalMismatch,
                Box::new(|r| r.allowed_networks = nets(&["192.0.2.0/24"])),
            ),
            (
                Code::InsufficientScope,
                Box::new(|r| r.bound_principals = principals(&["spiffe://acme.test/ns/*"])),
            ),
        ];
        let mut applied: Vec<Fix> = vec![Box::new(|r| {
            r.revoke_time = Some(Micros(1));
            r.expire_time = Some(Micros(2));
            r.allowed_hostnames = AllowedHostnames::parse(["example.com"]).expect("hostnames");
            r.allowed_networks = nets(&["10.0.0.0/8"]);
            r.bound_principals = principals(&["spiffe://acme.test/ns/other"]);
        })];
        for (expected, fix) in fixes.drain(..) {
            applied.push(fix);
            let k = key(|r| applied.iter().for_each(|f| f(r)));
            assert_eq!(check(&k, &v, NOW).0, expected);
        }
        let k = key(|r| {
            applied.iter().for_each(|f| f(r));
            r.scopes = crate::domain::scopes::ScopeSet::parse(["links:write"]).expect("scopes");
        });
        assert_eq!(check(&k, &v, NOW), (Code::Valid, Vec::new()));
    }

    fn nets(list: &[&str]) -> AllowedNetworks {
        AllowedNetworks::parse(list).expect("networks")
    }

    fn principals(list: &[&str]) -> BoundPrincipals {
        BoundPrincipals::parse(list).expect("principals")
    }

    /// A restricted key presented without the attribute it is restricted by is
    /// refused, whatever else the caller says; an unrestricted key ignores both.
    #[test]
    fn networks_and_principals_fail_closed() {
        let scopes = Vec::new();
        let bare = Verification::new("k", &scopes, "", "", "", None).expect("valid");
        let netted = key(|r| r.allowed_networks = nets(&["10.0.0.0/8", "2001:db8::/32"]));
        let bound = key(|r| r.bound_principals = principals(&["spiffe://acme.test/sa/api"]));
        assert_eq!(check(&netted, &bare, NOW).0, Code::NetworkBlocked);
        assert_eq!(check(&bound, &bare, NOW).0, Code::PrincipalMismatch);
        let only_principal = bare
            .presented_by("", "spiffe://acme.test/sa/api")
            .expect("ok");
        assert_eq!(check(&netted, &only_principal, NOW).0, Code::NetworkBlocked);
        assert_eq!(check(&bound, &only_principal, NOW).0, Code::Valid);
        for (ip, code) in [
            ("10.255.255.255", Code::Valid),
            ("::ffff:10.0.0.1", Code::Valid),
            ("11.0.0.0", Code::NetworkBlocked),
            ("2001:db8:ffff::1", Code::Valid),
            ("2001:db9::", Code::NetworkBlocked),
        ] {
            let v = bare.presented_by(ip, "").expect("address");
            assert_eq!(check(&netted, &v, NOW).0, code, "{ip}");
            assert_eq!(check(&key(|_| {}), &v, NOW).0, Code::Valid, "{ip}");
        }
        let other = bare
            .presented_by("10.0.0.1", "spiffe://acme.test/sa/other")
            .expect("ok");
        assert_eq!(check(&bound, &other, NOW).0, Code::PrincipalMismatch);
    }

    #[test]
    fn a_malformed_client_ip_is_the_callers_mistake() {
        let scopes = Vec::new();
        let v = Verification::new("k", &scopes, "", "", "", None).expect("valid");
        for bad in [
            "10.0.0.1:443",
            "[::1]",
            "10.0.0",
            "fe80::1%eth0",
            " 10.0.0.1",
            "localhost",
        ] {
            let e = v.presented_by(bad, "").expect_err(bad);
            assert_eq!(e.to_vec()[0].field, "client_ip", "{bad}");
        }
    }

    #[test]
    fn expiry_is_a_moment() {
        let scopes = Vec::new();
        let v = Verification::new("k", &scopes, "", "", "", None).expect("valid");
        let k = key(|r| r.expire_time = Some(NOW));
        assert_eq!(check(&k, &v, Micros(NOW.0 - 1)).0, Code::Valid);
        assert_eq!(check(&k, &v, NOW).0, Code::Expired);
    }

    #[test]
    fn missing_scopes_are_named_once_in_the_order_asked() {
        let scopes: Vec<String> = ["b:write", "links:read", "a:write", "b:write"]
            .map(String::from)
            .to_vec();
        let v = Verification::new("k", &scopes, "", "", "", None).expect("valid");
        assert_eq!(
            check(&key(|_| {}), &v, NOW),
            (
                Code::InsufficientScope,
                vec!["b:write".into(), "a:write".into()]
            )
        );
    }

    /// A required scope that does not parse is granted by no key: `new`
    /// refuses one, and if that were ever skipped the check still fails closed.
    #[test]
    fn a_scope_that_does_not_parse_is_never_granted() {
        let scopes = vec!["NOT A SCOPE".to_owned()];
        assert!(Verification::new("k", &scopes, "", "", "", None).is_err());
        let v = Verification {
            key: "k",
            required_scopes: &scopes,
            origin: "",
            referer: "",
            organization_id: None,
            client_ip: None,
            client_principal: "",
            cost: 1,
        };
        assert_eq!(
            check(&key(|_| {}), &v, NOW),
            (Code::InsufficientScope, scopes.clone())
        );
    }

    #[test]
    fn the_callers_mistakes_are_invalid_arguments_naming_the_field() {
        let ok = vec!["links:read".to_owned()];
        let bad_scope = vec!["links:read".to_owned(), "Bad Scope".to_owned()];
        for (scopes, org, cost, field) in [
            (&ok, "", Some(MAX_COST + 1), "cost"),
            (&bad_scope, "", None, "required_scopes[1]"),
            (&ok, "not an org!", None, "organization_id"),
        ] {
            let err = Verification::new("k", scopes, "", "", org, cost).expect_err(field);
            assert!(err.to_string().contains(field), "{err}");
        }
        let v = Verification::new("k", &ok, "", "", "", Some(0)).expect("cost 0 asks");
        assert_eq!(v.cost(), 0);
    }

    #[test]
    fn no_key_is_missing_and_a_wrong_shape_is_malformed() {
        let scopes = Vec::new();
        let presented = |k: &str| {
            Verification::new(k, &scopes, "", "", "", None)
                .expect("valid")
                .presented()
        };
        assert_eq!(presented(""), Err(Code::Missing));
        assert_eq!(presented("kg_live_short"), Err(Code::Malformed));
        let secret = Secret::generate(&KeyPrefix::default());
        let mut typo = secret.expose().to_owned();
        let last = typo.pop().expect("a character");
        typo.push(if last == 'a' { 'b' } else { 'a' });
        assert_eq!(presented(&typo), Err(Code::Malformed), "the checksum");
        assert_eq!(presented(secret.expose()), Ok(secret.hash()));
    }
}
