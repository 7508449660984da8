-- A task the engine puts back to work after it finished (Conductor's rerun, Kestra's retry and
-- restart, Airflow's clear; docs/contract.md §3): when its current run ended (engine time of the
-- terminal update) and when the engine last reopened it, epoch ms. The write guard lets a
-- reopen overwrite a terminal row only when it comes after that end. Rows written before keep
-- NULL.
ALTER TABLE tasks ADD COLUMN end_time BIGINT;
ALTER TABLE tasks ADD COLUMN reopened_at BIGINT;
