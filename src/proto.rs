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

/// How a secret shows in `Debug`: whether one is there, never what it is.
fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { "<redacted>" }
}

impl std::fmt::Debug for VerifyKeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so a field added to the message must be added here.
        let Self {
            key,
            required_scopes,
            origin,
            referer,
            organization_id,
            cost,
            client_ip,
            client_principal,
        } = self;
        f.debug_struct("VerifyKeyRequest")
            .field("key", &redacted(key))
            .field("required_scopes", required_scopes)
            .field("origin", origin)
            .field("referer", referer)
            .field("organization_id", organization_id)
            .field("cost", cost)
            .field("client_ip", client_ip)
            .field("client_principal", client_principal)
            .finish()
    }
}

impl std::fmt::Debug for CreateKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { key, secret } = self;
        f.debug_struct("CreateKeyResponse")
            .field("key", key)
            .field("secret", &redacted(secret))
            .finish()
    }
}

impl std::fmt::Debug for RotateKeyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            key,
            secret,
            previous_key,
        } = self;
        f.debug_struct("RotateKeyResponse")
            .field("key", key)
            .field("secret", &redacted(secret))
            .field("previous_key", previous_key)
            .finish()
    }
}
