#!/usr/bin/env python3
"""Hostile input and overload at full size, against release builds (stdlib only).

    scripts/overload.py check [BIN]          the full-size cases of tests/api/hostile/
    scripts/overload.py compare OLD NEW      the before/after figures of BENCHMARKS.md

`check` runs the floods the test suite runs small, at the sizes of the findings, and fails
(exit 1) when a bound does not hold:
  - 4 bodies of 8 MiB of `[{},{},...]` at once: answers under 32 KiB, peak memory growth under
    4 x (8 MiB + 8 bytes per item) plus 64 MiB of slack;
  - 300 completions of 1 MiB through the worker proxy, the engine (a small HTTP server here:
    200 to every update, 500 to every look-up) never confirming them: memory growth under 64 MiB;
  - 50,000 distinct task types, workflow types and workers, a quarter finished: a scrape of at
    most 10,000 series and 2 MiB;
  - 10,000 short-lived pod names with --worker-expiry 5s: no worker series left 2 s after it.

`compare` measures both builds side by side, OLD NEW NEW OLD (ABBA), and prints medians:
  - memory: 100,000 tasks with 256-byte ids and 1 KiB messages: RSS growth per task, and the
    peak RSS of 300,000 such tasks under each build's default bound (NEW: --max-tracked-memory
    256MiB, to show it holds);
  - flap: 5,000 single requests alternating SCHEDULED and IN_PROGRESS for one task: store
    writes, history rows, requests per second;
  - scrapers: NDJSON ingest (5,000 updates per body, 2 connections, 10 s) with 50,000 tracked
    tasks, without and with 10 scrapers each fetching /metrics 10 times a second.

BIN defaults to target/release/taskpulse; the load generator is LOADGEN or
target/release/taskpulse-loadgen (build both with `cargo build --release`).
"""

import http.client
import http.server
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from bench import free_port, median, metric_sum, scrape, status_kib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADGEN = os.environ.get("LOADGEN", os.path.join(ROOT, "target/release/taskpulse-loadgen"))
FAILED = []


class Server:
    """`BIN serve` on a free port and a fresh SQLite file; stopped with SIGTERM."""

    def __init__(self, binary, args=()):
        self.dir = tempfile.mkdtemp(prefix="taskpulse-overload-")
        self.port = free_port()
        self.db = os.path.join(self.dir, "t.db")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPULSE_")}
        env["TASKPULSE_LOG"] = "warn"
        self.log = open(os.path.join(self.dir, "log"), "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--database",
             f"sqlite://{self.db}", *args],
            stdout=self.log, stderr=self.log, env=env)
        for _ in range(200):
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"{binary} did not start: {open(self.log.name).read()}")

    def request(self, method, path, body=None, headers=None, timeout=120):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def post_ndjson(self, lines):
        body = "\n".join(json.dumps(l) for l in lines).encode()
        status, text = self.request("POST", "/api/v1/updates", body,
                                    {"content-type": "application/x-ndjson"})
        if status != 200:
            raise SystemExit(f"ingest answered {status}: {text[:300]}")
        return json.loads(text)

    def metrics(self):
        return scrape(self.port, timeout=120)

    def metric(self, name):
        return metric_sum(self.metrics(), name)

    def memory_kib(self, field="VmRSS"):
        return status_kib(self.proc.pid, field)

    def settle(self):
        for _ in range(200):
            if self.metric("taskpulse_store_pending_writes") == 0:
                return
            time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
        subprocess.run(["rm", "-rf", self.dir])


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILED.append(what)


def supports(binary, flag):
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True).stdout
    return flag in out


# ---------------------------------------------------------------- check


def check_big_bodies(binary):
    s = Server(binary)
    n = (8 * 1024 * 1024 - 2) // 3
    body = b"[" + b",".join([b"{}"] * n) + b"]"
    before = s.memory_kib("VmHWM")
    answers = [None] * 4

    def send(i):
        answers[i] = s.request("POST", "/api/v1/updates", body,
                               {"content-type": "application/json"})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.time() - started
    grew = s.memory_kib("VmHWM") - before
    sizes = [len(a[1]) for a in answers]
    check(all(a[0] == 200 for a in answers) and max(sizes) < 32 * 1024,
          f"4 x 8 MiB of empty objects: answers of {max(sizes)} bytes at most ({took:.1f} s)")
    bound = 4 * (8 * 1024 + n * 8 // 1024) + 64 * 1024
    check(grew < bound, f"peak memory grew by {grew // 1024} MiB (bound {bound // 1024} MiB)")
    s.stop()


class FakeEngine(http.server.BaseHTTPRequestHandler):
    """Takes every update (200, the task id), fails every look-up (500)."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def do_GET(self):
        self.send_response(500)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def check_forwarded(binary):
    engine = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeEngine)
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    s = Server(binary, ["--conductor-url", f"http://127.0.0.1:{engine.server_port}"])
    before = s.memory_kib()
    blob = "x" * (1024 * 1024)
    for i in range(300):
        body = json.dumps({"taskId": f"big-{i}", "workflowInstanceId": "wf", "workerId": "w1",
                           "status": "COMPLETED", "outputData": {"blob": blob}}).encode()
        status, _ = s.request("POST", "/api/tasks", body, {"content-type": "application/json"})
        assert status == 200, status
    grew = s.memory_kib() - before
    kept = s.metric("taskpulse_conductor_unconfirmed_terminal_update_bytes")
    check(grew < 64 * 1024 and kept < 1024,
          f"300 forwarded completions of 1 MiB: memory grew by {grew // 1024} MiB, "
          f"{kept:.0f} bytes of them kept")
    s.stop()
    engine.shutdown()


def check_series(binary):
    s = Server(binary)
    n = 50_000
    for start in range(0, n, 5000):
        s.post_ndjson({"taskId": f"t{i}", "workflowId": f"wf{i}", "status": "IN_PROGRESS",
                       "taskType": f"type-{i}", "workflowType": f"flow-{i}",
                       "workerId": f"pod-{i}", "progressPercent": 10, "startTime": 1000,
                       "updateTime": 1000} for i in range(start, start + 5000))
    for start in range(0, n // 4, 5000):
        s.post_ndjson({"taskId": f"t{i}", "workflowId": f"wf{i}", "status": "COMPLETED",
                       "taskType": f"type-{i}", "updateTime": 2000}
                      for i in range(start, start + 5000))
    text = s.metrics()
    series = sum(1 for l in text.splitlines() if l and not l.startswith("#"))
    check(series <= 10_000 and len(text) <= 2 * 1024 * 1024,
          f"50,000 distinct types and workers: {series} series, {len(text)} bytes")
    s.stop()


def check_worker_expiry(binary):
    s = Server(binary, ["--worker-expiry", "5s", "--max-label-values", "100000"])
    for start in range(0, 10_000, 2000):
        lines = []
        for i in range(start, start + 2000):
            u = {"taskId": f"job-{i}", "workflowId": "wf", "taskType": "encode",
                 "status": "IN_PROGRESS", "workerId": f"pod-{i}-x7k2q", "updateTime": 1000}
            lines += [u, dict(u, status="COMPLETED", updateTime=2000)]
        s.post_ndjson(lines)
    count = lambda: sum(1 for l in s.metrics().splitlines()
                        if l.startswith("taskpulse_worker_last_seen_timestamp_seconds{"))
    during = count()
    time.sleep(5 + 2)  # the expiry, and a sweep (every quarter of it)
    after = count()
    check(during == 10_000 and after == 0,
          f"10,000 pod names: {during} worker series, {after} left 7 s later (--worker-expiry 5s)")
    s.stop()


# ---------------------------------------------------------------- compare


def long_task(i, message):
    return {"taskId": f"{i:06d}" + "t" * 250, "workflowId": f"{i:0>256}", "taskType": "encode",
            "workflowType": "media", "status": "IN_PROGRESS", "progressPercent": 10,
            "progressMessage": message, "updateTime": 1000}


def measure_memory(binary, budget):
    args = ["--max-tracked-memory", "256MiB"] if budget else []
    s = Server(binary, args)
    message = "m" * 1024
    time.sleep(0.5)
    base = s.memory_kib()
    for start in range(0, 100_000, 1000):
        s.post_ndjson(long_task(i, message) for i in range(start, start + 1000))
    s.settle()
    time.sleep(1)
    per_task = (s.memory_kib() - base) * 1024 / 100_000
    estimate = s.metric("taskpulse_tracked_memory_bytes") / max(s.metric("taskpulse_tracked_tasks"), 1)
    for start in range(100_000, 300_000, 1000):
        s.post_ndjson(long_task(i, message) for i in range(start, start + 1000))
    s.settle()
    time.sleep(2)
    peak = s.memory_kib("VmHWM") / 1024
    s.stop()
    return per_task, estimate, peak


def measure_flap(binary):
    s = Server(binary)
    c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    started = time.time()
    for i in range(5000):
        body = json.dumps({"taskId": "flap", "workflowId": "wf", "taskType": "encode",
                           "status": "SCHEDULED" if i % 2 == 0 else "IN_PROGRESS",
                           "updateTime": 1000 + i})
        c.request("POST", "/api/v1/updates", body, {"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
    rate = 5000 / (time.time() - started)
    c.close()
    s.settle()
    writes = s.metric("taskpulse_store_writes_total")
    s.proc.terminate()
    s.proc.wait(30)
    db = sqlite3.connect(s.db)
    history = db.execute("SELECT count(*) FROM task_events WHERE task_id = 'flap'").fetchone()[0]
    db.close()
    s.stop()
    return writes, history, rate


def loadgen(port, *args):
    out = subprocess.run([LOADGEN, "--target", f"http://127.0.0.1:{port}", "--json", *args],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def measure_scrapers(binary):
    s = Server(binary)
    loadgen(s.port, "--never-finish", "--updates-per-task", "1", "--max-updates", "50000",
            "--tasks", "5000", "--mode", "ndjson", "--batch", "5000", "--rate", "0",
            "--wait-fraction", "0", "--connections", "2", "--duration", "60s")
    s.settle()
    common = ["--mode", "ndjson", "--batch", "5000", "--tasks", "10000", "--rate", "0",
              "--updates-per-task", "100000000", "--wait-fraction", "0", "--connections", "2",
              "--duration", "10s"]
    alone = loadgen(s.port, *common)["accepted_per_second"]
    scraped = loadgen(s.port, *common, "--scrapers", "10", "--scrape-rate", "10")
    s.stop()
    return alone, scraped["accepted_per_second"], scraped["scrapes"], scraped["scrape_ms_p50"]


def compare(old, new):
    order = [("OLD", old), ("NEW", new), ("NEW", new), ("OLD", old)]
    results = {"OLD": {}, "NEW": {}}

    def run(section, fn, *extra):
        for name, binary in order:
            r = fn(binary, *extra) if not extra else fn(binary, *extra)
            results[name].setdefault(section, []).append(r)
            print(f"  {section} {name}: {r}", flush=True)

    print("memory: 100,000 tasks with 256-byte ids and 1 KiB messages, then 300,000", flush=True)
    for name, binary in order:
        budget = name == "NEW" and supports(binary, "--max-tracked-memory")
        r = measure_memory(binary, budget)
        results[name].setdefault("memory", []).append(r)
        print(f"  memory {name}: {r[0]:.0f} B/task (estimate {r[1]:.0f}), peak {r[2]:.0f} MiB "
              f"after 300,000", flush=True)
    print("flap: 5,000 single requests alternating SCHEDULED / IN_PROGRESS for one task", flush=True)
    run("flap", measure_flap)
    print("scrapers: NDJSON ingest with 50,000 tracked tasks, alone and with 10 scrapers at 10/s",
          flush=True)
    run("scrapers", measure_scrapers)

    med = median
    print("\nmedians (two runs each, ABBA order)")
    for name in ("OLD", "NEW"):
        m = results[name]["memory"]
        f = results[name]["flap"]
        sc = results[name]["scrapers"]
        print(f"{name}: memory {med([x[0] for x in m]):.0f} B/task, peak {med([x[2] for x in m]):.0f} MiB"
              f" after 300,000; flap {med([x[0] for x in f]):.0f} writes, {med([x[1] for x in f]):.0f}"
              f" history rows, {med([x[2] for x in f]):.0f} requests/s; ingest "
              f"{med([x[0] for x in sc]):.0f}/s alone, {med([x[1] for x in sc]):.0f}/s with scrapers"
              f" ({med([x[1] / x[0] for x in sc]) * 100:.0f} %), {med([x[2] for x in sc]):.0f} scrapes"
              f" of p50 {med([x[3] for x in sc]):.0f} ms")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "check":
        binary = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, "target/release/taskpulse")
        check_big_bodies(binary)
        check_forwarded(binary)
        check_series(binary)
        check_worker_expiry(binary)
        if FAILED:
            print(f"{len(FAILED)} checks failed")
            sys.exit(1)
        print("every check passed")
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
