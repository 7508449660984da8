"""A Conductor worker that runs one long execution and sends lease heartbeats carrying progress
many times a second while it works: the traffic a proxy must coalesce on the way to the engine.

Task type ``transcode`` (``--task-type`` to change); give the task a small
``responseTimeoutSeconds`` (e.g. 2). Per-task input, all optional: ``workSeconds`` (default 3),
``heartbeatsPerSecond`` (default 20).

Two kinds of heartbeat, both through the real SDK client code (see sdk_harness.py):
* the SDK's own LeaseManager (``lease_extend_enabled=True``): ``POST /tasks`` with
  ``{taskId, workflowInstanceId, status: IN_PROGRESS, extendLease: true}`` every
  0.8 x responseTimeoutSeconds (on a 1 s tick), no output;
* progress heartbeats sent from inside the worker function, because the SDK offers no way to
  attach output to its heartbeats: ``TaskResourceApi.update_task`` (the SDK's API client, the
  same call LeaseManager makes) with ``status: IN_PROGRESS, extendLease: true, workerId,
  outputData: {"progress": p}``, p rising from 0 to 99.
Then the execution completes with ``{"progress": 100, "heartbeats": n}``.
The summary line reports ``progressHeartbeats`` (sent and answered 2xx) and ``sdkHeartbeats``.

    CONDUCTOR_SERVER_URL=http://127.0.0.1:8080/api python heartbeat_worker.py --tasks 1
"""

import sys
import threading
import time

from conductor.client.configuration.configuration import Configuration
from conductor.client.http.api.task_resource_api import TaskResourceApi
from conductor.client.http.api_client import ApiClient
from conductor.client.http.models.task import Task
from conductor.client.http.models.task_result import TaskResult
from conductor.client.http.models.task_result_status import TaskResultStatus

import sdk_harness

args = None
_client = None
_lock = threading.Lock()
_sent = {"ok": 0, "failed": 0, "byTask": {}}


def client() -> TaskResourceApi:
    global _client
    if _client is None:
        _client = TaskResourceApi(ApiClient(configuration=Configuration(server_api_url=args.url)))
    return _client


def transcode(task: Task):
    inputs = task.input_data or {}
    work = float(inputs.get("workSeconds", 3))
    rate = float(inputs.get("heartbeatsPerSecond", 20))
    start = time.monotonic()
    sent = 0
    attempts = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= work:
            break
        progress = min(99, int(100 * elapsed / work))
        beat = TaskResult(
            task_id=task.task_id,
            workflow_instance_id=task.workflow_instance_id,
            worker_id=args.worker_id,
            status=TaskResultStatus.IN_PROGRESS,
            output_data={"progress": progress},
            extend_lease=True,
        )
        attempts += 1
        try:
            client().update_task(body=beat)
            sent += 1
            with _lock:
                _sent["ok"] += 1
                _sent["byTask"][task.task_id] = _sent["byTask"].get(task.task_id, 0) + 1
        except Exception as e:  # a heartbeat that fails is counted; the work goes on
            with _lock:
                _sent["failed"] += 1
            print(f"heartbeat failed: {e}", file=sys.stderr)
        time.sleep(max(0.0, start + attempts / rate - time.monotonic()))
    return {"progress": 100, "heartbeats": sent}


def summary_extra(observed):
    # the SDK's own LeaseManager heartbeats go through the runner's client, which is observed
    with observed.lock:
        sdk = [u for u in observed.updates if u["extendLease"] and not u["outputData"]]
    with _lock:
        return {
            "progressHeartbeats": _sent["ok"],
            "progressHeartbeatsFailed": _sent["failed"],
            "progressHeartbeatsByTask": dict(_sent["byTask"]),
            "sdkHeartbeats": len(sdk),
        }


def main() -> int:
    global args
    args = sdk_harness.parse_args("heartbeat-worker-1", "transcode")
    return sdk_harness.run(args, transcode, lease_extend_enabled=True, extra=summary_extra)


if __name__ == "__main__":
    sys.exit(main())
