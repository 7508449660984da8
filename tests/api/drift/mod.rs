//! No drift between what taskpulse exports and what is written about it: every metric name in
//! the expressions of `dashboards/*.json` and `alerts/*.yaml`, and every row of the README's
//! metric reference, is checked against a real `/metrics` scrape taken after a workload that
//! makes every metric family carry samples (a family without series is absent from the text
//! format, so an unexercised family would look like drift).
//!
//! Also here, shared with the end-to-end test (`e2e.rs`): that workload, and the readers of the
//! dashboards, the rule files and PromQL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{metric_value, Backend, TestApp, TestDb};

mod checks;
mod exposition;
mod readers;
mod workload;

pub use exposition::*;
pub use readers::*;
pub use workload::*;
