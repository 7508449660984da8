//! The suites driven by external tools: Helm and the chart's schema validators, the OCI image
//! under runc, promtool, and the status page in chromium. A binary of their own, so the daily
//! `cargo test --test api` loop stays fast; the test command (`scripts/test.sh`, every test
//! target) runs them with `TASKPULSE_REQUIRE_TOOLS=1`. The Prometheus/Alertmanager end-to-end
//! test stays in `api` with the drift workload it shares.
//!
//! `helpers.rs` and `tools.rs` are shared with `tests/api` (they hold no tests); what only
//! `api` uses of them is unused here.

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../api/tools.rs"]
mod tools;

mod alerts;
mod helm;
mod helm_schemas;
mod image;
mod promtool;
mod status_page;
