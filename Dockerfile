# syntax=docker/dockerfile:1
# One image with all refstream binaries; each container picks its binary with `command`
# (docker-compose.yml, deploy/kubernetes/). Build: docker build -t refstream .

FROM rust:1-bookworm AS builder
# librdkafka is built from source by rdkafka-sys (C toolchain, make, perl for its configure
# scripts); zlib for the `libz` feature.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential zlib1g-dev pkg-config perl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only what the build reads: the workspace manifests, the crates, the Avro schemas embedded at
# build time, and tests/ (a workspace member whose manifest Cargo must see).
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
COPY schemas ./schemas
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --bins --locked \
    && mkdir -p /out \
    && cp target/release/attribution target/release/fraud-scorer target/release/reward-engine \
          target/release/outbox-relay target/release/links target/release/analytics \
          target/release/refstream /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin refstream
COPY --from=builder /out/ /usr/local/bin/
USER 10001
# /metrics and /healthz when REFSTREAM__METRICS__LISTEN=0.0.0.0:9100; links serves on 8080 and
# `refstream serve` (the API, with its own /metrics and /healthz) on 8081 when told to listen there.
EXPOSE 9100 8080 8081
# No ENTRYPOINT: compose / Kubernetes set the command (attribution, fraud-scorer, reward-engine,
# outbox-relay, links, analytics, `refstream serve`, or `refstream migrate` / `refstream topics create`).
CMD ["refstream", "--help"]
