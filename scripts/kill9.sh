#!/usr/bin/env bash
# kill9.sh: crash safety of taskpulse under steady load.
#
# What it does: runs the release binary (`taskpulse serve`, built if missing) on a fresh SQLite
# file (or on DATABASE=postgres://... if set) with --progress-min-interval 1s, and repeats
# ITERATIONS times (default 20):
#   1. a load client (python3, stdlib only, 8 threads) starts tasks, reports progress every
#      step and completes each task after 10-300 steps, recording every acknowledged update;
#   2. after a random 2-4 s of load the server gets SIGKILL, and is started again;
#   3. checks, through the read API of the restarted server (memory is rebuilt from the store):
#      every acknowledged completion is COMPLETED, every acknowledged new task exists, and for
#      every unfinished task the stored progress is at least what was acknowledged one interval
#      (plus 0.5 s slack) before the kill: at most one interval of progress is lost.
# After the last iteration it stops the server with SIGTERM and runs `taskpulse check`, which
# must exit 0 (report-only findings are allowed, illegal states are not).
#
# How long: about 3-5 s per iteration, so about 1.5 minutes for 20.
# Usage: scripts/kill9.sh [ITERATIONS]      (env: DATABASE, TASKPULSE_BIN, KEEP=1 keeps the dir)
# Exit status: 0 when every iteration passed, 1 otherwise (the failing checks are printed).
set -euo pipefail

ITERATIONS="${1:-20}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${TASKPULSE_BIN:-$ROOT/target/release/taskpulse}"
if [[ ! -x "$BIN" ]]; then
    (cd "$ROOT" && cargo build --release --quiet)
fi
WORK="$(mktemp -d -t taskpulse-kill9-XXXXXX)"
DATABASE="${DATABASE:-sqlite://$WORK/kill9.db}"
cleanup() {
    if [[ -n "${KEEP:-}" ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

python3 - "$BIN" "$DATABASE" "$WORK" "$ITERATIONS" "$ROOT/scripts/lib" <<'PY'
import http.client, json, os, random, signal, subprocess, sys, threading, time

BIN, DATABASE, WORK, ITERATIONS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, sys.argv[5])
from bench import free_port  # noqa: E402
INTERVAL = 1.0  # --progress-min-interval
STEPS = (10, 300)  # progress updates before a task completes (random in this range)

PORT = free_port()
log = open(os.path.join(WORK, "serve.log"), "ab")

def start():
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPULSE_")}
    env["TASKPULSE_LOG"] = "info,sqlx=warn"
    p = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{PORT}", "--database", DATABASE,
                          "--progress-min-interval", "1s", "--check-interval", "0"],
                         stdout=log, stderr=log, env=env)
    deadline = time.time() + 15
    while time.time() < deadline:
        if p.poll() is not None:
            sys.exit(f"serve exited at start ({p.returncode}); see {WORK}/serve.log")
        try:
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=2)
            c.request("GET", "/readyz"); r = c.getresponse(); r.read(); c.close()
            if r.status == 200:
                return p
        except OSError:
            pass
        time.sleep(0.05)
    p.kill(); sys.exit("serve did not become ready within 15 s")

def body(tid, status, pct=None):
    u = {"taskId": tid, "workflowId": "wf-" + tid, "taskType": "encode", "workflowType": "k9",
         "status": status, "workerId": "w1", "updateTime": int(time.time() * 1000)}
    if pct is not None:
        u["progressPercent"] = pct
    return json.dumps(u)

class Load(threading.Thread):
    """Starts, progresses and completes tasks; records what was acknowledged."""
    def __init__(self, name):
        super().__init__(daemon=True)
        self.name_, self.stop = name, False
        self.completed = set()      # acknowledged completions
        self.started = set()        # acknowledged first updates
        self.progress = {}          # task -> [(ack time, pct)]
        self.n = 0
    def run(self):
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=15)
        tid = None
        while not self.stop:
            if tid is None:
                self.n += 1; tid = f"{self.name_}-{self.n}"; step = 0
                steps = random.randint(*STEPS)
            step += 1
            if step > steps:
                status, pct = "COMPLETED", 100.0
            else:
                status, pct = "IN_PROGRESS", float(step * 100 // (steps + 1))
            try:
                conn.request("POST", "/api/v1/updates", body(tid, status, pct),
                             {"Content-Type": "application/json"})
                r = conn.getresponse(); r.read()
            except (OSError, http.client.HTTPException):
                return  # the server is gone
            if r.status != 200:
                time.sleep(0.05); continue  # 503: retry the same update
            now = time.time()
            if step == 1:
                self.started.add(tid)
            if status == "COMPLETED":
                self.completed.add(tid); self.progress.pop(tid, None); tid = None
            else:
                self.progress.setdefault(tid, []).append((now, pct))
            time.sleep(0.01)

def get_task(conn, tid):
    conn.request("GET", f"/api/v1/tasks/{tid}"); r = conn.getresponse(); data = r.read()
    return json.loads(data) if r.status == 200 else None

failures, total_completed, total_checked, progress_checked = [], 0, 0, 0
server = start()
for it in range(1, ITERATIONS + 1):
    loads = [Load(f"i{it}t{k}") for k in range(8)]
    for l in loads: l.start()
    time.sleep(random.uniform(2.0, 4.0))
    killed_at = time.time()
    server.send_signal(signal.SIGKILL); server.wait()
    for l in loads: l.stop = True
    for l in loads: l.join(timeout=20)
    server = start()
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    bad = []
    completed = set().union(*(l.completed for l in loads))
    for tid in completed:
        t = get_task(conn, tid)
        if not t or t.get("status") != "COMPLETED":
            bad.append(f"{tid}: acknowledged COMPLETED, stored {t and t.get('status')}")
    for l in loads:
        for tid in l.started - l.completed:
            t = get_task(conn, tid)
            if t is None:
                bad.append(f"{tid}: acknowledged new task missing"); continue
            old_enough = [p for (at, p) in l.progress.get(tid, []) if at <= killed_at - INTERVAL - 0.5]
            if old_enough and t.get("status") != "COMPLETED":
                progress_checked += 1
                got = t.get("progressPercent") or 0
                if got + 1e-6 < max(old_enough):
                    bad.append(f"{tid}: progress {got} stored, {max(old_enough)} acknowledged "
                               f"more than one interval before the kill")
    conn.close()
    total_completed += len(completed)
    total_checked += len(completed) + sum(len(l.started - l.completed) for l in loads)
    print(f"iteration {it}/{ITERATIONS}: {len(completed)} acknowledged completions, "
          f"{sum(l.n for l in loads)} tasks, {'OK' if not bad else f'{len(bad)} FAILED'}", flush=True)
    failures.extend(f"iteration {it}: {b}" for b in bad)

server.send_signal(signal.SIGTERM)
try:
    rc = server.wait(timeout=15)
except subprocess.TimeoutExpired:
    server.kill(); rc = "timeout"
if rc != 0:
    failures.append(f"SIGTERM exit status {rc}")
check = subprocess.run([BIN, "check", "--database", DATABASE], capture_output=True, text=True, timeout=60)
print(f"taskpulse check: exit {check.returncode}")
if check.returncode != 0:
    failures.append(f"taskpulse check exit {check.returncode}: {check.stdout}{check.stderr}")
print(f"{ITERATIONS} kill -9 iterations, {total_completed} acknowledged completions, "
      f"{total_checked} tasks checked ({progress_checked} for lost progress), {len(failures)} failures")
for f in failures[:50]:
    print("  " + f)
sys.exit(1 if failures else 0)
PY
