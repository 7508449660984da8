#!/usr/bin/env bash
# rootfs.sh: the container image's file system, the same for both ways of building it
# (scripts/image.sh with umoci here, `Dockerfile` with Docker).
#
#   scripts/rootfs.sh BINARY ROOTFS
#
# Writes into ROOTFS (which must exist), and nothing else:
#   /usr/local/bin/taskpulse        the binary, debug info stripped (symbols kept: backtraces)
#   the shared libraries `ldd` lists for it, at their paths, and the dynamic loader
#   /etc/passwd, /etc/group         the user and group taskpulse, 65532:65532 (no shell)
#   /etc/ssl/certs/ca-certificates.crt   for an https:// --conductor-url
#   /data                           owned by 65532: the SQLite file, its WAL and temp files
#   /tmp                            1777, for anything that insists on one
set -euo pipefail

die() { echo "rootfs.sh: $*" >&2; exit 1; }
[[ $# -eq 2 ]] || die "usage: rootfs.sh BINARY ROOTFS"
BIN="$1" ROOTFS="$2"
for tool in ldd strip; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed (apt-get install binutils libc-bin)"
done
[[ -x $BIN ]] || die "no binary at $BIN"
[[ -d $ROOTFS ]] || die "no directory at $ROOTFS"
CA=/etc/ssl/certs/ca-certificates.crt
[[ -f $CA ]] || die "$CA is missing (apt-get install ca-certificates)"
UID_GID=65532

install -D -m 755 "$BIN" "$ROOTFS/usr/local/bin/taskpulse"
strip --strip-debug "$ROOTFS/usr/local/bin/taskpulse"
# every library the binary links, and the loader, copied with their directories
for lib in $(ldd "$BIN" | grep -o '/[^ ]*'); do
    cp -L --parents "$lib" "$ROOTFS/"
done
install -D -m 644 "$CA" "$ROOTFS$CA"
mkdir -p "$ROOTFS/etc" "$ROOTFS/data" "$ROOTFS/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\ntaskpulse:x:%s:%s:taskpulse:/data:/sbin/nologin\n' \
    "$UID_GID" "$UID_GID" >"$ROOTFS/etc/passwd"
printf 'root:x:0:\ntaskpulse:x:%s:\n' "$UID_GID" >"$ROOTFS/etc/group"
chown "$UID_GID:$UID_GID" "$ROOTFS/data"
chmod 1777 "$ROOTFS/tmp"
