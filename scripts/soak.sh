#!/usr/bin/env bash
# soak.sh: taskpulse at a steady load against PostgreSQL for a long time.
#
# What it does: creates a fresh database on the PostgreSQL server at PG_ADMIN_URL (default
# postgres://postgres@127.0.0.1:5432/postgres), starts the release binary (`taskpulse serve`,
# built if missing) on it, and runs `taskpulse-loadgen` against it for DURATION at a steady
# rate (TASKS tasks x RATE updates/s each; tasks complete and new ones start all along). Every
# SAMPLE_EVERY it samples the server's RSS (/proc/PID/status VmRSS), the size of /metrics, the
# pending writes and the tracked tasks, into samples.tsv. At the end it waits for the writer to
# drain, snapshots the in-memory tasks (GET /api/v1/tasks), stops the server with SIGTERM (which
# flushes), and checks:
#   - the log has no ERROR line (and reports the WARN count),
#   - every task's final status and progress in memory is what the store holds,
#   - `taskpulse check` exits 0,
#   - RSS and the /metrics size are flat after warm-up: after the terminal retention (11 min;
#     finished tasks stay in memory 10 min), the peak of the second half of the samples is
#     within RSS_GROWTH_LIMIT (default 1.5x) of the peak of the first half.
#
# How long: DURATION (default 30m) plus about 20 s to start and check.
# Usage: scripts/soak.sh [DURATION]            e.g. scripts/soak.sh 2m
#   env: PG_ADMIN_URL, TASKS (default 500), RATE (default 2), SAMPLE_EVERY (default 30),
#        TASKPULSE_BIN, KEEP=1 (keep the work dir and the database)
# Exit status: 0 when every check passed.
set -euo pipefail

DURATION="${1:-30m}"
TASKS="${TASKS:-500}"
RATE="${RATE:-2}"
SAMPLE_EVERY="${SAMPLE_EVERY:-30}"
RSS_GROWTH_LIMIT="${RSS_GROWTH_LIMIT:-1.5}"
PG_ADMIN_URL="${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
# shellcheck source=lib/long-run.sh
source "$(dirname "$0")/lib/long-run.sh"
long_run_setup
command -v psql >/dev/null || { echo "soak.sh needs psql" >&2; exit 2; }
command -v jq >/dev/null || { echo "soak.sh needs jq" >&2; exit 2; }

WORK="$(mktemp -d -t taskpulse-soak-XXXXXX)"
DBNAME="taskpulse_soak_$(date +%s)"
DATABASE="${PG_ADMIN_URL%/*}/$DBNAME"
cleanup() {
    [[ -n "$LOADGEN_PID" ]] && kill "$LOADGEN_PID" 2>/dev/null || true
    [[ -n "$SERVER_PID" ]] && kill -9 "$SERVER_PID" 2>/dev/null || true
    if [[ -n "${KEEP:-}" ]]; then
        echo "kept $WORK and database $DBNAME"
    else
        psql -q "$PG_ADMIN_URL" -c "DROP DATABASE IF EXISTS $DBNAME" >/dev/null 2>&1 || true
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

to_seconds() {
    local d="$1"
    case "$d" in
        *h) echo $(( ${d%h} * 3600 )) ;;
        *m) echo $(( ${d%m} * 60 )) ;;
        *s) echo "${d%s}" ;;
        *) echo "$d" ;;
    esac
}
SECONDS_TOTAL="$(to_seconds "$DURATION")"

psql -q "$PG_ADMIN_URL" -c "CREATE DATABASE $DBNAME" >/dev/null
start_serve "$WORK/serve.log" --database "$DATABASE" --progress-min-interval 5s

echo "soak: $DURATION, $TASKS tasks x $RATE/s against $DBNAME (pid $SERVER_PID, $BASE)"
"$LOADGEN" --target "$BASE" --tasks "$TASKS" --rate "$RATE" --duration "${SECONDS_TOTAL}s" \
    --mode ndjson --batch 200 --connections 2 --updates-per-task 50 --json >"$WORK/loadgen.json" 2>"$WORK/loadgen.err" &
LOADGEN_PID=$!

printf "elapsed_s\trss_kib\tmetrics_bytes\tpending_writes\ttracked_tasks\n" | tee "$WORK/samples.tsv"
START=$(date +%s)
sample() {
    printf "%s\t%s\t%s\t%s\t%s\n" "$(( $(date +%s) - START ))" \
        "$(awk '/VmRSS/ { print $2 }' "/proc/$SERVER_PID/status")" \
        "$(curl -fsS "$BASE/metrics" | wc -c)" \
        "$(metric taskpulse_store_pending_writes)" "$(metric taskpulse_tasks)" | tee -a "$WORK/samples.tsv"
}
sample_during_load sample

# Let the writer drain and the coalesced progress reach its interval, then snapshot memory.
wait_drained
sleep 6
# Every unfinished task, and the most recent finished ones: up to 10 pages of 1,000 (the most the
# list API answers at once) each, one page a line.
for what in "status=IN_PROGRESS&" "status=SCHEDULED&" ""; do
    cursor=""
    for _ in $(seq 1 10); do
        page="$(curl -fsS "$BASE/api/v1/tasks?${what}limit=1000${cursor:+&cursor=$cursor}")"
        echo "$page"
        cursor="$(jq -r '.next // empty | @uri' <<<"$page")"
        [[ -n $cursor ]] || break
    done
done >"$WORK/memory.json"
kill -TERM "$SERVER_PID"
for _ in $(seq 1 150); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$SERVER_PID" 2>/dev/null; then echo "serve did not stop within 15 s" >&2; exit 1; fi
wait "$SERVER_PID" && rc=0 || rc=$?
SERVER_PID=""

psql -qAt "$DATABASE" -F $'\t' -c "SELECT task_id, status, coalesce(progress::text, '') FROM tasks" >"$WORK/stored.tsv"
"$BIN" check --database "$DATABASE" >"$WORK/check.out" 2>&1 && check_rc=0 || check_rc=$?

python3 - "$WORK" "$rc" "$check_rc" "$RSS_GROWTH_LIMIT" <<'PY'
import json, sys
work, rc, check_rc, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fail = []
log = open(f"{work}/serve.log", errors="replace").read().splitlines()
errors = [l for l in log if " ERROR " in l]
warns = [l for l in log if " WARN " in l]
if errors:
    fail.append(f"{len(errors)} ERROR lines in the log, first: {errors[0]}")
if rc != 0:
    fail.append(f"serve exited {rc} after SIGTERM")
if check_rc != 0:
    fail.append(f"taskpulse check exited {check_rc}: " + open(f"{work}/check.out").read()[-2000:])
by_id = {}
for line in open(f"{work}/memory.json"):
    if line.strip():
        for t in json.loads(line)["tasks"]:
            by_id[t["taskId"]] = t
mem = list(by_id.values())
stored = {}
for line in open(f"{work}/stored.tsv"):
    tid, status, progress = line.rstrip("\n").split("\t")
    stored[tid] = (status, float(progress) if progress else None)
mismatch = []
for t in mem:
    s = stored.get(t["taskId"])
    want = (t["status"], t.get("progressPercent"))
    if s is None or s[0] != want[0] or (want[1] is not None and abs((s[1] or 0) - want[1]) > 1e-3):
        mismatch.append(f"{t['taskId']}: memory {want}, store {s}")
if mismatch:
    fail.append(f"{len(mismatch)} of {len(mem)} tasks differ between memory and store, e.g. {mismatch[:3]}")
rows = [l.split("\t") for l in open(f"{work}/samples.tsv").read().splitlines()[1:]]
rss = [int(r[1]) for r in rows if r[1]]
# Finished tasks stay in memory for --terminal-retention (10 min), so memory grows for the
# first 10 minutes by design. After that, "flat" means the second half of the remaining
# samples peaks no higher than the first half did (times the limit): single samples swing with
# the allocator and the moment of the scrape, so peaks of windows are compared, not two samples.
after = [r for r in rows if int(r[0]) >= 660] or rows[len(rows) // 4:]
half = len(after) // 2
if half >= 2:
    for col, what in ((1, "RSS (KiB)"), (2, "/metrics bytes")):
        first = max(int(r[col]) for r in after[:half])
        second = max(int(r[col]) for r in after[half:])
        print(f"{what}: peak {first} in the first half after warm-up, {second} in the second (x{second / first:.3f})")
        if second > first * limit:
            fail.append(f"{what} grew from a peak of {first} to {second} (limit x{limit})")
lg = open(f"{work}/loadgen.json").read()
print(f"loadgen: {lg.strip()[:600]}")
print(f"samples: {len(rows)}; RSS KiB first/max/last: {rss[0] if rss else '-'}/{max(rss) if rss else '-'}/{rss[-1] if rss else '-'}; "
      f"/metrics bytes last: {rows[-1][2] if rows else '-'}")
print(f"log: {len(errors)} ERROR, {len(warns)} WARN; tasks in memory at the end: {len(mem)}, rows stored: {len(stored)}, "
      f"memory/store mismatches: {len(mismatch)}; serve exit {rc}; check exit {check_rc}")
for f in fail:
    print("FAIL: " + f)
print("soak: " + ("FAILED" if fail else "OK"))
sys.exit(1 if fail else 0)
PY
