//! The readers of `dashboards/*.json` and `alerts/*.yaml` the `api` tests use (their
//! `use super::*` takes what they need from here).

pub use serde_json::Value;
pub use std::collections::BTreeSet;
pub use std::path::{Path, PathBuf};

#[path = "../api/drift/readers.rs"]
mod readers;
pub use readers::*;
