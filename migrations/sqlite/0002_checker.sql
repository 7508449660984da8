-- The consistency checker's audit trail: every repair attempt, with the state before and after.
CREATE TABLE repairs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    rule        TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    before      TEXT,
    after       TEXT,
    evidence    TEXT NOT NULL,
    detail      TEXT NOT NULL
);
CREATE INDEX repairs_task ON repairs (task_id);

-- The leader refreshes its view from rows other replicas changed.
CREATE INDEX tasks_last_seen ON tasks (last_seen);
