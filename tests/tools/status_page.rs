//! The status page in a real browser: Debian's chromium driven by Playwright
//! (`tests/browser/status_page.mjs`, `playwright-core` from `tests/browser/node_modules`)
//! against a real taskpulse, once open and once with `--auth-token`. The script posts its own
//! updates and checks the page (progress bars, live updates, the task view's workers, same
//! origin only, the token prompt, both widths, tasks named `.` and `..`, refreshing without a
//! stream while every stream is taken); screenshots go to
//! `target/test-artifacts/status-page/`.

use std::path::PathBuf;
use std::process::Command;

use crate::alerts::repo_path;
use crate::helpers::{Backend, TestApp, TestDb};
use crate::tools;

/// node, the script's modules and chromium, or `None` after saying what is missing (an error
/// when `TASKPULSE_REQUIRE_TOOLS=1`, as scripts/test.sh sets it).
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let chromium = PathBuf::from(
        std::env::var("TASKPULSE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    let modules = repo_path("tests/browser/node_modules/playwright-core");
    let node_works = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        ("node", !node_works),
        (
            "tests/browser/node_modules (npm ci in tests/browser)",
            !modules.exists(),
        ),
        ("chromium", !chromium.exists()),
    ]
    .into_iter()
    .filter_map(|(what, gone)| gone.then_some(what))
    .collect();
    if missing.is_empty() {
        return Some((PathBuf::from("node"), chromium));
    }
    let msg = format!("status page browser test: missing {}", missing.join(", "));
    tools::missing(&msg, "scripts/test.sh installs them")
}

/// Runs the script against `app`; panics with its output unless every check passed.
fn run_script(app: &TestApp, token: Option<&str>, artifacts: &str) {
    let Some((node, chromium)) = browser_tools() else {
        return;
    };
    let dir = repo_path("target/test-artifacts").join(artifacts);
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(node);
    cmd.arg(repo_path("tests/browser/status_page.mjs"))
        .env("TASKPULSE_URL", app.url(""))
        .env("TASKPULSE_ARTIFACTS", &dir)
        .env("TASKPULSE_CHROMIUM", chromium);
    if let Some(t) = token {
        cmd.env("TASKPULSE_TOKEN", t);
    }
    let out = cmd.output().expect("run node");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the status page's browser checks failed:\n{text}"
    );
    for shot in ["overview.png", "task.png"] {
        let size = std::fs::metadata(dir.join(shot)).map_or(0, |m| m.len());
        assert!(
            size > 1000,
            "no screenshot {shot} in {}:\n{text}",
            dir.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_a_real_browser() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let app_ref = &app;
    tokio::task::block_in_place(|| run_script(app_ref, None, "status-page"));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_asks_for_the_token() {
    let db = TestDb::new(Backend::Sqlite).await;
    let token = "page-s3cret";
    let app = TestApp::spawn_with(&db, |s| {
        s.http.auth_token = Some(taskpulse::settings::Secret(token.into()))
    })
    .await;
    let app_ref = &app;
    tokio::task::block_in_place(|| run_script(app_ref, Some(token), "status-page-auth"));
    app.shutdown().await;
}
