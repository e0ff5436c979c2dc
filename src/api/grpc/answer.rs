//! `VerifyKeyResponse` as the server writes it: encoded straight from the
//! verifier's outcome, with the key's part copied from bytes the cache made
//! once per key.
//!
//! The generated `VerifyKeyResponse` owns its strings, so answering with it
//! meant cloning the key's id, organization, name and scopes on every call,
//! then walking them twice more to size and encode them; with the struct's
//! 400-odd bytes moved through tonic's layers, that was about 4 % of a cached
//! `VerifyKey`'s CPU (measured: the same calls answering only `valid` and `code`
//! ran that much faster). Clients keep the generated type: the bytes are the
//! same, which `tests` below checks field by field against it.

use prost::{Message, bytes::BufMut, encoding};
use std::sync::Arc;

use crate::{
    api::written::{field_len, put_field_head, write_only},
    domain::model::Micros,
    hotpath::cache::CachedKey,
    hotpath::identities::CachedIdentity,
    hotpath::limiter::LimitStatus,
    proto::{self, VerifyCode},
    services::Outcome,
};

use crate::api::verify_code;

/// One `VerifyKeyResponse`, ready to encode. Encode-only: the server never
/// reads one, so decoding skips every field.
///
/// 32 bytes for a valid key without limits, since tonic moves the answer
/// through several futures: the fields most answers leave empty are boxed,
/// and allocated only when one is set.
#[derive(Debug, Default)]
pub struct Answer {
    code: i32,
    key: Option<Arc<CachedKey>>,
    /// Encoded inside the key's message, after the key's own fields.
    identity: Option<Arc<CachedIdentity>>,
    rest: Option<Box<Rest>>,
}

#[derive(Debug, Default)]
struct Rest {
    missing_scopes: Vec<String>,
    rate_limit: Option<proto::LimitStatus>,
    quota: Option<proto::LimitStatus>,
    retry_after: Option<prost_types::Duration>,
}

// Field numbers of `keygate.v1.VerifyKeyResponse` (proto/keygate/v1/key_verify.proto).
const VALID: u32 = 1;
const CODE: u32 = 2;
const KEY: u32 = 3;
const MISSING_SCOPES: u32 = 4;
const RATE_LIMIT: u32 = 5;
const QUOTA: u32 = 6;
const RETRY_AFTER: u32 = 7;

impl From<Outcome> for Answer {
    fn from(o: Outcome) -> Self {
        let limits = o.limits.map(|l| *l).unwrap_or_default();
        let empty = o.missing_scopes.is_empty()
            && limits.rate_limit.is_none()
            && limits.quota.is_none()
            && limits.retry_after.is_none();
        Self {
            code: verify_code(o.code).into(),
            key: o.key,
            identity: o.identity,
            rest: (!empty).then(|| {
                Box::new(Rest {
                    missing_scopes: o.missing_scopes,
                    rate_limit: limits.rate_limit.map(limit_status),
                    quota: limits.quota.map(limit_status),
                    retry_after: limits.retry_after.map(Micros::to_duration),
                })
            }),
        }
    }
}

fn limit_status(s: LimitStatus) -> proto::LimitStatus {
    proto::LimitStatus {
        name: s.name,
        limit: s.limit,
        remaining: s.remaining,
        reset_time: s.reset.map(Micros::to_timestamp),
    }
}

impl Answer {
    fn valid(&self) -> bool {
        self.code == VerifyCode::Valid as i32
    }

    /// The `VerifiedKey` message's length: the key's fields and its identity.
    fn key_len(&self, key: &CachedKey) -> usize {
        key.encoded().len()
            + self
                .identity
                .as_ref()
                .map_or(0, |i| i.encoded_field().len())
    }
}

impl Rest {
    fn encoded_len(&self) -> usize {
        encoding::string::encoded_len_repeated(MISSING_SCOPES, &self.missing_scopes)
            + self
                .rate_limit
                .as_ref()
                .map_or(0, |s| encoding::message::encoded_len(RATE_LIMIT, s))
            + self
                .quota
                .as_ref()
                .map_or(0, |s| encoding::message::encoded_len(QUOTA, s))
            + self
                .retry_after
                .as_ref()
                .map_or(0, |d| encoding::message::encoded_len(RETRY_AFTER, d))
    }
}

/// proto3 leaves default values out; the generated code does the same, so
/// the bytes match it exactly.
impl Message for Answer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.valid() {
            encoding::bool::encode(VALID, &true, buf);
        }
        if self.code != 0 {
            encoding::int32::encode(CODE, &self.code, buf);
        }
        if let Some(key) = &self.key {
            put_field_head(KEY, self.key_len(key), buf);
            buf.put_slice(key.encoded());
            if let Some(identity) = &self.identity {
                buf.put_slice(identity.encoded_field());
            }
        }
        let Some(rest) = &self.rest else {
            return;
        };
        encoding::string::encode_repeated(MISSING_SCOPES, &rest.missing_scopes, buf);
        if let Some(s) = &rest.rate_limit {
            encoding::message::encode(RATE_LIMIT, s, buf);
        }
        if let Some(s) = &rest.quota {
            encoding::message::encode(QUOTA, s, buf);
        }
        if let Some(d) = &rest.retry_after {
            encoding::message::encode(RETRY_AFTER, d, buf);
        }
    }

    write_only!();

    fn encoded_len(&self) -> usize {
        let key = self
            .key
            .as_ref()
            .map_or(0, |k| field_len(KEY, self.key_len(k)));
        (if self.valid() {
            encoding::bool::encoded_len(VALID, &true)
        } else {
            0
        }) + (if self.code != 0 {
            encoding::int32::encoded_len(CODE, &self.code)
        } else {
            0
        }) + key
            + self.rest.as_deref().map_or(0, Rest::encoded_len)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{
        domain::keys::{KeyPrefix, Secret},
        domain::model::{KeyId, KeyName, KeyRecord, Owner, UserId},
        domain::scopes::ScopeSet,
        domain::verify::Code,
        services::Limits,
    };

    /// The answer the generated type gives for the same outcome: what clients
    /// decode, and what the server sent before `Answer`.
    fn generated(o: &Outcome) -> proto::VerifyKeyResponse {
        let code = verify_code(o.code);
        proto::VerifyKeyResponse {
            valid: code == VerifyCode::Valid,
            code: code.into(),
            key: o.key.as_deref().map(|k| proto::VerifiedKey {
                identity: o.identity.as_deref().map(shown),
                ..k.verified()
            }),
            missing_scopes: o.missing_scopes.clone(),
            rate_limit: o.rate_limit().cloned().map(limit_status),
            quota: o.quota().cloned().map(limit_status),
            retry_after: o.retry_after().map(Micros::to_duration),
        }
    }

    /// The identity as clients decode it: its field read as a `VerifiedKey`
    /// that has nothing else.
    fn shown(i: &CachedIdentity) -> proto::Identity {
        proto::VerifiedKey::decode(i.encoded_field())
            .expect("a VerifiedKey field")
            .identity
            .expect("the identity field")
    }

    fn identity(external: &str, plan: &str) -> Arc<CachedIdentity> {
        use crate::domain::identities::{ExternalId, IdentityId, IdentityRecord};
        let metadata = [("plan".to_owned(), plan.to_owned())].into();
        Arc::new(CachedIdentity::new(&IdentityRecord {
            id: IdentityId::generate(),
            organization_id: crate::domain::model::OrganizationId::parse("acme").expect("org"),
            external_id: ExternalId::parse(external).expect("external id"),
            metadata: crate::domain::metadata::Metadata::parse("metadata", &metadata)
                .expect("metadata"),
            rate_limits: Default::default(),
            quota: None,
            quota_used: 0,
            quota_period_start: Micros(0),
            create_time: Micros(0),
            update_time: Micros(0),
        }))
    }

    fn key(name: &str, scopes: &[String], user: bool, expire: Option<i64>) -> Arc<CachedKey> {
        let secret = Secret::generate(&KeyPrefix::default());
        let mut record = KeyRecord::test_bot(KeyId::generate(), &secret, "key");
        record.name = KeyName::parse(name).expect("name");
        record.scopes = ScopeSet::parse(scopes).expect("scopes");
        if user {
            record.owner = Owner::User(UserId::parse("usr_1").expect("user"));
        }
        record.expire_time = expire.map(Micros);
        // A rotated key names its replacement: one more string field.
        record.rotated_to_id = expire.map(|_| KeyId::generate());
        Arc::new(CachedKey::new(record))
    }

    const CODES: [Code; 13] = [
        Code::Valid,
        Code::Missing,
        Code::Malformed,
        Code::NotFound,
        Code::Revoked,
        Code::Expired,
        Code::OrganizationMismatch,
        Code::HostnameBlocked,
        Code::InsufficientScope,
        Code::RateLimited,
        Code::QuotaExceeded,
        Code::NetworkBlocked,
        Code::PrincipalMismatch,
    ];

    fn status(name: String, limit: u64, remaining: u64, reset: Option<i64>) -> LimitStatus {
        LimitStatus {
            name,
            limit,
            remaining,
            reset: reset.map(Micros),
        }
    }

    proptest! {
        #[test]
        fn encodes_the_bytes_of_the_generated_type(
            code in 0..CODES.len(),
            with_key in any::<bool>(),
            name in "[a-z][a-z ]{0,19}",
            scopes in proptest::collection::vec("[a-z]{1,8}:[a-z]{1,8}", 1..4),
            user in any::<bool>(),
            expire in proptest::option::of(0i64..4_000_000_000_000_000),
            missing in proptest::collection::vec("[a-z]{1,8}:[a-z]{1,8}", 0..3),
            rate in proptest::option::of(("[a-z0-9]{0,8}", any::<u64>(), any::<u64>(), proptest::option::of(0i64..4_000_000_000_000_000))),
            quota in proptest::option::of(("[a-z]{0,8}", any::<u64>(), any::<u64>(), proptest::option::of(0i64..4_000_000_000_000_000))),
            retry in proptest::option::of(0i64..4_000_000_000_000),
            limits_reached in any::<bool>(),
            owner in proptest::option::of(("[a-z0-9_]{1,12}", "[a-z]{0,12}")),
        ) {
            let limits = Limits {
                rate_limit: rate.map(|(n, l, r, t)| status(n, l, r, t)),
                quota: quota.map(|(n, l, r, t)| status(n, l, r, t)),
                retry_after: retry.map(Micros),
            };
            // Limits that were reached but report nothing encode as none at all.
            let reached = limits_reached
                || limits.rate_limit.is_some()
                || limits.quota.is_some()
                || limits.retry_after.is_some();
            let outcome = Outcome {
                code: CODES[code],
                key: with_key.then(|| key(&name, &scopes, user, expire)),
                identity: owner.map(|(external, plan)| identity(&external, &plan)),
                missing_scopes: missing,
                limits: reached.then(|| Box::new(limits)),
            };
            let expected = generated(&outcome).encode_to_vec();
            let answer = Answer::from(outcome);
            prop_assert_eq!(answer.encoded_len(), expected.len());
            prop_assert_eq!(answer.encode_to_vec(), expected);
        }
    }
}
