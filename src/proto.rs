//! Code generated from `proto/keygate/v1` by `build.rs`.

#![allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]

tonic::include_proto!("keygate.v1");

/// Encoded descriptors of the keygate protos, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keygate_descriptor");

/// Envoy's `envoy.service.auth.v3` API and its imports (`proto/vendor`), so
/// reflection lists `Authorization` beside keygate's own services.
pub const ENVOY_AUTHZ_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("envoy_authz_descriptor");
