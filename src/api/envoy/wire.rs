//! Envoy's `CheckRequest`, as far as keygate reads it. The generated types
//! (envoy-types) decode everything Envoy sends: every header into two
//! `String`s of a SipHash map, the destination, the TLS session, metadata,
//! the request's time and id. keygate reads the method, the path, a few
//! headers, two context extensions and the source. These messages name only
//! those fields, with Envoy's field numbers, so the bytes on the wire are the
//! same messages: prost steps over every other field without allocating, and
//! header names and values are slices of the received buffer (`Bytes`), not
//! copies. The server itself is generated in `build.rs` for this request and
//! the generated `CheckResponse`.

use bytes::Bytes;

#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    /// A `map<string, string>`: on the wire, a repeated entry message.
    #[prost(message, repeated, tag = "10")]
    pub context_extensions: Vec<Entry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
    #[prost(string, tag = "4")]
    pub principal: String,
}

/// `envoy.config.core.v3.Address`, whose oneof's first member is the socket
/// address (a pipe or an internal address is not an IP address to keygate).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketAddress {
    #[prost(string, tag = "2")]
    pub address: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    #[prost(string, tag = "2")]
    pub method: String,
    /// A `map<string, string>` of lower-case names, repeats joined by commas.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Entry>,
    #[prost(string, tag = "4")]
    pub path: String,
    /// Set instead of `headers` when Envoy's `encode_raw_headers` is on.
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

/// One entry of a `map<string, string>`. Kept as bytes, so checked as UTF-8
/// where it is read ([`Entry::text`]), as the generated map would have.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

impl Entry {
    /// The name and value as text; `None` when either is not UTF-8, which a
    /// proto3 `string` must be.
    pub fn text(&self) -> Option<(&str, &str)> {
        Some((
            std::str::from_utf8(&self.key).ok()?,
            std::str::from_utf8(&self.value).ok()?,
        ))
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderMap {
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<RawHeader>,
}

/// `envoy.config.core.v3.HeaderValue`: `raw_value` holds the value when
/// `value` is empty.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawHeader {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub raw_value: Bytes,
}

// The `Authorization` service for this request: `authorization_server`.
include!(concat!(
    env!("OUT_DIR"),
    "/envoy.service.auth.v3.Authorization.rs"
));

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::{
        config::core::v3 as core,
        service::auth::v3::{self as auth, attribute_context as ctx},
    };
    use prost::Message;

    /// Envoy's own message, with every part keygate does not read filled
    /// too, decodes into keygate's reading of it with the parts it reads
    /// intact: the same field numbers, and nothing skipped that matters.
    #[test]
    fn envoy_s_message_reads_as_keygate_s() {
        let peer = |ip: &str| ctx::Peer {
            address: Some(core::Address {
                address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                    address: ip.to_owned(),
                    port_specifier: Some(core::socket_address::PortSpecifier::PortValue(443)),
                    ..Default::default()
                })),
            }),
            principal: format!("spiffe://example.org/{ip}"),
            service: "svc".into(),
            ..Default::default()
        };
        let full = auth::CheckRequest {
            attributes: Some(auth::AttributeContext {
                source: Some(peer("198.51.100.7")),
                destination: Some(peer("10.0.0.1")),
                request: Some(ctx::Request {
                    time: Some(envoy_types::pb::google::protobuf::Timestamp {
                        seconds: 1,
                        nanos: 2,
                    }),
                    http: Some(ctx::HttpRequest {
                        id: "42".into(),
                        method: "POST".into(),
                        path: "/api/links?x=1".into(),
                        host: "api.example.com".into(),
                        headers: [
                            ("authorization".to_owned(), "Bearer k".to_owned()),
                            ("user-agent".to_owned(), "curl/8".to_owned()),
                        ]
                        .into(),
                        header_map: Some(core::HeaderMap {
                            headers: vec![core::HeaderValue {
                                key: "x-api-key".into(),
                                raw_value: b"raw".to_vec(),
                                ..Default::default()
                            }],
                        }),
                        body: "ignored".into(),
                        ..Default::default()
                    }),
                }),
                context_extensions: [("keygate_required_scopes".to_owned(), "a:b".to_owned())]
                    .into(),
                tls_session: Some(ctx::TlsSession { sni: "sni".into() }),
                ..Default::default()
            }),
        };
        let bytes = full.encode_to_vec();
        let ours = super::CheckRequest::decode(&bytes[..]).expect("decodes");
        let a = ours.attributes.expect("attributes");
        let source = a.source.expect("source");
        assert_eq!(
            source
                .address
                .and_then(|a| a.socket_address)
                .map(|s| s.address),
            Some("198.51.100.7".to_owned())
        );
        assert_eq!(source.principal, "spiffe://example.org/198.51.100.7");
        let http = a.request.and_then(|r| r.http).expect("http");
        assert_eq!(
            (http.method.as_str(), http.path.as_str()),
            ("POST", "/api/links?x=1")
        );
        let mut headers: Vec<_> = http.headers.iter().filter_map(super::Entry::text).collect();
        headers.sort_unstable();
        assert_eq!(
            headers,
            [("authorization", "Bearer k"), ("user-agent", "curl/8")]
        );
        let raw = &http.header_map.expect("header map").headers[0];
        assert_eq!(
            (&raw.key[..], &raw.raw_value[..]),
            (&b"x-api-key"[..], &b"raw"[..])
        );
        let extensions: Vec<_> = a
            .context_extensions
            .iter()
            .filter_map(super::Entry::text)
            .collect();
        assert_eq!(extensions, [("keygate_required_scopes", "a:b")]);
    }
}
