//! Every request message of keygate's gRPC API decoded with prost from arbitrary bytes,
//! then parsed by the very command parsers the service runs (`domain::commands`,
//! `domain::verify`): no panic anywhere, decoded messages re-encode to themselves, a
//! command parses exactly when each of its fields does on its own, and the fields'
//! accepted values round-trip.

#![no_main]

use keygate::{
    domain::{
        commands::{Context, CreateKey, KeyRef, ListKeyEvents, ListKeys, RemoveMember, UpdateKey},
        verify::Verification,
    },
    domain::hostnames::AllowedHostnames,
    domain::keys::parse_token,
    domain::limits::RateLimits,
    domain::model::{KeyId, KeyName, Micros, OrganizationId, UserId},
    proto::{
        CreateKeyRequest, GetKeyRequest, KeyType, ListKeyEventsRequest, ListKeysRequest,
        RemoveMemberRequest, RevokeKeyRequest, UpdateKeyRequest, VerifyKeyRequest,
    },
    domain::scopes::{ScopeSet, parse_scope},};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(m: &M) {
    let bytes = m.encode_to_vec();
    assert_eq!(bytes.len(), m.encoded_len());
    let again = M::decode(bytes.as_slice()).expect("re-encoded message decodes");
    assert_eq!(&again, m);
}

fn org(s: &str) {
    if let Ok(id) = OrganizationId::parse(s) {
        assert_eq!(id.as_str(), s);
        assert!((1..=64).contains(&s.len()));
    }
}

fn user(s: &str) {
    if let Ok(id) = UserId::parse(s) {
        assert_eq!(id.as_str(), s);
        assert!(s.bytes().all(|b| b.is_ascii_graphic()));
    }
}

fn key_id(s: &str) {
    if let Ok(id) = KeyId::parse(s) {
        assert_eq!(id.as_str(), s);
        assert_eq!(s.len(), 36);
    }
}

fn name(s: &str) {
    if let Ok(n) = KeyName::parse(s) {
        assert_eq!(n.as_str(), s);
        assert!(s.chars().count() <= KeyName::MAX_CHARS);
    }
}

fn key_type(n: i32) {
    let _ = KeyType::try_from(n);
}

fn scopes(list: &[String]) {
    for s in list {
        let _ = parse_scope(s);
    }
    if let Ok(set) = ScopeSet::parse(list) {
        assert!(ScopeSet::parse(set.to_vec()).as_ref() == Ok(&set));
    }
}

fn hostnames(list: &[String]) {
    if let Ok(l) = AllowedHostnames::parse(list) {
        assert!(AllowedHostnames::parse(l.to_vec()).as_ref() == Ok(&l));
        let _ = l.allows("https://example.com", "");
    }
}

fn timestamp(ts: Option<&prost_types::Timestamp>) {
    let Some(ts) = ts else { return };
    if let Ok(m) = Micros::from_timestamp(ts) {
        let back = m.to_timestamp();
        assert_eq!(back.seconds, ts.seconds, "{ts:?} -> {m:?}");
        assert_eq!(back.nanos, ts.nanos - ts.nanos % 1000, "{ts:?} -> {m:?}");
        assert!(Micros::from_timestamp(&back) == Ok(m));
    }
}

fuzz_target!(|data: &[u8]| {
    let cx = Context {
        catalog: None,
        now: Micros(0),
    };
    if let Ok(m) = CreateKeyRequest::decode(data) {
        round_trip(&m);
        if let Ok(cmd) = CreateKey::parse(&m, cx) {
            assert_eq!(cmd.organization_id.as_str(), m.organization_id);
            assert_eq!(cmd.name.as_str(), m.name);
            assert!(OrganizationId::parse(&m.organization_id).is_ok());
            assert!(ScopeSet::parse(&m.scopes).is_ok());
            assert!(AllowedHostnames::parse(&m.allowed_hostnames).is_ok());
            // Limits survive their stored form, whatever came in.
            assert_eq!(RateLimits::decode(&cmd.rate_limits.encode()).as_ref(), Ok(&cmd.rate_limits));
            assert!(cmd.rate_limits.len() <= 8);
            assert_eq!(cmd.quota.is_some(), m.quota.is_some());
        }
        org(&m.organization_id);
        key_type(m.r#type);
        name(&m.name);
        scopes(&m.scopes);
        hostnames(&m.allowed_hostnames);
        timestamp(m.expire_time.as_ref());
    }
    if let Ok(m) = GetKeyRequest::decode(data) {
        round_trip(&m);
        let both = OrganizationId::parse(&m.organization_id).is_ok() && KeyId::parse(&m.id).is_ok();
        assert_eq!(KeyRef::parse(&m.organization_id, &m.id).is_ok(), both);
        org(&m.organization_id);
        key_id(&m.id);
    }
    if let Ok(m) = ListKeysRequest::decode(data) {
        round_trip(&m);
        if let Ok(cmd) = ListKeys::parse(&m) {
            assert!((1..=1000).contains(&cmd.page_size));
            assert_eq!(cmd.organization_id.as_str(), m.organization_id);
        }
        org(&m.organization_id);
        key_type(m.r#type);
        user(&m.user_id);
    }
    if let Ok(m) = UpdateKeyRequest::decode(data) {
        round_trip(&m);
        if let Ok(cmd) = UpdateKey::parse(&m, cx) {
            // Only the fields the mask names change.
            let paths = m.update_mask.as_ref().map(|f| f.paths.clone()).unwrap_or_default();
            assert!(!paths.is_empty());
            assert_eq!(cmd.patch.name.is_some(), paths.iter().any(|p| p == "name"));
            assert_eq!(cmd.patch.scopes.is_some(), paths.iter().any(|p| p == "scopes"));
            assert_eq!(cmd.patch.rate_limits.is_some(), paths.iter().any(|p| p == "rate_limits"));
            assert_eq!(cmd.patch.quota.is_some(), paths.iter().any(|p| p == "quota"));
        }
        org(&m.organization_id);
        key_id(&m.id);
        name(&m.name);
        scopes(&m.scopes);
        hostnames(&m.allowed_hostnames);
        timestamp(m.expire_time.as_ref());
    }
    if let Ok(m) = RevokeKeyRequest::decode(data) {
        round_trip(&m);
        org(&m.organization_id);
        key_id(&m.id);
    }
    if let Ok(m) = RemoveMemberRequest::decode(data) {
        round_trip(&m);
        let both = OrganizationId::parse(&m.organization_id).is_ok() && UserId::parse(&m.user_id).is_ok();
        assert_eq!(RemoveMember::parse(&m).is_ok(), both);
        org(&m.organization_id);
        user(&m.user_id);
    }
    if let Ok(m) = ListKeyEventsRequest::decode(data) {
        round_trip(&m);
        if let Ok(cmd) = ListKeyEvents::parse(&m) {
            assert_eq!(cmd.key_id.is_some(), !m.key_id.is_empty());
        }
        org(&m.organization_id);
        if !m.key_id.is_empty() {
            key_id(&m.key_id);
        }
    }
    if let Ok(m) = VerifyKeyRequest::decode(data) {
        round_trip(&m);
        let scopes_ok = m.required_scopes.iter().all(|s| parse_scope(s).is_ok());
        let org_ok = m.organization_id.is_empty() || OrganizationId::parse(&m.organization_id).is_ok();
        let cost_ok = m.cost.is_none_or(|c| c <= 1_000);
        let parsed = Verification::new(&m.key, &m.required_scopes, &m.origin, &m.referer, &m.organization_id, m.cost);
        assert_eq!(parsed.is_ok(), scopes_ok && org_ok && cost_ok);
        if let Ok(v) = parsed {
            assert_eq!(v.presented().is_ok(), parse_token(&m.key).is_ok());
        }
        if let Ok(hash) = parse_token(&m.key) {
            assert!(parse_token(&m.key) == Ok(hash));
        }
        for s in &m.required_scopes {
            let _ = parse_scope(s);
        }
        if !m.organization_id.is_empty() {
            org(&m.organization_id);
        }
        for list in [
            AllowedHostnames::default(),
            AllowedHostnames::parse(["example.com", "*.example.org"]).expect("valid list"),
        ] {
            let allowed = list.allows(&m.origin, &m.referer);
            assert!(allowed || !list.is_empty());
        }
    }
});
