# Shared by the long-run scripts (soak.sh, flood.sh); sourced, not run. It sources common.sh.
# They serve the release binary on a free port, load it, and read its metrics while it works.
#
# After `long_run_setup`: BIN and LOADGEN (built if missing), PORT, BASE. `start_serve LOG ARGS...` sets
# SERVER_PID. The caller's cleanup kills SERVER_PID and LOADGEN_PID.

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

long_run_setup() {
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    BIN="${TASKPULSE_BIN:-$root/target/release/taskpulse}"
    LOADGEN="${TASKPULSE_LOADGEN:-$root/target/release/taskpulse-loadgen}"
    if [[ ! -x "$BIN" || ! -x "$LOADGEN" ]]; then
        (cd "$root" && cargo build --release --quiet)
    fi
    PORT="$(free_port)"
    BASE="http://127.0.0.1:$PORT"
    SERVER_PID=""
    LOADGEN_PID=""
}

# start_serve LOG ARGS...: `taskpulse serve` on $PORT with ARGS, without the caller's
# TASKPULSE_CONFIG, logging to LOG; returns once /readyz answers, or exits with the log if serve
# stops first.
start_serve() {
    local log="$1"
    shift
    env -u TASKPULSE_CONFIG TASKPULSE_LOG="info,sqlx=warn" "$BIN" serve --listen "127.0.0.1:$PORT" \
        "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 200); do
        curl -fsS "$BASE/readyz" >/dev/null 2>&1 && return 0
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$log"; echo "serve exited" >&2; exit 1; }
        sleep 0.1
    done
    echo "serve not ready within 20 s" >&2
    exit 1
}

# metric NAME: the sum of a family's samples in one scrape (0 if absent).
metric() {
    curl -fsS "$BASE/metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2 } END { printf "%d\n", s + 0 }'
}

# wait_drained: until no store write is pending (at most 10 s).
wait_drained() {
    for _ in $(seq 1 100); do
        [[ "$(metric taskpulse_store_pending_writes)" == "0" ]] && return 0
        sleep 0.1
    done
}

# sample_during_load FUNCTION: calls FUNCTION every $SAMPLE_EVERY seconds while the load
# generator (LOADGEN_PID) runs; then exits with its stderr ($WORK/loadgen.err) if it failed.
sample_during_load() {
    while kill -0 "$LOADGEN_PID" 2>/dev/null; do
        "$1"
        for _ in $(seq 1 "$SAMPLE_EVERY"); do
            kill -0 "$LOADGEN_PID" 2>/dev/null || break
            sleep 1
        done
    done
    wait "$LOADGEN_PID" || { cat "$WORK/loadgen.err"; echo "loadgen failed" >&2; exit 1; }
    LOADGEN_PID=""
}
