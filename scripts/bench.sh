#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md: release build, everything on loopback, every run
# bounded. Each throughput figure is the median of RUNS runs (default 3; of an even count, the
# mean of the middle two: scripts/lib/common.sh).
#
#   scripts/bench.sh            # all sections
#   scripts/bench.sh ingest     # one section: ingest | writes | scrape | checker | pushgateway
#
# Long runs with checks of their own: scripts/soak.sh (30 min), scripts/flood.sh (10M task ids),
# scripts/kill9.sh (20 crashes).
#
# Needs PostgreSQL at $TASKPULSE_TEST_POSTGRES (scripts/test.sh starts it) for the PostgreSQL rows.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
RUNS="${RUNS:-3}"
SECS="${SECS:-10}"
PG_ADMIN="${TASKPULSE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}"
PG_BASE="${PG_ADMIN%/*}"
# BIN and LOADGEN may name other builds (to compare two builds side by side); by default the
# release build of this checkout, built first.
BIN="${BIN:-target/release/taskpulse}"
LOADGEN="${LOADGEN:-target/release/taskpulse-loadgen}"
PORT=19700
WORK="$(mktemp -d)"
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [[ $BIN == target/release/taskpulse || $LOADGEN == target/release/taskpulse-loadgen ]]; then
    cargo build --release -q
fi

log() { printf '%s\n' "$*" >&2; }

# start_taskpulse NAME ARGS... : serves on $PORT, waits until ready, sets TP_PID
start_taskpulse() {
    local name=$1
    shift
    "$BIN" serve --listen "127.0.0.1:$PORT" "$@" >"$WORK/$name.log" 2>&1 &
    TP_PID=$!
    PIDS+=("$TP_PID")
    for _ in $(seq 1 200); do
        curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    log "taskpulse did not become ready: $(tail -3 "$WORK/$name.log")"
    return 1
}

stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

fresh_pg() {
    PGOPTIONS=--client-min-messages=warning psql -q "$PG_ADMIN" -c "DROP DATABASE IF EXISTS taskpulse_bench" -c "CREATE DATABASE taskpulse_bench" >/dev/null
    echo "$PG_BASE/taskpulse_bench"
}

# shellcheck source=lib/common.sh
source scripts/lib/common.sh

# loadgen_median LABEL ARGS... : RUNS runs, prints "LABEL | updates/s | p50 ms | p99 ms"
loadgen_median() {
    local label=$1
    shift
    local rates=() p50s=() p99s=()
    for _ in $(seq 1 "$RUNS"); do
        local out
        out="$("$LOADGEN" --target "http://127.0.0.1:$PORT" --duration "${SECS}s" --json "$@")"
        rates+=("$(jq -r .accepted_per_second <<<"$out")")
        p50s+=("$(jq -r .latency_ms_p50 <<<"$out")")
        p99s+=("$(jq -r .latency_ms_p99 <<<"$out")")
        [[ "$(jq -r .errors <<<"$out")" == 0 ]] || log "$label: failed requests: $(jq -r .errors <<<"$out")"
    done
    printf '| %s | %.0f | %.2f | %.2f |\n' "$label" \
        "$(printf '%s\n' "${rates[@]}" | median)" \
        "$(printf '%s\n' "${p50s[@]}" | median)" \
        "$(printf '%s\n' "${p99s[@]}" | median)"
}

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

metric() { # metric NAME_WITH_LABELS
    curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'
}

section_ingest() {
    echo "### Ingest throughput (${RUNS} runs of ${SECS}s, median; loadgen and server share the 2 cores)"
    echo
    echo "| target | accepted updates/s | p50 ms | p99 ms |"
    echo "|---|---|---|---|"
    "$LOADGEN" --sink "127.0.0.1:$PORT" 2>/dev/null &
    local sink=$!
    PIDS+=("$sink")
    sleep 0.5
    loadgen_median "limit: body-reading sink, NDJSON 1000/request" --mode ndjson --batch 1000 --tasks 10000 --rate 0 --connections 2
    loadgen_median "limit: body-reading sink, single requests" --mode single --tasks 1000 --rate 0 --connections 4
    stop "$sink"
    start_taskpulse sqlite --database "sqlite://$WORK/ingest.db"
    loadgen_median "taskpulse SQLite, NDJSON 1000/request" --mode ndjson --batch 1000 --tasks 10000 --rate 0 --connections 2
    loadgen_median "taskpulse SQLite, single requests" --mode single --tasks 1000 --rate 0 --connections 4
    stop "$TP_PID"
    start_taskpulse postgres --database "$(fresh_pg)"
    loadgen_median "taskpulse PostgreSQL, NDJSON 1000/request" --mode ndjson --batch 1000 --tasks 10000 --rate 0 --connections 2
    loadgen_median "taskpulse PostgreSQL, single requests" --mode single --tasks 1000 --rate 0 --connections 4
    stop "$TP_PID"
    echo
}

section_writes() {
    local tasks=10000 rate=10 secs=60
    echo "### Write reduction: ${tasks} tasks x ${rate} updates/s x ${secs}s, --progress-min-interval 5s (SQLite)"
    echo
    start_taskpulse writes --database "sqlite://$WORK/writes.db" --progress-min-interval 5s
    local out
    out="$("$LOADGEN" --target "http://127.0.0.1:$PORT" --duration "${secs}s" --json \
        --mode ndjson --batch 1000 --tasks "$tasks" --rate "$rate" --connections 2 \
        --wait-fraction 0 --updates-per-task 1000000)"
    sleep 6 # let the last interval's coalesced values go out
    local accepted progress status
    accepted="$(jq -r .accepted <<<"$out")"
    progress="$(metric 'taskpulse_store_writes_total{kind="progress"}')"
    status="$(metric 'taskpulse_store_writes_total{kind="status"}')"
    stop "$TP_PID"
    local bound=$((tasks * secs / 5 + tasks))
    echo "| updates accepted (naive: one write each) | progress writes | status writes (new tasks) | stored writes | bound tasks/interval x ${secs}s + status | ratio to bound |"
    echo "|---|---|---|---|---|---|"
    printf '| %s | %s | %s | %s | %s | %.3f |\n' "$accepted" "$progress" "$status" \
        "$((progress + status))" "$bound" "$(echo "($progress + $status) / $bound" | bc -l)"
    echo
}

# load_tasks N : exactly N tasks with progress, one update each (each update starts a new task
# that stays unfinished), then waits for the writer to drain
load_tasks() {
    "$LOADGEN" --target "http://127.0.0.1:$PORT" --json --mode ndjson --batch 1000 \
        --tasks 10000 --rate 0 --connections 2 --wait-fraction 0 --never-finish \
        --updates-per-task 1 --max-updates "$1" --duration 30m >/dev/null
    for _ in $(seq 1 100); do
        [[ "$(metric taskpulse_store_pending_writes)" == "0" ]] && break
        sleep 0.1
    done
}

scrape_ms() {
    local t=()
    for _ in 1 2 3 4 5; do
        t+=("$(curl -s -o /dev/null -w '%{time_total}' "http://127.0.0.1:$PORT/metrics")")
    done
    printf '%s\n' "${t[@]}" | median | awk '{printf "%.1f", $1 * 1000}'
}

section_scrape() {
    echo "### /metrics with N tracked tasks (median of 5 scrapes) and resident memory (SQLite)"
    echo
    echo "| tasks | series cap | scrape ms | scrape bytes | RSS MiB | RSS per task (above an empty process) |"
    echo "|---|---|---|---|---|---|"
    local base
    start_taskpulse empty --database "sqlite://$WORK/empty.db"
    base="$(rss_kib "$TP_PID")"
    stop "$TP_PID"
    for n in 1000 10000 100000; do
        for cap in 2000 100000; do
            start_taskpulse "scrape-$n-$cap" --database "sqlite://$WORK/scrape-$n.db" --max-task-series "$cap"
            [[ $cap == 2000 ]] && load_tasks "$n"
            local ms bytes rss
            ms="$(scrape_ms)"
            bytes="$(curl -s "http://127.0.0.1:$PORT/metrics" | wc -c)"
            rss="$(rss_kib "$TP_PID")"
            printf '| %s | %s | %s | %s | %.0f | %.0f B |\n' "$n" "$cap" "$ms" "$bytes" \
                "$(echo "$rss / 1024" | bc -l)" "$(echo "($rss - $base) * 1024 / $n" | bc -l)"
            stop "$TP_PID"
        done
    done
    echo
    echo "(the cap-100000 rows are a restart on the same database: their RSS is after the rebuild from the store)"
    echo
    echo "### Rendering /metrics in process (cargo bench --bench scrape: no HTTP, no client)"
    echo
    cargo bench -q --bench scrape 2>/dev/null
    echo
}

section_checker() {
    local n=${CHECK_TASKS:-1000000}
    echo "### Rebuild and checker pass with ${n} stored tasks (SQLite)"
    echo
    start_taskpulse fill --database "sqlite://$WORK/big.db" --check-interval 0
    load_tasks "$n"
    local filled_rss
    filled_rss="$(rss_kib "$TP_PID")"
    stop "$TP_PID"
    local t0 t1
    t0=$(date +%s.%N)
    "$BIN" check --database "sqlite://$WORK/big.db" >/dev/null || true
    t1=$(date +%s.%N)
    start_taskpulse rebuild --database "sqlite://$WORK/big.db" --check-interval 0
    local rebuilt rss loaded
    rebuilt="$(grep -o 'tasks=[0-9]* took=[^ ]*' "$WORK/rebuild.log" | head -1)"
    loaded="$(grep -o 'tasks=[0-9]*' <<<"$rebuilt" | cut -d= -f2)"
    rss="$(rss_kib "$TP_PID")"
    stop "$TP_PID"
    echo "| what | figure |"
    echo "|---|---|"
    printf '| `taskpulse check` (one pass, all rules, process start included) | %.2f s |\n' "$(echo "$t1 - $t0" | bc -l)"
    printf '| start-up rebuild | %s |\n' "$rebuilt"
    printf '| RSS right after taking the %s tasks in | %.0f MiB (%.0f B per task) |\n' "$n" "$(echo "$filled_rss / 1024" | bc -l)" "$(echo "$filled_rss * 1024 / $n" | bc -l)"
    printf '| RSS after the rebuild | %.0f MiB (%.0f B per task) |\n' "$(echo "$rss / 1024" | bc -l)" "$(echo "$rss * 1024 / ${loaded:-$n}" | bc -l)"
    echo
}

# after_run PID SERIES: what a target on $PORT holds after the load, on one line: scrape ms
# (median of 5), /metrics bytes, samples of the per-task SERIES, RSS KiB
after_run() {
    local ms text
    ms="$(scrape_ms)"
    text="$(curl -s "http://127.0.0.1:$PORT/metrics")"
    echo "$ms $(wc -c <<<"$text") $(grep -c "^$2" <<<"$text") $(rss_kib "$1")"
}

section_pushgateway() {
    local tasks=1000 per_task=20 pgw_port=$((PORT + 10))
    if ! command -v prometheus-pushgateway >/dev/null; then
        # Debian's package, installed the way the test command installs Prometheus: no daemon
        # left running.
        (source scripts/test.sh && install_without_daemon prometheus-pushgateway prometheus-pushgateway prometheus-pushgateway)
    fi
    echo "### Side by side: the same per-task progress workload to a Prometheus Pushgateway and to taskpulse"
    echo
    echo "${tasks} tasks, single-update requests (the Pushgateway takes one group per request), 4 connections, each task finishes after ${per_task} updates and is replaced. ${RUNS} runs of ${SECS}s, median."
    echo
    echo "| target | accepted updates/s | p50 ms | p99 ms |"
    echo "|---|---|---|---|"
    prometheus-pushgateway --web.listen-address="127.0.0.1:$pgw_port" --persistence.file="" >"$WORK/pgw.log" 2>&1 &
    local pgw=$!
    PIDS+=("$pgw")
    sleep 1
    local saved_port=$PORT
    PORT=$pgw_port loadgen_median "Pushgateway $(prometheus-pushgateway --version 2>&1 | head -1 | awk '{print $3}')" \
        --protocol pushgateway --mode single --tasks "$tasks" --rate 0 --connections 4 --updates-per-task "$per_task" --wait-fraction 0
    local pgw_scrape pgw_bytes pgw_groups pgw_rss
    read -r pgw_scrape pgw_bytes pgw_groups pgw_rss < <(PORT=$pgw_port after_run "$pgw" loadgen_task_progress_ratio)
    stop "$pgw"
    PORT=$saved_port
    start_taskpulse pgw-side --database "sqlite://$WORK/side.db"
    loadgen_median "taskpulse (SQLite)" --mode single --tasks "$tasks" --rate 0 --connections 4 --updates-per-task "$per_task" --wait-fraction 0
    local tp_scrape tp_bytes tp_series tp_rss
    read -r tp_scrape tp_bytes tp_series tp_rss < <(after_run "$TP_PID" taskpulse_task_progress_ratio)
    stop "$TP_PID"
    echo
    echo "| after the runs | Pushgateway | taskpulse |"
    echo "|---|---|---|"
    echo "| /metrics scrape (median of 5) | ${pgw_scrape} ms | ${tp_scrape} ms |"
    echo "| /metrics size | ${pgw_bytes} B | ${tp_bytes} B |"
    echo "| per-task progress series exported | ${pgw_groups} | ${tp_series} |"
    printf '| resident memory | %.0f MiB | %.0f MiB |\n' "$(echo "$pgw_rss / 1024" | bc -l)" "$(echo "$tp_rss / 1024" | bc -l)"
    echo
    echo "Only ${tasks} tasks were running at any time. The Pushgateway still exports every finished task's group (until someone deletes it), so its series, scrape size and memory grow with every task ever run; taskpulse's per-task series are generated from current state and a finished task's series is gone."
    echo
}

command -v jq >/dev/null || { log "bench.sh needs jq (apt-get install jq)"; exit 1; }
sections=("${@:-ingest writes scrape checker pushgateway}")
for s in ${sections[*]}; do "section_$s"; done
