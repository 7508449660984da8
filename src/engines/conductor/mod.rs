//! Conductor (conductor-oss): the status webhook, the worker proxy, the WAIT queue read from
//! Conductor's own PostgreSQL, and checker rules that ask the engine. Wire formats and
//! behaviour follow `conductor-facts.md`.

pub mod proxy;
pub mod rules;
pub mod wait_queue;
pub mod webhook;
