# syntax=docker/dockerfile:1
# Build stage: the full toolchain; protoc comes vendored through build.rs.
FROM rust:1.95-bookworm AS build
WORKDIR /src

# Dependencies first, against stub sources, so that this slow layer is rebuilt only
# when the manifest, the lock file, build.rs or the protos change, not on every
# edit of src/. Every target the workspace's manifests declare gets a stub so they load.
COPY Cargo.toml Cargo.lock build.rs ./
COPY bench/Cargo.toml bench/Cargo.toml
COPY proto proto
RUN mkdir -p src tests/it bench/src \
 && echo 'fn main() {}' > src/main.rs \
 && echo 'fn main() {}' > bench/src/main.rs \
 && touch src/lib.rs tests/it/main.rs \
 && cargo build --release --locked --bin keygate

COPY migrations migrations
COPY data data
COPY src src
# COPY keeps the files' own modification times, which can be older than the stub
# build's; cargo compares times, so without the touch it could ship the stub.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin keygate

# Runtime stage: a small Debian with CA certificates and no toolchain. /bin/sh stays:
# the health check below needs it.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/keygate --create-home keygate
COPY --from=build /src/target/release/keygate /usr/local/bin/keygate
USER keygate
WORKDIR /var/lib/keygate
# The SQLite default keeps its file in /var/lib/keygate: mount a volume there to keep
# keys across containers (`-v keygate-data:/var/lib/keygate`). No VOLUME line, so a
# deployment on MySQL does not collect an anonymous volume per container.
# These listeners are on the container's address, so keygate needs
# KEYGATE_ADMIN_TOKENS (it generates a token of its own only when every listener
# is on loopback), and a MySQL URL off the container is verified over TLS by
# default (ssl-mode=VERIFY_IDENTITY; give ssl-ca=/path/ca.pem for a private CA):
#   docker run -e KEYGATE_ADMIN_TOKENS=... \
#     -e KEYGATE_DATABASE_URL='mysql://u:p@db:3306/keygate?ssl-ca=/ca/ca.pem' ...
ENV KEYGATE_LISTEN=0.0.0.0:50051 \
    KEYGATE_METRICS_LISTEN=0.0.0.0:9464 \
    KEYGATE_DATABASE_URL=sqlite:///var/lib/keygate/keygate.db \
    KEYGATE_LOG_FORMAT=json
EXPOSE 50051 9464
# grpc.health.v1 through the binary itself: no grpc_health_probe to ship. It reads
# KEYGATE_HEALTH_TLS_CA / _DOMAIN (a TLS server) and KEYGATE_HEALTH_TLS_CERT / _KEY
# (a server that requires client certificates) from the environment, so TLS needs
# no change here. `|| exit 1`: Docker reserves exit code 2, which a usage error gives.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD keygate health || exit 1
ENTRYPOINT ["keygate"]
CMD ["serve"]
