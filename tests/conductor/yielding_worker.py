"""A Conductor worker in the SDK's own long-running style: it yields with ``TaskInProgress``
several times, reporting progress, before it completes. Every yield is one execution slice and
one ``IN_PROGRESS`` update (with ``callbackAfterSeconds``, without ``extendLease``) that must
reach the engine, or the task is never requeued. See sdk_harness.py for what the SDK sends.

Task type ``encode`` (``--task-type`` to change). Per-task input, all optional:
``slices`` (yields before completing, default 3), ``callbackAfterSeconds`` (default 1).
Slice k of a task (k = 1, 2, ... counted by this process per taskId; the engine's pollCount is
echoed in the output so a test can compare) answers
``TaskInProgress(callback_after_seconds, output={"progress": round(100*k/(slices+1)), "slice": k,
"pollCount": ...})``; the run after the last slice completes with
``{"progress": 100, "slices": slices, "result": "encoded-<taskId>"}``.

    CONDUCTOR_SERVER_URL=http://127.0.0.1:8080/api python yielding_worker.py --tasks 1
"""

import sys
import threading

from conductor.client.context.task_context import TaskInProgress
from conductor.client.http.models.task import Task

import sdk_harness

_runs = {}
_lock = threading.Lock()


def encode(task: Task):
    inputs = task.input_data or {}
    slices = int(inputs.get("slices", 3))
    callback = int(inputs.get("callbackAfterSeconds", 1))
    with _lock:
        k = _runs.get(task.task_id, 0) + 1
        _runs[task.task_id] = k
    if k <= slices:
        return TaskInProgress(
            callback_after_seconds=callback,
            output={
                "progress": round(100 * k / (slices + 1)),
                "slice": k,
                "pollCount": task.poll_count,
            },
        )
    return {
        "progress": 100,
        "slices": slices,
        "pollCount": task.poll_count,
        "result": f"encoded-{task.task_id}",
    }


def main() -> int:
    args = sdk_harness.parse_args("yielding-worker-1", "encode")
    return sdk_harness.run(args, encode, extra=lambda _observed: {"executions": dict(_runs)})


if __name__ == "__main__":
    sys.exit(main())
