//! The protobuf codec of keygate's services, and the status codes of requests
//! that never reach a handler.
//!
//! gRPC's status-code guidance keeps `INTERNAL` for the server's own faults:
//! operators page on it. tonic answers a request whose bytes are not a valid
//! message with `INTERNAL`, and one over the size limit with `OUT_OF_RANGE`; both
//! are the caller's doing, so keygate answers `INVALID_ARGUMENT` and
//! `RESOURCE_EXHAUSTED` (the codes gRPC's own implementations use for them).

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Code, Status,
    codec::{DecodeBuf, Decoder},
};
use tonic_prost::ProstEncoder;

/// prost encoding, and a decoder whose failures are the caller's: named in
/// `build.rs` as the codec of every generated service and client.
#[derive(Debug, Clone)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// Decodes with prost; bytes that are not a valid message are `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // prost's message names the field and the wire problem, never the bytes.
        U::decode(buf).map(Some).map_err(|e| {
            Status::invalid_argument(format!("the request is not a valid message: {e}"))
        })
    }
}

/// tonic's message for a request whose body ends inside a message.
const TRUNCATED: &str = "Unexpected EOF decoding stream.";

/// Rewrites the status of a request refused before any handler ran (a
/// trailers-only answer: the status travels in the headers). Handlers never
/// answer `OUT_OF_RANGE`, so in the headers it can only be tonic's size limit.
pub fn caller_fault_status<B>(mut response: http::Response<B>) -> http::Response<B> {
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    let rewritten = match status.code() {
        Code::OutOfRange => Status::resource_exhausted(format!(
            "the request is larger than keygate accepts: {}",
            status.message()
        )),
        Code::Internal if status.message() == TRUNCATED => {
            Status::invalid_argument("the request ends inside a message")
        }
        _ => return response,
    };
    let headers = response.headers_mut();
    headers.remove("grpc-message");
    if rewritten.add_header(headers).is_err() {
        // Cannot happen for the fixed texts above; keep tonic's answer if it does.
        tracing::warn!("could not rewrite the status of a refused request");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: &Status) -> http::Response<()> {
        let mut response = http::Response::new(());
        status
            .add_header(response.headers_mut())
            .expect("valid status");
        response
    }

    fn code_of(response: &http::Response<()>) -> (Code, String) {
        let status = Status::from_header_map(response.headers()).expect("a status");
        (status.code(), status.message().to_owned())
    }

    #[test]
    fn the_size_limit_is_resource_exhausted() {
        let tonic_said = Status::out_of_range("Error, decoded message length too large");
        let (code, message) = code_of(&caller_fault_status(refused(&tonic_said)));
        assert_eq!(code, Code::ResourceExhausted);
        assert!(
            message.contains("decoded message length too large"),
            "{message}"
        );
    }

    #[test]
    fn a_truncated_body_is_invalid_argument() {
        let (code, _) = code_of(&caller_fault_status(refused(&Status::internal(TRUNCATED))));
        assert_eq!(code, Code::InvalidArgument);
    }

    #[test]
    fn other_answers_are_left_alone() {
        for status in [
            Status::internal("internal error"),
            Status::unavailable("the key store is unavailable; retry later"),
            Status::invalid_argument("x"),
        ] {
            let (code, message) = code_of(&caller_fault_status(refused(&status)));
            assert_eq!((code, message.as_str()), (status.code(), status.message()));
        }
        let plain = caller_fault_status(http::Response::new(()));
        assert!(Status::from_header_map(plain.headers()).is_none());
    }
}
