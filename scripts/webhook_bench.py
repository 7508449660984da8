#!/usr/bin/env python3
"""How long the Conductor status webhook takes to answer, under a load shaped like Conductor's.

    scripts/webhook_bench.py   (environment: SENDERS, SECONDS, STORES, BACKGROUND, TASKPULSE_BIN)

Conductor's notifier (task-status-listener, conductor-oss b54f0d4e) has one sender thread per
server: it takes a notification from its 50-slot buffer, POSTs it on a pooled keep-alive
connection (Apache HttpClient 4.5, 300 ms read timeout), waits for the answer, sleeps 5 ms
(`Thread.sleep(5)` in `TaskStatusPublisher.ConsumerThread`) and takes the next one. Each sender
here does exactly that, on one keep-alive connection: one notification at a time, 5 ms between
them. Several senders stand for several Conductor servers publishing to one taskpulse.

Every notification is a status change taskpulse acknowledges only after its commit: each task
is published SCHEDULED (new task), IN_PROGRESS (the poll) and COMPLETED (`updateTime` left at
the poll, `endTime` set), as Conductor publishes a worker task. Bodies are what Conductor puts
on the wire: a TaskNotification with every field, ISO-8859-1 (a task name and output with
é, ü, ß), `Content-type: application/json` without a charset, JSON output
(`conductor.app.summary-input-output-json-serialization.enabled=true`).

For each store (SQLite, PostgreSQL) and each number of senders (SENDERS, default "1 4 16"), the
release build serves a fresh database for SECONDS (default 30) of load. With BACKGROUND=N,
taskpulse-loadgen posts about N updates a second to /api/v1/updates at the same time (NDJSON,
N/10 tasks at 10 updates/s, each finishing after 100 updates and replaced by a new one): a
taskpulse busy with other sources. Prints, per run: the
notifications answered per second, the answer time's p50, p99 and maximum (client side: from
sending the request to reading the whole answer), the answers slower than Conductor's 300 ms
read timeout, and any answer other than 200 with every notification accepted.

Needs `cargo build --release` and the PostgreSQL that scripts/test.sh starts
(TASKPULSE_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432/postgres).
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
from bench import free_port, median, percentile, psql  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("TASKPULSE_BIN", os.path.join(ROOT, "target/release/taskpulse"))
LOADGEN = os.environ.get("LOADGEN", os.path.join(ROOT, "target/release/taskpulse-loadgen"))
BACKGROUND = int(os.environ.get("BACKGROUND", "0"))
PG_ADMIN = os.environ.get("TASKPULSE_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")
SENDERS = [int(n) for n in os.environ.get("SENDERS", "1 4 16").split()]
SECONDS = float(os.environ.get("SECONDS", "30"))
STORES = os.environ.get("STORES", "sqlite postgres").split()
READ_TIMEOUT_MS = 300.0
PAUSE_S = 0.005
T0 = 1_795_255_200_000  # 2026-11-21T10:00:00Z: in the past, as Conductor's times are by arrival


def iso(ms):
    if ms <= 0:
        return "1970-01-01T00:00:00.000Z"
    secs, milli = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{milli:03d}Z"


def notification(task_id, status, start, update, end, output):
    """TaskNotification.toJsonStringWithInputOutput(): every TaskSummary field and its own."""
    return {
        "workflowId": "wf-" + task_id, "workflowType": "übersetzung_pipeline",
        "correlationId": None, "scheduledTime": iso(T0), "startTime": iso(start),
        "updateTime": iso(update), "endTime": iso(end), "status": status,
        "reasonForIncompletion": None, "executionTime": end - start if end else 0,
        "queueWaitTime": 0, "taskDefName": "größe_prüfen", "taskType": "größe_prüfen",
        "input": json.dumps({"file": "café.mp4"}, ensure_ascii=False), "output": output,
        "taskId": task_id, "externalInputPayloadStoragePath": None,
        "externalOutputPayloadStoragePath": None, "workflowPriority": 0, "domain": None,
        "workflowTaskType": "SIMPLE", "referenceTaskName": "groesse_ref", "retryCount": 0,
        "taskDescription": None,
    }


def lifecycle(task_id):
    """The three notifications Conductor publishes for one worker task, as wire bytes."""
    started = T0 + 1_000
    shapes = [
        ("SCHEDULED", 0, T0, 0, "{}"),
        ("IN_PROGRESS", started, started, 0, "{}"),
        ("COMPLETED", started, started, T0 + 9_000,
         json.dumps({"progress": 100, "progressMessage": "Größe geprüft"}, ensure_ascii=False)),
    ]
    for status, start, update, end, output in shapes:
        body = json.dumps(notification(task_id, status, start, update, end, output),
                          ensure_ascii=False, separators=(",", ":"))
        yield body.encode("iso-8859-1", errors="replace")


HEADERS = {
    "Accept": "application/json",
    "Content-type": "application/json",
    "User-Agent": "Apache-HttpClient/4.5.14 (Java/17.0.13)",
    "Connection": "keep-alive",
}


def sender(port, name, deadline, out):
    """One Conductor notifier thread: one request at a time on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times, bad, n = [], [], 0
    while time.monotonic() < deadline:
        for body in lifecycle(f"{name}-{n}"):
            t = time.perf_counter()
            conn.request("POST", "/api/v1/conductor/task-status", body=body, headers=HEADERS)
            resp = conn.getresponse()
            answer = resp.read()
            times.append((time.perf_counter() - t) * 1000.0)
            if resp.status != 200 or json.loads(answer).get("accepted") != 1:
                bad.append((resp.status, answer[:200]))
            time.sleep(PAUSE_S)
        n += 1
    conn.close()
    out.append((times, bad))


def start(database, work):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPULSE_")}
    env["TASKPULSE_LOG"] = "warn"
    log = open(os.path.join(work, "taskpulse.log"), "ab")
    proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--database",
                             database], env=env, stdout=log, stderr=log)
    for _ in range(400):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    sys.exit("taskpulse did not become ready")


def run(store, senders, work):
    if store == "sqlite":
        database = f"sqlite://{work}/webhook-{senders}.db"
        name = None
    else:
        name = f"taskpulse_webhook_{os.getpid()}_{senders}"
        psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
        psql(PG_ADMIN, f"CREATE DATABASE {name}")
        database = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    proc, port = start(database, work)
    background = None
    try:
        if BACKGROUND:
            background = subprocess.Popen(
                [LOADGEN, "--target", f"http://127.0.0.1:{port}", "--tasks",
                 str(max(1, BACKGROUND // 10)), "--rate", "10", "--mode", "ndjson", "--batch",
                 "500", "--connections", "2", "--wait-fraction", "0", "--updates-per-task", "100",
                 "--duration", f"{SECONDS:.0f}s", "--json"], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + SECONDS
        out = []
        threads = [threading.Thread(target=sender, args=(port, f"s{i}", deadline, out))
                   for i in range(senders)]
        began = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - began
        if background:
            report = json.loads(background.communicate(timeout=60)[0])
            background = f"{report['accepted_per_second']:,.0f}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if name:
            psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
    times = sorted(t for ts, _ in out for t in ts)
    bad = [b for _, bs in out for b in bs]
    slow = sum(1 for t in times if t > READ_TIMEOUT_MS)
    bg = f" {background} |" if BACKGROUND else ""
    print(f"| {store} | {senders} |{bg} {len(times) / elapsed:,.0f} | {median(times):.2f} | "
          f"{percentile(times, 0.99):.2f} | {times[-1]:.1f} | {slow} of {len(times):,} | {len(bad)} |",
          flush=True)
    for b in bad[:5]:
        print(f"    not accepted: {b}", flush=True)


def main():
    print(f"{SECONDS:.0f} s per run, {', '.join(map(str, SENDERS))} senders, "
          f"{PAUSE_S * 1000:.0f} ms pause after each answer")
    bg = " background updates/s |" if BACKGROUND else ""
    print(f"| store | senders |{bg} notifications/s | p50 ms | p99 ms | max ms | over 300 ms | "
          "not accepted |")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if BACKGROUND else ""))
    with tempfile.TemporaryDirectory() as work:
        for store in STORES:
            for senders in SENDERS:
                run(store, senders, work)


if __name__ == "__main__":
    main()
