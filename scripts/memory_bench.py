#!/usr/bin/env python3
"""Resident memory per tracked task, and `/metrics` over HTTP, at 100,000 tasks, for one or two
builds side by side (issue 27's figures in BENCHMARKS.md).

    scripts/memory_bench.py BINARY [OTHER_BINARY]

For each build and each batch size (1,000 and 5,000 updates per request), in ABBA order when
two builds are given: a fresh process on a fresh SQLite file, its RSS once ready, then TASKS
(100,000) unfinished tasks, one NDJSON update each, shaped like a worker's (an id and a workflow
id like the load generator's, a task and workflow type, a worker of 50, progress and a 20-byte
progress message), sent over one keep-alive connection; once the writer has drained and a
second has passed, the RSS again; then once the consistency checker's next pass has ended
(the server runs with `--check-interval 15s`, so the first pass comes after the load; a pass
compares every settled task with the store), the RSS a third time; then SCRAPES (21) scrapes of `/metrics` timed end to end, 0.2 s
apart (scrapes closer than the render gap share one render).
Prints each run and the medians per build and batch size. RSS per task is (RSS after - RSS
before) / TASKS: what tracking the tasks costs, buffers the process keeps after the burst
included; "after checks" is the same after the checker's passes, what a server that has run a
while holds.
"""

import http.client
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from bench import free_port, median, metric_sum, rss_kib  # noqa: E402

TASKS = int(os.environ.get("TASKS", "100000"))
SCRAPES = int(os.environ.get("SCRAPES", "21"))
BATCHES = [int(b) for b in os.environ.get("BATCHES", "1000,5000").split(",")]


def line(i, now):
    return ('{"taskId":"mb%x-%d-%d","workflowId":"mbwf-%d","status":"IN_PROGRESS","updateTime":%d,'
            '"taskType":"encode_%d","workflowType":"media","startTime":%d,"timeoutSeconds":3600,'
            '"workerId":"worker-%d","progressPercent":%.1f,"progressMessage":"chunk %d of 1000"}'
            % (now, i % 2, i, i // 10, now, i % 20, now, i % 50, (i % 90) + 5.0, i % 1000))


def run(binary, batch):
    work = tempfile.mkdtemp(prefix="taskpulse-memory-")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPULSE_")}
    env["TASKPULSE_LOG"] = "warn"
    log = open(os.path.join(work, "log"), "w")
    proc = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--database",
                             f"sqlite://{work}/t.db", "--check-interval", "15s"],
                            stdout=log, stderr=log, env=env)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(200):
            try:
                conn.request("GET", "/readyz")
                if conn.getresponse().read() is not None:
                    break
            except OSError:
                conn.close()
                time.sleep(0.05)
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        now = int(time.time() * 1000)
        for start in range(0, TASKS, batch):
            body = "\n".join(line(i, now) for i in range(start, min(start + batch, TASKS)))
            conn.request("POST", "/api/v1/updates", body.encode(),
                         {"content-type": "application/x-ndjson"})
            r = conn.getresponse()
            text = r.read()
            if r.status != 200:
                raise SystemExit(f"ingest answered {r.status}: {text[:300]}")

        def get_metrics():
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            return r.read().decode()

        for _ in range(600):
            if metric_sum(get_metrics(), "taskpulse_store_pending_writes") == 0:
                break
            time.sleep(0.1)
        time.sleep(1)
        after = rss_kib(proc.pid)
        tracked = metric_sum(get_metrics(), "taskpulse_tracked_tasks")
        passes = metric_sum(get_metrics(), "taskpulse_checker_runs_total")
        if passes:
            print(f"note: {passes:.0f} checker passes ran during the load", file=sys.stderr)
        for _ in range(300):
            if metric_sum(get_metrics(), "taskpulse_checker_runs_total") > passes:
                break
            time.sleep(0.1)
        else:
            raise SystemExit("the checker ran no pass in 30 s")
        checked = rss_kib(proc.pid)
        times = []
        for _ in range(SCRAPES):
            # scrapes closer than the render gap (100 ms) share a render: time each its own
            time.sleep(0.2)
            t0 = time.perf_counter()
            size = len(get_metrics())
            times.append((time.perf_counter() - t0) * 1000)
        return {"per_task": (after - before) * 1024 / TASKS, "tracked": tracked,
                "checked": (checked - before) * 1024 / TASKS,
                "scrape_ms": median(times), "bytes": size}
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        subprocess.run(["rm", "-rf", work])


def main():
    builds = sys.argv[1:3]
    if not builds:
        raise SystemExit(__doc__)
    order = builds if len(builds) == 1 else [builds[0], builds[1], builds[1], builds[0]]
    results = {}
    for batch in BATCHES:
        for b in order:
            r = run(b, batch)
            results.setdefault((b, batch), []).append(r)
            print(f"{b} batch {batch}: {r['per_task']:.0f} B/task, {r['checked']:.0f} after "
                  f"checks, {r['tracked']:.0f} tracked, "
                  f"/metrics {r['scrape_ms']:.1f} ms ({r['bytes']} bytes)", flush=True)
    print("\nmedians")
    for (b, batch), rs in results.items():
        print(f"{b} batch {batch}: {median([r['per_task'] for r in rs]):.0f} B/task, "
              f"{median([r['checked'] for r in rs]):.0f} after checks, /metrics "
              f"{median([r['scrape_ms'] for r in rs]):.1f} ms")


if __name__ == "__main__":
    main()
