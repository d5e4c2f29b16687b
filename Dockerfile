# The Shoal image: shoal-agent, shoal-origin and shoal-tracker on Debian bookworm.
#
#   docker build --build-arg SHOAL_GIT_COMMIT=$(git rev-parse --short HEAD) -t shoal:0.1.0 .
#
# The Helm chart in charts/shoal runs all three parts from this one image.

# The toolchain of the workspace's rust-version.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
# The whole workspace: cargo needs every member's manifest, and the lock file pins the build.
COPY . .
# `.git` stays out of the context, so `--version` names the commit passed here.
ARG SHOAL_GIT_COMMIT=unknown
RUN cargo build --release --locked -p shoal-agent -p shoal-origin -p shoal-tracker \
    && install -D -m 0755 -t /out target/release/shoal-agent target/release/shoal-origin target/release/shoal-tracker

FROM debian:bookworm-slim
# CA certificates for S3 and upstream registries over HTTPS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 shoal \
    && useradd --system --uid 10001 --gid shoal --home-dir /var/lib/shoal --shell /usr/sbin/nologin shoal \
    && install -d -o shoal -g shoal /var/lib/shoal
COPY --from=builder /out/ /usr/local/bin/
# 7600 tracker; 7700/7701 agent HTTP and peer; 7800/7801 origin HTTP and peer.
EXPOSE 7600 7700 7701 7800 7801
# Non-root by default. The chart runs `shoal-agent configure containerd` and the agent store's
# chown as root in init containers, because they write to the node's directories.
USER 10001:10001
WORKDIR /var/lib/shoal
CMD ["shoal-agent", "--help"]
