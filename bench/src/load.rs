//! The load itself: what one request of each scenario is, the closed loop of
//! tasks that sends them, and the HDR histograms the latencies go into. Kept apart
//! from the setup so that the measured path can be read on its own.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use envoy_types::{
    ext_authz::v3::pb::CheckRequest,
    pb::envoy::{
        config::core::v3::{Address, SocketAddress, address, socket_address},
        service::auth::v3::{
            AttributeContext,
            attribute_context::{HttpRequest, Peer, Request as Attr},
        },
    },
};
use hdrhistogram::Histogram;
use keygate::{
    domain::keys::SecretHash,
    proto::{VerifyCode, VerifyKeyRequest},
};
use sqlx::mysql::MySqlPool;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    BoxError,
    database::{SELECT_BY_HASH, SELECT_BY_ID},
};

/// The scope every `VerifyKey` call requires; the seeded keys carry it.
pub(crate) const REQUIRED_SCOPE: &str = "links:read";

/// One kind of request, cloned into every load task. Cursors are shared so that
/// round-robin spreads over all keys and a fresh unknown key is never reused.
#[derive(Clone)]
pub(crate) enum Target {
    Health(HealthClient<Channel>),
    Verify {
        client: tonic::client::Grpc<Channel>,
        keys: Arc<[String]>,
        cursor: Arc<AtomicUsize>,
        expect: VerifyCode,
    },
    ById {
        pool: MySqlPool,
        ids: Arc<[String]>,
        cursor: Arc<AtomicUsize>,
    },
    ByHash {
        pool: MySqlPool,
        hashes: Arc<[SecretHash]>,
        cursor: Arc<AtomicUsize>,
    },
    Check {
        client: tonic::client::Grpc<Channel>,
        keys: Arc<[String]>,
        cursor: Arc<AtomicUsize>,
        templates: Arc<CheckTemplates>,
    },
    HttpHealth {
        client: reqwest::Client,
        url: Arc<str>,
    },
    Forward {
        client: reqwest::Client,
        url: Arc<str>,
        keys: Arc<[String]>,
        cursor: Arc<AtomicUsize>,
    },
}

/// What Envoy sends for `GET /api/links` with a key, the scope coming from the
/// route's `context_extensions` (what `VerifyKey` gets as `required_scopes`):
/// the source and destination, the request's id, time and protocol, and the
/// headers a browser or client library and Envoy itself put on a request.
fn check_request(key: &str) -> CheckRequest {
    let peer = |address: &str, port: u32| Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: address.to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let headers = [
        (":authority", "api.example.com"),
        (":method", "GET"),
        (":path", "/api/links"),
        (":scheme", "https"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, deflate, br"),
        ("authorization", &format!("Bearer {key}")),
        ("user-agent", "example-client/2.3.1 (linux; x86_64)"),
        ("x-forwarded-for", "198.51.100.23"),
        ("x-forwarded-proto", "https"),
        ("x-request-id", "0b5c1f7e-8a3d-4c1e-9f2a-7d6e5b4c3a21"),
        ("x-envoy-expected-rq-timeout-ms", "15000"),
    ];
    let http = HttpRequest {
        id: "1849286473619283746".into(),
        method: "GET".into(),
        path: "/api/links".into(),
        host: "api.example.com".into(),
        scheme: "https".into(),
        protocol: "HTTP/1.1".into(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer("198.51.100.23", 51234)),
            destination: Some(peer("10.0.0.12", 8443)),
            request: Some(Attr {
                time: Some(envoy_types::pb::google::protobuf::Timestamp {
                    seconds: 1_765_000_000,
                    nanos: 0,
                }),
                http: Some(http),
            }),
            context_extensions: [(
                "keygate_required_scopes".to_owned(),
                REQUIRED_SCOPE.to_owned(),
            )]
            .into(),
            ..Default::default()
        }),
    }
}

/// Envoy's `CheckRequest` for each key, encoded once per key length: the
/// key's bytes are the only part that changes from one call to the next, and
/// encoding the generated message (twelve header strings in a map, nested
/// messages) on every call made the load generator, not keygate, the
/// bottleneck of `ext-authz` (`cpu% bench` over 100). Envoy sends bytes it
/// encoded itself; so does this, like bench/h2load.
pub(crate) struct CheckTemplates {
    /// By key length: the encoded request and where its key starts.
    by_len: std::collections::HashMap<usize, (Vec<u8>, usize)>,
}

impl CheckTemplates {
    pub(crate) fn new(keys: &[String]) -> Result<Self, BoxError> {
        use prost::Message as _;
        let mut by_len = std::collections::HashMap::new();
        for key in keys {
            if by_len.contains_key(&key.len()) {
                continue;
            }
            let bytes = check_request(key).encode_to_vec();
            let header = format!("Bearer {key}");
            let at = bytes
                .windows(header.len())
                .position(|w| w == header.as_bytes())
                .ok_or("the key is not in its encoded CheckRequest")?;
            by_len.insert(key.len(), (bytes, at + "Bearer ".len()));
        }
        Ok(Self { by_len })
    }

    fn request(&self, key: &str) -> Encoded {
        let (template, at) = &self.by_len[&key.len()];
        let mut bytes = template.clone();
        bytes[*at..*at + key.len()].copy_from_slice(key.as_bytes());
        Encoded(bytes)
    }
}

/// A message already encoded, sent as it is.
#[derive(Debug, Default, Clone, PartialEq)]
struct Encoded(Vec<u8>);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// `CheckResponse` as the load reads it: the status code, as [`CodeOnly`]
/// does for `VerifyKey`.
#[derive(Clone, PartialEq, prost::Message)]
struct CheckStatusOnly {
    #[prost(message, optional, tag = "1")]
    status: Option<StatusCode>,
}

#[derive(Clone, Copy, PartialEq, prost::Message)]
struct StatusCode {
    #[prost(int32, tag = "1")]
    code: i32,
}

async fn check(
    grpc: &mut tonic::client::Grpc<Channel>,
    request: Encoded,
) -> Result<CheckStatusOnly, tonic::Status> {
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<Encoded, CheckStatusOnly>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.auth.v3.Authorization/Check",
    );
    Ok(grpc
        .unary(tonic::Request::new(request), path, codec)
        .await?
        .into_inner())
}

enum Outcome {
    Ok,
    /// An answer, but not the one this scenario expects (a bench or keygate bug).
    Unexpected,
    Error(String),
}

fn next<'a, T>(items: &'a [T], cursor: &AtomicUsize) -> &'a T {
    &items[cursor.fetch_add(1, Relaxed) % items.len()]
}

/// `VerifyKeyResponse` as the load reads it: the code and nothing else.
/// Decoding the whole answer (the key's strings, its scopes) cost the
/// load generator more per call than Health/Check's answer does, on the same
/// two cores as keygate, and so lowered `cached / health` by the client's
/// work, not keygate's.
#[derive(Clone, PartialEq, prost::Message)]
struct CodeOnly {
    #[prost(int32, tag = "2")]
    code: i32,
}

async fn verify(
    grpc: &mut tonic::client::Grpc<Channel>,
    key: &str,
) -> Result<CodeOnly, tonic::Status> {
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<VerifyKeyRequest, CodeOnly>::default();
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/keygate.v1.KeyVerify/VerifyKey");
    Ok(grpc
        .unary(tonic::Request::new(verify_request(key)), path, codec)
        .await?
        .into_inner())
}

fn verify_request(key: &str) -> VerifyKeyRequest {
    VerifyKeyRequest {
        key: key.to_owned(),
        required_scopes: vec![REQUIRED_SCOPE.to_owned()],
        ..Default::default()
    }
}

impl Target {
    async fn call(&mut self) -> Outcome {
        match self {
            Target::Health(client) => {
                let req = HealthCheckRequest {
                    service: String::new(),
                };
                match client.check(req).await {
                    Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => Outcome::Ok,
                    Ok(_) => Outcome::Unexpected,
                    Err(e) => Outcome::Error(e.to_string()),
                }
            }
            Target::Verify {
                client,
                keys,
                cursor,
                expect,
            } => match verify(client, next::<String>(keys, cursor)).await {
                Ok(r) if r.code == *expect as i32 => Outcome::Ok,
                Ok(_) => Outcome::Unexpected,
                Err(e) => Outcome::Error(e.to_string()),
            },
            Target::ById { pool, ids, cursor } => {
                let q = sqlx::query(SELECT_BY_ID.as_str()).bind(next(ids, cursor).as_str());
                row_outcome(q.fetch_optional(&*pool).await)
            }
            Target::ByHash {
                pool,
                hashes,
                cursor,
            } => {
                let q =
                    sqlx::query(SELECT_BY_HASH.as_str()).bind(&next(hashes, cursor).as_bytes()[..]);
                row_outcome(q.fetch_optional(&*pool).await)
            }
            Target::Check {
                client,
                keys,
                cursor,
                templates,
            } => match check(client, templates.request(next::<String>(keys, cursor))).await {
                Ok(r) if r.status.is_some_and(|s| s.code == 0) => Outcome::Ok,
                Ok(_) => Outcome::Unexpected,
                Err(e) => Outcome::Error(e.to_string()),
            },
            Target::HttpHealth { client, url } => match client.get(&**url).send().await {
                Ok(r) if r.status().as_u16() == 200 => Outcome::Ok,
                Ok(_) => Outcome::Unexpected,
                Err(e) => Outcome::Error(e.to_string()),
            },
            Target::Forward {
                client,
                url,
                keys,
                cursor,
            } => {
                let key = next::<String>(keys, cursor);
                let sent = client
                    .get(&**url)
                    .header("x-original-method", "GET")
                    .header("x-original-uri", "/api/links")
                    .header("authorization", format!("Bearer {key}"))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 200 => Outcome::Ok,
                    Ok(_) => Outcome::Unexpected,
                    Err(e) => Outcome::Error(e.to_string()),
                }
            }
        }
    }
}

fn row_outcome<R>(r: Result<Option<R>, sqlx::Error>) -> Outcome {
    match r {
        Ok(Some(_)) => Outcome::Ok,
        Ok(None) => Outcome::Unexpected,
        Err(e) => Outcome::Error(e.to_string()),
    }
}

/// Latencies (µs) and outcomes of one load task, or of a whole phase once merged.
pub(crate) struct Tally {
    pub(crate) hist: Histogram<u64>,
    pub(crate) unexpected: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
}

impl Tally {
    pub(crate) fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("static bounds are valid"),
            unexpected: 0,
            errors: 0,
            first_error: None,
        }
    }

    fn record(&mut self, latency: Duration, outcome: Outcome) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.hist.saturating_record(us.max(1));
        match outcome {
            Outcome::Ok => {}
            Outcome::Unexpected => self.unexpected += 1,
            Outcome::Error(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    pub(crate) fn merge(&mut self, other: &Tally) {
        self.hist
            .add(&other.hist)
            .expect("histograms share their bounds");
        self.unexpected += other.unexpected;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// What one measured phase produced.
pub(crate) struct Phase {
    pub(crate) tally: Tally,
    pub(crate) elapsed: Duration,
    /// CPU used during the phase, per watched process, in % of one core.
    pub(crate) cpu: Vec<f64>,
}

impl Phase {
    pub(crate) fn rps(&self) -> f64 {
        self.tally.hist.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// When a load task stops starting requests.
#[derive(Clone)]
pub(crate) enum Until {
    Deadline(Instant),
    /// After this many requests in all, counted by the shared counter.
    Calls(Arc<AtomicUsize>, usize),
}

impl Until {
    fn more(&self) -> bool {
        match self {
            Until::Deadline(d) => Instant::now() < *d,
            Until::Calls(issued, n) => issued.fetch_add(1, Relaxed) < *n,
        }
    }
}

/// Runs `concurrency` closed-loop tasks until `until`; the phase lasts until the
/// last request in flight returns.
pub(crate) async fn run_load(
    targets: &[Target],
    concurrency: usize,
    until: Until,
) -> Result<(Tally, Duration), BoxError> {
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..concurrency {
        let mut target = targets[i % targets.len()].clone();
        let until = until.clone();
        tasks.spawn(async move {
            let mut tally = Tally::new();
            while until.more() {
                let t0 = Instant::now();
                let outcome = target.call().await;
                tally.record(t0.elapsed(), outcome);
            }
            tally
        });
    }
    let mut total = Tally::new();
    while let Some(t) = tasks.join_next().await {
        total.merge(&t?);
    }
    Ok((total, start.elapsed()))
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    /// A request made from the template decodes to the generated message for
    /// that key, for every key of every length seen. (Decoded, not byte for
    /// byte: the headers are a map, encoded in its own order each time.)
    #[test]
    fn a_templated_check_is_the_encoded_one() {
        let keys: Vec<String> = ["kg_aaaa_1111", "kg_bbbb_2222", "kg_cc_3", "kg_dd_4"]
            .map(str::to_owned)
            .into();
        let templates = CheckTemplates::new(&keys).expect("templates");
        for key in &keys {
            let sent = templates.request(key).0;
            let decoded = CheckRequest::decode(sent.as_slice()).expect("decodes");
            assert_eq!(decoded, check_request(key), "{key}");
        }
    }
}
