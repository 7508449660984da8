#!/usr/bin/env python3
"""Retention at 1,000,000 finished tasks, on SQLite and PostgreSQL (stdlib only).

    scripts/retention_bench.py [sqlite|postgres ...]     (default: both)

For each store: a fresh database; `taskpulse serve --retention 0` takes 1,000,000 tasks that
each start and finish (taskpulse-loadgen, NDJSON); the store's size per finished task is
measured; taskpulse restarts with the default `--retention 7d` (nothing is that old yet) and
NDJSON ingest of unfinished tasks is measured for 10 s (the baseline). Then every finished task
is moved 8 days into the past (one UPDATE), taskpulse restarts again, and while its first pass
deletes them the same ingest runs again for 10 s, and once more in the same process right
after the pass (the closest comparison: same process, same memory).
Prints: bytes per finished task, the time to delete all 1,000,000 with their history and
attempts (tasks per second), ingest with and without the pass running, and the store's size
after.

Needs the release build (`cargo build --release`) and, for PostgreSQL, the server that
scripts/test.sh starts (TASKPULSE_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432/postgres).
"""

import http.client
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from bench import free_port, psql, scrape  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("TASKPULSE_BIN", os.path.join(ROOT, "target/release/taskpulse"))
LOADGEN = os.environ.get("LOADGEN", os.path.join(ROOT, "target/release/taskpulse-loadgen"))
PG_ADMIN = os.environ.get("TASKPULSE_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")
TASKS = int(os.environ.get("TASKS", "1000000"))
EIGHT_DAYS_MS = 8 * 86_400_000


class Serve:
    def __init__(self, url, *args):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPULSE_")}
        env["TASKPULSE_LOG"] = "warn"
        self.proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{self.port}",
                                      "--database", url, *args], env=env)
        for _ in range(400):
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise SystemExit("taskpulse did not start")

    def metric(self, name, label=""):
        total = 0.0
        for line in scrape(self.port).splitlines():
            if line.startswith(name) and label in line and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def loadgen(self, *args):
        out = subprocess.run([LOADGEN, "--target", f"http://127.0.0.1:{self.port}", "--json",
                              *args], capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    def settle(self):
        for _ in range(600):
            if self.metric("taskpulse_store_pending_writes") == 0:
                return
            time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(120)


UNFINISHED = ["--mode", "ndjson", "--batch", "1000", "--tasks", "10000", "--rate", "0",
              "--updates-per-task", "100000000", "--wait-fraction", "0", "--connections", "2",
              "--duration", "10s"]


def bench(kind):
    work = tempfile.mkdtemp(prefix="taskpulse-retention-")
    if kind == "sqlite":
        path = os.path.join(work, "t.db")
        url = f"sqlite://{path}"

        def size():
            db = sqlite3.connect(path)
            n = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
            db.close()
            return n

        def age():
            db = sqlite3.connect(path)
            n = db.execute(f"UPDATE tasks SET terminal_at = terminal_at - {EIGHT_DAYS_MS} "
                           "WHERE terminal_at IS NOT NULL").rowcount
            db.commit()
            db.close()
            return n
    else:
        name = f"taskpulse_retention_{os.getpid()}"
        psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
        psql(PG_ADMIN, f"CREATE DATABASE {name}")
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name

        def size():
            psql(url, "VACUUM ANALYZE")
            return int(psql(url, "SELECT sum(pg_total_relation_size(t)) FROM unnest(ARRAY"
                                 "['tasks','task_events','task_attempts']) t"))

        def age():
            out = psql(url, f"UPDATE tasks SET terminal_at = terminal_at - {EIGHT_DAYS_MS} "
                            "WHERE terminal_at IS NOT NULL")
            return int(out.split()[-1])

    s = Serve(url, "--retention", "0")
    empty = size()
    started = time.time()
    s.loadgen("--mode", "ndjson", "--batch", "1000", "--tasks", "10000", "--rate", "0",
              "--updates-per-task", "2", "--wait-fraction", "0", "--connections", "2",
              "--max-updates", str(2 * TASKS), "--duration", "1h")
    s.settle()
    took_in = time.time() - started
    s.stop()
    full = size()  # on PostgreSQL a VACUUM ANALYZE too: the baseline does not run beside it
    # The baseline in the same state as the run that prunes: a fresh process over the full
    # store (--retention 7d, but nothing is older yet).
    s = Serve(url)
    baseline = s.loadgen(*UNFINISHED)["accepted_per_second"]
    s.settle()
    s.stop()
    finished = age()  # the last tasks of the load may still be running: not all finished
    per_task = (full - empty) / finished
    print(f"{kind}: {finished} finished tasks taken in {took_in:.0f} s ;"
          f" {per_task:.0f} bytes per finished task (task row, 2 history lines, 1 attempt)",
          flush=True)

    s = Serve(url)  # --retention 7d: its first pass starts at once
    started = time.time()
    done = {}

    def watch():
        while s.metric("taskpulse_store_pruned_total", 'table="tasks"') < finished:
            time.sleep(0.2)
            if time.time() - started > 1800:
                done["failed"] = True
                return
        done["at"] = time.time()

    watcher = threading.Thread(target=watch)
    watcher.start()
    during = s.loadgen(*UNFINISHED)["accepted_per_second"]
    ingest_ended = time.time()
    watcher.join()
    if "failed" in done:
        raise SystemExit("retention did not finish in 30 minutes")
    took = done["at"] - started
    if done["at"] < ingest_ended:
        print(f"{kind}: (the pass ended {ingest_ended - done['at']:.1f} s before the 10 s of"
              " ingest did: the ingest figure covers it only in part)", flush=True)
    events = s.metric("taskpulse_store_pruned_total", 'table="task_events"')
    # and once more in the same process, right after the pass: the closest comparison
    after_pass = s.loadgen(*UNFINISHED)["accepted_per_second"]
    s.settle()
    s.stop()
    after = size()
    print(f"{kind}: deleted {finished} finished tasks and {events:.0f} history lines in {took:.1f} s"
          f" ({finished / took:.0f} tasks/s); ingest {baseline:.0f}/s before (fresh process),"
          f" {during:.0f}/s while deleting, {after_pass:.0f}/s right after (same process):"
          f" {during / after_pass * 100:.0f} % of after, {during / baseline * 100:.0f} % of"
          f" before; store {full / 2**20:.0f} MiB full,"
          f" {after / 2**20:.0f} MiB after", flush=True)
    if kind == "postgres":
        psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
    subprocess.run(["rm", "-rf", work])


def main():
    kinds = sys.argv[1:] or ["sqlite", "postgres"]
    for k in kinds:
        if k not in ("sqlite", "postgres"):
            print(__doc__)
            sys.exit(2)
        bench(k)


if __name__ == "__main__":
    main()
