//! End to end with the real components, all on loopback: taskpulse (in-process), a real
//! Prometheus scraping it every second with `alerts/*.yaml` loaded, a real Alertmanager, and a
//! webhook receiver in this test. The workload makes one task predicted to time out and WAIT
//! tasks overdue; then every query of every dashboard panel must return data through
//! Prometheus' HTTP API, `TaskPredictedTimeout` and `WaitTasksOverdue` must reach the receiver
//! with the right labels, and once the tasks finish both must be resolved.
//!
//! The only change to the rules: every `for:` is shortened to [`FOR`], so the test doesn't wait
//! minutes. Thresholds are as shipped.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::drift::{
    churn, parse_rules, rule_files, start_tasks, wait_for_checker, workload_settings, SLOW,
    SLOW_TASK_TYPE, SLOW_WORKFLOW_TYPE, WAIT_OVERDUE, WAIT_SOON, WAIT_WORKFLOW_TYPE,
};
use crate::helpers::{free_port, Backend, TestApp, TestDb};
use crate::prom::{
    dashboard_queries, empty_queries, has_finite, query, start_prometheus, wait_for_data,
    wait_ready, Proc, JOB,
};
use crate::tools::Tool;

mod alerting;
mod kestra;

/// What every alert rule's `for:` becomes.
const FOR: &str = "2s";

/// `prometheus` and Alertmanager (`$TASKPULSE_ALERTMANAGER`, else `prometheus-alertmanager`
/// as Debian names it, else `alertmanager` on PATH), or `None` after a skip note (a failure
/// with `TASKPULSE_REQUIRE_TOOLS=1`, as `scripts/test.sh` sets it).
fn tools() -> Option<(PathBuf, PathBuf)> {
    let how = "apt-get install prometheus prometheus-alertmanager, or run scripts/test.sh";
    let prometheus = crate::prom::prometheus()?;
    let alertmanager = Tool {
        env: Some("TASKPULSE_ALERTMANAGER"),
        local: None,
        names: &["prometheus-alertmanager", "alertmanager"],
        how,
    }
    .find()?;
    Some((prometheus, alertmanager))
}

/// The rule files with every `for:` shortened to [`FOR`].
fn shortened_rules(dir: &Path) -> Vec<(PathBuf, usize)> {
    rule_files()
        .into_iter()
        .map(|(path, text)| {
            let mut out = String::new();
            for line in text.lines() {
                let trimmed = line.trim_start();
                if trimmed.starts_with("for:") {
                    let indent = &line[..line.len() - trimmed.len()];
                    out.push_str(&format!("{indent}for: {FOR}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            let dest = dir.join(path.file_name().unwrap());
            std::fs::write(&dest, &out).unwrap();
            (dest, parse_rules(&text).len())
        })
        .collect()
}

/// Records the alert groups Alertmanager posts.
#[derive(Clone, Default)]
struct Receiver {
    posts: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start(&self) -> std::net::SocketAddr {
        let posts = self.posts.clone();
        let app = axum::Router::new().route(
            "/alerts",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let posts = posts.clone();
                async move {
                    posts.lock().unwrap().push(body);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// Every alert received, with its status (`firing` or `resolved`).
    fn alerts(&self) -> Vec<Value> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .flat_map(|p| p["alerts"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until an alert named `name` with `status` has arrived; returns all such.
    async fn wait_for(
        &self,
        name: &str,
        status: &str,
        within: Duration,
        logs: &dyn Fn() -> String,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let found: Vec<Value> = self
                .alerts()
                .into_iter()
                .filter(|a| a["labels"]["alertname"] == name && a["status"] == status)
                .collect();
            if !found.is_empty() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {status} {name} reached the receiver within {within:?}; received: {:#}\n{}",
                json!(self.alerts()),
                logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Keeps the slow task moving at its rate (0.1 points a second), so it stays predicted to time
/// out and never counts as stalled.
fn keep_slow_task_moving(app: &TestApp) -> tokio::task::JoinHandle<()> {
    let client = app.client.clone();
    let url = app.url("/api/v1/updates");
    let t0 = taskpulse::now_ms();
    tokio::spawn(async move {
        loop {
            let now = taskpulse::now_ms();
            let progress = 10.0 + (now - t0) as f64 / 1000.0 * 0.1;
            let _ = client
                .post(&url)
                .json(&json!({"taskId": SLOW, "workflowId": format!("wf-{SLOW}"), "status": "IN_PROGRESS",
                              "updateTime": now, "progressPercent": progress, "workerId": "worker-a"}))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}
