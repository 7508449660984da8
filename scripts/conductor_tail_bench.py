#!/usr/bin/env python3
"""Following Conductor's task table (--conductor-db) at 1,000,000 rows and 10,000 changes/s.

    scripts/conductor_tail_bench.py   (environment: TASKS, IN_FLIGHT, RATE, SECONDS, POLL,
                                       LAYOUT, IDLE)

LAYOUT=conductor (the default) creates the tables Conductor's migrations create beside `task`
(task_in_progress, workflow_pending, workflow_to_task, task_index with its update_time index;
not task_index's GIN indexes, which only cost Conductor's writes) and fills them as Conductor
does: a row of task_in_progress, workflow_pending and workflow_to_task per in-flight task (one
workflow each), workflow_to_task and task_index rows for every task; the churn writes
task_index after each task transaction, in a transaction of its own (PostgresIndexDAO
.indexTask after ExecutionDAOFacade.updateTask's task write). LAYOUT=task_only creates `task`
alone: the reader then lists `task` every poll, as every poll did before issue 24.
IDLE=20 (seconds) first measures idle polls: what they read from the engine's tables
(pg_stat_user_tables, pg_statio_user_tables deltas divided by the polls in the window).

A fresh database with Conductor's tables (docs/engines/conductor-redis.md §7) gets TASKS rows
of TaskModel JSON (about 1.2 KB each, as Conductor writes them: every primitive present, a
workflowTask, inputData), of which IN_FLIGHT are IN_PROGRESS and the rest COMPLETED. The
release build starts with --conductor-db on it (--conductor-poll-interval POLL, default 2s). Then a procedure
in the database rewrites RATE rows a second for SECONDS, in transactions of RATE/10 rows every
100 ms, the way Conductor's DAO does (json_data with a new status and updateTime,
modified_on = CURRENT_TIMESTAMP): in-flight tasks flip between IN_PROGRESS and SCHEDULED, as a
worker's updates make them.

Prints: the time of one poll (median and p99 from taskpulse_conductor_db_poll_seconds), the lag
from a row's modified_on to taskpulse reading it (taskpulse_conductor_db_lag_seconds, p50 and
p99 interpolated within its buckets, like Prometheus' histogram_quantile), the updates
accepted against the rows written, the cost of the listing query alone (EXPLAIN ANALYZE on the
full table), and taskpulse's resident memory.

Needs `cargo build --release` and the PostgreSQL that scripts/test.sh starts
(TASKPULSE_TEST_POSTGRES, default postgres://postgres@127.0.0.1:5432/postgres).
"""

import http.client
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
from bench import free_port, histogram, psql, quantile, rss_kib, scrape  # noqa: E402,F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("TASKPULSE_BIN", os.path.join(ROOT, "target/release/taskpulse"))
PG_ADMIN = os.environ.get("TASKPULSE_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432/postgres")
TASKS = int(os.environ.get("TASKS", "1000000"))
IN_FLIGHT = int(os.environ.get("IN_FLIGHT", "20000"))
RATE = int(os.environ.get("RATE", "10000"))
SECONDS = int(os.environ.get("SECONDS", "60"))
POLL = os.environ.get("POLL", "2s")
LAYOUT = os.environ.get("LAYOUT", "conductor")
IDLE = int(os.environ.get("IDLE", "0"))

SCHEMA = """
CREATE TABLE task (task_id VARCHAR(255) NOT NULL PRIMARY KEY, json_data TEXT NOT NULL,
  created_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  modified_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE queue (queue_name VARCHAR(255) NOT NULL PRIMARY KEY,
  created_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE queue_message (queue_name VARCHAR(255) NOT NULL, message_id VARCHAR(255) NOT NULL,
  deliver_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP, popped BOOLEAN DEFAULT FALSE,
  priority INTEGER DEFAULT 0, created_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  offset_time_seconds BIGINT, payload TEXT, PRIMARY KEY (queue_name, message_id));
CREATE FUNCTION task_json(id text, status text, t bigint) RETURNS text LANGUAGE sql IMMUTABLE AS $$
  SELECT json_build_object(
    'taskType','encode_video','status',status,'inputData',json_build_object('fileId','f-'||id,
      'bucket','media-uploads-eu-west-1','options',json_build_object('codec','h264','crf',23,
      'preset','medium','audio','aac','resolution','1920x1080')),
    'referenceTaskName','encode_ref','retryCount',0,'seq',2,'correlationId','order-'||id,
    'pollCount',1,'taskDefName','encode_video','scheduledTime',t-1000,'startTime',t-900,
    'endTime',CASE WHEN status='COMPLETED' THEN t ELSE 0 END,'updateTime',t,
    'startDelayInSeconds',0,'retried',false,'executed',false,'callbackFromWorker',true,
    'responseTimeoutSeconds',600,'workflowInstanceId','wf-'||id,'workflowType','video_pipeline',
    'taskId',id,'callbackAfterSeconds',0,'callbackAfterMs',0,'firstScheduledTime',t-1000,
    'workerId','worker-'||(abs(hashtext(id))%50),'outputData',json_build_object('progress',50),
    'workflowTask',json_build_object('name','encode_video','taskReferenceName','encode_ref',
      'type','SIMPLE','inputParameters',json_build_object('fileId','${workflow.input.fileId}',
      'bucket','${workflow.input.bucket}','options','${workflow.input.options}'),
      'startDelay',0,'optional',false,'asyncComplete',false),
    'rateLimitPerFrequency',0,'rateLimitFrequencyInSeconds',0,'workflowPriority',0,
    'iteration',0,'subworkflowChanged',false,'waitTimeout',0,'idempotent',false,
    'cachedOutput',false,'notifications',json_build_object(),'nonWorkflowEventTask',false,
    'loopOverTask',false,'queueWaitTime',100,'idempotentExecution',false,'asyncComplete',false
  )::text $$;
CREATE PROCEDURE churn(in_flight int, per_tx int, txs int, indexed bool) LANGUAGE plpgsql AS $$
DECLARE i int; n int := 0; t bigint;
BEGIN
  FOR i IN 1..txs LOOP
    t := (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint;
    UPDATE task SET json_data = task_json(task_id,
        CASE WHEN i % 2 = 0 THEN 'IN_PROGRESS' ELSE 'SCHEDULED' END, t),
      modified_on = CURRENT_TIMESTAMP
    WHERE task_id IN (SELECT 'in-' || ((n + g) % in_flight) FROM generate_series(1, per_tx) g);
    COMMIT;
    IF indexed THEN
      INSERT INTO task_index (task_id, task_type, task_def_name, status, start_time, end_time,
          update_time, workflow_type, json_data)
        SELECT 'in-' || ((n + g) % in_flight), 'SIMPLE', 'encode_video',
          CASE WHEN i % 2 = 0 THEN 'IN_PROGRESS' ELSE 'SCHEDULED' END,
          to_timestamp((t - 900) / 1000.0), 'epoch', to_timestamp(t / 1000.0), 'video_pipeline', '{}'
        FROM generate_series(1, per_tx) g
      ON CONFLICT (task_id) DO UPDATE SET status = EXCLUDED.status, end_time = EXCLUDED.end_time,
        update_time = EXCLUDED.update_time, json_data = EXCLUDED.json_data
      WHERE EXCLUDED.update_time >= task_index.update_time;
      COMMIT;
    END IF;
    n := n + per_tx;
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
"""

# Conductor's bookkeeping and index tables (V1, V6, V8, V12, V18 of db/migration_postgres at
# b54f0d4e) and their rows for the rows of `task` (LAYOUT=conductor).
BOOKKEEPING = """
CREATE TABLE task_index (task_id VARCHAR(255) NOT NULL PRIMARY KEY, task_type TEXT NOT NULL,
  task_def_name TEXT NOT NULL, status VARCHAR(32) NOT NULL,
  start_time TIMESTAMP WITH TIME ZONE NOT NULL, update_time TIMESTAMP WITH TIME ZONE NOT NULL,
  workflow_type VARCHAR(128) NOT NULL, json_data JSONB NOT NULL,
  end_time TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT TIMESTAMP WITH TIME ZONE 'epoch');
CREATE TABLE task_in_progress (created_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  modified_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP, task_def_name VARCHAR(255) NOT NULL,
  task_id VARCHAR(255) NOT NULL, workflow_id VARCHAR(255) NOT NULL,
  in_progress_status BOOLEAN NOT NULL DEFAULT false, PRIMARY KEY (task_def_name, task_id));
CREATE TABLE workflow_pending (created_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  modified_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP, workflow_type VARCHAR(255) NOT NULL,
  workflow_id VARCHAR(255) NOT NULL, PRIMARY KEY (workflow_type, workflow_id));
CREATE TABLE workflow_to_task (created_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  modified_on TIMESTAMP DEFAULT CURRENT_TIMESTAMP, workflow_id VARCHAR(255) NOT NULL,
  task_id VARCHAR(255) NOT NULL, PRIMARY KEY (workflow_id, task_id));
INSERT INTO task_in_progress (task_def_name, task_id, workflow_id)
  SELECT 'encode_video', task_id, 'wf-' || task_id FROM task WHERE task_id LIKE 'in-%';
INSERT INTO workflow_pending (workflow_type, workflow_id)
  SELECT 'video_pipeline', 'wf-' || task_id FROM task WHERE task_id LIKE 'in-%';
INSERT INTO workflow_to_task (workflow_id, task_id) SELECT 'wf-' || task_id, task_id FROM task;
INSERT INTO task_index (task_id, task_type, task_def_name, status, start_time, end_time,
    update_time, workflow_type, json_data)
  SELECT task_id, 'SIMPLE', 'encode_video', json_data::json->>'status',
    to_timestamp((json_data::json->>'startTime')::bigint / 1000.0),
    to_timestamp((json_data::json->>'endTime')::bigint / 1000.0),
    CASE WHEN task_id LIKE 'in-%' THEN now() - interval '1 hour'
         ELSE now() - interval '1 day' END, 'video_pipeline', '{}' FROM task;
CREATE INDEX task_index_update_time_idx ON task_index (update_time);
CREATE INDEX task_index_status_idx ON task_index (status);
CREATE INDEX workflow_id_index ON workflow_to_task (workflow_id);
CREATE INDEX workflow_type_index ON workflow_pending (workflow_type);
"""

# What the reader's sessions read, per table: (seq scans, rows by seq scan, rows by index,
# heap blocks read or hit, index blocks read or hit).
COST = """
SELECT s.relname, COALESCE(seq_scan, 0), COALESCE(seq_tup_read, 0), COALESCE(idx_tup_fetch, 0),
       COALESCE(heap_blks_read, 0) + COALESCE(heap_blks_hit, 0),
       COALESCE(idx_blks_read, 0) + COALESCE(idx_blks_hit, 0)
FROM pg_stat_user_tables s JOIN pg_statio_user_tables i USING (relid) ORDER BY 1
"""


def sample(text, name, *labels):
    for line in text.splitlines():
        if line.startswith(name) and all(l in line for l in labels):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def cost(url):
    rows = [l.split("|") for l in psql(url, COST).splitlines()]
    return {r[0]: [int(x) for x in r[1:]] for r in rows}


def idle_cost(url, port):
    """What idle polls read from the engine's tables, per poll: PostgreSQL's statistics
    before and after IDLE seconds (the reader's sessions, busy every poll, flush theirs at
    most a second late), after 11 s for start-up's reads to be flushed."""
    time.sleep(11)
    c0, p0 = cost(url), sample(scrape(port), "taskpulse_conductor_db_polls_total", 'outcome="ok"')
    time.sleep(IDLE)
    c1, p1 = cost(url), sample(scrape(port), "taskpulse_conductor_db_polls_total", 'outcome="ok"')
    polls = max(p1 - p0, 1)
    used = sample(scrape(port), "taskpulse_conductor_db_task_index_used")
    print(f"idle, {polls:.0f} polls (task_index used: {used:.0f}); per poll:", flush=True)
    for table in sorted(c1):
        d = [(b - a) / polls for a, b in zip(c0.get(table, [0] * 5), c1[table])]
        if any(d):
            print(f"  {table}: {d[0]:.2f} seq scans, {d[1]:.0f} rows by seq scan, "
                  f"{d[2]:.0f} rows by index, {d[3]:.0f} heap blocks, {d[4]:.0f} index blocks",
                  flush=True)
    print(f"  taskpulse_conductor_db_poll_rows (last poll): "
          f"{sample(scrape(port), 'taskpulse_conductor_db_poll_rows'):.0f}", flush=True)


def main():
    name = f"taskpulse_tail_{os.getpid()}"
    psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
    psql(PG_ADMIN, f"CREATE DATABASE {name}")
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    work = subprocess.run(["mktemp", "-d"], capture_output=True, text=True).stdout.strip()
    proc = None
    try:
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url], input=SCHEMA, text=True,
                       check=True, capture_output=True)
        started = time.time()
        psql(url, f"INSERT INTO task (task_id, json_data, modified_on) SELECT 'done-'||g, "
                  f"task_json('done-'||g, 'COMPLETED', (EXTRACT(EPOCH FROM now() - interval '1 day') * 1000)::bigint + g % 1000), "
                  f"now() - interval '1 day' FROM generate_series(1, {TASKS - IN_FLIGHT}) g")
        psql(url, f"INSERT INTO task (task_id, json_data, modified_on) SELECT 'in-'||g, "
                  f"task_json('in-'||g, 'IN_PROGRESS', (EXTRACT(EPOCH FROM now() - interval '1 hour') * 1000)::bigint + g % 1000), "
                  f"now() - interval '1 hour' FROM generate_series(0, {IN_FLIGHT - 1}) g")
        psql(url, "VACUUM ANALYZE task")
        size = int(psql(url, "SELECT pg_total_relation_size('task')"))
        print(f"task table: {TASKS} rows, {size / 2**20:.0f} MiB, loaded in {time.time() - started:.0f} s",
              flush=True)
        if LAYOUT == "conductor":
            t = time.time()
            subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url], input=BOOKKEEPING,
                           text=True, check=True, capture_output=True)
            psql(url, "VACUUM ANALYZE")
            print(f"bookkeeping and task_index rows in {time.time() - t:.0f} s", flush=True)
        plan = psql(url, "EXPLAIN (ANALYZE, FORMAT TEXT) SELECT task_id, modified_on FROM task "
                         "WHERE modified_on > now() - interval '12 seconds' ORDER BY modified_on, task_id LIMIT 50000")
        exec_ms = [l for l in plan.splitlines() if "Execution Time" in l]
        print(f"listing query on the full table: {exec_ms[0].strip() if exec_ms else plan}", flush=True)

        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPULSE_")}
        env["TASKPULSE_LOG"] = "warn"
        t0 = time.time()
        proc = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--database",
                                 f"sqlite://{work}/t.db", "--conductor-db", url,
                                 "--conductor-poll-interval", POLL], env=env)
        for _ in range(12000):  # the first pass over 10M rows takes minutes
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/readyz")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        loaded = sample(scrape(port), "taskpulse_updates_total", 'source="conductor_db"', 'outcome="accepted"')
        print(f"start: {time.time() - t0:.1f} s to ready, {loaded:.0f} in-flight tasks loaded", flush=True)
        if IDLE:
            idle_cost(url, port)
        before = scrape(port)
        per_tx = RATE // 10
        txs = SECONDS * 10
        t1 = time.time()
        psql(url, f"CALL churn({IN_FLIGHT}, {per_tx}, {txs}, {str(LAYOUT == 'conductor').lower()})")
        took = time.time() - t1
        time.sleep(6)
        after = scrape(port)
        written = per_tx * txs
        accepted = sample(after, "taskpulse_updates_total", 'source="conductor_db"', 'outcome="accepted"') - \
            sample(before, "taskpulse_updates_total", 'source="conductor_db"', 'outcome="accepted"')
        pb, pc = histogram(after, "taskpulse_conductor_db_poll_seconds")
        # the churn's rows only: the first pass's rows (an hour old) are taken out
        lb, lc = histogram(after, "taskpulse_conductor_db_lag_seconds")
        lb0, lc0 = histogram(before, "taskpulse_conductor_db_lag_seconds")
        lb, lc = [(le, n - n0) for (le, n), (_, n0) in zip(lb, lb0)], lc - lc0
        print(f"changes: {written} rows rewritten in {took:.0f} s ({written / took:.0f}/s); "
              f"{accepted:.0f} updates accepted from them", flush=True)
        print(f"poll: median {quantile(0.5, pb, pc) * 1000:.0f} ms, p99 {quantile(0.99, pb, pc) * 1000:.0f} ms"
              f" over {pc:.0f} polls", flush=True)
        print(f"lag modified_on -> read: p50 {quantile(0.5, lb, lc):.2f} s, p99 {quantile(0.99, lb, lc):.2f} s"
              f" over {lc:.0f} rows", flush=True)
        print(f"taskpulse RSS: {rss_kib(proc.pid) / 1024:.0f} MiB", flush=True)
    finally:
        if proc:
            proc.terminate()
            proc.wait(60)
        psql(PG_ADMIN, f"DROP DATABASE IF EXISTS {name}")
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    sys.exit(main())
