//! `taskpulse-loadgen`: simulates an engine against a running taskpulse (or anything that
//! takes the same requests), to measure what taskpulse costs and how that grows with the work.
//! A binary of its own, beside `taskpulse`, so the sidecar's library carries none of it.
//!
//! N tasks report progress at R updates per second each; a share of them are WAIT tasks with
//! wake-up times; every task finishes after K updates and is replaced by a new one, so tasks
//! finish at N * R / K per second. Updates go as single-update requests over keep-alive
//! connections or as NDJSON batches. The report gives accepted updates per second and request
//! latency percentiles. `taskpulse-loadgen --sink` instead runs the baseline server: it reads
//! each body and answers 200, to show what the network path itself allows. With
//! `--protocol pushgateway` the same workload goes to a Prometheus Pushgateway (one group per
//! task), the alternative users reach for today, for a side-by-side.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// How updates are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One update per request, keep-alive connections.
    Single,
    /// NDJSON bodies of `--batch` updates.
    Ndjson,
}

/// Where updates go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Taskpulse,
    Pushgateway,
}

/// `taskpulse-loadgen` options.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "taskpulse-loadgen",
    version,
    about = "Simulate an engine against a running taskpulse and report throughput and latency"
)]
pub struct LoadgenArgs {
    /// Base URL of the taskpulse under test
    #[arg(long, default_value = "http://127.0.0.1:9477")]
    pub target: String,
    /// Tasks reporting at the same time
    #[arg(long, default_value_t = 1000)]
    pub tasks: usize,
    /// Updates per second per task (0 = as fast as the target answers)
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// How long to run
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// single: one update per request; ndjson: batches
    #[arg(long, value_enum, default_value_t = Mode::Ndjson)]
    pub mode: Mode,
    /// Updates per NDJSON request
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Concurrent connections
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Share of tasks that are WAIT tasks (0 to 1)
    #[arg(long, default_value_t = 0.1)]
    pub wait_fraction: f64,
    /// Updates per task before it completes (tasks finish at tasks * rate / this per second)
    #[arg(long, default_value_t = 100)]
    pub updates_per_task: u32,
    /// Tasks never complete: after --updates-per-task updates each is abandoned and replaced by
    /// a new one (with --updates-per-task 1, a flood of distinct unfinished tasks)
    #[arg(long)]
    pub never_finish: bool,
    /// Stop after sending this many updates in all (0 = no limit; --duration still applies)
    #[arg(long, default_value_t = 0)]
    pub max_updates: u64,
    /// Bearer token, when taskpulse runs with --auth-token
    #[arg(long, env = "TASKPULSE_AUTH_TOKEN")]
    pub token: Option<String>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// taskpulse: POST /api/v1/updates. pushgateway: the alternative users reach for today,
    /// each task's progress pushed to a Prometheus Pushgateway as a group of its own
    /// (PUT /metrics/job/loadgen/task_id/ID), one update per request
    #[arg(long, value_enum, default_value_t = Protocol::Taskpulse)]
    pub protocol: Protocol,
    /// Scrapers fetching `/metrics` (and reading it whole) while the load runs, as Prometheus
    /// replicas and dashboards do
    #[arg(long, default_value_t = 0)]
    pub scrapers: usize,
    /// Scrapes per second per scraper (0 = back to back)
    #[arg(long, default_value_t = 10.0)]
    pub scrape_rate: f64,
    /// Instead of generating load, run the baseline server on this address: it reads each body
    /// and answers 200
    #[arg(long, value_name = "ADDR")]
    pub sink: Option<SocketAddr>,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub tasks: usize,
    pub seconds: f64,
    pub requests: u64,
    pub updates_sent: u64,
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub errors: u64,
    pub accepted_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
    /// Scrapes answered while the load ran (`--scrapers`), and their median time.
    pub scrapes: u64,
    pub scrape_ms_p50: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:?} mode, {} tasks, {:.1}s: {} requests, {} updates sent",
            self.mode, self.tasks, self.seconds, self.requests, self.updates_sent
        )?;
        writeln!(
            f,
            "accepted {} ({:.0}/s), duplicates {}, rejected {}, failed requests {}",
            self.accepted, self.accepted_per_second, self.duplicates, self.rejected, self.errors
        )?;
        write!(
            f,
            "request latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.latency_ms_p50, self.latency_ms_p99, self.latency_ms_max
        )?;
        if self.scrapes > 0 {
            write!(
                f,
                "\nscrapes meanwhile: {} (p50 {:.1} ms)",
                self.scrapes, self.scrape_ms_p50
            )?;
        }
        Ok(())
    }
}

/// One simulated task.
struct SimTask {
    id: String,
    workflow: String,
    wait: bool,
    sent: u32,
}

/// The tasks one connection drives.
struct Workload {
    /// Unique per run, so a second run against the same taskpulse doesn't hit finished tasks.
    run: String,
    conn: usize,
    tasks: Vec<SimTask>,
    next: usize,
    generation: u64,
    updates_per_task: u32,
    /// Every this many slots is a WAIT task; None with --wait-fraction 0.
    wait_every: Option<usize>,
    /// Send the completion after the last update (false: abandon the task instead).
    finish: bool,
}

impl Workload {
    fn new(
        conn: usize,
        count: usize,
        wait_fraction: f64,
        updates_per_task: u32,
        finish: bool,
    ) -> Workload {
        let wait_every = if wait_fraction <= 0.0 {
            None
        } else {
            Some((1.0 / wait_fraction.min(1.0)).round().max(1.0) as usize)
        };
        let mut w = Workload {
            run: format!("{:x}", now_ms()),
            conn,
            tasks: Vec::with_capacity(count),
            next: 0,
            generation: 0,
            // A finishing task needs one update to start and one to finish.
            updates_per_task: updates_per_task.max(if finish { 2 } else { 1 }),
            wait_every,
            finish,
        };
        for i in 0..count {
            let t = w.fresh(i);
            w.tasks.push(t);
        }
        w
    }

    fn fresh(&mut self, slot: usize) -> SimTask {
        self.generation += 1;
        SimTask {
            id: format!("lg{}-{}-{}-{}", self.run, self.conn, slot, self.generation),
            workflow: format!("lgwf{}-{}-{}", self.run, self.conn, self.generation / 10),
            wait: self.wait_every.is_some_and(|n| slot % n == 0),
            sent: 0,
        }
    }

    /// Picks the next task round-robin and counts one more update for it.
    fn advance(&mut self) -> Option<usize> {
        if self.tasks.is_empty() {
            return None;
        }
        let slot = self.next % self.tasks.len();
        self.next += 1;
        self.tasks[slot].sent += 1;
        Some(slot)
    }

    /// Replaces the task in `slot` with a new one once it has sent all its updates.
    fn retire_if_done(&mut self, slot: usize) {
        if self.tasks[slot].sent >= self.updates_per_task {
            let fresh = self.fresh(slot);
            self.tasks[slot] = fresh;
        }
    }

    /// Writes the next update as a Pushgateway push: the group path into `path` and the text
    /// exposition body into `out`.
    fn next_push(&mut self, path: &mut String, out: &mut String) {
        let Some(slot) = self.advance() else { return };
        let k = self.updates_per_task;
        let t = &self.tasks[slot];
        let progress = (t.sent as f64 / k as f64).min(1.0);
        let _ = write!(path, "/metrics/job/loadgen/task_id/{}", t.id);
        let _ = writeln!(
            out,
            "loadgen_task_progress_ratio{{workflow_type=\"loadgen\",task_type=\"lg_task\",workflow_id=\"{}\"}} {progress}",
            t.workflow
        );
        // A finished task's group is simply no longer pushed: the Pushgateway keeps it.
        self.retire_if_done(slot);
    }

    /// Appends the next update (one JSON object, no newline) to `out`.
    fn next_update(&mut self, out: &mut String, now_ms: i64) {
        let Some(slot) = self.advance() else { return };
        let k = self.updates_per_task;
        let t = &self.tasks[slot];
        let done = self.finish && t.sent >= k;
        let progress = (t.sent as f64 * 100.0 / k as f64).min(100.0);
        let status = if done { "COMPLETED" } else { "IN_PROGRESS" };
        let _ = write!(
            out,
            r#"{{"taskId":"{}","workflowId":"{}","status":"{}","updateTime":{}"#,
            t.id, t.workflow, status, now_ms
        );
        if t.sent == 1 {
            if t.wait {
                let _ = write!(
                    out,
                    r#","taskType":"WAIT","workflowType":"loadgen","waitUntil":{}"#,
                    now_ms + 30_000
                );
            } else {
                let _ = write!(
                    out,
                    r#","taskType":"lg_task","workflowType":"loadgen","startTime":{},"timeoutSeconds":3600,"responseTimeoutSeconds":600,"workerId":"lg-worker-{}""#,
                    now_ms, self.conn
                );
            }
        }
        if !t.wait {
            let _ = write!(out, r#","progressPercent":{progress:.1}"#);
        }
        out.push('}');
        self.retire_if_done(slot);
    }
}

#[derive(Default)]
struct Totals {
    /// Updates claimed by the connections so far, for --max-updates.
    reserved: AtomicU64,
    requests: AtomicU64,
    updates: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    accepted: u64,
    duplicates: u64,
    rejected: Vec<serde::de::IgnoredAny>,
    /// Every rejection (the list holds the first 100); absent from older builds' answers.
    rejected_count: Option<u64>,
}

/// `scrapers` loops fetching `{base}/metrics` at `rate` per second each until `deadline`: the
/// scrape times in ms.
fn spawn_scrapers(
    client: &Client<HttpConnector, Body>,
    base: &str,
    scrapers: usize,
    rate: f64,
    deadline: Instant,
) -> Vec<tokio::task::JoinHandle<Vec<f64>>> {
    (0..scrapers)
        .map(|_| {
            let client = client.clone();
            let url = format!("{base}/metrics");
            tokio::spawn(async move {
                let mut times = Vec::new();
                let started = Instant::now();
                while Instant::now() < deadline {
                    if rate > 0.0 {
                        let due = started + Duration::from_secs_f64(times.len() as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let Ok(req) = http::Request::get(url.as_str()).body(Body::empty()) else {
                        break;
                    };
                    let t0 = Instant::now();
                    if let Ok(resp) = client.request(req).await {
                        if resp.into_body().collect().await.is_ok() {
                            times.push(t0.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                }
                times
            })
        })
        .collect()
}

/// Runs the load and reports.
pub async fn run(args: &LoadgenArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(args.connections > 0, "--connections must be at least 1");
    anyhow::ensure!(
        args.tasks >= args.connections,
        "--tasks must be at least --connections"
    );
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    let base = args.target.trim_end_matches('/').to_string();
    let url: http::Uri = format!("{base}/api/v1/updates")
        .parse()
        .map_err(|e| anyhow::anyhow!("--target is not a URL: {e}"))?;
    anyhow::ensure!(
        args.protocol == Protocol::Taskpulse || args.mode == Mode::Single,
        "--protocol pushgateway pushes one task per request: use --mode single"
    );
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.connections + args.scrapers)
        .build(connector);
    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let deadline = started + args.duration;
    let per_conn_rate = args.rate * args.tasks as f64 / args.connections as f64;
    let scrapers = spawn_scrapers(&client, &base, args.scrapers, args.scrape_rate, deadline);
    let mut handles = Vec::new();
    for conn in 0..args.connections {
        let share =
            args.tasks / args.connections + usize::from(conn < args.tasks % args.connections);
        let mut work = Workload::new(
            conn,
            share,
            args.wait_fraction,
            args.updates_per_task,
            !args.never_finish,
        );
        let client = client.clone();
        let url = url.clone();
        let base = base.clone();
        let totals = totals.clone();
        let args = args.clone();
        handles.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let per_request = if args.mode == Mode::Single {
                1
            } else {
                args.batch
            };
            let mut body = String::with_capacity(per_request * 200);
            let mut path = String::with_capacity(128);
            let mut sent: u64 = 0;
            while Instant::now() < deadline {
                // --max-updates: reserve this request's updates from the shared budget.
                if args.max_updates > 0
                    && totals
                        .reserved
                        .fetch_add(per_request as u64, Ordering::Relaxed)
                        >= args.max_updates
                {
                    break;
                }
                if per_conn_rate > 0.0 {
                    let due = started + Duration::from_secs_f64(sent as f64 / per_conn_rate);
                    if due > deadline {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                }
                body.clear();
                path.clear();
                let req = if args.protocol == Protocol::Pushgateway {
                    work.next_push(&mut path, &mut body);
                    http::Request::put(format!("{base}{path}"))
                        .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                        .body(Body::from(Bytes::from(body.clone())))
                } else {
                    let now_ms = now_ms();
                    for i in 0..per_request {
                        if i > 0 {
                            body.push('\n');
                        }
                        work.next_update(&mut body, now_ms);
                    }
                    let content_type = if args.mode == Mode::Single {
                        "application/json"
                    } else {
                        "application/x-ndjson"
                    };
                    http::Request::post(url.clone())
                        .header(http::header::CONTENT_TYPE, content_type)
                        .body(Body::from(Bytes::from(body.clone())))
                };
                let Ok(mut req) = req else {
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if let Some(token) = &args.token {
                    if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
                        req.headers_mut().insert(http::header::AUTHORIZATION, v);
                    }
                }
                let t0 = Instant::now();
                let outcome = async {
                    let resp = client.request(req).await.map_err(|e| e.to_string())?;
                    let ok = resp.status().is_success();
                    let bytes = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?
                        .to_bytes();
                    if !ok {
                        return Err("non-2xx answer".to_string());
                    }
                    Ok::<_, String>(bytes)
                }
                .await;
                let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                sent += per_request as u64;
                totals.requests.fetch_add(1, Ordering::Relaxed);
                totals
                    .updates
                    .fetch_add(per_request as u64, Ordering::Relaxed);
                match outcome {
                    // the baseline sink answers 200 without a body: every update counts as taken
                    Ok(b) if b.is_empty() => {
                        totals
                            .accepted
                            .fetch_add(per_request as u64, Ordering::Relaxed);
                    }
                    Ok(b) => match serde_json::from_slice::<Answer>(&b) {
                        Ok(a) => {
                            totals.accepted.fetch_add(a.accepted, Ordering::Relaxed);
                            totals.duplicates.fetch_add(a.duplicates, Ordering::Relaxed);
                            let rejected = a.rejected_count.unwrap_or(a.rejected.len() as u64);
                            totals.rejected.fetch_add(rejected, Ordering::Relaxed);
                        }
                        Err(_) => {
                            totals.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    Err(_) => {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for h in handles {
        hist.add(h.await?)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut scrape_times = Vec::new();
    for h in scrapers {
        scrape_times.extend(h.await?);
    }
    scrape_times.sort_by(f64::total_cmp);
    let t = &totals;
    let accepted = t.accepted.load(Ordering::Relaxed);
    Ok(Report {
        mode: args.mode,
        tasks: args.tasks,
        seconds,
        requests: t.requests.load(Ordering::Relaxed),
        updates_sent: t.updates.load(Ordering::Relaxed),
        accepted,
        duplicates: t.duplicates.load(Ordering::Relaxed),
        rejected: t.rejected.load(Ordering::Relaxed),
        errors: t.errors.load(Ordering::Relaxed),
        accepted_per_second: accepted as f64 / seconds,
        latency_ms_p50: hist.value_at_quantile(0.5) as f64 / 1000.0,
        latency_ms_p99: hist.value_at_quantile(0.99) as f64 / 1000.0,
        latency_ms_max: hist.max() as f64 / 1000.0,
        scrapes: scrape_times.len() as u64,
        scrape_ms_p50: scrape_times
            .get(scrape_times.len() / 2)
            .copied()
            .unwrap_or(0.0),
    })
}

/// The baseline: an HTTP server that reads each body and answers 200, nothing else.
pub async fn sink(addr: SocketAddr) -> anyhow::Result<()> {
    async fn take(body: Bytes) -> axum::http::StatusCode {
        std::hint::black_box(body.len());
        axum::http::StatusCode::OK
    }
    let app = axum::Router::new()
        .route("/api/v1/updates", axum::routing::post(take))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("loadgen sink listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = LoadgenArgs::parse();
    if let Some(addr) = args.sink {
        return sink(addr).await;
    }
    let report = run(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_finishes_and_replaces_tasks() {
        let mut w = Workload::new(0, 10, 0.1, 4, true);
        let mut out = String::new();
        let mut completed = 0;
        for _ in 0..40 {
            out.clear();
            w.next_update(&mut out, 1_000);
            let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
            if v["status"] == "COMPLETED" {
                completed += 1;
            }
        }
        assert_eq!(completed, 10, "each of 10 tasks finishes after 4 updates");
        assert!(
            w.tasks.iter().all(|t| t.sent == 0),
            "finished tasks were replaced"
        );
        // one in ten is a WAIT task, announced with its wake-up time on its first update
        out.clear();
        let mut w = Workload::new(1, 10, 0.1, 4, true);
        w.next_update(&mut out, 5);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["taskType"], "WAIT");
        assert_eq!(v["waitUntil"], 30_005);
    }

    #[test]
    fn never_finish_floods_distinct_unfinished_tasks() {
        let mut w = Workload::new(0, 3, 0.0, 1, false);
        let mut ids = std::collections::HashSet::new();
        let mut out = String::new();
        for _ in 0..30 {
            out.clear();
            w.next_update(&mut out, 1_000);
            let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
            assert_eq!(v["status"], "IN_PROGRESS", "{v}");
            assert_eq!(
                v["taskType"], "lg_task",
                "every update starts a new task: {v}"
            );
            ids.insert(v["taskId"].as_str().unwrap().to_string());
        }
        assert_eq!(ids.len(), 30, "30 updates, 30 distinct tasks");
    }

    #[test]
    fn pushgateway_pushes_one_group_per_task() {
        let mut w = Workload::new(0, 2, 0.0, 2, true);
        let (mut path, mut body) = (String::new(), String::new());
        w.next_push(&mut path, &mut body);
        assert!(
            path.starts_with("/metrics/job/loadgen/task_id/lg"),
            "{path}"
        );
        assert!(
            body.starts_with("loadgen_task_progress_ratio{workflow_type=\"loadgen\""),
            "{body}"
        );
        assert!(body.trim_end().ends_with(" 0.5"), "{body}");
        let first = path.clone();
        for _ in 0..3 {
            path.clear();
            body.clear();
            w.next_push(&mut path, &mut body);
        }
        assert_ne!(
            path, first,
            "finished tasks are replaced by new ones (new groups)"
        );
    }
}
