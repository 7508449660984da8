//! End to end with the real components, all on loopback: taskpulse (in-process), a real
//! Prometheus scraping it every second with `alerts/*.yaml` loaded, a real Alertmanager, and a
//! webhook receiver in this test. The workload makes one task predicted to time out and WAIT
//! tasks overdue; then every query of every dashboard panel must return data through
//! Prometheus' HTTP API, `TaskPredictedTimeout` and `WaitTasksOverdue` must reach the receiver
//! with the right labels, and once the tasks finish both must be resolved.
//!
//! The only change to the rules: every `for:` is shortened to [`FOR`], so the test doesn't wait
//! minutes. Thresholds are as shipped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::drift::{
    churn, dashboards, panel_queries, parse_rules, rule_files, start_tasks, wait_for_checker,
    workload_settings, SLOW, SLOW_TASK_TYPE, SLOW_WORKFLOW_TYPE, WAIT_OVERDUE, WAIT_SOON,
    WAIT_WORKFLOW_TYPE,
};
use crate::helpers::{free_port, Backend, TestApp, TestDb};
use crate::tools::Tool;

mod alerting;
mod kestra;

/// What every alert rule's `for:` becomes.
const FOR: &str = "2s";
/// The job name the rules expect (`TaskpulseDown` selects `up{job="taskpulse"}`).
const JOB: &str = "taskpulse";

/// `prometheus` and Alertmanager (`$TASKPULSE_ALERTMANAGER`, else `prometheus-alertmanager`
/// as Debian names it, else `alertmanager` on PATH), or `None` after a skip note (a failure
/// with `TASKPULSE_REQUIRE_TOOLS=1`, as `scripts/test.sh` sets it).
fn tools() -> Option<(PathBuf, PathBuf)> {
    let how = "apt-get install prometheus prometheus-alertmanager, or run scripts/test.sh";
    let prometheus = Tool {
        env: None,
        local: None,
        names: &["prometheus"],
        how,
    }
    .find()?;
    let alertmanager = Tool {
        env: Some("TASKPULSE_ALERTMANAGER"),
        local: None,
        names: &["prometheus-alertmanager", "alertmanager"],
        how,
    }
    .find()?;
    Some((prometheus, alertmanager))
}

/// A child process killed when the test ends, however it ends.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &'static str, bin: &Path, args: &[String], dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(bin)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        Proc { name, child, log }
    }

    /// The last lines of its output, for failure messages.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!(
            "--- {} (last lines) ---\n{}",
            self.name,
            lines[from..].join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `url` answers 200, failing early if the process exits.
async fn wait_ready(client: &reqwest::Client, url: &str, p: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!(
                "{} exited ({status}) before it was ready\n{}",
                p.name,
                p.tail()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} not ready at {url} within 20s\n{}",
            p.name,
            p.tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// An instant query through Prometheus' HTTP API: the result vector (a scalar as one sample).
async fn query(client: &reqwest::Client, prom: &str, expr: &str) -> Result<Vec<Value>, String> {
    let url = reqwest::Url::parse_with_params(&format!("{prom}/api/v1/query"), &[("query", expr)])
        .unwrap();
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("query failed: {body}"));
    }
    match body["data"]["resultType"].as_str() {
        Some("scalar") | Some("string") => Ok(vec![json!({"value": body["data"]["result"]})]),
        _ => Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()),
    }
}

/// Whether a result holds at least one finite value (not NaN, not ±Inf).
fn has_finite(result: &[Value]) -> bool {
    result.iter().any(|s| {
        let values: Vec<&Value> = match s["values"].as_array() {
            Some(vs) => vs.iter().map(|v| &v[1]).collect(),
            None => vec![&s["value"][1]],
        };
        values
            .iter()
            .filter_map(|v| v.as_str()?.parse::<f64>().ok())
            .any(f64::is_finite)
    })
}

/// Polls until `expr` returns at least one finite sample.
async fn wait_for_data(client: &reqwest::Client, prom: &str, expr: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let r = query(client, prom, expr).await;
        if r.as_ref().is_ok_and(|r| has_finite(r)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus has no data for {expr} within {within:?}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Replaces Grafana's variables: `$name`, `${name}`, `${name:format}`. Unknown ones stay, so
/// the query fails and names them.
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced.find('}').unwrap_or(braced.len());
            let name = braced[..end].split(':').next().unwrap_or("");
            (name, end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        match vars.get(name) {
            Some(v) => out.push_str(v),
            None => out.push_str(&rest[at..at + 1 + len]),
        }
        rest = &rest[at + 1 + len..];
    }
    out.push_str(rest);
    out
}

/// The values the dashboard's variables take in this test: "All" (`.*`) for multi-value query
/// variables, the slow task for `task_id`, the test's stall window for `stall_after`, the
/// current value for the rest; Grafana's built-in intervals.
/// Starts Prometheus in `dir` with `config` (everything before `scrape_configs:`) scraping
/// `target` as job [`JOB`]; returns it and its URL once it is ready.
async fn start_prometheus(
    client: &reqwest::Client,
    prometheus: &Path,
    dir: &Path,
    config: &str,
    target: std::net::SocketAddr,
    extra_args: &[&str],
) -> (Proc, String) {
    let port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "{config}scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let mut args = vec![
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("prom-data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
    ];
    args.extend(extra_args.iter().map(|a| a.to_string()));
    let mut prom = Proc::spawn("prometheus", prometheus, &args, dir);
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(client, &format!("{url}/-/ready"), &mut prom).await;
    (prom, url)
}

/// Every panel query of every dashboard, the variables substituted (`set` overrides them),
/// with the place it comes from.
fn dashboard_queries(app_url: &str, set: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for (file, dashboard) in dashboards() {
        let mut vars = variables(&dashboard, app_url);
        vars.extend(set.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        for q in panel_queries(&dashboard) {
            let expr = substitute(&q.expr, &vars);
            assert!(
                !expr.contains('$'),
                "dashboards/{file} panel `{}`: unknown variable in {expr}",
                q.panel
            );
            queries.push((
                format!("dashboards/{file} panel `{}` ({})", q.panel, q.ref_id),
                expr,
            ));
        }
    }
    queries
}

/// The places of the queries that return no finite value through Prometheus now.
async fn empty_queries(
    client: &reqwest::Client,
    prom: &str,
    queries: &[(String, String)],
) -> BTreeSet<String> {
    let mut empty = BTreeSet::new();
    for (place, expr) in queries {
        if !matches!(query(client, prom, expr).await, Ok(r) if has_finite(&r)) {
            empty.insert(place.clone());
        }
    }
    empty
}

fn variables(dashboard: &Value, app_url: &str) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__range", "5m"),
        ("__range_s", "300"),
        ("__range_ms", "300000"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = v["name"].as_str().unwrap_or("").to_string();
        let value = match (name.as_str(), v["type"].as_str()) {
            ("task_id", _) => SLOW.to_string(),
            ("stall_after", _) => "5s".to_string(),
            ("taskpulse_url", _) => app_url.to_string(),
            (_, Some("datasource")) => continue,
            (_, Some("query")) if v["includeAll"] == true => {
                v["allValue"].as_str().unwrap_or(".*").to_string()
            }
            _ => match &v["current"]["value"] {
                Value::String(s) => s.clone(),
                Value::Array(a) => a.first().and_then(|x| x.as_str()).unwrap_or("").to_string(),
                _ => continue,
            },
        };
        vars.insert(name, value);
    }
    vars
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
