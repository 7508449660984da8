#!/usr/bin/env python3
"""Following Kestra's executions table (--kestra-db) at 100,000 executions, 5,000 of them running
with 10 task runs each.

    scripts/kestra_bench.py   (environment: EXECUTIONS, RUNNING, RATE, SECONDS, POLL)

A fresh database with Kestra's tables (tests/kestra_schema.sql, from docs/engines/kestra.md §1)
gets EXECUTIONS rows of execution JSON as §2 gives it (10 task runs each, one attempt each with a
workerId among 50 registered workers), of which RUNNING are running (9 task runs finished, the
10th RUNNING) and the rest SUCCESS, ended a day ago. The release build starts with --kestra-db
(--kestra-poll-interval POLL, default 2s). Then a procedure rewrites RATE running executions a
second for SECONDS, in transactions every 100 ms, the way Kestra's executor persists them (the
whole row, a new history date on the running task run). Meanwhile, twice a second, one of 100
running executions the procedure leaves alone is rewritten with a marked date, and taskpulse's
read API is polled until the task run shows it: that is the lag from a row's rewrite to
taskpulse's state.

Prints: the time to ready (the first pass), the time of one poll (median and p99 from
taskpulse_kestra_db_poll_seconds), the lag (median, p99, max over the samples), the updates
accepted, and taskpulse's resident memory.

With MODE=cost, what following Kestra costs the database instead, from the engine's side
(pg_statio_user_tables for `executions`: heap, TOAST and index blocks, read or hit), per poll,
for two builds side by side (BEFORE_BIN, then TASKPULSE_BIN or the release build; or
BUILDS=label=path,label=path,...), idle and
while the procedure rewrites RATE executions a second; the procedure alone is measured too and
subtracted. Environment: EXECUTIONS (default 20000), RUNNING (5000), RATE (100), WINDOW (20 s),
With MODE=big, one running execution of BIG_RUNS (100000) task runs followed by each build
for WINDOW (12) seconds: polls, TOAST blocks read, documents skipped, peak memory.
PAD (bytes of hex outputs per task run, default 0: about 600 makes each execution's JSON
out-of-line TOAST, as with the issue's 6 KB executions).

Needs `cargo build --release` and the PostgreSQL that scripts/test.sh starts
(TASKPULSE_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432/postgres).
"""

import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conductor_tail_bench import (BIN, PG_ADMIN, free_port, histogram, psql, quantile,  # noqa: E402
                                  rss_kib, sample, scrape)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from bench import status_kib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COST = os.environ.get("MODE") == "cost"
EXECUTIONS = int(os.environ.get("EXECUTIONS", "20000" if COST else "100000"))
RUNNING = int(os.environ.get("RUNNING", "5000"))
RATE = int(os.environ.get("RATE", "100" if COST else "1000"))
SECONDS = int(os.environ.get("SECONDS", "60"))
POLL = os.environ.get("POLL", "2s")
PAD = int(os.environ.get("PAD", "0"))  # bytes of hex outputs per task run (0: none)
SAMPLED = 100  # running executions the churn leaves alone, for the lag samples

FUNCTIONS = """
CREATE FUNCTION iso(ms bigint) RETURNS text LANGUAGE sql STABLE AS $$
  SELECT to_char(to_timestamp(ms / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;
CREATE FUNCTION st(cur text, t0 bigint, t1 bigint) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object('current', cur,
    'histories', jsonb_build_array(jsonb_build_object('state','CREATED','date',iso(t0)),
                                   jsonb_build_object('state','RUNNING','date',iso(t0 + 5)))
                 || CASE WHEN cur = 'RUNNING' THEN jsonb_build_array(jsonb_build_object('state','RUNNING','date',iso(t1)))
                         ELSE jsonb_build_array(jsonb_build_object('state',cur,'date',iso(t1))) END,
    'startDate', iso(t0))
  || CASE WHEN cur = 'RUNNING' THEN '{}'::jsonb
          ELSE jsonb_build_object('endDate', iso(t1), 'duration', (t1 - t0) / 1000.0) END $$;
CREATE FUNCTION pad() RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT PADBYTES $$;
CREATE FUNCTION worker(n int) RETURNS text LANGUAGE sql STABLE AS $$
  SELECT lpad(to_hex(n), 8, '0') || '-6f0a-4e59-9a3c-2f8d6e1b4a77' $$;
CREATE FUNCTION execution(id text, running boolean, t bigint) RETURNS jsonb LANGUAGE sql STABLE AS $$
  SELECT jsonb_build_object('tenantId','main','id',id,'namespace','company.team','flowId','etl',
    'flowRevision',3,'deleted',false,
    'labels', jsonb_build_array(jsonb_build_object('key','system.correlationId','value',id)),
    'metadata', jsonb_build_object('attemptNumber',1,'originalCreatedDate',iso(t - 60000)),
    'state', st(CASE WHEN running THEN 'RUNNING' ELSE 'SUCCESS' END, t - 60000, t),
    'taskRunList', (SELECT jsonb_agg(jsonb_build_object(
        'tenantId','main','id',id || '-' || r,'executionId',id,'namespace','company.team',
        'flowId','etl','taskId','step_' || r,
        'outputs', CASE WHEN pad() = 0 THEN NULL ELSE jsonb_build_object('pad',
          (SELECT string_agg(md5(id || r || k), '') FROM generate_series(1, pad() / 32) k)) END,
        'attempts', jsonb_build_array(jsonb_build_object(
            'state', st(CASE WHEN running AND r = 9 THEN 'RUNNING' ELSE 'SUCCESS' END, t - 60000 + r * 1000, t),
            'workerId', worker(abs(hashtext(id || r)) % 50))),
        'state', st(CASE WHEN running AND r = 9 THEN 'RUNNING' ELSE 'SUCCESS' END, t - 60000 + r * 1000, t)))
      FROM generate_series(0, 9) r)) $$;
CREATE PROCEDURE churn(running int, per_tx int, txs int) LANGUAGE plpgsql AS $$
DECLARE i int; n int := 0;
BEGIN
  FOR i IN 1..txs LOOP
    -- one execution built per transaction, its id replaced per row (building each row's JSON
    -- anew costs the database more than the rate it is to write)
    UPDATE executions SET value = replace(t.j, 'TEMPLATEID', key)::jsonb
    FROM (SELECT execution('TEMPLATEID', true, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint)::text AS j) t
    WHERE key IN (SELECT 'run-' || ((n + g) % running) FROM generate_series(1, per_tx) g);
    n := n + per_tx;
    COMMIT;
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
"""


def get_json(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read()


def sampler(url, port, stop, lags):
    """Rewrites an execution the churn leaves alone with a marked date; waits to see it."""
    while not stop.is_set():
        n = RUNNING - SAMPLED + random.randrange(SAMPLED)
        ex = f"run-{n}"
        marker = int(time.time() * 1000) // 10 * 10 + 7
        psql(url, f"UPDATE executions SET value = execution(key, true, {marker}) WHERE key = '{ex}'")
        written = time.time()
        while time.time() - written < 30:
            status, body = get_json(port, f"/api/v1/tasks/{ex}-9")
            if status == 200 and json.loads(body).get("updateTime") == marker:
                lags.append(time.time() - written)
                break
            time.sleep(0.01)
        else:
            lags.append(float("inf"))
        time.sleep(0.5)


STATIO = ("SELECT heap_blks_read + heap_blks_hit, COALESCE(toast_blks_read + toast_blks_hit, 0), "
          "idx_blks_read + idx_blks_hit + COALESCE(tidx_blks_read + tidx_blks_hit, 0) "
          "FROM pg_statio_user_tables WHERE relname = 'executions'")


def statio(url):
    return [int(x) for x in psql(url, STATIO).split("|")]


def start(binary, url, work, port):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPULSE_")}
    env["TASKPULSE_LOG"] = "warn"
    proc = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--database",
                             f"sqlite://{work}/{port}.db", "--kestra-db", url,
                             "--kestra-poll-interval", POLL], env=env)
    for _ in range(2400):
        try:
            if get_json(port, "/readyz")[0] == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("taskpulse never ready")


def polls(port):
    return sample(scrape(port), "taskpulse_kestra_db_polls_total", 'outcome="ok"')


def window(url, port, seconds):
    """Blocks of `executions` (heap, TOAST, index) over `seconds`, and polls in between."""
    p0 = polls(port) if port else 0
    b0 = statio(url)
    time.sleep(seconds)
    b1 = statio(url)
    p1 = polls(port) if port else 0
    return [b - a for a, b in zip(b0, b1)], p1 - p0


def churn_for(url, seconds):
    per_tx = max(RATE // 10, 1)
    return threading.Thread(target=psql, args=(url, f"CALL churn({RUNNING}, {per_tx}, {int(seconds * 10) + 20})"))


def cost_main():
    seconds = float(os.environ.get("WINDOW", "20"))
    builds = [("before", os.environ.get("BEFORE_BIN", BIN)), ("after", BIN)]
    if os.environ.get("BUILDS"):  # label=path,label=path
        builds = [tuple(b.split("=", 1)) for b in os.environ["BUILDS"].split(",")]
    name = f"taskpulse_kestra_{os.getpid()}"
    psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
    psql(PG_ADMIN, f"CREATE DATABASE {name}")
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    work = subprocess.run(["mktemp", "-d"], capture_output=True, text=True).stdout.strip()
    try:
        load(url)
        # the procedure alone, for what it reads itself
        psql(url, "SELECT pg_sleep(3)")
        t = churn_for(url, seconds + 4)
        t.start()
        time.sleep(2)
        alone, _ = window(url, None, seconds)
        t.join()
        print(f"churn alone ({RATE}/s): blocks per second heap/toast/index "
              f"{'/'.join(f'{b / seconds:.0f}' for b in alone)}", flush=True)
        for label, binary in builds:
            port = free_port()
            proc = start(binary, url, work, port)
            try:
                p = polls(port)
                while polls(port) < p + 3:
                    time.sleep(0.2)
                idle, n = window(url, port, seconds)
                print(f"{label} idle: {n:.0f} polls, per poll heap/toast/index blocks "
                      f"{'/'.join(f'{b / max(n, 1):.0f}' for b in idle)}", flush=True)
                t = churn_for(url, seconds + 4)
                t.start()
                time.sleep(2)
                busy, n = window(url, port, seconds)
                t.join()
                own = [b - a for a, b in zip(alone, busy)]
                m = scrape(port)
                print(f"{label} under {RATE}/s: {n:.0f} polls, per poll heap/toast/index blocks "
                      f"{'/'.join(f'{b / max(n, 1):.0f}' for b in busy)} "
                      f"(taskpulse's share, churn alone subtracted: "
                      f"{'/'.join(f'{b / max(n, 1):.0f}' for b in own)}); documents fetched in all "
                      f"{sample(m, 'taskpulse_kestra_db_documents_fetched_total'):.0f}", flush=True)
            finally:
                proc.terminate()
                proc.wait(60)
    finally:
        psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
        subprocess.run(["rm", "-rf", work])

BIG = """
INSERT INTO executions (key, value) SELECT 'ex-big', jsonb_build_object('id','ex-big','tenantId','main',
 'namespace','company.team','flowId','etl','deleted',false,
 'state', jsonb_build_object('current','RUNNING','startDate',iso((EXTRACT(EPOCH FROM now()) * 1000)::bigint),
   'histories',jsonb_build_array(jsonb_build_object('state','RUNNING','date',iso((EXTRACT(EPOCH FROM now()) * 1000)::bigint)))),
 'taskRunList', (SELECT jsonb_agg(jsonb_build_object('tenantId','main','id','tr-'||md5(g::text),
   'executionId','ex-big','namespace','company.team','flowId','etl','taskId','each_item',
   'value','item-'||g,'iteration',g,'parentTaskRunId','tr-parent',
   'attempts', jsonb_build_array(jsonb_build_object('workerId',worker(0),'state',st('SUCCESS', 0, 1000))),
   'state', st('SUCCESS', 0, 1000)))
  FROM generate_series(1, RUNS) g))
"""


def big_main():
    """One running execution of BIG_RUNS task runs, followed for WINDOW seconds per build."""
    seconds = float(os.environ.get("WINDOW", "12"))
    runs = int(os.environ.get("BIG_RUNS", "100000"))
    builds = [("before", os.environ.get("BEFORE_BIN", BIN)), ("after", BIN)]
    if os.environ.get("BUILDS"):
        builds = [tuple(b.split("=", 1)) for b in os.environ["BUILDS"].split(",")]
    name = f"taskpulse_kestra_{os.getpid()}"
    psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
    psql(PG_ADMIN, f"CREATE DATABASE {name}")
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    work = subprocess.run(["mktemp", "-d"], capture_output=True, text=True).stdout.strip()
    try:
        with open(os.path.join(ROOT, "tests/kestra_schema.sql")) as f:
            schema = f.read()
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url],
                       input=schema + FUNCTIONS.replace("PADBYTES", "0"), text=True, check=True,
                       capture_output=True)
        psql(url, BIG.replace("RUNS", str(runs)))
        print("execution: " + psql(url, "SELECT octet_length(value::text) || ' bytes of JSON, ' || "
                                         "pg_column_size(value) || ' as stored' FROM executions"), flush=True)
        for label, binary in builds:
            port = free_port()
            proc = start(binary, url, work, port)
            try:
                # after two polls, so the first pass's blocks (reported late) are not counted
                p = polls(port)
                while polls(port) < p + 2:
                    time.sleep(0.1)
                time.sleep(1.5)
                b0 = statio(url)
                time.sleep(seconds)
                b1 = statio(url)
                m = scrape(port)
                pb, pc = histogram(m, "taskpulse_kestra_db_poll_seconds")
                print(f"{label}: {pc:.0f} polls, median {quantile(0.5, pb, pc) * 1000:.0f} ms; TOAST blocks "
                      f"{b1[1] - b0[1]} over {seconds:.0f} s; skipped "
                      f"{sample(m, 'taskpulse_kestra_db_documents_skipped_total', 'too_large'):.0f}; "
                      f"peak RSS {status_kib(proc.pid, 'VmHWM') / 1024:.0f} MiB", flush=True)
            finally:
                proc.terminate()
                proc.wait(60)
    finally:
        psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
        subprocess.run(["rm", "-rf", work])


def load(url):
    """Kestra's tables, EXECUTIONS rows (RUNNING running), 50 workers."""
    with open(os.path.join(ROOT, "tests/kestra_schema.sql")) as f:
        schema = f.read()
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url], input=schema + FUNCTIONS.replace("PADBYTES", str(PAD)),
                   text=True, check=True, capture_output=True)
    started = time.time()
    day_ago = int(time.time() * 1000) - 86_400_000
    psql(url, f"INSERT INTO executions (key, value) SELECT 'done-'||g, replace(t.j, 'TEMPLATEID', 'done-'||g)::jsonb "
              f"FROM (SELECT execution('TEMPLATEID', false, {day_ago})::text AS j) t, "
              f"generate_series(1, {EXECUTIONS - RUNNING}) g")
    now = int(time.time() * 1000)
    psql(url, f"INSERT INTO executions (key, value) SELECT 'run-'||g, "
              f"execution('run-'||g, true, {now}) FROM generate_series(0, {RUNNING - 1}) g")
    psql(url, "INSERT INTO service_instance (key, value) SELECT worker(g), jsonb_build_object("
              "'id', worker(g), 'type', 'WORKER', 'state', 'RUNNING', 'server', jsonb_build_object("
              "'hostname', 'worker-' || g || '.example'), 'createdAt', iso(0), 'updatedAt', iso(0)) "
              "FROM generate_series(0, 49) g")
    psql(url, "VACUUM ANALYZE executions")
    size = int(psql(url, "SELECT pg_total_relation_size('executions')"))
    print(f"executions: {EXECUTIONS} rows ({RUNNING} running, 10 task runs each), "
          f"{size / 2**20:.0f} MiB, loaded in {time.time() - started:.0f} s", flush=True)


def main():
    if os.environ.get("MODE") == "cost":
        return cost_main()
    if os.environ.get("MODE") == "big":
        return big_main()
    name = f"taskpulse_kestra_{os.getpid()}"
    psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
    psql(PG_ADMIN, f"CREATE DATABASE {name}")
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    work = subprocess.run(["mktemp", "-d"], capture_output=True, text=True).stdout.strip()
    proc = None
    try:
        load(url)

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPULSE_")}
        env["TASKPULSE_LOG"] = "warn"
        t0 = time.time()
        proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--database",
                                 f"sqlite://{work}/t.db", "--kestra-db", url,
                                 "--kestra-poll-interval", POLL], env=env)
        for _ in range(1200):
            try:
                if get_json(port, "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        loaded = sample(scrape(port), "taskpulse_updates_total", 'source="kestra_db"', 'outcome="accepted"')
        print(f"start: {time.time() - t0:.1f} s to ready, {loaded:.0f} task runs loaded", flush=True)
        before = scrape(port)
        stop, lags = threading.Event(), []
        thread = threading.Thread(target=sampler, args=(url, port, stop, lags))
        thread.start()
        per_tx = max(RATE // 10, 1)
        t1 = time.time()
        psql(url, f"CALL churn({RUNNING - SAMPLED}, {per_tx}, {SECONDS * 10})")
        took = time.time() - t1
        stop.set()
        thread.join()
        time.sleep(2 * float(POLL.rstrip("s")) + 1)
        after = scrape(port)
        written = per_tx * SECONDS * 10
        accepted = sample(after, "taskpulse_updates_total", 'source="kestra_db"', 'outcome="accepted"') - \
            sample(before, "taskpulse_updates_total", 'source="kestra_db"', 'outcome="accepted"')
        pb, pc = histogram(after, "taskpulse_kestra_db_poll_seconds")
        print(f"changes: {written} executions rewritten in {took:.0f} s ({written / took:.0f}/s); "
              f"{accepted:.0f} task run updates accepted", flush=True)
        print(f"poll: median {quantile(0.5, pb, pc) * 1000:.0f} ms, p99 {quantile(0.99, pb, pc) * 1000:.0f} ms"
              f" over {pc:.0f} polls", flush=True)
        lags.sort()
        if lags:
            p = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))]  # noqa: E731
            print(f"lag rewrite -> taskpulse state: median {p(0.5):.2f} s, p99 {p(0.99):.2f} s, "
                  f"max {lags[-1]:.2f} s over {len(lags)} samples", flush=True)
        print(f"taskpulse RSS: {rss_kib(proc.pid) / 1024:.0f} MiB", flush=True)
    finally:
        if proc:
            proc.terminate()
            proc.wait(60)
        psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
