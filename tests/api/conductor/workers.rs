//! The runner for the real Conductor Python SDK workers in `tests/conductor/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The Python with `conductor-python` installed: `TASKPULSE_TEST_PYTHON`, else
/// `<repo>/.venv/bin/python`. `None` after a skip note when missing; with
/// `TASKPULSE_REQUIRE_TOOLS=1` (set by `scripts/test.sh`) a missing interpreter is a failure.
pub fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("TASKPULSE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"));
    if candidate.is_file() {
        return Some(candidate);
    }
    let how = "python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt, \
               or run scripts/test.sh";
    crate::tools::missing(
        &format!("no Python with conductor-python at {}", candidate.display()),
        how,
    )
}

/// What a worker script did: its exit code and the JSON summary line it printed.
#[derive(Debug)]
pub struct WorkerRun {
    pub code: Option<i32>,
    pub summary: Value,
    pub stderr: String,
    pub elapsed: Duration,
}

impl WorkerRun {
    /// Panics with the worker's stderr unless it exited 0.
    pub fn assert_ok(&self) -> &Value {
        assert_eq!(
            self.code,
            Some(0),
            "worker failed; summary {}\nstderr:\n{}",
            self.summary,
            self.stderr
        );
        &self.summary
    }

    /// The updates the worker's SDK client sent (as the worker saw them).
    pub fn updates(&self) -> Vec<Value> {
        self.summary["updates"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Runs `tests/conductor/<script>` against `server_api_url` (ending in `/api`), waiting for
/// `tasks` terminal updates. The script gives up after `limit` minus 2 s; the child is killed
/// at `limit`.
pub async fn run_worker(
    python: &Path,
    script: &str,
    server_api_url: &str,
    tasks: usize,
    extra_args: &[&str],
    limit: Duration,
) -> WorkerRun {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/conductor")
        .join(script);
    let inner = limit.saturating_sub(Duration::from_secs(2)).as_secs_f64();
    let started = Instant::now();
    let child = tokio::process::Command::new(python)
        .arg(&path)
        .args(["--url", server_api_url])
        .args(["--tasks", &tasks.to_string()])
        .args(["--timeout", &inner.to_string()])
        .args(extra_args)
        .env("CONDUCTOR_SERVER_URL", server_api_url)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start {} {}: {e}", python.display(), path.display()));
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out.expect("worker output"),
        // dropping the future drops the child: kill_on_drop kills it
        Err(_) => panic!("{script} still running after {limit:?}; killed"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| {
            panic!("{script} printed no summary; stdout:\n{stdout}\nstderr:\n{stderr}")
        });
    WorkerRun {
        code: out.status.code(),
        summary,
        stderr,
        elapsed: started.elapsed(),
    }
}
