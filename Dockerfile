# syntax=docker/dockerfile:1
# Build stage: the full toolchain; protoc comes vendored through build.rs.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY migrations migrations
COPY src src
RUN cargo build --release --locked --bin keygate

# Runtime stage: a small Debian with CA certificates, no toolchain, no shell tools
# beyond what the health check needs.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/keygate --create-home keygate
COPY --from=build /src/target/release/keygate /usr/local/bin/keygate
USER keygate
WORKDIR /var/lib/keygate
ENV KEYGATE_LISTEN=0.0.0.0:50051 \
    KEYGATE_METRICS_LISTEN=0.0.0.0:9464 \
    KEYGATE_DATABASE_URL=sqlite:///var/lib/keygate/keygate.db \
    KEYGATE_LOG_FORMAT=json
EXPOSE 50051 9464
VOLUME ["/var/lib/keygate"]
# grpc.health.v1 through the binary itself: no grpc_health_probe to ship.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["keygate", "health", "--addr", "127.0.0.1:50051"]
ENTRYPOINT ["keygate"]
CMD ["serve"]
