//! Engine adapters: what taskpulse knows about a particular workflow engine. The core (ingest,
//! lifecycle, throttle, store, metrics, checker) is engine-neutral; each engine's wire formats,
//! proxy and engine-side checker rules live in a folder of their own.

pub mod conductor;
