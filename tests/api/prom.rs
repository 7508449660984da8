//! A real Prometheus for the tests, on loopback: started on a scrape config, queried through
//! its HTTP API, and every panel query of `dashboards/*.json` with Grafana's variables
//! substituted. Shared by the end-to-end tests of the `api` binary (`e2e/`) and the real
//! Airflow's (`tests/airflow/`, which includes this file by path).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::drift::{dashboards, panel_queries};
use crate::helpers::free_port;
use crate::tools::Tool;

/// The job name the rules expect (`TaskpulseDown` selects `up{job="taskpulse"}`).
pub(crate) const JOB: &str = "taskpulse";

/// `prometheus` on PATH, or `None` after a skip note (a failure with
/// `TASKPULSE_REQUIRE_TOOLS=1`, as `scripts/test.sh` sets it).
pub(crate) fn prometheus() -> Option<PathBuf> {
    Tool {
        env: None,
        local: None,
        names: &["prometheus"],
        how: "apt-get install prometheus, or run scripts/test.sh",
    }
    .find()
}

/// A child process killed when the test ends, however it ends.
pub(crate) struct Proc {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &'static str, bin: &Path, args: &[String], dir: &Path) -> Proc {
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
    pub(crate) fn tail(&self) -> String {
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
pub(crate) async fn wait_ready(client: &reqwest::Client, url: &str, p: &mut Proc) {
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

/// An instant query through Prometheus' HTTP API: the result vector (a scalar as one sample).
pub(crate) async fn query(
    client: &reqwest::Client,
    prom: &str,
    expr: &str,
) -> Result<Vec<Value>, String> {
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
pub(crate) fn has_finite(result: &[Value]) -> bool {
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
pub(crate) async fn wait_for_data(
    client: &reqwest::Client,
    prom: &str,
    expr: &str,
    within: Duration,
) {
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

/// Starts Prometheus in `dir` with `config` (everything before `scrape_configs:`) scraping
/// `target` as job [`JOB`]; returns it and its URL once it is ready.
pub(crate) async fn start_prometheus(
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

/// Every panel query of every dashboard, the variables substituted (`set` overrides them and
/// must give `task_id`), with the place it comes from.
pub(crate) fn dashboard_queries(app_url: &str, set: &[(&str, &str)]) -> Vec<(String, String)> {
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
pub(crate) async fn empty_queries(
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

/// The values the dashboard's variables take in a test: "All" (`.*`) for multi-value query
/// variables, the test's stall window for `stall_after`, the current value for the rest;
/// Grafana's built-in intervals. `task_id` is the caller's to give ([`dashboard_queries`]).
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
            ("task_id", _) => continue,
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
