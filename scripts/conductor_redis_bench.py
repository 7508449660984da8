#!/usr/bin/env python3
"""Reading a Redis-backed Conductor (--conductor-redis) with 100,000 tasks in flight and
100,000 WAIT entries.

    scripts/conductor_redis_bench.py     (environment: IN_FLIGHT, WAITS, DB, SECONDS, RATE)

Fills database DB (default 14) of the Redis on 127.0.0.1:6379 the way Conductor does
(docs/engines/conductor-redis.md §2 to §4): IN_FLIGHT worker tasks (TaskModel JSON at
conductor.test.TASK.{id}, members of conductor.test.IN_PROGRESS_TASKS.{def} for 20 task
definitions), WAITS WAIT tasks (their JSON, set members, and conductor_queues.test.QUEUE.WAIT.c
members scored by due time). It loads with `redis-cli --pipe`. The release build reads it
(--conductor-poll-interval 2s) for SECONDS seconds. Prints the time per poll (median and p99
from taskpulse_conductor_redis_poll_seconds, interpolated within its buckets), the lag of one
change (a task completed) to taskpulse's state, over 20 changes, and resident memory. The
database is flushed afterwards. With RATE (changes/s, default 0), meanwhile a writer rewrites
RATE in-flight tasks a second (in pipelined batches every 100 ms, a new updateTime and
progress each, as a worker's heartbeat with progress leaves a task), and 40 changes are
sampled instead of 20.

    MODE=idle scripts/conductor_redis_bench.py   (environment: HISTORY, LIVE, SECONDS)

What idle polls cost Conductor's Redis (issue 24), on a redis-server of its own (so no other
client's commands are counted): HISTORY finished workflows of 3 tasks (the keys
RedisExecutionDAO leaves: WORKFLOW, WORKFLOW_DEF_TO_WORKFLOWS, SCHEDULED_TASKS,
WORKFLOW_TO_TASKS, 3 TASK) and LIVE running workflows with one finished and one in-progress
task each. The binary reads it at --conductor-poll-interval 1s; after 5 s of warm-up, the
INFO commandstats delta over SECONDS seconds (calls and time, per command) is printed.
"""

import http.client
import json
import os
import random
import socket
import subprocess
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("TASKPULSE_BIN", os.path.join(ROOT, "target/release/taskpulse"))
IN_FLIGHT = int(os.environ.get("IN_FLIGHT", "100000"))
WAITS = int(os.environ.get("WAITS", "100000"))
DB = os.environ.get("DB", "14")
SECONDS = int(os.environ.get("SECONDS", "30"))
RATE = int(os.environ.get("RATE", "0"))


def resp(*args):
    out = f"*{len(args)}\r\n"
    for a in args:
        a = str(a)
        out += f"${len(a.encode())}\r\n{a}\r\n"
    return out


def task(id, def_, status, t, extra=None):
    doc = {"taskType": def_, "taskDefName": def_, "status": status, "referenceTaskName": def_ + "_ref",
           "retryCount": 0, "seq": 2, "pollCount": 1, "scheduledTime": t - 1000, "startTime": t - 900,
           "endTime": 0, "updateTime": t, "responseTimeoutSeconds": 600,
           "workflowInstanceId": "wf-" + id, "workflowType": "video_pipeline", "taskId": id,
           "callbackAfterSeconds": 0, "workerId": "worker-%d" % (hash(id) % 50),
           "inputData": {"fileId": "f-" + id, "bucket": "media-uploads-eu-west-1"},
           "outputData": {"progress": 50}, "iteration": 0, "waitTimeout": 0,
           "workflowTask": {"name": def_, "taskReferenceName": def_ + "_ref", "type": "SIMPLE"}}
    doc.update(extra or {})
    return json.dumps(doc, separators=(",", ":"))


def cli(*args, input=None):
    return subprocess.run(["redis-cli", "-n", DB, *args], input=input, capture_output=True,
                          text=True, check=True).stdout


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def scrape(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    return c.getresponse().read().decode()


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read()


def quantile(q, text, name):
    buckets, count = [], 0.0
    for line in text.splitlines():
        if line.startswith(name + "_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(name + "_count"):
            count = float(line.rsplit(" ", 1)[1])
    rank, prev_le, prev_n = q * count, 0.0, 0.0
    for le, n in buckets:
        if n >= rank:
            return prev_le if le == float("inf") else prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1e-9)
        prev_le, prev_n = le, n
    return prev_le


def churn(stop, done):
    """Rewrites RATE in-flight tasks a second, 20,000 first ones only (the lag samples use
    task-0 to task-39 and are left alone), until `stop` is set; counts them in `done`."""
    sock = socket.create_connection(("127.0.0.1", 6379))
    sock.sendall(resp("SELECT", DB).encode())
    sock.recv(100)
    per = max(RATE // 10, 1)
    n = 0
    while not stop.is_set():
        t = time.time()
        now = int(t * 1000)
        batch = []
        for _ in range(per):
            i = 40 + n % (min(IN_FLIGHT, 20000) - 40)
            id = f"task-{i}"
            batch.append(resp("SET", f"conductor.test.TASK.{id}",
                              task(id, f"def_{i % 20}", "IN_PROGRESS", now, {"outputData": {"progress": n % 100}})))
            n += 1
        sock.sendall("".join(batch).encode())
        got = 0
        while got < per:
            got += sock.recv(1 << 16).count(b"+OK")
        done[0] += per
        time.sleep(max(0.0, 0.1 - (time.time() - t)))
    sock.close()


def main():
    cli("FLUSHDB")
    now = int(time.time() * 1000)
    started = time.time()
    lines = []
    for i in range(IN_FLIGHT):
        id, def_ = f"task-{i}", f"def_{i % 20}"
        lines.append(resp("SET", f"conductor.test.TASK.{id}", task(id, def_, "IN_PROGRESS", now)))
        lines.append(resp("SADD", f"conductor.test.IN_PROGRESS_TASKS.{def_}", id))
    for i in range(WAITS):
        id = f"wait-{i}"
        due = now + (i % 3600) * 1000 - 600_000
        lines.append(resp("SET", f"conductor.test.TASK.{id}", task(id, "WAIT", "IN_PROGRESS", now, {"waitTimeout": due})))
        lines.append(resp("SADD", "conductor.test.IN_PROGRESS_TASKS.WAIT", id))
        lines.append(resp("ZADD", "conductor_queues.test.QUEUE.WAIT.c", due, id))
    cli("--pipe", input="".join(lines))
    used = cli("INFO", "memory").split("used_memory:")[1].split()[0]
    print(f"loaded {IN_FLIGHT} worker tasks and {WAITS} WAIT tasks in {time.time() - started:.0f} s;"
          f" Redis uses {int(used) / 2**20:.0f} MiB", flush=True)

    port = free_port()
    work = subprocess.run(["mktemp", "-d"], capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPULSE_")}
    env["TASKPULSE_LOG"] = "warn"
    t0 = time.time()
    proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--database",
                             f"sqlite://{work}/t.db", "--conductor-redis", f"redis://127.0.0.1:6379/{DB}"],
                            env=env)
    try:
        for _ in range(1200):
            try:
                if get(port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        print(f"ready after {time.time() - t0:.1f} s", flush=True)
        time.sleep(SECONDS)
        stop, done = threading.Event(), [0]
        writer = threading.Thread(target=churn, args=(stop, done))
        if RATE:
            writer.start()
            time.sleep(5)
        t_churn = time.time()
        lags = []
        for i in range(40 if RATE else 20):
            time.sleep(random.uniform(0, 2))  # not in step with the polls
            id = f"task-{i}"
            doc = task(id, f"def_{i % 20}", "COMPLETED", int(time.time() * 1000), {"endTime": int(time.time() * 1000)})
            t = time.time()
            cli("SET", f"conductor.test.TASK.{id}", doc)
            cli("SREM", f"conductor.test.IN_PROGRESS_TASKS.def_{i % 20}", id)
            while b'"COMPLETED"' not in get(port, f"/api/v1/tasks/{id}")[1]:
                time.sleep(0.01)
            lags.append(time.time() - t)
        stop.set()
        if RATE:
            writer.join()
            print(f"writer: {done[0] / (time.time() - t_churn + 5):.0f} changes/s", flush=True)
        lags.sort()
        text = scrape(port)
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        print(f"poll: median {quantile(0.5, text, 'taskpulse_conductor_redis_poll_seconds') * 1000:.0f} ms,"
              f" p99 {quantile(0.99, text, 'taskpulse_conductor_redis_poll_seconds') * 1000:.0f} ms", flush=True)
        print(f"lag of a completion to taskpulse: median {lags[len(lags) // 2]:.2f} s, "
              f"p99 (max of {len(lags)}) {lags[-1]:.2f} s", flush=True)
        print(f"taskpulse RSS: {rss / 1024:.0f} MiB", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
        cli("FLUSHDB")
        subprocess.run(["rm", "-rf", work])


def idle():
    history = int(os.environ.get("HISTORY", "100000"))
    live = int(os.environ.get("LIVE", "100"))
    seconds = int(os.environ.get("SECONDS", "10"))
    rport = free_port()
    server = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    r = lambda *a, **k: subprocess.run(["redis-cli", "-p", str(rport), *a], capture_output=True,
                                       text=True, check=True, **k).stdout
    for _ in range(100):
        try:
            if r("PING").strip() == "PONG":
                break
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.05)
    now = int(time.time() * 1000)
    day = time.strftime("%Y%m%d", time.gmtime(now / 1000))

    def workflow(wid, tasks, running):
        out = [resp("SET", f"conductor.test.WORKFLOW.{wid}", json.dumps(
            {"workflowId": wid, "status": "RUNNING" if running else "COMPLETED", "tasks": [],
             "workflowDefinition": {"name": "orders", "version": 1}, "createTime": now}))]
        out.append(resp("SADD", f"conductor.test.WORKFLOW_DEF_TO_WORKFLOWS.orders.{day}", wid))
        if running:
            out.append(resp("SADD", "conductor.test.PENDING_WORKFLOWS.orders", wid))
        for n, status in enumerate(tasks):
            id = f"{wid}-{n}"
            out.append(resp("HSET", f"conductor.test.SCHEDULED_TASKS.{wid}", f"step_{n}_ref0", id))
            out.append(resp("SADD", f"conductor.test.WORKFLOW_TO_TASKS.{wid}", id))
            doc = json.loads(task(id, f"step_{n}", status, now))
            doc["workflowInstanceId"] = wid
            out.append(resp("SET", f"conductor.test.TASK.{id}", json.dumps(doc)))
            if status == "IN_PROGRESS":
                out.append(resp("SADD", f"conductor.test.IN_PROGRESS_TASKS.step_{n}", id))
        return out

    lines = []
    for w in range(history):
        lines += workflow(f"old-{w}", ["COMPLETED"] * 3, False)
    for w in range(live):
        lines += workflow(f"live-{w}", ["COMPLETED", "IN_PROGRESS"], True)
    r("--pipe", input="".join(lines))
    keys = r("DBSIZE").strip()
    port = free_port()
    work = subprocess.run(["mktemp", "-d"], capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPULSE_")}
    env["TASKPULSE_LOG"] = "warn"
    proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--database",
                             f"sqlite://{work}/t.db", "--conductor-redis", f"redis://127.0.0.1:{rport}/0",
                             "--conductor-poll-interval", "1s"], env=env)

    def stats():
        out = {}
        for line in r("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                name, rest = line[8:].split(":", 1)
                f = dict(kv.split("=") for kv in rest.split(","))
                out[name] = (int(f["calls"]), int(f["usec"]))
        return out

    try:
        for _ in range(1200):
            try:
                if get(port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        time.sleep(5)
        before = stats()
        time.sleep(seconds)
        after = stats()
        delta = {k: (v[0] - before.get(k, (0, 0))[0], v[1] - before.get(k, (0, 0))[1])
                 for k, v in after.items() if k not in ("info",)}
        delta = {k: v for k, v in delta.items() if v[0] > 0}
        calls = sum(v[0] for v in delta.values())
        usec = sum(v[1] for v in delta.values())
        print(f"{os.path.basename(BIN)}: {history} finished workflows, {live} running ({keys} keys):"
              f" {calls} commands in {seconds} idle seconds, {usec / 1000:.1f} ms of Redis time;"
              f" {dict(sorted(delta.items()))}", flush=True)
    finally:
        proc.terminate()
        proc.wait(60)
        server.terminate()
        server.wait(60)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    idle() if os.environ.get("MODE") == "idle" else main()
