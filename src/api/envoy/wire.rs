//! Envoy's `CheckRequest`, as far as keygate reads it, read in place.
//!
//! The generated types (envoy-types) decode everything Envoy sends: every
//! header into two `String`s of a SipHash map, the destination, the TLS
//! session, metadata, the request's time and id. keygate reads the method,
//! the path, a few headers, two context extensions and the source. So the
//! server takes the request's bytes as they came ([`CheckRequest`]) and
//! [`Check::read`] walks them once with Envoy's field numbers: every value
//! is a slice of the received buffer, every other field is stepped over,
//! and nothing is copied or counted. Parsing it with prost's own messages,
//! even with only these fields, spent a fifth of a check on varints,
//! reference counts and UTF-8 checks of headers nobody reads.
//!
//! Protobuf's rules are kept: a message field sent twice is merged (later
//! scalars win, repeated fields add up), a map entry without a key or value
//! has an empty one, a field of the wrong wire type or a length past the
//! end is a malformed request. UTF-8 is checked where a value is read as
//! text, which is where the generated types would have refused it.

use bytes::Bytes;
use prost::encoding::{DecodeContext, WireType, decode_varint, skip_field};
use tonic::{
    Status,
    codec::{DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

use super::answer::CheckAnswer;

/// A `CheckRequest`'s bytes, as received.
#[derive(Debug, Default, Clone)]
pub struct CheckRequest(pub Bytes);

/// The codec of `Check`: the request's bytes kept whole (read by
/// [`Check::read`]), the answer encoded by prost ([`CheckAnswer`]).
#[derive(Debug, Default, Clone)]
pub struct CheckCodec {
    _private: (),
}

impl tonic::codec::Codec for CheckCodec {
    type Encode = CheckAnswer;
    type Decode = CheckRequest;
    type Encoder = ProstEncoder<CheckAnswer>;
    type Decoder = WholeRequest;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        WholeRequest
    }
}

/// Takes the message's bytes without reading them (a slice of tonic's
/// buffer, not a copy).
#[derive(Debug, Default, Clone)]
pub struct WholeRequest;

impl Decoder for WholeRequest {
    type Item = CheckRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<CheckRequest>, Status> {
        use bytes::Buf;
        Ok(Some(CheckRequest(buf.copy_to_bytes(buf.remaining()))))
    }
}

/// What a `CheckRequest` says, as slices of its bytes. Text fields are
/// bytes until read: [`text`] checks them.
#[derive(Debug, Default)]
pub struct Check<'a> {
    /// `attributes.request.http` was present: keygate authorizes HTTP requests.
    pub http: bool,
    pub method: &'a [u8],
    pub path: &'a [u8],
    /// `attributes.source.address.socket_address.address`.
    pub source_address: &'a [u8],
    /// `attributes.source.principal`.
    pub source_principal: &'a [u8],
    /// `http.headers` and `http.header_map.headers`, in the order they came.
    pub headers: Vec<Header<'a>>,
    /// `attributes.context_extensions`, in the order they came.
    pub extensions: Vec<(&'a [u8], &'a [u8])>,
}

/// One request header as Envoy sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub kind: HeaderKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderKind {
    /// An entry of `http.headers`: names in lower case, repeats joined with
    /// commas; a proto string.
    Joined,
    /// An entry of `http.header_map` (Envoy's `encode_raw_headers`), repeats
    /// apart, with a proto string `value`.
    Apart,
    /// An entry of `http.header_map` whose `value` is empty: its `raw_value`,
    /// the client's own bytes, which need not be text.
    Raw,
}

/// Why a `CheckRequest` could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("a field ends past the end of its message")]
    Truncated,
    #[error("a varint or a field's key is not valid")]
    BadVarint,
    #[error("field {0} has the wrong wire type")]
    WireType(&'static str),
    #[error("a field could not be skipped")]
    Skip,
    #[error("{0} is not UTF-8")]
    NotText(&'static str),
}

/// A field's value: the bytes of a length-delimited field, `None` for any
/// other wire type (already stepped over).
type Value<'a> = Option<&'a [u8]>;

/// A varint; the one-byte ones (every tag and length of a header) without
/// prost's general loop.
#[inline(always)]
fn varint(buf: &mut &[u8]) -> Result<u64, Malformed> {
    match buf.first() {
        Some(&b) if b < 0x80 => {
            *buf = &buf[1..];
            Ok(u64::from(b))
        }
        _ => long_varint(buf),
    }
}

#[cold]
fn long_varint(buf: &mut &[u8]) -> Result<u64, Malformed> {
    decode_varint(buf).map_err(|_| Malformed::BadVarint)
}

/// Calls `each` with every field of a message, in order.
fn fields<'a>(
    mut buf: &'a [u8],
    mut each: impl FnMut(u32, Value<'a>) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        // A length-delimited field (wire type 2) with a valid tag; anything
        // else goes through prost's own checks and skipping.
        if key & 7 == 2 && key >> 3 != 0 && key <= u64::from(u32::MAX) {
            let tag = (key >> 3) as u32;
            let len = varint(&mut buf)?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= buf.len())
                .ok_or(Malformed::Truncated)?;
            let (value, rest) = buf.split_at(len);
            buf = rest;
            each(tag, Some(value))?;
        } else {
            let (tag, wire_type) = key_of(key)?;
            skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                .map_err(|_| Malformed::Skip)?;
            each(tag, None)?;
        }
    }
    Ok(())
}

/// A field key's tag and wire type, checked as prost checks them: a key
/// within 32 bits, a known wire type, a tag of at least 1.
fn key_of(key: u64) -> Result<(u32, WireType), Malformed> {
    let key = u32::try_from(key).map_err(|_| Malformed::BadVarint)?;
    let wire_type = WireType::try_from(u64::from(key & 7)).map_err(|_| Malformed::BadVarint)?;
    match key >> 3 {
        0 => Err(Malformed::BadVarint),
        tag => Ok((tag, wire_type)),
    }
}

/// The bytes of a length-delimited field keygate reads; `name` for the error.
fn bytes<'a>(value: Value<'a>, name: &'static str) -> Result<&'a [u8], Malformed> {
    value.ok_or(Malformed::WireType(name))
}

/// A field read as text: a proto `string`, which must be UTF-8.
pub fn text<'a>(value: &'a [u8], name: &'static str) -> Result<&'a str, Malformed> {
    std::str::from_utf8(value).map_err(|_| Malformed::NotText(name))
}

/// A `map<string, string>` entry, or a `HeaderValue` (which adds `raw`).
#[derive(Debug, Default)]
struct Entry<'a> {
    key: &'a [u8],
    value: &'a [u8],
    raw: &'a [u8],
}

/// Reads an entry: key 1, value 2, raw_value 3.
fn entry(buf: &[u8]) -> Result<Entry<'_>, Malformed> {
    // How Envoy writes a header: key, then value, each under 128 bytes, and
    // nothing else. Read as such without the general loop; any other layout
    // (and every malformed one) takes it.
    if let [0x0a, key_len, rest @ ..] = buf
        && let Some((key, rest)) = rest.split_at_checked(usize::from(*key_len))
        && let [0x12, value_len, value @ ..] = rest
        && *key_len < 0x80
        && *value_len < 0x80
        && value.len() == usize::from(*value_len)
    {
        return Ok(Entry {
            key,
            value,
            raw: &[],
        });
    }
    let mut e = Entry::default();
    fields(buf, |tag, v| {
        match tag {
            1 => e.key = bytes(v, "key")?,
            2 => e.value = bytes(v, "value")?,
            3 => e.raw = bytes(v, "raw_value")?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(e)
}

impl<'a> Check<'a> {
    /// Reads a `CheckRequest`'s bytes.
    pub fn read(request: &'a [u8]) -> Result<Self, Malformed> {
        let mut check = Check {
            headers: Vec::with_capacity(16),
            ..Default::default()
        };
        fields(request, |tag, v| match tag {
            1 => check.attributes(bytes(v, "attributes")?),
            _ => Ok(()),
        })?;
        Ok(check)
    }

    /// `AttributeContext`: source 1, request 4, context_extensions 10.
    fn attributes(&mut self, buf: &'a [u8]) -> Result<(), Malformed> {
        fields(buf, |tag, v| match tag {
            1 => self.source(bytes(v, "source")?),
            4 => fields(bytes(v, "request")?, |tag, v| match tag {
                2 => self.http(bytes(v, "http")?),
                _ => Ok(()),
            }),
            10 => {
                let e = entry(bytes(v, "context_extensions")?)?;
                self.extensions.push((e.key, e.value));
                Ok(())
            }
            _ => Ok(()),
        })
    }

    /// `Peer`: address 1 (`Address`, whose socket_address is 1, whose
    /// address is 2), principal 4.
    fn source(&mut self, buf: &'a [u8]) -> Result<(), Malformed> {
        fields(buf, |tag, v| {
            match tag {
                1 => fields(bytes(v, "address")?, |tag, v| match tag {
                    1 => fields(bytes(v, "socket_address")?, |tag, v| {
                        if tag == 2 {
                            self.source_address = bytes(v, "socket_address.address")?;
                        }
                        Ok(())
                    }),
                    _ => Ok(()),
                })?,
                4 => self.source_principal = bytes(v, "principal")?,
                _ => {}
            }
            Ok(())
        })
    }

    /// `HttpRequest`: method 2, headers 3, path 4, header_map 13 (whose
    /// headers are 1).
    fn http(&mut self, buf: &'a [u8]) -> Result<(), Malformed> {
        self.http = true;
        fields(buf, |tag, v| {
            match tag {
                2 => self.method = bytes(v, "method")?,
                3 => {
                    let e = entry(bytes(v, "headers")?)?;
                    self.headers.push(Header {
                        name: e.key,
                        value: e.value,
                        kind: HeaderKind::Joined,
                    });
                }
                4 => self.path = bytes(v, "path")?,
                13 => fields(bytes(v, "header_map")?, |tag, v| {
                    if tag == 1 {
                        let e = entry(bytes(v, "header_map.headers")?)?;
                        self.headers.push(if e.value.is_empty() {
                            Header {
                                name: e.key,
                                value: e.raw,
                                kind: HeaderKind::Raw,
                            }
                        } else {
                            Header {
                                name: e.key,
                                value: e.value,
                                kind: HeaderKind::Apart,
                            }
                        });
                    }
                    Ok(())
                })?,
                _ => {}
            }
            Ok(())
        })
    }
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

    use super::{HeaderKind, Malformed};

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
        let ours = super::Check::read(&bytes).expect("reads");
        assert!(ours.http);
        assert_eq!(ours.source_address, b"198.51.100.7");
        assert_eq!(ours.source_principal, b"spiffe://example.org/198.51.100.7");
        assert_eq!(
            (ours.method, ours.path),
            (&b"POST"[..], &b"/api/links?x=1"[..])
        );
        let mut headers: Vec<_> = ours
            .headers
            .iter()
            .map(|h| (h.name, h.value, h.kind))
            .collect();
        headers.sort_unstable_by_key(|h| h.0);
        assert_eq!(
            headers,
            [
                (&b"authorization"[..], &b"Bearer k"[..], HeaderKind::Joined),
                (b"user-agent", b"curl/8", HeaderKind::Joined),
                (b"x-api-key", b"raw", HeaderKind::Raw),
            ]
        );
        assert_eq!(
            ours.extensions,
            [(&b"keygate_required_scopes"[..], &b"a:b"[..])]
        );
    }

    /// Protobuf's rules, as prost's generated types apply them: a message
    /// sent twice is merged, later scalars win, repeated fields add up.
    #[test]
    fn a_message_sent_twice_is_merged() {
        let http = |method: &str, header: (&str, &str)| auth::CheckRequest {
            attributes: Some(auth::AttributeContext {
                request: Some(ctx::Request {
                    http: Some(ctx::HttpRequest {
                        method: method.into(),
                        headers: [(header.0.to_owned(), header.1.to_owned())].into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        let mut bytes = http("GET", ("authorization", "Bearer a")).encode_to_vec();
        bytes.extend(http("", ("origin", "https://o.example")).encode_to_vec());
        bytes.extend(http("POST", ("authorization", "Bearer b")).encode_to_vec());
        let generated = auth::CheckRequest::decode(&bytes[..]).expect("prost decodes it");
        let http_of = generated
            .attributes
            .and_then(|a| a.request)
            .and_then(|r| r.http);
        let ours = super::Check::read(&bytes).expect("reads");
        assert_eq!(ours.method, http_of.expect("http").method.as_bytes());
        assert_eq!(ours.method, b"POST");
        let names: Vec<_> = ours.headers.iter().map(|h| (h.name, h.value)).collect();
        assert_eq!(
            names,
            [
                (&b"authorization"[..], &b"Bearer a"[..]),
                (b"origin", b"https://o.example"),
                (b"authorization", b"Bearer b"),
            ]
        );
    }

    /// Bytes that are not a message are refused, as prost refuses them:
    /// a length past the end, a known field of the wrong wire type, a bad varint.
    #[test]
    fn bytes_that_are_not_a_message_are_refused() {
        // attributes (1) claims 5 bytes, has 2.
        assert_eq!(
            super::Check::read(&[0x0a, 5, 0x22, 0]).expect_err("refused"),
            Malformed::Truncated
        );
        // attributes as a varint.
        assert_eq!(
            super::Check::read(&[0x08, 1]).expect_err("refused"),
            Malformed::WireType("attributes")
        );
        // a key that never ends.
        assert_eq!(
            super::Check::read(&[0xff; 11]).expect_err("refused"),
            Malformed::BadVarint
        );
        // Unknown fields of every wire type are stepped over.
        let unknown = [
            0x10, 7, 0x19, 1, 2, 3, 4, 5, 6, 7, 8, 0x25, 1, 2, 3, 4, 0x2a, 1, 0,
        ];
        let read = super::Check::read(&unknown).expect("reads");
        assert!(!read.http);
        for bytes in [&[0x0a, 5, 0x22, 0][..], &[0x08, 1], &unknown] {
            assert_eq!(
                super::Check::read(bytes).is_ok(),
                auth::CheckRequest::decode(bytes).is_ok(),
                "{bytes:?}"
            );
        }
    }

    /// What prost's generated types make of some bytes, in the reader's terms:
    /// method, path, source address and principal, the headers map (the last
    /// value of each name, as a decoded map keeps it) and the extensions.
    type Read = (
        String,
        String,
        String,
        String,
        Vec<(String, String)>,
        Vec<(String, String)>,
    );

    fn by_prost(bytes: &[u8]) -> Option<Read> {
        let a = auth::CheckRequest::decode(bytes)
            .ok()?
            .attributes
            .unwrap_or_default();
        let source = a.source.unwrap_or_default();
        let address = match source.address.and_then(|a| a.address) {
            Some(core::address::Address::SocketAddress(s)) => s.address,
            _ => String::new(),
        };
        let http = a.request.and_then(|r| r.http).unwrap_or_default();
        let mut headers: Vec<_> = http.headers.into_iter().collect();
        headers.sort();
        let mut extensions: Vec<_> = a.context_extensions.into_iter().collect();
        extensions.sort();
        Some((
            http.method,
            http.path,
            address,
            source.principal,
            headers,
            extensions,
        ))
    }

    fn by_reader(bytes: &[u8]) -> Option<Read> {
        let check = super::Check::read(bytes).ok()?;
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).ok();
        // Later entries win, as in a decoded map.
        let mut headers = std::collections::BTreeMap::new();
        for h in check
            .headers
            .iter()
            .filter(|h| h.kind == HeaderKind::Joined)
        {
            headers.insert(text(h.name)?, text(h.value)?);
        }
        let mut extensions = std::collections::BTreeMap::new();
        for (k, v) in &check.extensions {
            extensions.insert(text(k)?, text(v)?);
        }
        Some((
            text(check.method)?,
            text(check.path)?,
            text(check.source_address)?,
            text(check.source_principal)?,
            headers.into_iter().collect(),
            extensions.into_iter().collect(),
        ))
    }

    fn request(
        method: String,
        path: String,
        headers: Vec<(String, String)>,
        extensions: Vec<(String, String)>,
        address: String,
    ) -> Vec<u8> {
        auth::CheckRequest {
            attributes: Some(auth::AttributeContext {
                source: Some(ctx::Peer {
                    address: Some(core::Address {
                        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                            address,
                            ..Default::default()
                        })),
                    }),
                    principal: "spiffe://example.org/a".into(),
                    ..Default::default()
                }),
                request: Some(ctx::Request {
                    http: Some(ctx::HttpRequest {
                        method,
                        path,
                        headers: headers.into_iter().collect(),
                        body: "b".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: extensions.into_iter().collect(),
                ..Default::default()
            }),
        }
        .encode_to_vec()
    }

    proptest::proptest! {
        /// Envoy's messages, and the same bytes damaged (a byte changed,
        /// cut short, bytes put in): the reader never panics, and wherever
        /// prost reads the bytes as a `CheckRequest`, the reader reads them
        /// too and finds the same method, path, source, headers and
        /// extensions. (The reader refuses less: it checks UTF-8 only in
        /// what it reads.)
        #[test]
        fn reads_what_prost_reads(
            method in "[A-Z]{0,8}",
            path in "/[ -~]{0,40}",
            headers in proptest::collection::vec(("[a-z-]{1,12}", "[ -~é]{0,30}"), 0..8),
            extensions in proptest::collection::vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..3),
            address in "[0-9.:a-f]{0,20}",
            damage in proptest::collection::vec((0usize..4, proptest::num::usize::ANY, proptest::num::u8::ANY), 0..3),
        ) {
            let mut bytes = request(method, path, headers, extensions, address);
            for (kind, at, byte) in damage {
                let at = if bytes.is_empty() { 0 } else { at % bytes.len() };
                match kind {
                    0 if !bytes.is_empty() => bytes[at] = byte,
                    1 => bytes.truncate(at),
                    2 => bytes.insert(at, byte),
                    _ => {}
                }
            }
            let ours = by_reader(&bytes);
            if let Some(theirs) = by_prost(&bytes) {
                proptest::prop_assert_eq!(ours, Some(theirs));
            }
        }
    }
}
