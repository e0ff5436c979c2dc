//! Requests refused before any handler runs get the code of the caller's fault:
//! bytes that are not a valid message are INVALID_ARGUMENT (not INTERNAL, which
//! pages operators) and a message over the size limit is RESOURCE_EXHAUSTED (not
//! OUT_OF_RANGE), as gRPC's status-code guidance asks.

use bytes::{Buf, BufMut};
use tonic::{
    Code, Request, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use crate::support::*;

/// Sends and receives bytes as they are, so a test can send what no generated
/// client would.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

async fn call_raw(app: &TestApp, path: &'static str, body: Vec<u8>) -> Status {
    let channel = connect(app.app.as_ref().expect("running").addr()).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut request = Request::new(body);
    for (name, value) in [
        ("authorization", format!("Bearer {TOKEN}")),
        ("x-actor-id", "alice".into()),
        ("x-actor-role", "admin".into()),
    ] {
        request
            .metadata_mut()
            .insert(name, value.parse().expect("ascii"));
    }
    grpc.unary(
        request,
        http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .expect_err("refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_and_oversized_requests_are_the_callers_fault() {
    let app = spawn_app(Backend::Sqlite).await;
    for path in [
        "/keygate.v1.KeyVerify/VerifyKey",
        "/keygate.v1.KeyAdmin/CreateKey",
    ] {
        // Field 1 (a string) claims 16 bytes and has 2; then a string that is not UTF-8.
        for bytes in [vec![0x0a, 0x10, b'a', b'b'], vec![0x0a, 0x02, 0xff, 0xfe]] {
            let status = call_raw(&app, path, bytes).await;
            assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
            assert!(
                status.message().contains("not a valid message"),
                "{status:?}"
            );
        }
        // A message over the 64 KiB limit: refused on its length, unread.
        let mut big = vec![0x0a, 0x80, 0xa0, 0x04];
        big.extend(std::iter::repeat_n(b'k', 70 * 1024));
        let status = call_raw(&app, path, big).await;
        assert_eq!(status.code(), Code::ResourceExhausted, "{path}: {status:?}");
    }
    assert!(app.all_keys("acme").await.is_empty());
    app.stop().await;
}
