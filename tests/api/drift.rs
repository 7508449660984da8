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

// ------------------------------------------------------------------------------------------
// The workload
// ------------------------------------------------------------------------------------------

/// The task predicted to time out: at 10% after 100 s of a 300 s timeout (predicted ~1000 s).
pub const SLOW: &str = "render-slow";
/// WAIT tasks past their wake-up time by two minutes.
pub const WAIT_OVERDUE: [&str; 2] = ["wait-overdue-1", "wait-overdue-2"];
/// A WAIT task due within the minute (it turns overdue after ~20 s plus the grace).
pub const WAIT_SOON: &str = "wait-soon";
/// `workflowType` of the predicted-timeout task and of the WAIT tasks.
pub const SLOW_WORKFLOW_TYPE: &str = "video";
pub const SLOW_TASK_TYPE: &str = "render";
pub const WAIT_WORKFLOW_TYPE: &str = "media";

/// Settings the workload needs: a checker pass every 300 ms that repairs an expired lease at
/// once, and a 1 s WAIT grace.
pub fn workload_settings(s: &mut taskpulse::Settings) {
    s.check_loop.check_interval = Duration::from_millis(300);
    s.checker.lease_grace = Duration::ZERO;
    s.wait.wait_grace = Duration::from_secs(1);
}

fn task(id: &str, workflow_type: &str, task_type: &str, status: &str) -> Value {
    json!({"taskId": id, "workflowId": format!("wf-{id}"), "workflowType": workflow_type,
           "taskType": task_type, "status": status})
}

fn with(mut u: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().expect("an object") {
        u[k] = v.clone();
    }
    u
}

async fn accepted(app: &TestApp, body: Value) {
    let r = app.ingest(&body).await;
    let n = body.as_array().map(|a| a.len()).unwrap_or(1);
    assert_eq!(r["accepted"], n, "{body}\n{r}");
}

/// In-flight tasks and the WAIT queue: a task predicted to time out ([`SLOW`]), one that
/// finishes in time, one whose progress will stall, a scheduled one, and WAIT tasks overdue,
/// due soon and due later. Returns the engine time the slow task's last sample carries.
pub async fn start_tasks(app: &TestApp) -> i64 {
    let now = taskpulse::now_ms();
    let start = now - 100_000;
    for (i, step) in [0, 50_000, 100_000].iter().enumerate() {
        let i = i as i64;
        for (id, worker, progress) in [
            (SLOW, "worker-a", 5 * i),
            ("render-fast", "worker-b", 45 * i),
        ] {
            accepted(
                app,
                with(
                    task(id, SLOW_WORKFLOW_TYPE, SLOW_TASK_TYPE, "IN_PROGRESS"),
                    json!({"workerId": worker, "startTime": start, "timeoutSeconds": 300,
                           "updateTime": start + step, "progressPercent": progress,
                           "progressMessage": format!("frame {progress}")}),
                ),
            )
            .await;
        }
    }
    let mut batch = vec![
        with(
            task("encode-stuck", WAIT_WORKFLOW_TYPE, "encode", "IN_PROGRESS"),
            json!({"workerId": "worker-b", "progressPercent": 40, "progressMessage": "chunk 8 of 20"}),
        ),
        task("encode-queued", WAIT_WORKFLOW_TYPE, "encode", "SCHEDULED"),
    ];
    for (id, wake) in [
        (WAIT_OVERDUE[0], now - 120_000),
        (WAIT_OVERDUE[1], now - 90_000),
        (WAIT_SOON, now + 20_000),
        ("wait-later", now + 3_600_000),
    ] {
        batch.push(with(
            task(id, WAIT_WORKFLOW_TYPE, "WAIT", "IN_PROGRESS"),
            json!({"waitUntil": wake}),
        ));
    }
    accepted(app, json!(batch)).await;
    now
}

/// Things that happen, round `round` of them: finished tasks (duration histogram), a WAIT task
/// that woke up late (wake-up lag histogram), a rejected terminal -> IN_PROGRESS transition,
/// progress updates inside the throttle interval (coalesced), and a task whose lease expires at
/// once (the checker repairs it). Each round reuses the label sets of the first, so counters and
/// histograms grow on the same series.
pub async fn churn(app: &TestApp, round: u32) {
    let now = taskpulse::now_ms();
    for (id, status) in [("done-ok", "COMPLETED"), ("done-failed", "FAILED")] {
        let id = format!("{id}-{round}");
        let running = with(
            task(&id, WAIT_WORKFLOW_TYPE, "encode", "IN_PROGRESS"),
            json!({"workerId": "worker-c", "startTime": now - 90_000, "updateTime": now - 5_000,
                   "progressPercent": 50}),
        );
        accepted(app, running.clone()).await;
        accepted(
            app,
            with(
                running,
                json!({"status": status, "updateTime": now - 1_000}),
            ),
        )
        .await;
    }
    let late = with(
        task(
            &format!("done-ok-{round}"),
            WAIT_WORKFLOW_TYPE,
            "encode",
            "IN_PROGRESS",
        ),
        json!({"progressPercent": 60, "updateTime": now}),
    );
    let r = app.ingest(&late).await;
    assert_eq!(r["rejected"][0]["reason"], "terminal", "{r}");

    let woke = with(
        task(
            &format!("wait-woke-{round}"),
            WAIT_WORKFLOW_TYPE,
            "WAIT",
            "IN_PROGRESS",
        ),
        json!({"waitUntil": now - 5_000, "updateTime": now - 6_000}),
    );
    accepted(app, woke.clone()).await;
    accepted(
        app,
        with(woke, json!({"status": "COMPLETED", "updateTime": now})),
    )
    .await;

    let chatty = format!("encode-chatty-{round}");
    for p in [10, 11, 12, 13] {
        accepted(
            app,
            with(
                task(&chatty, WAIT_WORKFLOW_TYPE, "encode", "IN_PROGRESS"),
                json!({"workerId": "worker-c", "progressPercent": p}),
            ),
        )
        .await;
    }

    accepted(
        app,
        with(
            task(
                &format!("lease-{round}"),
                WAIT_WORKFLOW_TYPE,
                "encode",
                "IN_PROGRESS",
            ),
            json!({"workerId": "worker-d", "responseTimeoutSeconds": 1, "progressPercent": 5}),
        ),
    )
    .await;
}

/// Waits until the periodic checker has repaired the expired lease of every round so far and
/// reported the overdue WAIT tasks.
pub async fn wait_for_checker(app: &TestApp, rounds: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let scrape = app.scrape().await;
        let repaired = metric_value(
            &scrape,
            "taskpulse_checker_repairs_total",
            &[("rule", "lease_expired"), ("outcome", "repaired")],
        )
        .unwrap_or(0.0);
        let overdue = metric_value(
            &scrape,
            "taskpulse_checker_violations",
            &[("rule", "wait_overdue")],
        )
        .unwrap_or(0.0);
        if repaired >= f64::from(rounds) && overdue >= 1.0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checker did not repair {rounds} expired lease(s) and report the overdue WAIT tasks within 15s (repaired {repaired}, wait_overdue {overdue})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The scrape of a second app, for what only the Conductor worker proxy fills
/// (`taskpulse_conductor_heartbeats_total`): `--conductor-url` pointing at the engine emulator,
/// a task polled through taskpulse, and two lease heartbeats, one forwarded, one coalesced.
pub async fn proxy_workload_metrics() -> String {
    use crate::conductor::{Emulator, TaskSpec};
    let emu = Emulator::start().await;
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| s.conductor.url = Some(emu.url())).await;
    let id = emu.start_task(
        TaskSpec::new("encode")
            .workflow("wf-heartbeat", WAIT_WORKFLOW_TYPE)
            .response_timeout(60),
    );
    let polled = app.get("/api/tasks/poll/encode?workerid=worker-hb").await;
    assert_eq!(polled.status(), 200, "poll through the proxy");
    let task: Value = polled.json().await.unwrap();
    assert_eq!(task["taskId"], id.as_str(), "{task}");
    for p in [10, 20] {
        let r = app
            .client
            .post(app.url("/api/tasks"))
            .json(
                &json!({"taskId": id, "workflowInstanceId": task["workflowInstanceId"],
                          "workerId": "worker-hb", "status": "IN_PROGRESS", "extendLease": true,
                          "outputData": {"progressPercent": p}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "heartbeat through the proxy");
    }
    app.settle().await;
    let text = app.metrics_text().await;
    app.shutdown().await;
    text
}

/// The scrape of an app reading a Redis-backed Conductor (`--conductor-redis`, database 13 of
/// the test Redis), for what only that reader fills (`taskpulse_conductor_queue_*`): one task
/// queued. Empty when there is no Redis and tools are not required.
pub async fn redis_workload_metrics() -> String {
    use redis::AsyncCommands;
    let url = "redis://127.0.0.1:6379/13";
    let client = redis::Client::open(url).unwrap();
    let mut con = match client.get_multiplexed_async_connection().await {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("TASKPULSE_REQUIRE_TOOLS").as_deref() != Ok("1"),
                "no Redis at {url}: {e} (scripts/test.sh starts one)"
            );
            return String::new();
        }
    };
    let _: () = redis::cmd("FLUSHDB").query_async(&mut con).await.unwrap();
    let _: () = con
        .zadd("conductor_queues.test.QUEUE.encode.c", "t-1", 1.0)
        .await
        .unwrap();
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, |s| s.conductor.redis = Some(url.into())).await;
    let text = app.metrics_text().await;
    app.shutdown().await;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut con).await.unwrap();
    text
}

// ------------------------------------------------------------------------------------------
// Dashboards, rule files, PromQL
// ------------------------------------------------------------------------------------------

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Files in a directory of the repository with one of the extensions, sorted.
fn files(dir: &str, exts: &[&str]) -> Vec<PathBuf> {
    let dir = repo_path(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| exts.contains(&e))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Every dashboard: file name and parsed JSON. Panics if there is none or one doesn't parse.
pub fn dashboards() -> Vec<(String, Value)> {
    let paths = files("dashboards", &["json"]);
    assert!(!paths.is_empty(), "no dashboards/*.json");
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (file_name(p), v)
        })
        .collect()
}

/// One query of a dashboard panel.
#[derive(Debug, Clone)]
pub struct PanelQuery {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
}

/// Every panel target's `expr`, rows' nested panels included.
pub fn panel_queries(dashboard: &Value) -> Vec<PanelQuery> {
    fn walk(panels: &Value, out: &mut Vec<PanelQuery>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push(PanelQuery {
                        panel: p["title"].as_str().unwrap_or("").to_string(),
                        ref_id: t["refId"].as_str().unwrap_or("").to_string(),
                        expr: expr.to_string(),
                    });
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The queries of a dashboard's query variables (`label_values(...)`).
pub fn variable_queries(dashboard: &Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "query")
        .filter_map(|v| match &v["query"] {
            Value::String(s) => Some(s.clone()),
            q => q["query"].as_str().map(str::to_string),
        })
        .collect()
}

/// A rule of a Prometheus rule file, as far as these tests need it.
#[derive(Debug, Clone)]
pub struct RuleEntry {
    /// `alert` or `record`.
    pub kind: &'static str,
    pub name: String,
    pub expr: String,
}

/// The Prometheus rule files under `alerts/`: path and text. Panics if there is none.
pub fn rule_files() -> Vec<(PathBuf, String)> {
    let paths = files("alerts", &["yaml", "yml"]);
    assert!(
        !paths.is_empty(),
        "no alerts/*.yaml: the alert rules are missing"
    );
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The value of a YAML block-mapping key starting at `lines[i]` (after `key:` at column
/// `key_col`), with the lines that continue it: block scalars (`|`, `>`), multi-line plain and
/// quoted scalars. Enough YAML for Prometheus rule files.
fn yaml_value(lines: &[&str], i: usize, key_col: usize, first: &str) -> String {
    let mut cont: Vec<&str> = Vec::new();
    for l in &lines[i + 1..] {
        if l.trim().is_empty() || indent_of(l) > key_col {
            cont.push(l);
        } else {
            break;
        }
    }
    while cont.last().is_some_and(|l| l.trim().is_empty()) {
        cont.pop();
    }
    let first = first.trim();
    if first.starts_with('|') || first.starts_with('>') {
        let sep = if first.starts_with('|') { "\n" } else { " " };
        return cont.iter().map(|l| l.trim()).collect::<Vec<_>>().join(sep);
    }
    let joined = std::iter::once(first)
        .chain(cont.iter().map(|l| l.trim()))
        .collect::<Vec<_>>()
        .join(" ");
    let joined = joined.trim();
    if let Some(inner) = joined.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        inner
            .replace("\\\"", "\"")
            .replace("\\n", "\n")
            .replace("\\\\", "\\")
    } else if let Some(inner) = joined.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
        inner.replace("''", "'")
    } else {
        // a plain scalar ends at a comment
        match joined.find(" #") {
            Some(at) => joined[..at].trim_end().to_string(),
            None => joined.to_string(),
        }
    }
}

/// The alerting and recording rules of a rule file: name and expression. A rule is a list item
/// (`- `) holding an `expr:` key, named by its `alert:` or `record:` key.
pub fn parse_rules(text: &str) -> Vec<RuleEntry> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<RuleEntry> = Vec::new();
    let mut named: Option<(&'static str, String)> = None;
    let mut expr: Option<String> = None;
    let mut flush = |named: &mut Option<(&'static str, String)>, expr: &mut Option<String>| {
        if let Some(expr) = expr.take() {
            let (kind, name) = named.take().unwrap_or(("alert", String::new()));
            out.push(RuleEntry { kind, name, expr });
        }
        *named = None;
    };
    for (i, line) in lines.iter().enumerate() {
        let mut rest = line.trim_start();
        let mut col = indent_of(line);
        if rest.starts_with("- ") {
            flush(&mut named, &mut expr);
        }
        while let Some(r) = rest.strip_prefix("- ") {
            let r2 = r.trim_start();
            col += rest.len() - r2.len();
            rest = r2;
        }
        for (key, kind) in [("alert:", "alert"), ("record:", "record")] {
            if let Some(v) = rest.strip_prefix(key) {
                named = Some((kind, yaml_value(&lines, i, col, v)));
            }
        }
        if let Some(v) = rest.strip_prefix("expr:") {
            expr = Some(yaml_value(&lines, i, col, v));
        }
    }
    flush(&mut named, &mut expr);
    out
}

/// What a PromQL expression refers to.
#[derive(Debug, Default)]
pub struct PromqlNames {
    /// Metric names starting with `taskpulse_` (series names: `_bucket` etc. kept).
    pub metrics: BTreeSet<String>,
    /// Names with a colon: recording rules.
    pub recorded: BTreeSet<String>,
    /// Each `name{...}` selector of a `taskpulse_` metric with the label names it matches on.
    pub selectors: Vec<(String, Vec<String>)>,
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Finds metric names, recording-rule names and selector labels in PromQL (with Grafana
/// variables in it). String literals, comments and range/subquery brackets are blanked first,
/// so label values and durations never look like names.
pub fn promql_names(expr: &str) -> PromqlNames {
    let mut clean: Vec<char> = Vec::with_capacity(expr.len());
    let mut chars = expr.chars().peekable();
    let mut bracket = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                clean.push(' ');
                while let Some(d) = chars.next() {
                    clean.push(' ');
                    if d == '\\' && c != '`' {
                        if chars.next().is_some() {
                            clean.push(' ');
                        }
                    } else if d == c {
                        break;
                    }
                }
            }
            '#' => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        clean.push('\n');
                        break;
                    }
                    clean.push(' ');
                }
            }
            '[' => {
                bracket += 1;
                clean.push(' ');
            }
            ']' => {
                bracket = bracket.saturating_sub(1);
                clean.push(' ');
            }
            _ if bracket > 0 => clean.push(' '),
            _ => clean.push(c),
        }
    }

    let mut out = PromqlNames::default();
    let mut i = 0;
    while i < clean.len() {
        let c = clean[i];
        let starts = (c.is_ascii_alphabetic() || c == '_' || c == ':')
            && (i == 0 || (!ident_char(clean[i - 1]) && clean[i - 1] != '$'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < clean.len() && ident_char(clean[j]) {
            j += 1;
        }
        let name: String = clean[i..j].iter().collect();
        i = j;
        if name.contains(':') {
            out.recorded.insert(name);
            continue;
        }
        if !name.starts_with("taskpulse_") {
            continue;
        }
        out.metrics.insert(name.clone());
        let mut k = j;
        while k < clean.len() && clean[k].is_whitespace() {
            k += 1;
        }
        if k < clean.len() && clean[k] == '{' {
            let end = clean[k..]
                .iter()
                .position(|&c| c == '}')
                .map(|p| k + p)
                .unwrap_or(clean.len());
            let inside: String = clean[k + 1..end].iter().collect();
            let labels = inside
                .split(',')
                .map(|m| {
                    m.trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .filter(|l| !l.is_empty())
                .collect();
            out.selectors.push((name, labels));
            i = end;
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// The exposition
// ------------------------------------------------------------------------------------------

/// One metric family of a scrape.
#[derive(Debug, Default, Clone)]
pub struct Family {
    pub kind: String,
    /// Label names of its samples (`le`/`quantile` not included).
    pub labels: BTreeSet<String>,
    pub samples: usize,
}

/// The families of a `/metrics` text, by name.
pub fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                families.entry(name.to_string()).or_default().kind = kind.to_string();
            }
        }
    }
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        let series = &line[..name_end];
        let Some(family) = family_of(&families, series).map(str::to_string) else {
            families.entry(series.to_string()).or_default().samples += 1;
            continue;
        };
        let labels = if line[name_end..].starts_with('{') {
            label_names(&line[name_end + 1..])
        } else {
            Vec::new()
        };
        let f = families.get_mut(&family).unwrap();
        f.samples += 1;
        f.labels
            .extend(labels.into_iter().filter(|l| l != "le" && l != "quantile"));
    }
    families
}

/// Label names of a sample line from just after its `{`.
fn label_names(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = s.chars();
    let mut name = String::new();
    while let Some(c) = chars.next() {
        match c {
            '}' => break,
            '=' => {
                out.push(std::mem::take(&mut name).trim().to_string());
                // the quoted value
                let _ = chars.next();
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == '"' {
                        break;
                    }
                }
            }
            ',' => {}
            c => name.push(c),
        }
    }
    out
}

/// The family a series name belongs to: itself, or a histogram's/summary's for `_bucket`,
/// `_sum`, `_count`.
pub fn family_of<'a>(families: &'a BTreeMap<String, Family>, series: &'a str) -> Option<&'a str> {
    if let Some((name, f)) = families.get_key_value(series) {
        if f.kind != "histogram" && f.kind != "summary" {
            return Some(name);
        }
    }
    for (suffix, kinds) in [
        ("_bucket", &["histogram"][..]),
        ("_sum", &["histogram", "summary"][..]),
        ("_count", &["histogram", "summary"][..]),
    ] {
        if let Some(base) = series.strip_suffix(suffix) {
            if let Some((name, f)) = families.get_key_value(base) {
                if kinds.contains(&f.kind.as_str()) {
                    return Some(name);
                }
            }
        }
    }
    None
}

/// Problems with the metric names and selector labels of one expression. `require_samples`:
/// a family must have series (after the workload), not only be declared (a fresh sidecar).
pub fn check_expr(
    families: &BTreeMap<String, Family>,
    recorded: &BTreeSet<String>,
    place: &str,
    expr: &str,
    require_samples: bool,
    problems: &mut Vec<String>,
) {
    let names = promql_names(expr);
    for m in &names.metrics {
        match family_of(families, m) {
            None => problems.push(format!(
                "{place}: `{m}` is not a series taskpulse exports (expr: {expr})"
            )),
            Some(f) if require_samples && families[f].samples == 0 => problems.push(format!(
                "{place}: `{m}` has no samples in the scrape (expr: {expr})"
            )),
            Some(_) => {}
        }
    }
    for r in &names.recorded {
        if !recorded.contains(r) {
            problems.push(format!(
                "{place}: `{r}` is not a recording rule of alerts/*.yaml (expr: {expr})"
            ));
        }
    }
    for (m, labels) in &names.selectors {
        let Some(f) = family_of(families, m) else {
            continue;
        };
        if families[f].samples == 0 {
            continue; // an empty family's labels are not in the text (and were reported above)
        }
        for l in labels {
            let known = families[f].labels.contains(l)
                || ["instance", "job", "__name__"].contains(&l.as_str())
                || (l == "le" && m.ends_with("_bucket"));
            if !known {
                problems.push(format!(
                    "{place}: `{m}` has no label `{l}` (it has {:?}; expr: {expr})",
                    families[f].labels
                ));
            }
        }
    }
}

/// The README's metric reference rows: name, type, label names.
pub fn readme_metrics(readme: &str) -> Vec<(String, String, BTreeSet<String>)> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Metrics"))
        .expect("README has a `## Metrics` section");
    let mut rows = Vec::new();
    let mut previous: BTreeSet<String> = BTreeSet::new();
    for line in section.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() < 3 || !cells[0].starts_with("`taskpulse_") {
            continue;
        }
        let name = cells[0].trim_matches('`').to_string();
        let labels: BTreeSet<String> = if cells[2] == "same" {
            previous.clone()
        } else {
            cells[2]
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        };
        previous = labels.clone();
        rows.push((name, cells[1].to_string(), labels));
    }
    rows
}

/// Every metric name the dashboards, the alert rules and the README mention is one a real scrape
/// has, with the labels they select on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_alerts_and_readme_name_only_exported_metrics() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn_with(&db, workload_settings).await;
    start_tasks(&app).await;
    churn(&app, 1).await;
    wait_for_checker(&app, 1).await;
    app.settle().await;
    let text = app.metrics_text().await;
    let mut families = parse_exposition(&text);
    let others = proxy_workload_metrics().await + &redis_workload_metrics().await;
    for (name, f) in parse_exposition(&others) {
        let mine = families.entry(name).or_default();
        if mine.samples == 0 {
            *mine = f;
        }
    }
    let mut problems = Vec::new();

    // the workload reaches every family the app declares
    for (name, f) in &families {
        if f.samples == 0 {
            problems.push(format!(
                "the workload left `{name}` without samples; extend it"
            ));
        }
    }

    let rules: Vec<(PathBuf, Vec<RuleEntry>)> = rule_files()
        .into_iter()
        .map(|(p, text)| {
            let rules = parse_rules(&text);
            (p, rules)
        })
        .collect();
    let recorded: BTreeSet<String> = rules
        .iter()
        .flat_map(|(_, rs)| {
            rs.iter()
                .filter(|r| r.kind == "record")
                .map(|r| r.name.clone())
        })
        .collect();
    let mut checked = 0;
    for (path, rs) in &rules {
        assert!(
            !rs.is_empty(),
            "{} holds no rule with an expr",
            path.display()
        );
        for r in rs {
            let place = format!("alerts/{} {} `{}`", file_name(path), r.kind, r.name);
            check_expr(&families, &recorded, &place, &r.expr, true, &mut problems);
            checked += 1;
        }
    }
    for (file, dashboard) in dashboards() {
        let queries = panel_queries(&dashboard);
        assert!(!queries.is_empty(), "dashboards/{file} has no queries");
        for q in queries {
            let place = format!("dashboards/{file} panel `{}` ({})", q.panel, q.ref_id);
            check_expr(&families, &recorded, &place, &q.expr, true, &mut problems);
            checked += 1;
        }
        for v in variable_queries(&dashboard) {
            let place = format!("dashboards/{file} variable query");
            check_expr(&families, &recorded, &place, &v, true, &mut problems);
            checked += 1;
        }
    }

    // the README's metric reference, both ways, with types and labels
    let readme = std::fs::read_to_string(repo_path("docs/metrics.md")).unwrap();
    let documented = readme_metrics(&readme);
    assert!(
        documented.len() >= 10,
        "README's metric reference table not found: {documented:?}"
    );
    for (name, kind, labels) in &documented {
        match families.get(name) {
            None => problems.push(format!(
                "README documents `{name}`, which /metrics doesn't have"
            )),
            Some(f) => {
                if &f.kind != kind {
                    problems.push(format!(
                        "README says `{name}` is a {kind}, /metrics says {}",
                        f.kind
                    ));
                }
                if &f.labels != labels {
                    problems.push(format!(
                        "README gives `{name}` the labels {labels:?}, /metrics has {:?}",
                        f.labels
                    ));
                }
            }
        }
    }
    for name in families.keys() {
        if !documented.iter().any(|(n, _, _)| n == name) {
            problems.push(format!(
                "`{name}` is exported but not in README's metric reference"
            ));
        }
    }

    assert!(
        problems.is_empty(),
        "{} drift problem(s) ({checked} expressions checked):\n{}\n\n/metrics:\n{text}",
        problems.len(),
        problems.join("\n")
    );
    app.shutdown().await;
}

/// The readers above do what the drift test relies on.
#[test]
fn promql_rule_and_exposition_readers_and_checks() {
    let n = promql_names(
        r#"histogram_quantile(0.9, sum by (le) (rate(taskpulse_wait_wakeup_lag_seconds_bucket{workflow_type=~"$workflow_type", job!="taskpulse_x"}[$__rate_interval])))
           / on () group_left job:taskpulse_tasks:sum offset $stall_after # taskpulse_comment"#,
    );
    assert_eq!(
        n.metrics.into_iter().collect::<Vec<_>>(),
        ["taskpulse_wait_wakeup_lag_seconds_bucket"]
    );
    assert_eq!(
        n.recorded.into_iter().collect::<Vec<_>>(),
        ["job:taskpulse_tasks:sum"]
    );
    assert_eq!(
        n.selectors,
        [(
            "taskpulse_wait_wakeup_lag_seconds_bucket".to_string(),
            vec!["workflow_type".to_string(), "job".to_string()]
        )]
    );

    let rules = parse_rules(
        "groups:\n  - name: g\n    rules:\n      - record: a:b:sum\n        expr: sum(taskpulse_tasks)\n      - alert: A\n        expr: |\n          sum(taskpulse_x)\n            > 0\n        for: 5m\n        labels:\n          severity: page\n      - alert: 'B'\n        expr: \"taskpulse_y{a=\\\"1\\\"} > 0\"\n      - expr: taskpulse_z\n          > 1 # note\n        alert: C\n",
    );
    let got: Vec<(&str, &str, &str)> = rules
        .iter()
        .map(|r| (r.kind, r.name.as_str(), r.expr.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("record", "a:b:sum", "sum(taskpulse_tasks)"),
            ("alert", "A", "sum(taskpulse_x)\n> 0"),
            ("alert", "B", "taskpulse_y{a=\"1\"} > 0"),
            ("alert", "C", "taskpulse_z > 1"),
        ]
    );

    let fams = parse_exposition(
        "# TYPE taskpulse_h histogram\ntaskpulse_h_bucket{a=\"x,\\\"y\",le=\"1\"} 1\ntaskpulse_h_sum{a=\"\"} 1\ntaskpulse_h_count{a=\"\"} 1\n# TYPE taskpulse_g gauge\ntaskpulse_g 2\n",
    );
    assert_eq!(family_of(&fams, "taskpulse_h_bucket"), Some("taskpulse_h"));
    assert_eq!(
        family_of(&fams, "taskpulse_h"),
        None,
        "a histogram is not one series"
    );
    assert_eq!(fams["taskpulse_h"].labels.iter().collect::<Vec<_>>(), ["a"]);
    assert_eq!(fams["taskpulse_h"].samples, 3);
    assert_eq!(family_of(&fams, "taskpulse_g"), Some("taskpulse_g"));

    // what the drift test reports: an unknown name, a bare histogram name, an unknown label, a
    // recording rule nobody defines; and nothing for correct use
    let recorded: BTreeSet<String> = ["job:taskpulse_g:sum".to_string()].into();
    let mut problems = Vec::new();
    check_expr(
        &fams,
        &recorded,
        "x",
        r#"rate(taskpulse_h_bucket{a="1", le="+Inf", job="j"}[5m]) + taskpulse_g + job:taskpulse_g:sum"#,
        true,
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:?}");
    check_expr(
        &fams,
        &recorded,
        "x",
        r#"taskpulse_nope + taskpulse_h + taskpulse_g{b="1"} + job:taskpulse_nope:sum"#,
        true,
        &mut problems,
    );
    assert_eq!(problems.len(), 4, "{problems:#?}");
}
