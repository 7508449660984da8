//! taskpulse: a monitoring sidecar for workflow engines.
//!
//! The modules follow the path an update takes (`docs/architecture.md`):
//!
//! 1. [`http`] takes a request; [`ingest`] parses its body into validated updates, one verdict
//!    per item (an engine adapter in [`engines`] turns its own wire format or store rows into
//!    the same updates).
//! 2. [`pipeline`] takes the parsed batch: admission, the [`lifecycle`] (the task state
//!    machine), the in-memory table, the [`throttle`] (at most one progress write per task per
//!    interval, never losing the newest value), and the commits an acknowledgement waits for.
//! 3. [`store`]: SQLite or PostgreSQL, written by one batching writer (group commit).
//!
//! Then the readers of that state: [`metrics`] (the Prometheus exposition, generated from
//! current state at scrape time, with [`predict`] and [`wait`]), [`checker`] (finds illegal
//! states in the store and repairs them, on the replica [`leader`] elected), and the read API
//! in [`http`]. [`model`] holds the types they all share; [`settings`] each subsystem's
//! settings; [`cli`] the commands; [`app`] composes it all.

pub mod alloc;
pub mod app;
pub mod cardinality;
pub mod checker;
pub mod cli;
pub mod engines;
pub mod error;
pub mod http;
pub mod ingest;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod predict;
pub mod retention;
pub mod settings;
pub mod store;
pub mod throttle;
pub mod wait;

pub use app::Application;
pub use cli::Settings;
pub use error::{Error, Result};

/// Milliseconds since the Unix epoch, the unit Conductor uses for every timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
