#!/usr/bin/env bash
# flood.sh: a flood of distinct task ids that never finish, against --max-tracked-tasks
# (the README's "Failure modes", hostile input). Memory must stay bounded while every task stays in the store.
#
# What it does: starts the release binary (`taskpulse serve`, built if missing) on a fresh
# SQLite file with --max-tracked-tasks CAP, and sends TOTAL updates, each for a new task that
# never finishes (`taskpulse-loadgen --never-finish --updates-per-task 1`, NDJSON batches of
# 1,000 over 2 connections). Every SAMPLE_EVERY seconds it records the server's RSS, the tracked
# non-terminal tasks (taskpulse_tasks) and the evictions (taskpulse_tasks_evicted_total) into
# samples.tsv. At the end it checks:
#   - the tracked tasks never exceeded the documented bound: CAP plus a tenth (the slack past
#     which a new task wakes the sweeper), plus the 2,000 updates one body per connection holds,
#   - evictions = accepted tasks - tracked tasks, and the store holds a row for every accepted one,
#   - memory stops growing: after the cap is reached, the peak RSS of the second half of the
#     samples is within RSS_GROWTH_LIMIT (default 1.5x) of the first half's,
#   - the log has no ERROR line.
#
# How long: TOTAL / (about 30,000 to 50,000 new tasks/s on 2 cores): 10M takes 4 to 6 minutes,
# and the SQLite file grows to about 3 GB (removed at the end unless KEEP=1).
# Usage: scripts/flood.sh [TOTAL]     e.g. scripts/flood.sh 300000
#   env: CAP (default 100000), SAMPLE_EVERY (default 5), RSS_GROWTH_LIMIT, TASKPULSE_BIN, KEEP=1
# Exit status: 0 when every check passed.
set -euo pipefail

TOTAL="${1:-10000000}"
CAP="${CAP:-100000}"
SAMPLE_EVERY="${SAMPLE_EVERY:-5}"
RSS_GROWTH_LIMIT="${RSS_GROWTH_LIMIT:-1.5}"
# shellcheck source=lib/long-run.sh
source "$(dirname "$0")/lib/long-run.sh"
long_run_setup
WORK="$(mktemp -d -t taskpulse-flood-XXXXXX)"
cleanup() {
    [[ -n "$LOADGEN_PID" ]] && kill "$LOADGEN_PID" 2>/dev/null || true
    [[ -n "$SERVER_PID" ]] && kill -9 "$SERVER_PID" 2>/dev/null || true
    if [[ -n "${KEEP:-}" ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

start_serve "$WORK/serve.log" --database "sqlite://$WORK/flood.db" --max-tracked-tasks "$CAP"

echo "flood: $TOTAL distinct unfinished tasks, --max-tracked-tasks $CAP (pid $SERVER_PID, $BASE)"
"$LOADGEN" --target "$BASE" --never-finish --updates-per-task 1 --wait-fraction 0 \
    --tasks 10000 --rate 0 --mode ndjson --batch 1000 --connections 2 \
    --max-updates "$TOTAL" --duration 2h --json >"$WORK/loadgen.json" 2>"$WORK/loadgen.err" &
LOADGEN_PID=$!

sample() {
    printf "%s\t%s\t%s\t%s\n" "$(( $(date +%s) - START ))" \
        "$(awk '/VmRSS/ { print $2 }' "/proc/$SERVER_PID/status")" \
        "$(metric taskpulse_tasks)" "$(metric taskpulse_tasks_evicted_total)" | tee -a "$WORK/samples.tsv"
}
printf "elapsed_s\trss_kib\ttracked_tasks\tevicted_total\n" | tee "$WORK/samples.tsv"
START=$(date +%s)
sample_during_load sample
wait_drained
sample
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" && rc=0 || rc=$?
SERVER_PID=""

python3 - "$WORK" "$CAP" "$rc" "$RSS_GROWTH_LIMIT" <<'PY'
import json, sqlite3, sys
work, cap, rc, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fail = []
lg = json.load(open(f"{work}/loadgen.json"))
accepted = lg["accepted"]
rows = [list(map(int, l.split("\t"))) for l in open(f"{work}/samples.tsv").read().splitlines()[1:] if l.strip()]
tracked_max = max(r[2] for r in rows)
last = rows[-1]
stored = sqlite3.connect(f"{work}/flood.db").execute("SELECT count(*) FROM tasks").fetchone()[0]
bound = cap + max(cap // 10, 1) + 2000
if tracked_max > bound:
    fail.append(f"tracked tasks reached {tracked_max}, above {bound} (cap {cap} + a tenth + bodies in flight)")
if last[3] != accepted - last[2]:
    fail.append(f"evictions {last[3]} != accepted {accepted} - tracked {last[2]}")
if stored != accepted:
    fail.append(f"the store holds {stored} tasks, {accepted} were accepted")
# Bounded means it stops growing: once the cap is reached, the second half of the samples peaks
# no higher than the first half did (times the limit). Peaks of windows, not single samples,
# which swing with the allocator and with checker passes.
at_cap = [r for r in rows if r[3] > 0]
half = len(at_cap) // 2
if half >= 2:
    first, second = max(r[1] for r in at_cap[:half]), max(r[1] for r in at_cap[half:])
    print(f"RSS KiB peak: {first} in the first half after the cap, {second} in the second (x{second / first:.3f})")
    if second > first * limit:
        fail.append(f"RSS grew from a peak of {first} KiB to {second} KiB (limit x{limit})")
errors = [l for l in open(f"{work}/serve.log", errors="replace") if " ERROR " in l]
if errors:
    fail.append(f"{len(errors)} ERROR lines in the log, first: {errors[0].strip()}")
if rc != 0:
    fail.append(f"serve exited {rc} after SIGTERM")
print(f"loadgen: {lg['updates_sent']} sent, {accepted} accepted, {lg['errors']} errors, "
      f"{lg['accepted_per_second']:.0f}/s over {lg['seconds']:.0f} s")
print(f"RSS KiB at the cap / max / end: {at_cap[0][1] if at_cap else '-'} / {max(r[1] for r in rows)} / {last[1]}; "
      f"tracked at most {tracked_max} (cap {cap}); evicted {last[3]}; rows stored {stored}")
for f in fail:
    print("FAIL: " + f)
print("flood: " + ("FAILED" if fail else "OK"))
sys.exit(1 if fail else 0)
PY
