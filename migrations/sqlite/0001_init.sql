-- Tracked tasks: the latest accepted state of each task.
CREATE TABLE tasks (
    task_id                  TEXT PRIMARY KEY NOT NULL,
    workflow_id              TEXT NOT NULL,
    task_type                TEXT NOT NULL,
    workflow_type            TEXT,
    reference_task_name      TEXT,
    seq                      INTEGER,
    iteration                INTEGER,
    retry_count              INTEGER,
    status                   TEXT NOT NULL,
    progress                 REAL,
    progress_message         TEXT,
    worker_id                TEXT,
    start_time               INTEGER,
    update_time              INTEGER,
    timeout_seconds          INTEGER,
    response_timeout_seconds INTEGER,
    wait_until               INTEGER,
    first_seen               INTEGER NOT NULL,
    last_seen                INTEGER NOT NULL,
    progress_changed         INTEGER NOT NULL,
    terminal_at              INTEGER,
    -- bumped by every write; optimistic locking for repairs and replicas
    version                  INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX tasks_unfinished ON tasks (task_id) WHERE terminal_at IS NULL;
CREATE INDEX tasks_terminal_at ON tasks (terminal_at);
CREATE INDEX tasks_workflow ON tasks (workflow_id);

-- History: accepted status changes and rejected updates.
CREATE TABLE task_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     TEXT NOT NULL,
    at          INTEGER NOT NULL,
    outcome     TEXT NOT NULL,
    from_status TEXT,
    to_status   TEXT NOT NULL,
    reason      TEXT,
    worker_id   TEXT,
    progress    REAL,
    update_time INTEGER
);
CREATE INDEX task_events_task ON task_events (task_id, id);

-- Which worker ran each attempt; kept after the worker is gone.
CREATE TABLE task_attempts (
    task_id    TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    worker_id  TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    PRIMARY KEY (task_id, attempt, worker_id)
);
