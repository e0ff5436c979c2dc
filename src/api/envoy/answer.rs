//! `CheckResponse` as the server writes it. An allowed request, the answer
//! to nearly every check, is written by hand around the key's identity
//! headers, encoded once per key from the cached key's bytes; a denial,
//! whose text varies and which is rare, is the generated message.
//!
//! Building the generated `OkHttpResponse` took two `String`s per identity
//! header, a `String` per header to remove and three nested messages on every
//! call, then walked them twice to size and encode them. Envoy reads the same
//! bytes either way, which `tests` below checks by decoding these with the
//! generated types.

use std::borrow::Cow;

use envoy_types::ext_authz::v3::pb::CheckResponse;
use prost::{
    Message,
    bytes::{BufMut, Bytes},
    encoding::{self, WireType},
};

use crate::{
    api::edge,
    api::written::{field_len, put_field_head, write_only},
    hotpath::cache::CachedKey,
};

/// One `CheckResponse`, ready to encode. Encode-only: the server never reads
/// one, so decoding skips every field.
#[derive(Debug)]
pub enum CheckAnswer {
    Allowed(Allowed),
    /// A denial, as the generated message (boxed: it is five times the size
    /// of an allowed answer, which tonic moves through several futures).
    Other(Box<CheckResponse>),
}

impl Default for CheckAnswer {
    fn default() -> Self {
        Self::Other(Box::default())
    }
}

/// `CheckResponse{status: OK, ok_response: {headers, headers_to_remove,
/// response_headers_to_add}}`. Made only by [`Allowed::new`], which works
/// out its length once.
#[derive(Debug)]
pub struct Allowed {
    /// Whose identity the upstream is told: `headers` entries, encoded
    /// once per key ([`identity_headers`]).
    identity: Bytes,
    /// The client's own `x-keygate-*` headers that keygate does not set,
    /// in lower case: removed, so the upstream never sees a forged one.
    forged: Vec<String>,
    /// `Authorization` carried the key: removed.
    remove_authorization: bool,
    /// `X-Api-Key` came: removed, whatever it held.
    remove_api_key: bool,
    /// For the client: the `RateLimit-*` headers of a key with limits.
    response_headers: Vec<(&'static str, Cow<'static, str>)>,
    /// The encoded `OkHttpResponse`'s length, which tonic asks for before
    /// encoding and the encoding writes again: worked out once.
    ok_len: usize,
}

impl Allowed {
    pub fn new(
        identity: Bytes,
        forged: Vec<String>,
        remove_authorization: bool,
        remove_api_key: bool,
        response_headers: Vec<(&'static str, Cow<'static, str>)>,
    ) -> Self {
        let mut allowed = Self {
            identity,
            forged,
            remove_authorization,
            remove_api_key,
            response_headers,
            ok_len: 0,
        };
        allowed.ok_len = allowed.ok_response_len();
        allowed
    }

    /// `headers_to_remove`.
    pub fn removed(&self) -> impl Iterator<Item = &str> {
        let authorization = self.remove_authorization.then_some(edge::AUTHORIZATION);
        let api_key = self.remove_api_key.then_some(edge::API_KEY);
        let forged = self.forged.iter().map(String::as_str);
        forged.chain(authorization).chain(api_key)
    }

    fn ok_response_len(&self) -> usize {
        let remove: usize = self.removed().map(|n| field_len(REMOVE, n.len())).sum();
        let response: usize = self
            .response_headers
            .iter()
            .map(|(n, v)| field_len(RESPONSE_HEADERS, overwrite_len(n, v.as_bytes())))
            .sum();
        self.identity.len() + remove + response
    }
}

// Field numbers of `envoy.service.auth.v3.CheckResponse` and
// `OkHttpResponse`, and of `envoy.config.core.v3.HeaderValueOption` and
// `HeaderValue` (Envoy's external_auth.proto and base.proto).
const STATUS: u32 = 1;
const OK_RESPONSE: u32 = 3;
const HEADERS: u32 = 2;
const REMOVE: u32 = 5;
const RESPONSE_HEADERS: u32 = 6;
const OPTION_HEADER: u32 = 1;
const OPTION_APPEND_ACTION: u32 = 3;
const HEADER_KEY: u32 = 1;
const HEADER_VALUE: u32 = 2;
/// `HeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD`: a value the client sent
/// under the same name is replaced, not kept beside keygate's.
const OVERWRITE_IF_EXISTS_OR_ADD: u64 = 2;

fn header_len(name: &str, value: &[u8]) -> usize {
    field_len(HEADER_KEY, name.len()) + field_len(HEADER_VALUE, value.len())
}

/// `HeaderValueOption{header: {key, value}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}`.
fn overwrite_len(name: &str, value: &[u8]) -> usize {
    field_len(OPTION_HEADER, header_len(name, value))
        + encoding::key_len(OPTION_APPEND_ACTION)
        + encoding::encoded_len_varint(OVERWRITE_IF_EXISTS_OR_ADD)
}

fn put_bytes(tag: u32, s: &[u8], buf: &mut impl BufMut) {
    put_field_head(tag, s.len(), buf);
    buf.put_slice(s);
}

fn put_overwrite(tag: u32, name: &str, value: &[u8], buf: &mut impl BufMut) {
    put_field_head(tag, overwrite_len(name, value), buf);
    put_field_head(OPTION_HEADER, header_len(name, value), buf);
    put_bytes(HEADER_KEY, name.as_bytes(), buf);
    put_bytes(HEADER_VALUE, value, buf);
    encoding::encode_key(OPTION_APPEND_ACTION, WireType::Varint, buf);
    encoding::encode_varint(OVERWRITE_IF_EXISTS_OR_ADD, buf);
}

/// `key`'s identity as `OkHttpResponse.headers` entries, each set with
/// overwrite ([`edge::identity`]): what every allowed answer for the key
/// carries, whoever asks.
pub fn identity_headers(key: &CachedKey) -> Bytes {
    let mut buf = Vec::new();
    for (name, value) in edge::identity(key) {
        put_overwrite(HEADERS, name, value, &mut buf);
    }
    Bytes::from(buf)
}

impl Message for CheckAnswer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        let allowed = match self {
            Self::Other(response) => return response.encode_raw(buf),
            Self::Allowed(allowed) => allowed,
        };
        // status: google.rpc.Status{} (code OK, no message): an empty message.
        put_field_head(STATUS, 0, buf);
        put_field_head(OK_RESPONSE, allowed.ok_len, buf);
        buf.put_slice(&allowed.identity);
        for name in allowed.removed() {
            put_bytes(REMOVE, name.as_bytes(), buf);
        }
        for (name, value) in &allowed.response_headers {
            put_overwrite(RESPONSE_HEADERS, name, value.as_bytes(), buf);
        }
    }

    write_only!();

    fn encoded_len(&self) -> usize {
        match self {
            Self::Other(response) => response.encoded_len(),
            Self::Allowed(allowed) => field_len(STATUS, 0) + field_len(OK_RESPONSE, allowed.ok_len),
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::ext_authz::v3::pb::{HttpResponse, OkHttpResponse};
    use envoy_types::pb::google::rpc;
    use proptest::prelude::*;

    use super::*;
    // The generated header the server wrote before this module.
    use crate::api::envoy::set;
    use crate::domain::{
        keys::{KeyPrefix, Secret},
        model::{KeyId, KeyRecord, Owner, UserId},
    };

    /// The same answer as the generated messages: what Envoy decodes, and
    /// what the server sent before `CheckAnswer`.
    fn generated(key: &CachedKey, a: &Allowed) -> CheckResponse {
        CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: edge::identity(key)
                    .map(|(n, v)| set(n, std::str::from_utf8(v).expect("text")))
                    .collect(),
                headers_to_remove: a.removed().map(str::to_owned).collect(),
                response_headers_to_add: a
                    .response_headers
                    .iter()
                    .map(|(n, v)| set(n, v.as_ref()))
                    .collect(),
                ..Default::default()
            })),
            dynamic_metadata: None,
        }
    }

    fn key(user: Option<&str>) -> CachedKey {
        let secret = Secret::generate(&KeyPrefix::default());
        let mut record = KeyRecord::test_bot(KeyId::generate(), &secret, "key");
        if let Some(user) = user {
            record.owner = Owner::User(UserId::parse(user).expect("user"));
        }
        CachedKey::new(record)
    }

    const RATE_LIMIT: [&str; 3] = ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"];

    proptest! {
        #[test]
        fn envoy_decodes_what_the_generated_messages_said(
            user in proptest::option::of("usr_[a-z0-9]{1,40}"),
            forged in proptest::collection::vec("[a-z_-]{1,300}", 0..4),
            remove_authorization in any::<bool>(),
            remove_api_key in any::<bool>(),
            limits in proptest::collection::vec("[0-9]{1,20}", 0..4),
        ) {
            let key = key(user.as_deref());
            let allowed = Allowed::new(
                identity_headers(&key),
                forged,
                remove_authorization,
                remove_api_key,
                RATE_LIMIT.into_iter().zip(limits.into_iter().map(Cow::Owned)).collect(),
            );
            let expected = generated(&key, &allowed);
            let answer = CheckAnswer::Allowed(allowed);
            let bytes = answer.encode_to_vec();
            prop_assert_eq!(bytes.len(), answer.encoded_len());
            prop_assert_eq!(CheckResponse::decode(bytes.as_slice()).expect("decodes"), expected);
        }
    }
}
