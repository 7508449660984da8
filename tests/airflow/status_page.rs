//! The status page's task view of an Airflow task instance in a real browser
//! (`tests/browser/task_view.mjs`: Debian's chromium through `playwright-core`, as the status
//! page's own browser test uses): the attempts table a person sees, read from the page.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::tools::{self, Tool};

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// node, chromium and `tests/browser/node_modules`, or `None` after saying what is missing (a
/// failure under `TASKPULSE_REQUIRE_TOOLS=1`).
fn browser() -> Option<(PathBuf, PathBuf)> {
    let how = "apt-get install nodejs chromium and npm ci in tests/browser, or run scripts/test.sh";
    let node = Tool {
        env: None,
        local: None,
        names: &["node"],
        how,
    }
    .find()?;
    let chromium = Tool {
        env: Some("TASKPULSE_CHROMIUM"),
        local: None,
        names: &["chromium"],
        how,
    }
    .find()?;
    if !repo_path("tests/browser/node_modules/playwright-core").exists() {
        return tools::missing("tests/browser/node_modules (npm ci in tests/browser)", how);
    }
    Some((node, chromium))
}

/// What the task view of `task` shows once its attempts table has `rows` rows (or after 20 s):
/// `{heading, details, attempts: [[cell, ...], ...], errors}`; a screenshot in
/// `target/test-artifacts/airflow-status-page/`. Blocking: run it off the runtime.
pub fn task_view(app_url: &str, task: &str, rows: usize) -> Option<Value> {
    let (node, chromium) = browser()?;
    let dir = repo_path("target/test-artifacts/airflow-status-page");
    let out = Command::new(node)
        .arg(repo_path("tests/browser/task_view.mjs"))
        .env("TASKPULSE_URL", app_url)
        .env("TASKPULSE_TASK_ID", task)
        .env("TASKPULSE_ROWS", rows.to_string())
        .env("TASKPULSE_ARTIFACTS", &dir)
        .env("TASKPULSE_CHROMIUM", chromium)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the task view in a browser:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    Some(serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {stdout}")))
}
