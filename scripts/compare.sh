#!/usr/bin/env bash
# Two builds side by side, in ABBA order (A B B A A B B A): one run of the load generator per
# slot, against a fresh SQLite database each time, so a drift of the machine over the run
# affects both builds alike.
#
#   scripts/compare.sh OLD_BINARY NEW_BINARY [taskpulse-loadgen arguments]
#
# Default load: NDJSON, 1,000 updates per request, 10,000 tasks, as fast as answers come,
# 2 connections, 10 s. Prints each run and the median of each build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ $# -ge 2 ]] || { echo "usage: $0 OLD_BINARY NEW_BINARY [loadgen args]" >&2; exit 2; }
A=$1 B=$2
shift 2
LOADGEN="${LOADGEN:-target/release/taskpulse-loadgen}"
[[ -x $LOADGEN ]] || cargo build --release -q
ARGS=("$@")
[[ ${#ARGS[@]} -gt 0 ]] || ARGS=(--mode ndjson --batch 1000 --tasks 10000 --rate 0 --connections 2 --duration 10s)
WORK="$(mktemp -d)"
PORT=19713
PID=""
trap '[[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$WORK"' EXIT

run() { # run BINARY: prints accepted updates/s
    rm -f "$WORK"/db*
    "$1" serve --listen "127.0.0.1:$PORT" --database "sqlite://$WORK/db.sqlite" >"$WORK/log" 2>&1 &
    PID=$!
    for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.05; done
    "$LOADGEN" --target "http://127.0.0.1:$PORT" --json "${ARGS[@]}" | jq -r .accepted_per_second
    kill -TERM "$PID"
    wait "$PID" || true
    PID=""
}

# shellcheck source=lib/common.sh
source scripts/lib/common.sh
declare -a ra rb
for slot in A B B A A B B A; do
    if [[ $slot == A ]]; then r=$(run "$A"); ra+=("$r"); else r=$(run "$B"); rb+=("$r"); fi
    printf '%s %s %.0f\n' "$slot" "$([[ $slot == A ]] && echo "$A" || echo "$B")" "$r"
done
ma=$(printf '%s\n' "${ra[@]}" | median)
mb=$(printf '%s\n' "${rb[@]}" | median)
printf 'median A %.0f, median B %.0f, B/A %.2f\n' "$ma" "$mb" "$(echo "$mb / $ma" | bc -l)"
