#!/usr/bin/env bash
# image.sh: the taskpulse container image, built without a Docker daemon (umoci and skopeo,
# both Debian packages), from the release binary: target/image/taskpulse.oci.tar, an OCI
# archive whose image is tagged with the crate version.
#
#   scripts/image.sh [BINARY]       default: target/release/taskpulse (built when missing)
#
# What the image holds, and nothing else, is scripts/rootfs.sh's: the binary, the libraries it
# links, the user 65532, CA certificates and /data.
# Config: user 65532:65532, entrypoint `/usr/local/bin/taskpulse serve`, working directory
# /data, TASKPULSE_LISTEN=0.0.0.0:9477, TASKPULSE_DATABASE=sqlite:///data/taskpulse.db,
# SQLITE_TMPDIR=/data, port 9477/tcp, volume /data, and the OCI labels (title, version,
# revision, source, licenses, description).
#
# The image's name is the chart's default, $REPOSITORY:VERSION (helm/taskpulse/values.yaml,
# appVersion); the archive holds it under the tag VERSION. Push it there, or anywhere:
#   skopeo copy oci-archive:target/image/taskpulse.oci.tar docker://ghcr.io/taskpulse/taskpulse:0.1.0
# The test command runs this image under runc (tests/tools/image.rs). `Dockerfile` builds the
# same layout with Docker; it is not run here (no Docker daemon).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() { echo "image.sh: $*" >&2; exit 1; }
for tool in umoci skopeo; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (apt-get install umoci skopeo)"
done
BIN="${1:-target/release/taskpulse}"
if [[ $# -eq 0 && ! -x $BIN ]]; then
    cargo build --release --bin taskpulse
fi
[[ -x $BIN ]] || die "no binary at $BIN"

VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
SOURCE="https://github.com/taskpulse/taskpulse"
# the chart's default image.repository (tests/tools/image.rs keeps the two equal)
REPOSITORY="ghcr.io/taskpulse/taskpulse"
UID_GID=65532
OUT=target/image
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
LAYOUT="$WORK/layout"
BUNDLE="$WORK/bundle"

umoci init --layout "$LAYOUT"
umoci new --image "$LAYOUT:$VERSION"
umoci unpack --image "$LAYOUT:$VERSION" "$BUNDLE" >/dev/null
ROOTFS="$BUNDLE/rootfs"

bash scripts/rootfs.sh "$BIN" "$ROOTFS"

umoci repack --image "$LAYOUT:$VERSION" "$BUNDLE"
umoci config --image "$LAYOUT:$VERSION" \
    --os linux --architecture amd64 \
    --config.user "$UID_GID:$UID_GID" \
    --config.entrypoint /usr/local/bin/taskpulse --config.cmd serve \
    --config.workingdir /data \
    --config.env TASKPULSE_LISTEN=0.0.0.0:9477 \
    --config.env TASKPULSE_DATABASE=sqlite:///data/taskpulse.db \
    --config.env SQLITE_TMPDIR=/data \
    --config.exposedports 9477/tcp \
    --config.volume /data \
    --config.label org.opencontainers.image.title=taskpulse \
    --config.label "org.opencontainers.image.description=The monitoring sidecar for workflow engines" \
    --config.label "org.opencontainers.image.version=$VERSION" \
    --config.label "org.opencontainers.image.revision=$REVISION" \
    --config.label "org.opencontainers.image.source=$SOURCE" \
    --config.label org.opencontainers.image.licenses=Apache-2.0 \
    --config.label "org.opencontainers.image.ref.name=$REPOSITORY:$VERSION"
umoci gc --layout "$LAYOUT"

mkdir -p "$OUT"
rm -f "$OUT/taskpulse.oci.tar"
skopeo copy --quiet "oci:$LAYOUT:$VERSION" "oci-archive:$OUT/taskpulse.oci.tar:$VERSION"
echo "$OUT/taskpulse.oci.tar: $REPOSITORY:$VERSION ($(du -h "$OUT/taskpulse.oci.tar" | cut -f1))"
echo "push: skopeo copy oci-archive:$OUT/taskpulse.oci.tar docker://$REPOSITORY:$VERSION"
