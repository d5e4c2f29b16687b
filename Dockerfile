# The Shoal image: shoal-agent, shoal-origin and shoal-tracker on Debian bookworm.
#
#   docker build -t shoal:0.1.0 --build-arg SHOAL_GIT_COMMIT=$(git rev-parse --short HEAD) .
#
# The Helm chart in charts/shoal runs all three parts from this one image. The dependencies
# are built in a layer of their own (cargo-chef), which a change to Shoal's own code leaves
# cached: only the workspace's crates are rebuilt.

# The toolchain of the workspace's rust-version.
FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.77
WORKDIR /src

# The dependency recipe: every manifest and the lock file, without the sources.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Changes only when a manifest or Cargo.lock does.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# `.git` stays out of the context, so `--version` and shoal_build_info name the commit passed here.
ARG SHOAL_GIT_COMMIT=unknown
ENV SHOAL_GIT_COMMIT=${SHOAL_GIT_COMMIT}
RUN cargo build --release --locked -p shoal-agent -p shoal-origin -p shoal-tracker \
    && install -D -m 0755 -t /out target/release/shoal-agent target/release/shoal-origin target/release/shoal-tracker

FROM debian:bookworm-slim
ARG VERSION=0.1.0
ARG SHOAL_GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="shoal" \
      org.opencontainers.image.description="Peer-to-peer distribution of container image blobs: agent, origin and tracker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${SHOAL_GIT_COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
# CA certificates for S3 and upstream registries over HTTPS (the native roots the binaries
# load beside a configured CA bundle).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 shoal \
    && useradd --system --uid 10001 --gid shoal --home-dir /var/lib/shoal --shell /usr/sbin/nologin shoal \
    && install -d -o shoal -g shoal /var/lib/shoal
COPY --from=builder /out/ /usr/local/bin/
COPY LICENSE /usr/share/doc/shoal/LICENSE
# 7600 tracker; 7700/7701/7702 agent API, peer and metrics; 7800/7801 origin HTTP and peer.
EXPOSE 7600 7700 7701 7702 7800 7801
# Non-root by default. The chart runs `shoal-agent configure` and the agent store's chown as
# root in init containers, because they write to the node's directories.
USER 10001:10001
WORKDIR /var/lib/shoal
CMD ["shoal-agent", "--help"]
