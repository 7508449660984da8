"""Shared harness for the Conductor SDK workers in this directory (yielding_worker.py,
heartbeat_worker.py). The Rust tests in tests/api/conductor/ run these scripts against the
engine emulator, directly or through taskpulse's Conductor proxy.

What conductor-python 2.0.0 (PyPI) really sends, read from the installed package:

* Server address: ``Configuration(server_api_url=URL)``, else the environment variable
  ``CONDUCTOR_SERVER_URL``; URL ends in ``/api`` and every path below is appended to it
  (``http/api_client.py``: ``url = configuration.host + resource_path``). Transport is httpx
  (HTTP/2 allowed but plain http:// speaks HTTP/1.1), 120 s read timeout, 10 s connect.
* Poll (``automator/task_runner.py`` ``__batch_poll_tasks``): always the batch endpoint,
  ``GET /tasks/poll/batch/{taskType}?workerid=ID&count=N&timeout=100`` (+ ``domain`` when set),
  ``count`` = free executor slots (``thread_count``, default 1), ``timeout`` = 100 ms fixed.
  Expects a JSON array of Task (empty array or empty body = nothing). After an empty poll the
  runner backs off 1, 2, 4 ... ms, capped at the worker's ``poll_interval`` (ms, default 100).
* Update (``__update_task``): ``POST /tasks/update-v2`` with the TaskResult JSON
  (``Accept: application/json``). The answer is the next Task to run for the same worker
  (200 + Task JSON, executed at once without a poll) or nothing: 204, or any 2xx whose body has
  no ``taskId``. On 404 or 405 the runner switches to ``POST /tasks`` (``Accept: text/plain``,
  answer = the taskId as text) for the rest of its life, and after each v1 update polls again
  at once (batch, count=1). Other failures: 4 attempts, sleeping 10 s, 20 s, 30 s between.
* TaskResult JSON (``http/models/task_result.py``; ``None`` fields are left out):
  ``workflowInstanceId, taskId, reasonForIncompletion, callbackAfterSeconds, workerId, status,
  outputData, logs, externalOutputPayloadStoragePath, subWorkflowId, extendLease``.
* ``TaskInProgress(callback_after_seconds=N, output={...})`` returned by a worker
  (``context/task_context.py``) becomes ``status: IN_PROGRESS, callbackAfterSeconds: N,
  outputData: {...}`` with NO ``extendLease``: it ends the execution slice; the engine requeues
  the task and a later poll (pollCount + 1) runs the function again. Any other return value is
  COMPLETED with the value (a dict) as outputData; an exception is FAILED with ``logs``.
* Lease heartbeats (``automator/lease_tracker.py`` LeaseManager, only when the worker has
  ``lease_extend_enabled=True`` and the polled task has ``responseTimeoutSeconds``): a single
  daemon thread checks every 1.0 s and sends ``POST /tasks`` (always v1) with
  ``{taskId, workflowInstanceId, status: IN_PROGRESS, extendLease: true}`` - no workerId, no
  output - once ``0.8 x responseTimeoutSeconds`` has passed since the last one (so the real
  cadence is that interval rounded up to the next 1 s tick). Tasks whose interval is < 1 s
  (responseTimeoutSeconds < 1.25) are not tracked at all. 3 attempts, 1 s / 1.5 s apart.
* The SDK has no way to attach progress to a heartbeat: LeaseManager builds its own empty
  TaskResult, and ``TaskContext.set_output`` only feeds the final result of the slice. So
  heartbeat_worker.py sends its progress heartbeats itself with the SDK's own API client,
  ``TaskResourceApi.update_task(TaskResult(extend_lease=True, status=IN_PROGRESS,
  output_data={"progress": p}))`` - the same request LeaseManager sends, plus outputData.

How these scripts run a worker for a bounded time: ``TaskHandler`` starts one OS process per
worker and runs forever, so instead each script builds the SDK's ``TaskRunner`` (the loop
TaskHandler runs inside each process) and drives ``run_once()`` on the main thread until the
expected number of tasks has reached a terminal update, or the timeout passes. The runner's
``task_client`` methods are wrapped (same call, just observed) to know when an update has
been answered, and to count what was sent.

Each script prints one JSON summary line on stdout and exits 0 on success, 1 on timeout or
failure. Arguments: ``--url URL`` (else ``CONDUCTOR_SERVER_URL``), ``--tasks N`` (terminal
updates to wait for), ``--timeout SECONDS`` (default 30), ``--worker-id ID``,
``--task-type TYPE``, ``--late-update``: once every task has completed, send each completed
task a late ``IN_PROGRESS`` update (outputData ``{"progress": 50}``) and a late lease
heartbeat, through the runner's own client (v1 ``POST /tasks``, as LeaseManager does): the
stale writer of conductor-oss#176. Their outcomes are in the summary's ``updates``.
"""

import argparse
import json
import logging
import os
import sys
import threading
import time

from conductor.client.automator.task_runner import TaskRunner
from conductor.client.configuration.configuration import Configuration
from conductor.client.http.models.task_result import TaskResult
from conductor.client.http.models.task_result_status import TaskResultStatus
from conductor.client.worker.worker import Worker

TERMINAL = {"COMPLETED", "FAILED", "FAILED_WITH_TERMINAL_ERROR", "CANCELED"}


def parse_args(default_worker_id: str, default_task_type: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default=os.environ.get("CONDUCTOR_SERVER_URL"))
    parser.add_argument("--task-type", default=default_task_type)
    parser.add_argument("--tasks", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--worker-id", default=default_worker_id)
    parser.add_argument(
        "--late-update",
        action="store_true",
        help="after the tasks completed, send each a late IN_PROGRESS and a late heartbeat",
    )
    args = parser.parse_args()
    if not args.url:
        parser.error("no server URL: pass --url or set CONDUCTOR_SERVER_URL (ending in /api)")
    return args


class Observed:
    """What this process sent, counted around the SDK's own client calls."""

    def __init__(self):
        self.lock = threading.Lock()
        self.updates = []  # every TaskResult the runner sent, with the endpoint and outcome
        self.completed = []  # task ids whose terminal update was answered 2xx
        self.workflows = {}  # task id -> workflowInstanceId

    def record(self, endpoint, body, ok, error=None):
        entry = {
            "endpoint": endpoint,
            "taskId": body.task_id,
            "status": body.status,
            "extendLease": bool(body.extend_lease),
            "callbackAfterSeconds": body.callback_after_seconds,
            "outputData": body.output_data,
            "ok": ok,
        }
        if error is not None:
            entry["error"] = str(error)[:200]
        with self.lock:
            self.workflows[body.task_id] = body.workflow_instance_id
            self.updates.append(entry)
            if ok and body.status in TERMINAL and body.task_id not in self.completed:
                self.completed.append(body.task_id)

    def completed_count(self):
        with self.lock:
            return len(self.completed)


def observe(task_client, observed: Observed) -> None:
    """Wraps update_task / update_task_v2 on this TaskResourceApi instance: same call, recorded."""
    for name, endpoint in (("update_task", "/tasks"), ("update_task_v2", "/tasks/update-v2")):
        original = getattr(task_client, name)

        def wrapped(body, _original=original, _endpoint=endpoint, **kwargs):
            try:
                result = _original(body=body, **kwargs)
            except Exception as e:  # recorded, then re-raised for the SDK to handle
                observed.record(_endpoint, body, False, e)
                raise
            observed.record(_endpoint, body, True)
            return result

        setattr(task_client, name, wrapped)


def send_late_updates(runner, observed: Observed, worker_id: str) -> None:
    """A late IN_PROGRESS and a late heartbeat for every completed task (outcomes observed)."""
    with observed.lock:
        workflows = {tid: observed.workflows[tid] for tid in observed.completed}
    for task_id, workflow_id in workflows.items():
        late = [
            TaskResult(
                task_id=task_id,
                workflow_instance_id=workflow_id,
                worker_id=worker_id,
                status=TaskResultStatus.IN_PROGRESS,
                callback_after_seconds=0,
                output_data={"progress": 50},
            ),
            TaskResult(
                task_id=task_id,
                workflow_instance_id=workflow_id,
                status=TaskResultStatus.IN_PROGRESS,
                extend_lease=True,
            ),
        ]
        for body in late:
            try:
                runner.task_client.update_task(body=body)
            except Exception:
                pass  # recorded by the observer


def run(args, execute_function, lease_extend_enabled=False, extra=None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    configuration = Configuration(server_api_url=args.url)
    worker = Worker(
        task_definition_name=args.task_type,
        execute_function=execute_function,
        poll_interval=50,  # ms: the cap of the empty-poll backoff
        worker_id=args.worker_id,
        thread_count=1,
        lease_extend_enabled=lease_extend_enabled,
    )
    runner = TaskRunner(worker=worker, configuration=configuration)
    observed = Observed()
    observe(runner.task_client, observed)

    deadline = time.monotonic() + args.timeout
    ok = False
    try:
        while time.monotonic() < deadline:
            if observed.completed_count() >= args.tasks:
                ok = True
                break
            runner.run_once()
        if ok and args.late_update:
            send_late_updates(runner, observed, args.worker_id)
    finally:
        runner.stop()
        runner._cleanup()  # waits for the executor thread, closes the HTTP client

    summary = {
        "ok": ok,
        "workerId": args.worker_id,
        "completed": observed.completed,
        "updates": observed.updates,
    }
    if extra is not None:
        summary.update(extra(observed))
    print(json.dumps(summary), flush=True)
    if not ok:
        print(
            f"timed out after {args.timeout}s: {observed.completed_count()} of {args.tasks} "
            f"tasks reached a terminal update",
            file=sys.stderr,
        )
    return 0 if ok else 1
