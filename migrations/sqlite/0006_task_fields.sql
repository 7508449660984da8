-- Fields an engine reports besides Conductor's: the parent of a task run and the value of its
-- loop iteration (Kestra's parentTaskRunId and value), and each attempt's own state and times
-- (Kestra's attempts[]). All optional: rows written before keep NULL.
ALTER TABLE tasks ADD COLUMN parent_task_id TEXT;
ALTER TABLE tasks ADD COLUMN iteration_value TEXT;
ALTER TABLE task_attempts ADD COLUMN status TEXT;
ALTER TABLE task_attempts ADD COLUMN start_time BIGINT;
ALTER TABLE task_attempts ADD COLUMN end_time BIGINT;
