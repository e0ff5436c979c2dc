use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "proto/keygate/v1/api_key.proto",
        "proto/keygate/v1/key_admin.proto",
        "proto/keygate/v1/key_verify.proto",
    ];

    let mut config = prost_build::Config::new();
    // A vendored protoc keeps `cargo build` free of system prerequisites.
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // Well-known types come from prost-types; the vendored include dir only resolves imports.
    let include = protoc_bin_vendored::include_path()?;
    // The messages that carry a key's secret get a `Debug` that prints none of
    // it (src/proto.rs), so logging one by mistake leaks nothing.
    // Maps in name order: a key's metadata then encodes the same way on every
    // instance and every call, and reads back sorted.
    config.btree_map(["."]);
    config.skip_debug([
        "keygate.v1.VerifyKeyRequest",
        "keygate.v1.CreateKeyResponse",
        "keygate.v1.RotateKeyResponse",
    ]);

    tonic_prost_build::configure()
        // Bytes that are not a valid message are the caller's fault: see src/api/grpc/codec.rs.
        .codec_path("crate::api::grpc::codec::Codec")
        .file_descriptor_set_path(out.join("keygate_descriptor.bin"))
        .compile_with_config(
            config,
            &protos.map(PathBuf::from),
            &[PathBuf::from("proto"), include],
        )?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }

    // Envoy's ext_authz API: only a descriptor set, for reflection (the Rust
    // types come from the envoy-types crate). See proto/vendor/README.md.
    let status = std::process::Command::new(protoc_bin_vendored::protoc_bin_path()?)
        .arg("-Iproto/vendor")
        .arg(format!(
            "-I{}",
            protoc_bin_vendored::include_path()?.display()
        ))
        .arg("--include_imports")
        .arg(format!(
            "--descriptor_set_out={}",
            out.join("envoy_authz_descriptor.bin").display()
        ))
        .arg("envoy/service/auth/v3/external_auth.proto")
        .status()?;
    if !status.success() {
        return Err(format!("protoc failed on proto/vendor: {status}").into());
    }
    println!("cargo:rerun-if-changed=proto/vendor");

    // Envoy's Authorization service, for keygate's own reading of its
    // CheckRequest (only the fields keygate reads; src/api/envoy/wire.rs) and
    // its own writing of the CheckResponse (src/api/envoy/answer.rs).
    let check = tonic_build::manual::Method::builder()
        .name("check")
        .route_name("Check")
        .input_type("crate::api::envoy::wire::CheckRequest")
        .output_type("crate::api::envoy::answer::CheckAnswer")
        .codec_path("crate::api::envoy::wire::CheckCodec")
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("Authorization")
        .package("envoy.service.auth.v3")
        .method(check)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .out_dir(&out)
        .compile(&[service]);
    Ok(())
}
