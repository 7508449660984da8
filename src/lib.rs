//! taskpulse: a monitoring sidecar for workflow engines.
//!
//! The modules follow the path an update takes:
//!
//! 1. [`ingest`]: parse a request body (JSON object, array or NDJSON) into validated
//!    [`ingest::TaskUpdate`]s, one verdict per item.
//! 2. [`lifecycle`]: the task state machine. Decides whether an update is accepted, a duplicate,
//!    or rejected (`terminal`, `stale`).
//! 3. [`state`]: the in-memory table of tracked tasks. Every accepted update is visible here at
//!    once; it decides which store write an update needs, and feeds each task's progress
//!    samples to [`predict`] (timeout prediction).
//! 4. [`throttle`]: the per-task `governor` limiter that turns a flood of progress updates into at
//!    most one store write per interval, without ever losing the newest value.
//! 5. [`store`]: SQLite or PostgreSQL, written by one batching writer (group commit).
//!
//! Then the readers of that state: [`metrics`] (Prometheus exposition, generated from current
//! state at scrape time), [`checker`] (finds illegal states in the store and repairs them,
//! on the replica [`leader`] elected) and [`api`] (the HTTP surface). [`app`] wires it all together and
//! [`config`] layers flags, environment and file.

pub mod api;
pub mod app;
pub mod checker;
pub mod config;
pub mod engines;
pub mod error;
pub mod ingest;
pub mod leader;
pub mod lifecycle;
pub mod loadgen;
pub mod metrics;
pub mod predict;
pub mod state;
pub mod store;
pub mod throttle;

pub use app::Application;
pub use config::Settings;
pub use error::{Error, Result};

/// Milliseconds since the Unix epoch, the unit Conductor uses for every timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
