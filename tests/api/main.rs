//! The integration suite: one binary, one module per feature. Every test that touches the
//! store runs against a real SQLite file and a real PostgreSQL (see `store_test!`).

mod helpers;
mod tools;

mod architecture;
mod check_cli;
mod checker;
mod cli;
mod conductor;
mod conductor_db;
mod conductor_pg;
mod conductor_pg_cost;
mod conductor_pg_index;
mod conductor_redis;
mod conductor_store_rules;
mod conductor_tail;
mod docs;
mod drift;
mod e2e;
mod faults;
mod fresh_scrape;
mod hostile;
mod ingest;
mod kestra;
mod lifecycle;
mod metrics;
mod odd_rows;
mod pgcluster;
mod predict;
mod process;
mod prom;
mod props;
mod read;
mod reopen;
mod replicas;
mod retention;
mod shutdown;
mod status_api;
mod store;
mod throttle;
mod webhook;
mod webhook_conductor;
