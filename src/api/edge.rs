//! What Envoy ext_authz and HTTP forward auth share: where a proxied request
//! carries its key, and the answer's HTTP shape (status, headers, JSON body).
//! Each transport reads its own request into an `EdgeRequest` and writes an
//! [`Answer`] in its own types; the mapping from outcome to status lives here
//! once, so the two can never disagree.

use std::{borrow::Cow, sync::Arc};

use crate::{
    api::verify_code,
    domain::model::Micros,
    domain::{Error, verify::Code},
    hotpath::cache::CachedKey,
    hotpath::limiter::LimitStatus,
    metrics::{Timer, VerifyMetrics},
    services::{Outcome, authorizer::Decision},
};

pub const AUTHORIZATION: &str = "authorization";
pub const API_KEY: &str = "x-api-key";
/// Every header keygate sets toward the upstream starts with this; a client's
/// own `x-keygate-*` headers are never let through.
pub const IDENTITY_PREFIX: &str = "x-keygate-";
pub const KEY_ID: &str = "x-keygate-key-id";
pub const ORGANIZATION_ID: &str = "x-keygate-organization-id";
pub const KEY_TYPE: &str = "x-keygate-key-type";
pub const USER_ID: &str = "x-keygate-user-id";
pub const CODE: &str = "x-keygate-code";

/// Whether a client's header `name` is in keygate's identity namespace in any
/// spelling: case ignored, and `_` taken as `-`, because CGI, WSGI and
/// Rack-style upstreams read `x_keygate_user_id` as the same variable as
/// `x-keygate-user-id`. Such a header is never let through.
pub fn in_identity_namespace(name: impl AsRef<[u8]>) -> bool {
    let (name, prefix) = (name.as_ref(), IDENTITY_PREFIX.as_bytes());
    name.len() > prefix.len()
        && name[..prefix.len()]
            .iter()
            .zip(prefix)
            .all(|(&b, &p)| b.to_ascii_lowercase() == p || (b == b'_' && p == b'-'))
}

/// Where a request's key was, so the transport can keep it from the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialHeader {
    /// `Authorization: Bearer <key>`.
    Authorization,
    /// `X-Api-Key: <key>`.
    ApiKey,
}

/// The presented key: `Authorization: Bearer <key>` (scheme in any case),
/// else `X-Api-Key`; empty (MISSING) with neither. An `Authorization` header of
/// another scheme (Basic, …) belongs to the upstream and is left alone.
pub fn credential<'a>(
    authorization: Option<&'a str>,
    api_key: Option<&'a str>,
) -> (&'a str, Option<CredentialHeader>) {
    if let Some(value) = authorization {
        let value = value.trim();
        let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            return (rest.trim(), Some(CredentialHeader::Authorization));
        }
    }
    match api_key {
        Some(key) => (key.trim(), Some(CredentialHeader::ApiKey)),
        None => ("", None),
    }
}

/// Whether an `Authorization` value carries a Bearer credential anywhere: a
/// proxy joins repeated headers with commas (`Basic x,Bearer <key>`), and
/// such a header must not reach the upstream even when the key was read
/// from elsewhere.
pub fn carries_bearer(authorization: &str) -> bool {
    authorization.split(',').any(|v| {
        v.trim_start()
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
    })
}

/// Identity headers keygate sets on an allowed request.
pub const IDENTITY: [&str; 4] = [KEY_ID, ORGANIZATION_ID, KEY_TYPE, USER_ID];

/// The answer to a proxied request, in HTTP terms.
#[derive(Debug)]
pub struct Answer {
    /// 200, 401, 403, 429 or 503.
    pub status: u16,
    /// `VERIFY_CODE_*`, `ROUTE_NOT_ALLOWED` or `UNAVAILABLE`.
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// For the client: `x-keygate-code`, `WWW-Authenticate`, `Retry-After`,
    /// `RateLimit-*`.
    pub headers: Vec<(&'static str, Cow<'static, str>)>,
    /// When allowed: the key whose identity the upstream is told
    /// ([`Answer::identity`]), read from the cached key's bytes on the way
    /// out rather than copied into strings first.
    pub key: Option<Arc<CachedKey>>,
}

impl Answer {
    pub fn allowed(&self) -> bool {
        self.status == 200
    }

    /// `{"code": "...", "message": "..."}`; the valid key's, the answer to
    /// nearly every request, written once.
    pub fn body(&self) -> Cow<'static, str> {
        if self.code == VALID_CODE && self.message == VALID_MESSAGE {
            return Cow::Borrowed(VALID_BODY);
        }
        Cow::Owned(self.json())
    }

    fn json(&self) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            code: &'a str,
            message: &'a str,
        }
        let body = Body {
            code: self.code,
            message: &self.message,
        };
        // A struct of two strings has no way to fail to serialize.
        serde_json::to_string(&body).unwrap_or_default()
    }

    /// For the upstream, when allowed: who is calling (key id, organization,
    /// key type, and the user of a user key).
    pub fn identity(&self) -> impl Iterator<Item = (&'static str, &[u8])> {
        self.key.iter().flat_map(|key| identity(key))
    }

    /// The key was not cached and the store cannot be reached.
    pub fn unavailable() -> Self {
        Self {
            status: 503,
            code: "UNAVAILABLE",
            message: Cow::Borrowed("the key store is unavailable; retry later"),
            headers: vec![(CODE, Cow::Borrowed("UNAVAILABLE"))],
            key: None,
        }
    }

    pub fn from_decision(decision: &Decision, now: Micros) -> Self {
        match decision {
            Decision::RouteNotAllowed(why) => Self {
                status: 403,
                code: "ROUTE_NOT_ALLOWED",
                message: Cow::Owned(why.clone()),
                headers: vec![(CODE, Cow::Borrowed("ROUTE_NOT_ALLOWED"))],
                key: None,
            },
            Decision::Verified(outcome) => Self::from_outcome(outcome, now),
        }
    }

    fn from_outcome(outcome: &Outcome, now: Micros) -> Self {
        let code = verify_code(outcome.code).as_str_name();
        let status = outcome.code.http_status();
        let mut headers = vec![(CODE, Cow::Borrowed(code))];
        if status == 401 {
            headers.push((
                "www-authenticate",
                Cow::Borrowed("Bearer realm=\"keygate\""),
            ));
        }
        if let Some(after) = outcome.retry_after() {
            headers.push((
                "retry-after",
                Cow::Owned(ceil_seconds(after.0).max(1).to_string()),
            ));
        }
        // The rate limit says how much is left when the key has one (it
        // refills within its window); else the quota.
        if let Some(limit) = outcome.rate_limit().or(outcome.quota()) {
            rate_limit_headers(limit, now, &mut headers);
        }
        Self {
            status,
            code,
            message: message(outcome),
            headers,
            key: outcome.key.clone().filter(|_| status == 200),
        }
    }
}

pub const VALID_CODE: &str = "VERIFY_CODE_VALID";
const VALID_MESSAGE: &str = "the key is valid";
const VALID_BODY: &str = r#"{"code":"VERIFY_CODE_VALID","message":"the key is valid"}"#;

/// Counts a proxied request as `VerifyKey` calls are counted, under its entry point.
pub fn observe(metrics: &VerifyMetrics, decision: &Result<Decision, Error>, timer: Timer) {
    match decision {
        Ok(Decision::Verified(o)) => metrics.observe(Some(verify_code(o.code)), timer),
        Ok(Decision::RouteNotAllowed(_)) => metrics.observe_route_not_allowed(timer),
        Err(_) => metrics.observe(None, timer),
    }
}

fn rate_limit_headers(
    limit: &LimitStatus,
    now: Micros,
    out: &mut Vec<(&'static str, Cow<'static, str>)>,
) {
    out.push(("ratelimit-limit", Cow::Owned(limit.limit.to_string())));
    out.push((
        "ratelimit-remaining",
        Cow::Owned(limit.remaining.to_string()),
    ));
    if let Some(reset) = limit.reset {
        out.push((
            "ratelimit-reset",
            Cow::Owned(ceil_seconds(reset.0 - now.0).to_string()),
        ));
    }
}

/// Whole seconds, rounded up: a client told 0 too early retries too early.
fn ceil_seconds(micros: i64) -> i64 {
    (micros.max(0) + 999_999) / 1_000_000
}

/// The identity headers of an allowed request, read from the cached key's
/// bytes in one pass: key id, organization, key type, and the user of a
/// user key. Bytes, not text: both transports copy them into headers.
pub fn identity(key: &CachedKey) -> impl Iterator<Item = (&'static str, &[u8])> {
    let fields = key.identity_fields();
    let user = (!key.is_bot()).then_some((USER_ID, fields.user_id));
    [
        (KEY_ID, fields.id),
        (ORGANIZATION_ID, fields.organization_id),
        (KEY_TYPE, if key.is_bot() { &b"bot"[..] } else { b"user" }),
    ]
    .into_iter()
    .chain(user)
}

/// How many keys' [`IdentityParts`] each transport keeps: the keys in use
/// at one time behind one proxy, at about 1 KiB each.
pub const IDENTITY_PARTS: usize = 4096;

/// The part of an allowed answer that depends only on who the key is, in a
/// transport's own form (encoded headers for Envoy, a header map for forward
/// auth), written once per key and copied after. A key's id, organization,
/// type and user are fixed when it is made (no update changes them, and ids
/// are never reused), so what is kept by key id never goes stale. Bounded;
/// a key that drops out is written again when it next comes.
#[derive(Debug, Clone)]
pub struct IdentityParts<T>(Arc<quick_cache::sync::Cache<Box<[u8]>, T>>);

impl<T: Clone> IdentityParts<T> {
    pub fn new(capacity: usize) -> Self {
        Self(Arc::new(quick_cache::sync::Cache::new(capacity)))
    }

    /// `key`'s parts, written by `write` the first time.
    pub fn get(&self, key: &CachedKey, write: impl FnOnce(&CachedKey) -> T) -> T {
        let id = key.identity_fields().id;
        if let Some(parts) = self.0.get(id) {
            return parts;
        }
        let parts = write(key);
        self.0.insert(id.into(), parts.clone());
        parts
    }
}

/// The denial's reason; fixed text except where the outcome names something.
fn message(outcome: &Outcome) -> Cow<'static, str> {
    Cow::Borrowed(match outcome.code {
        Code::Valid => VALID_MESSAGE,
        Code::Missing => "no key: send Authorization: Bearer <key> or X-Api-Key: <key>",
        Code::Malformed => "the key is malformed",
        Code::NotFound => "the key does not exist",
        Code::Revoked => "the key is revoked",
        Code::Expired => "the key has expired",
        Code::OrganizationMismatch => "the key belongs to another organization",
        Code::HostnameBlocked => "the key may not be used from this origin",
        Code::InsufficientScope => {
            return Cow::Owned(format!(
                "the key lacks the scopes {}",
                outcome.missing_scopes.join(" ")
            ));
        }
        Code::RateLimited => match outcome.rate_limit() {
            Some(l) if !l.name.is_empty() => {
                return Cow::Owned(format!("the key's rate limit {:?} is exceeded", l.name));
            }
            _ => "the key's rate limit is exceeded",
        },
        Code::QuotaExceeded => "the key's quota is used up",
        Code::NetworkBlocked => "the key may not be used from this network",
        Code::PrincipalMismatch => "the key may not be used by this workload",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_are_recognised_in_every_spelling() {
        for name in [
            "x-keygate-user-id",
            "X-Keygate-User-Id",
            "x_keygate_user_id",
            "X_KEYGATE_USER_ID",
            "x-keygate_user-id",
            "x_keygate-anything",
        ] {
            assert!(in_identity_namespace(name), "{name}");
        }
        for name in [
            "x-keygate-",
            "x-keygat-user-id",
            "x.keygate.user",
            "x-api-key",
            "keygate",
        ] {
            assert!(!in_identity_namespace(name), "{name}");
        }
    }

    #[test]
    fn bearer_in_any_case_then_x_api_key() {
        use CredentialHeader::*;
        assert_eq!(
            credential(Some("Bearer k1"), Some("k2")),
            ("k1", Some(Authorization))
        );
        assert_eq!(
            credential(Some("bEaReR   k1 "), None),
            ("k1", Some(Authorization))
        );
        assert_eq!(
            credential(Some("Basic dXNlcg=="), Some("k2")),
            ("k2", Some(ApiKey))
        );
        assert_eq!(credential(Some("Basic dXNlcg=="), None), ("", None));
        assert_eq!(
            credential(Some("Bearer"), Some("k2")),
            ("", Some(Authorization))
        );
        assert_eq!(credential(Some("Bearerk1"), None), ("", None));
        assert_eq!(credential(None, Some(" k2 ")), ("k2", Some(ApiKey)));
        assert_eq!(credential(None, None), ("", None));
    }

    /// The valid key's body, written by hand, is what serializing says.
    #[test]
    fn the_valid_body_is_the_serialized_one() {
        let valid = Answer {
            status: 200,
            code: verify_code(Code::Valid).as_str_name(),
            message: message(&Outcome {
                code: Code::Valid,
                key: None,
                identity: None,
                missing_scopes: Vec::new(),
                limits: None,
            }),
            headers: Vec::new(),
            key: None,
        };
        assert!(matches!(valid.body(), Cow::Borrowed(_)));
        assert_eq!(valid.body(), valid.json());
        let denied = Answer {
            code: "VERIFY_CODE_REVOKED",
            ..valid
        };
        assert!(matches!(denied.body(), Cow::Owned(_)));
    }

    /// Each key's parts are written once and found by its id: another key
    /// never gets them.
    #[test]
    fn identity_parts_are_written_once_per_key() {
        use crate::domain::{
            keys::{KeyPrefix, Secret},
            model::{KeyId, KeyRecord},
        };
        let key = |name: &str| {
            let secret = Secret::generate(&KeyPrefix::default());
            CachedKey::new(KeyRecord::test_bot(KeyId::generate(), &secret, name))
        };
        let (a, b) = (key("a"), key("b"));
        let parts = IdentityParts::new(16);
        let writes = std::cell::Cell::new(0);
        let write = |key: &CachedKey| {
            writes.set(writes.get() + 1);
            key.id().to_owned()
        };
        assert_eq!(parts.get(&a, write), a.id());
        assert_eq!(parts.get(&b, write), b.id());
        assert_eq!(parts.get(&a, write), a.id());
        assert_eq!(parts.get(&b, write), b.id());
        assert_eq!(writes.get(), 2);
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_seconds(1), 1);
        assert_eq!(ceil_seconds(1_000_000), 1);
        assert_eq!(ceil_seconds(1_000_001), 2);
        assert_eq!(ceil_seconds(-5), 0);
    }
}
