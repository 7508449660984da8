"""The DAGs taskpulse's Airflow tests run on a real Airflow (tests/airflow/).

Each runs once as soon as the DAG processor has parsed it (`schedule="@once"`, a start date
in the past, unpaused at creation by the test's configuration). Retry delays are short so the
whole suite stays within seconds.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from datetime import datetime, timedelta

from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator, dag, task
from airflow.providers.standard.sensors.python import PythonSensor

START = datetime(2025, 1, 1)
COMMON = dict(schedule="@once", start_date=START, catchup=False, tags=["taskpulse-test"])


@dag(dag_id="tp_ok", **COMMON)
def tp_ok():
    @task
    def succeed():
        return "fine"

    succeed()


@dag(dag_id="tp_timeout", **COMMON)
def tp_timeout():
    @task(execution_timeout=timedelta(minutes=5))
    def bounded():
        return "well within its five minutes"

    bounded()


@dag(dag_id="tp_retry", **COMMON)
def tp_retry():
    @task(retries=1, retry_delay=timedelta(seconds=1))
    def flaky(ti=None):
        if ti.try_number == 1:
            raise RuntimeError("first try fails on purpose")
        return "second try"

    flaky()


@dag(dag_id="tp_fail", **COMMON)
def tp_fail():
    @task(retries=0)
    def broken():
        raise RuntimeError("fails on purpose")

    broken()


@dag(dag_id="tp_mapped", **COMMON)
def tp_mapped():
    @task
    def double(x):
        return 2 * x

    double.expand(x=[1, 2, 3])


@dag(dag_id="tp_clear", **COMMON)
def tp_clear():
    @task
    def once():
        return "ran"

    once()


# --- progress: a task reports its own progress to taskpulse (docs/engines/airflow.md §8) ---


def report_progress(ti, percent, message=None, status="IN_PROGRESS"):
    """POSTs this task instance's progress to taskpulse under the id taskpulse's Airflow reader
    gives it (dag_id/run_id/task_id/map_index). Never fails the task: progress is best effort."""
    url = os.environ.get("TASKPULSE_URL")
    if not url:
        return
    body = {
        "taskId": f"{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}",
        "workflowId": f"{ti.dag_id}/{ti.run_id}",
        "taskType": ti.task_id,
        "workflowType": ti.dag_id,
        "status": status,
        "progressPercent": percent,
    }
    if message:
        body["progressMessage"] = message
    headers = {"Content-Type": "application/json"}
    token = os.environ.get("TASKPULSE_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        url.rstrip("/") + "/api/v1/updates", data=json.dumps(body).encode(), headers=headers
    )
    try:
        urllib.request.urlopen(req, timeout=5).read()
    except OSError as e:  # taskpulse down or refusing: the task goes on
        print(f"taskpulse progress not sent: {e}")


@dag(dag_id="tp_progress", **COMMON)
def tp_progress():
    # a deadline too (docs/engines/airflow.md §4.1a): the dashboards' deadline panels show it
    @task(execution_timeout=timedelta(minutes=5))
    def crunch(ti=None):
        for pct in (25, 50, 75):
            report_progress(ti, pct, f"step {pct // 25} of 4")
            time.sleep(1.5)
        return "done"

    crunch()


# --- waits: a deferred task and a reschedule-mode sensor ---


class WaitDeferred(BaseOperator):
    """Defers to a DateTimeTrigger `seconds` from now, then succeeds."""

    def __init__(self, seconds: float, **kwargs):
        super().__init__(**kwargs)
        self.seconds = seconds

    def execute(self, context):
        from airflow.sdk import timezone

        moment = timezone.utcnow() + timedelta(seconds=self.seconds)
        self.defer(
            trigger=DateTimeTrigger(moment=moment),
            method_name="resume",
            timeout=timedelta(minutes=10),
        )

    def resume(self, context, event=None):
        return None


@dag(dag_id="tp_deferred", **COMMON)
def tp_deferred():
    WaitDeferred(task_id="sleep_deferred", seconds=8)


def _ready_after_pokes(pokes, task_reschedule_count=0, **_):
    """Ready on the poke after `pokes` reschedules, however slow the machine (a time limit
    could pass before the first poke on a loaded one, and the sensor would never wait)."""
    return task_reschedule_count >= pokes


@dag(dag_id="tp_reschedule", **COMMON)
def tp_reschedule():
    PythonSensor(
        task_id="poke_reschedule",
        python_callable=_ready_after_pokes,
        op_kwargs={"pokes": 1},
        mode="reschedule",
        # long enough for the first poke's worker to have exited before the second is queued:
        # sooner, a loaded machine has Airflow fail the sensor (apache/airflow#71172's shape)
        poke_interval=10,
        timeout=600,
    )


tp_ok()
tp_timeout()
tp_retry()
tp_fail()
tp_mapped()
tp_clear()
tp_progress()
tp_deferred()
tp_reschedule()
