//! What the two hand-written answers (`grpc::answer`, `envoy::answer`) share:
//! framing a length-delimited field, and the decoding half of
//! `prost::Message`, which an answer the server only writes never uses.

use prost::{
    bytes::BufMut,
    encoding::{self, WireType},
};

/// A length-delimited field of `len` bytes, with its tag and length.
pub fn field_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

/// A length-delimited field's tag and length; its `len` bytes follow.
pub fn put_field_head(tag: u32, len: usize, buf: &mut impl BufMut) {
    encoding::encode_key(tag, WireType::LengthDelimited, buf);
    encoding::encode_varint(len as u64, buf);
}

/// `merge_field` and `clear` of a message the server only writes: decoding
/// skips every field (the server never reads one).
macro_rules! write_only {
    () => {
        fn merge_field(
            &mut self,
            tag: u32,
            wire_type: prost::encoding::WireType,
            buf: &mut impl prost::bytes::Buf,
            ctx: prost::encoding::DecodeContext,
        ) -> Result<(), prost::DecodeError> {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }

        fn clear(&mut self) {
            *self = Self::default();
        }
    };
}
pub(crate) use write_only;
