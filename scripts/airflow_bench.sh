#!/usr/bin/env bash
# What following Airflow costs Airflow's metadata database while nothing changes
# (BENCHMARKS.md, "What following Airflow costs Airflow's database").
#
# A fresh metadata database (`airflow db migrate`, the Airflow of scripts/test.sh) is filled with
# FINISHED task instances (100 per DAG run, 1 in 10 with an earlier try in
# task_instance_history) plus one running DAG run with RUNNING task instances in flight;
# taskpulse (target/debug/taskpulse unless TASKPULSE is set) follows it with
# --airflow-poll-interval 1s, and the reads of its polls over WINDOW seconds are taken from
# pg_stat_user_tables and pg_statio_user_tables (counts of rows and blocks, not timings).
#
#   FINISHED=1000000 RUNNING=20 WINDOW=20 scripts/airflow_bench.sh
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FINISHED="${FINISHED:-1000000}"
RUNNING="${RUNNING:-20}"
WINDOW="${WINDOW:-20}"
ADMIN="${TASKPULSE_TEST_POSTGRES:-postgres://postgres@127.0.0.1:5432/postgres}"
AIRFLOW="${TASKPULSE_AIRFLOW:-$REPO_ROOT/.venv-airflow/bin/airflow}"
TASKPULSE="${TASKPULSE:-$REPO_ROOT/target/debug/taskpulse}"
DB="taskpulse_bench_airflow_$$"
BASE="${ADMIN%/*}"
URL="$BASE/$DB"
WORK="$(mktemp -d)"
PORT="${PORT:-18950}"

cleanup() {
    [[ -n ${TP_PID:-} ]] && kill "$TP_PID" 2>/dev/null && wait "$TP_PID" 2>/dev/null || true
    psql -w "$ADMIN" -qAtc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

[[ -x $AIRFLOW ]] || { echo "no airflow at $AIRFLOW (scripts/test.sh installs it)" >&2; exit 1; }
[[ -x $TASKPULSE ]] || { echo "no taskpulse at $TASKPULSE (cargo build)" >&2; exit 1; }

psql -w "$ADMIN" -qAtc "CREATE DATABASE $DB"
AIRFLOW_HOME="$WORK" AIRFLOW__CORE__LOAD_EXAMPLES=False \
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN="${URL/postgres:\/\//postgresql+psycopg2://}" \
    "$AIRFLOW" db migrate >"$WORK/migrate.log" 2>&1

runs=$(((FINISHED + 99) / 100))
psql -w "$URL" -qAt <<SQL
INSERT INTO dag_run (dag_id, run_id, run_type, run_after, state, start_date, end_date,
                     log_template_id, clear_number, span_status)
SELECT 'bench', 'run_' || g, 'manual', now() - interval '1 day', 'success',
       now() - interval '1 day', now() - interval '23 hours',
       (SELECT max(id) FROM log_template), 0, 'not_started'
FROM generate_series(1, $runs) g;
INSERT INTO task_instance (id, task_id, dag_id, run_id, map_index, state, try_number, max_tries,
    hostname, pool, pool_slots, start_date, end_date, updated_at, queued_dttm, scheduled_dttm,
    span_status, operator)
SELECT gen_random_uuid(), 't' || (g % 100), 'bench', 'run_' || (g / 100 + 1), -1,
       CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'success' END, 1, 0, 'worker-' || (g % 7),
       'default_pool', 1, now() - interval '1 day', now() - interval '23 hours',
       now() - interval '23 hours', now() - interval '1 day', now() - interval '1 day',
       'not_started', 'PythonOperator'
FROM generate_series(0, $FINISHED - 1) g;
INSERT INTO task_instance_history (task_instance_id, task_id, dag_id, run_id, map_index,
    try_number, state, hostname, pool, pool_slots, start_date, end_date, span_status)
SELECT gen_random_uuid(), task_id, dag_id, run_id, map_index, 0, 'failed', hostname, pool, 1,
       start_date, end_date, 'not_started'
FROM task_instance WHERE task_id IN ('t1','t2','t3','t4','t5','t6','t7','t8','t9','t10');
INSERT INTO dag_run (dag_id, run_id, run_type, run_after, state, start_date, log_template_id,
                     clear_number, span_status)
VALUES ('live', 'run_live', 'manual', now(), 'running', now(),
        (SELECT max(id) FROM log_template), 0, 'not_started');
INSERT INTO task_instance (id, task_id, dag_id, run_id, map_index, state, try_number, max_tries,
    hostname, pool, pool_slots, start_date, updated_at, span_status, operator)
SELECT gen_random_uuid(), 'work', 'live', 'run_live', g, 'running', 1, 0, 'worker-live',
       'default_pool', 1, now(), now(), 'not_started', 'PythonOperator'
FROM generate_series(0, $RUNNING - 1) g;
VACUUM ANALYZE;
SQL

"$TASKPULSE" serve --database "sqlite://$WORK/taskpulse.db" --listen "127.0.0.1:$PORT" \
    --airflow-db "$URL" --airflow-poll-interval 1s >"$WORK/taskpulse.log" 2>&1 &
TP_PID=$!
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done
sleep 3

stats() {
    psql -w "$URL" -qAtF' ' -c "SELECT s.relname, s.seq_scan, s.seq_tup_read,
        coalesce(s.idx_tup_fetch, 0), io.heap_blks_read + io.heap_blks_hit,
        coalesce(io.idx_blks_read + io.idx_blks_hit, 0)
        FROM pg_stat_user_tables s JOIN pg_statio_user_tables io USING (relid)
        WHERE s.relname IN ('task_instance', 'dag_run', 'task_instance_history')
        ORDER BY 1"
}
polls() {
    curl -sf "http://127.0.0.1:$PORT/metrics" |
        awk '/^taskpulse_airflow_db_polls_total\{outcome="ok"\}/ {print $2}'
}
rows() {
    curl -sf "http://127.0.0.1:$PORT/metrics" |
        awk '/^taskpulse_airflow_db_poll_rows_total / {print $2}'
}

psql -w "$URL" -qAtc "SELECT pg_stat_force_next_flush()" >/dev/null 2>&1 || true
before="$(stats)"
p0="$(polls)" r0="$(rows)"
sleep "$WINDOW"
after="$(stats)"
p1="$(polls)" r1="$(rows)"
n=$((${p1%.*} - ${p0%.*}))
echo "finished task instances: $FINISHED, running: $RUNNING, polls in ${WINDOW}s: $n"
echo "rows per poll (taskpulse_airflow_db_poll_rows_total): $(((${r1%.*} - ${r0%.*}) / (n > 0 ? n : 1)))"
echo "table: seq scans / rows seq-read / rows by index / heap blocks / index blocks, per poll"
join <(echo "$before") <(echo "$after") | while read -r t a1 b1 c1 d1 e1 a2 b2 c2 d2 e2; do
    per() { awk -v d="$(($2 - $1))" -v n="$n" 'BEGIN { printf "%.1f", d / (n > 0 ? n : 1) }'; }
    echo "$t: $(per "$a1" "$a2") / $(per "$b1" "$b2") / $(per "$c1" "$c2") / $(per "$d1" "$d2") / $(per "$e1" "$e2")"
done
