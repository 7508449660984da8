#!/usr/bin/env bash
# Two builds side by side, in ABBA order (A B B A A B B A): one run of the load generator per
# slot, against a fresh SQLite database each time, so a drift of the machine over the run
# affects both builds alike.
#
#   scripts/compare.sh OLD_BINARY NEW_BINARY [taskpulse-loadgen arguments]
#
# Either binary may be `sink`: the load generator's body-reading sink (`taskpulse-loadgen
# --sink`), the bare network path, so `scripts/compare.sh sink target/release/taskpulse` gives
# taskpulse's share of the limit under the same client. Each slot also prints the server's CPU
# time per 1,000 accepted updates (user + system, from /proc; with `--warm-up`, from the timed
# run's start).
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

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # run BINARY: prints accepted updates/s and CPU ms per 1,000 accepted
    rm -f "$WORK"/db*
    if [[ $1 == sink ]]; then
        "$LOADGEN" --sink "127.0.0.1:$PORT" 2>/dev/null &
        PID=$!
        sleep 0.3
    else
        "$1" serve --listen "127.0.0.1:$PORT" --database "sqlite://$WORK/db.sqlite" >"$WORK/log" 2>&1 &
        PID=$!
        for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.05; done
        kill -0 "$PID" 2>/dev/null || { echo "$1 did not start:" >&2; cat "$WORK/log" >&2; exit 1; }
    fi
    local t0 out t1 lg
    "$LOADGEN" --target "http://127.0.0.1:$PORT" --json "${ARGS[@]}" >"$WORK/out" 2>"$WORK/err" &
    lg=$!
    # With --warm-up, the server's CPU time counts from the timed run's start.
    if [[ " ${ARGS[*]} " == *" --warm-up "* ]]; then
        until grep -q "warm-up done" "$WORK/err" || ! kill -0 "$lg" 2>/dev/null; do sleep 0.01; done
    fi
    t0=$(cpu_ticks "$PID")
    wait "$lg" || { cat "$WORK/err" >&2; exit 1; }
    t1=$(cpu_ticks "$PID")
    out=$(cat "$WORK/out")
    jq -r --argjson ticks $((t1 - t0)) --argjson hz "$(getconf CLK_TCK)" \
        '"\(.accepted_per_second) \(if .accepted > 0 then $ticks * 1000 / $hz / (.accepted / 1000) else 0 end)"' <<<"$out"
    kill -TERM "$PID"
    wait "$PID" || true
    PID=""
}

# shellcheck source=lib/common.sh
source scripts/lib/common.sh
declare -a ra rb ca cb
for slot in A B B A A B B A; do
    bin=$([[ $slot == A ]] && echo "$A" || echo "$B")
    result=$(run "$bin")
    read -r rate cpu <<<"$result"
    if [[ $slot == A ]]; then ra+=("$rate"); ca+=("$cpu"); else rb+=("$rate"); cb+=("$cpu"); fi
    printf '%s %s %.0f updates/s, %.1f CPU ms per 1,000\n' "$slot" "$bin" "$rate" "$cpu"
done
ma=$(printf '%s\n' "${ra[@]}" | median)
mb=$(printf '%s\n' "${rb[@]}" | median)
printf 'median A %.0f, median B %.0f, B/A %.3f\n' "$ma" "$mb" "$(awk -v a="$ma" -v b="$mb" 'BEGIN {print b / a}')"
printf 'CPU ms per 1,000 accepted updates: median A %.1f, median B %.1f\n' \
    "$(printf '%s\n' "${ca[@]}" | median)" "$(printf '%s\n' "${cb[@]}" | median)"
