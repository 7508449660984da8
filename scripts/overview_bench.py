#!/usr/bin/env python3
"""The status page's overview at 1,000,000 tracked tasks against /healthz (stdlib only).

    scripts/overview_bench.py            (TASKS=1000000 by default)

A fresh SQLite store; `taskpulse serve` takes TASKS in-flight tasks with progress (NDJSON
bodies of 10,000, 50 task types); once their store writes are done, the first
`GET /api/v1/overview` is timed (it waits for one walk of the tracked tasks: the walk's cost).
Then 7 rounds: 1.2 s after the last one (the overview is stale), 4 overview requests at once
(they start a walk), and 30 ms later one `/healthz`, timed. Prints the walk, `/healthz` during
walks and the overview requests' own times. `/healthz` waiting about as long as a walk means
requests wait behind it.

Needs the release build (`cargo build --release`); TASKPULSE_BIN overrides the binary.
"""

import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from bench import free_port, median  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("TASKPULSE_BIN", os.path.join(ROOT, "target/release/taskpulse"))
TASKS = int(os.environ.get("TASKS", "1000000"))


def request(port, method, path, body=None, headers=None):
    """One request on a new connection: (status, body, seconds)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    took = time.perf_counter() - started
    c.close()
    return r.status, data, took


def wait_ready(port, proc):
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"taskpulse exited with {proc.returncode}")
        try:
            if request(port, "GET", "/healthz")[0] == 200:
                return
        except OSError:
            time.sleep(0.1)
    sys.exit("taskpulse did not answer /healthz within 30 s")


def ingest(port, n):
    now = int(time.time() * 1000)
    for start in range(0, n, 10_000):
        lines = [
            json.dumps({"taskId": f"t{i:07d}", "workflowId": f"wf-{i}", "taskType": f"type-{i % 50}",
                        "workflowType": "media", "status": "IN_PROGRESS",
                        "progressPercent": i % 90, "updateTime": now})
            for i in range(start, min(start + 10_000, n))
        ]
        status, body, _ = request(port, "POST", "/api/v1/updates", ("\n".join(lines) + "\n").encode(),
                                  {"content-type": "application/x-ndjson"})
        if status != 200:
            sys.exit(f"ingest answered {status}: {body[:300]!r}")


def writes_pending(port):
    text = request(port, "GET", "/metrics")[1].decode()
    for line in text.splitlines():
        if line.startswith("taskpulse_store_pending_writes "):
            return float(line.split()[1])
    return 0.0


def main():
    with tempfile.TemporaryDirectory() as dir:
        port = free_port()
        proc = subprocess.Popen(
            [BIN, "serve", "--listen", f"127.0.0.1:{port}", "--max-pending-writes", "2000000",
             "--database", f"sqlite://{dir}/t.db"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(port, proc)
            started = time.perf_counter()
            ingest(port, TASKS)
            print(f"{TASKS:,} tasks taken in {time.perf_counter() - started:.1f} s", flush=True)
            while writes_pending(port) > 0:
                time.sleep(0.5)
            _, body, walk = request(port, "GET", "/api/v1/overview")
            assert json.loads(body)["inFlight"]["total"] == TASKS
            print(f"one walk (the first overview request): {walk * 1000:.0f} ms", flush=True)
            healthz, overviews = [], []
            for _ in range(7):
                time.sleep(1.2)
                took = []
                pages = [threading.Thread(target=lambda: took.append(request(port, "GET", "/api/v1/overview")[2]))
                         for _ in range(4)]
                for p in pages:
                    p.start()
                time.sleep(0.03)
                healthz.append(request(port, "GET", "/healthz")[2])
                for p in pages:
                    p.join()
                overviews += took
            ms = lambda xs: [round(x * 1000, 1) for x in sorted(xs)]
            print(f"/healthz during walks, ms: {ms(healthz)} (median {median(healthz) * 1000:.1f})")
            print(f"overview requests meanwhile, ms: median {median(overviews) * 1000:.1f}, "
                  f"max {max(overviews) * 1000:.1f}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)


if __name__ == "__main__":
    main()
