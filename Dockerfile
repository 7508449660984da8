# The taskpulse image for those who build with Docker (or Podman, or BuildKit):
#
#   docker build -t ghcr.io/taskpulse/taskpulse:0.1.0 .
#
# The same file system as scripts/image.sh (both run scripts/rootfs.sh: the binary, the
# libraries it links, the user 65532, CA certificates, /data) and the same configuration.
# scripts/image.sh is the one the test command builds and runs under runc (tests/tools/image.rs);
# this file is not built here, for want of a Docker daemon.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin taskpulse \
    && mkdir /rootfs \
    && bash scripts/rootfs.sh target/release/taskpulse /rootfs

FROM scratch
COPY --from=build /rootfs /
USER 65532:65532
WORKDIR /data
ENV TASKPULSE_LISTEN=0.0.0.0:9477 \
    TASKPULSE_DATABASE=sqlite:///data/taskpulse.db \
    SQLITE_TMPDIR=/data
EXPOSE 9477/tcp
VOLUME /data
ARG REVISION=unknown
LABEL org.opencontainers.image.title="taskpulse" \
      org.opencontainers.image.description="The monitoring sidecar for workflow engines" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/taskpulse/taskpulse" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.ref.name="ghcr.io/taskpulse/taskpulse:0.1.0"
ENTRYPOINT ["/usr/local/bin/taskpulse"]
CMD ["serve"]
