//! `/metrics` passes Prometheus' own linter (`promtool check metrics`) with a varied workload:
//! every metric family of `docs/metrics.md` carries samples, including both histograms.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::alerts::promtool;
use crate::helpers::{update, Backend, TestApp, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_lint() {
    let Some(promtool) = promtool() else { return };
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let now = taskpulse::now_ms();

    // in-flight tasks with progress, on several workers; one with a deadline
    let mut batch = Vec::new();
    for (i, worker) in ["worker-a", "worker-b", "worker-c"].iter().enumerate() {
        let mut u = update(&format!("encode-{i}"), "IN_PROGRESS");
        u["workerId"] = json!(worker);
        u["progressPercent"] = json!(10 + 20 * i);
        u["progressMessage"] = json!(format!("chunk {i}"));
        u["startTime"] = json!(now - 60_000);
        u["updateTime"] = json!(now - 30_000);
        batch.push(u);
    }
    let mut timed = update("render-1", "IN_PROGRESS");
    timed["taskType"] = json!("render");
    timed["workflowType"] = json!("video \"hd\"\\export"); // label escaping
    timed["workerId"] = json!("worker-a");
    timed["progressPercent"] = json!(25);
    timed["startTime"] = json!(now - 120_000);
    timed["timeoutSeconds"] = json!(300);
    timed["responseTimeoutSeconds"] = json!(60);
    timed["updateTime"] = json!(now - 10_000);
    batch.push(timed);
    // a scheduled task without progress
    batch.push(update("queued-1", "SCHEDULED"));

    // the WAIT queue: overdue, due within the minute, later
    for (id, wake) in [
        ("wait-overdue", now - 120_000),
        ("wait-soon", now + 20_000),
        ("wait-later", now + 3_600_000),
    ] {
        let mut w = update(id, "IN_PROGRESS");
        w["taskType"] = json!("WAIT");
        w["waitUntil"] = json!(wake);
        batch.push(w);
    }
    let r = app.ingest(&json!(batch)).await;
    assert_eq!(r["accepted"], 8, "{r}");

    // a WAIT task that woke up (wake-up lag histogram) and finished tasks (duration histogram)
    let mut woke = update("wait-done", "IN_PROGRESS");
    woke["taskType"] = json!("WAIT");
    woke["waitUntil"] = json!(now - 5_000);
    woke["updateTime"] = json!(now - 6_000);
    app.ingest(&woke).await;
    let mut woke_done = woke.clone();
    woke_done["status"] = json!("COMPLETED");
    woke_done["updateTime"] = json!(now);
    app.ingest(&woke_done).await;

    for (id, status) in [
        ("done-ok", "COMPLETED"),
        ("done-failed", "FAILED"),
        ("done-timeout", "TIMED_OUT"),
    ] {
        let mut start = update(id, "IN_PROGRESS");
        start["workerId"] = json!("worker-b");
        start["progressPercent"] = json!(50);
        start["startTime"] = json!(now - 90_000);
        start["updateTime"] = json!(now - 5_000);
        app.ingest(&start).await;
        let mut end = start.clone();
        end["status"] = json!(status);
        end["updateTime"] = json!(now - 1_000);
        let r = app.ingest(&end).await;
        assert_eq!(r["accepted"], 1, "{r}");
    }

    // a rejected terminal -> IN_PROGRESS transition
    let mut late = update("done-ok", "IN_PROGRESS");
    late["progressPercent"] = json!(60);
    late["updateTime"] = json!(now);
    let r = app.ingest(&late).await;
    assert_eq!(r["rejected"][0]["reason"], "terminal", "{r}");

    // progress updates inside the throttle interval (coalesced) and a duplicate
    for p in [30, 31, 32] {
        let mut u = update("encode-0", "IN_PROGRESS");
        u["workerId"] = json!("worker-a");
        u["progressPercent"] = json!(p);
        app.ingest(&u).await;
    }
    app.ingest(&woke_done).await;
    app.settle().await;

    let text = app.metrics_text().await;
    for family in [
        "taskpulse_task_progress_ratio",
        "taskpulse_task_deadline_timestamp_seconds",
        "taskpulse_tasks",
        "taskpulse_task_duration_seconds_bucket",
        "taskpulse_wait_tasks",
        "taskpulse_wait_wakeup_lag_seconds_bucket",
        "taskpulse_transitions_rejected_total",
        "taskpulse_worker_tasks",
        "taskpulse_build_info",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(family)),
            "no {family} sample in /metrics:\n{text}"
        );
    }
    for histogram in [
        "taskpulse_task_duration_seconds_count",
        "taskpulse_wait_wakeup_lag_seconds_count",
    ] {
        let observed: f64 = text
            .lines()
            .filter(|l| l.starts_with(histogram))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(observed > 0.0, "{histogram} has no observations:\n{text}");
    }

    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write metrics");
    file.flush().unwrap();
    let input = std::fs::File::open(file.path()).expect("reopen metrics file");
    let child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::from(input))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("promtool finished within 30s")
    .unwrap()
    .expect("promtool ran");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty(),
        "promtool check metrics: {}\nstdout:\n{stdout}\nstderr:\n{stderr}\nmetrics:\n{text}",
        out.status
    );
    app.shutdown().await;
}
