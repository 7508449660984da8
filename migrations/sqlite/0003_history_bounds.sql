-- Rejected updates of a task are folded into one history line per interval: how many there were,
-- and when the last came.
ALTER TABLE task_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
ALTER TABLE task_events ADD COLUMN last_at INTEGER;
