-- What an engine tells of a worker besides its id (Kestra: the host of a worker UUID, from
-- its service registry), kept after the worker has gone (kestra-io/kestra#7799).
CREATE TABLE workers (
    worker_id TEXT PRIMARY KEY,
    host      TEXT NOT NULL,
    seen      BIGINT NOT NULL
);
CREATE INDEX workers_seen ON workers (seen);
