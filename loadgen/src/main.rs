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
    /// Before the timed run, send one update for every task (each task's first sight, which
    /// taskpulse answers only once it is committed), so the figures show known tasks' updates;
    /// tasks that finish during the run are still replaced by new ones
    #[arg(long)]
    pub warm_up: bool,
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

/// What one request came to.
enum Outcome {
    /// The answer's counts (the sink's empty answer: every update taken).
    Taken {
        accepted: u64,
        duplicates: u64,
        rejected: u64,
    },
    /// No answer, a non-2xx one, or one that is not taskpulse's report.
    Failed,
}

/// One connection's load: its tasks, and the requests it builds from them.
struct Sender {
    work: Workload,
    client: Client<HttpConnector, Body>,
    url: http::Uri,
    base: String,
    args: LoadgenArgs,
    body: String,
    path: String,
}

impl Sender {
    fn per_request(&self) -> usize {
        match self.args.mode {
            Mode::Single => 1,
            Mode::Ndjson => self.args.batch,
        }
    }

    /// The next request: the next update of each of the next tasks, round-robin.
    fn request(&mut self) -> Option<http::Request<Body>> {
        self.body.clear();
        self.path.clear();
        let req = if self.args.protocol == Protocol::Pushgateway {
            self.work.next_push(&mut self.path, &mut self.body);
            http::Request::put(format!("{}{}", self.base, self.path))
                .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Body::from(Bytes::from(self.body.clone())))
        } else {
            let now_ms = now_ms();
            for i in 0..self.per_request() {
                if i > 0 {
                    self.body.push('\n');
                }
                self.work.next_update(&mut self.body, now_ms);
            }
            let content_type = match self.args.mode {
                Mode::Single => "application/json",
                Mode::Ndjson => "application/x-ndjson",
            };
            http::Request::post(self.url.clone())
                .header(http::header::CONTENT_TYPE, content_type)
                .body(Body::from(Bytes::from(self.body.clone())))
        };
        let mut req = req.ok()?;
        if let Some(token) = &self.args.token {
            if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
                req.headers_mut().insert(http::header::AUTHORIZATION, v);
            }
        }
        Some(req)
    }

    /// Sends the next request and reads its answer whole.
    async fn send(&mut self) -> Outcome {
        let Some(req) = self.request() else {
            return Outcome::Failed;
        };
        let Ok(resp) = self.client.request(req).await else {
            return Outcome::Failed;
        };
        let ok = resp.status().is_success();
        let Ok(body) = resp.into_body().collect().await else {
            return Outcome::Failed;
        };
        let body = body.to_bytes();
        if !ok {
            return Outcome::Failed;
        }
        if body.is_empty() {
            // the baseline sink answers 200 without a body: every update counts as taken
            return Outcome::Taken {
                accepted: self.per_request() as u64,
                duplicates: 0,
                rejected: 0,
            };
        }
        match serde_json::from_slice::<Answer>(&body) {
            Ok(a) => Outcome::Taken {
                accepted: a.accepted,
                duplicates: a.duplicates,
                rejected: a.rejected_count.unwrap_or(a.rejected.len() as u64),
            },
            Err(_) => Outcome::Failed,
        }
    }

    /// `--warm-up`: one update for each of this connection's tasks, counted nowhere.
    async fn warm_up(&mut self) {
        let requests = self.work.tasks.len().div_ceil(self.per_request());
        for _ in 0..requests {
            self.send().await;
        }
    }

    /// Sends until `deadline` (or the paced schedule or `--max-updates` ends), counting into
    /// `totals`; returns the latency histogram.
    async fn drive(
        &mut self,
        totals: &Totals,
        started: Instant,
        deadline: Instant,
    ) -> Histogram<u64> {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let per_request = self.per_request() as u64;
        let per_conn_rate = self.args.rate * self.args.tasks as f64 / self.args.connections as f64;
        let mut sent: u64 = 0;
        while Instant::now() < deadline {
            // --max-updates: reserve this request's updates from the shared budget.
            if self.args.max_updates > 0
                && totals.reserved.fetch_add(per_request, Ordering::Relaxed)
                    >= self.args.max_updates
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
            let t0 = Instant::now();
            let outcome = self.send().await;
            let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
            sent += per_request;
            totals.requests.fetch_add(1, Ordering::Relaxed);
            totals.updates.fetch_add(per_request, Ordering::Relaxed);
            match outcome {
                Outcome::Taken {
                    accepted,
                    duplicates,
                    rejected,
                } => {
                    totals.accepted.fetch_add(accepted, Ordering::Relaxed);
                    totals.duplicates.fetch_add(duplicates, Ordering::Relaxed);
                    totals.rejected.fetch_add(rejected, Ordering::Relaxed);
                }
                Outcome::Failed => {
                    totals.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        hist
    }
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
    let senders: Vec<Sender> = (0..args.connections)
        .map(|conn| {
            let share =
                args.tasks / args.connections + usize::from(conn < args.tasks % args.connections);
            Sender {
                work: Workload::new(
                    conn,
                    share,
                    args.wait_fraction,
                    args.updates_per_task,
                    !args.never_finish,
                ),
                client: client.clone(),
                url: url.clone(),
                base: base.clone(),
                args: args.clone(),
                body: String::with_capacity(args.batch.max(1) * 200),
                path: String::with_capacity(128),
            }
        })
        .collect();
    let senders = if args.warm_up {
        let warming = senders.into_iter().map(|mut s| {
            tokio::spawn(async move {
                s.warm_up().await;
                s
            })
        });
        let mut warm = Vec::new();
        for h in warming.collect::<Vec<_>>() {
            warm.push(h.await?);
        }
        // scripts/compare.sh starts counting the server's CPU time here
        eprintln!("taskpulse-loadgen: warm-up done, the timed run starts");
        warm
    } else {
        senders
    };
    let totals = Arc::new(Totals::default());
    let started = Instant::now();
    let deadline = started + args.duration;
    let scrapers = spawn_scrapers(&client, &base, args.scrapers, args.scrape_rate, deadline);
    let handles: Vec<_> = senders
        .into_iter()
        .map(|mut s| {
            let totals = totals.clone();
            tokio::spawn(async move { s.drive(&totals, started, deadline).await })
        })
        .collect();
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

    /// An HTTP server on a free port that keeps every update it is sent, as JSON values.
    async fn recorder() -> (String, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = seen.clone();
        let app = axum::Router::new().route(
            "/api/v1/updates",
            axum::routing::post(move |body: Bytes| async move {
                let mut kept = kept.lock().unwrap();
                for line in body.split(|b| *b == b'\n') {
                    kept.push(serde_json::from_slice(line).expect("one update per line"));
                }
                axum::http::StatusCode::OK
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn sender(target: &str, mode: &str, tasks: usize) -> Sender {
        let args = LoadgenArgs::parse_from([
            "taskpulse-loadgen",
            "--target",
            target,
            "--mode",
            mode,
            "--batch",
            "4",
            "--tasks",
            &tasks.to_string(),
            "--wait-fraction",
            "0",
        ]);
        Sender {
            // no task finishes (and is replaced by a new one) within the test
            work: Workload::new(0, tasks, 0.0, u32::MAX, true),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            url: format!("{target}/api/v1/updates").parse().unwrap(),
            base: target.to_string(),
            args,
            body: String::new(),
            path: String::new(),
        }
    }

    /// `--warm-up` sends each task's first update once, whatever the batch, and the timed run
    /// goes on with the tasks' later updates (no task is first seen in it).
    #[tokio::test]
    async fn warm_up_sends_every_first_update_once() {
        let (target, seen) = recorder().await;
        for (mode, tasks) in [("single", 5), ("ndjson", 10)] {
            seen.lock().unwrap().clear();
            let mut s = sender(&target, mode, tasks);
            s.warm_up().await;
            let warm: Vec<_> = seen.lock().unwrap().drain(..).collect();
            let ids: std::collections::HashSet<_> =
                warm.iter().map(|v| v["taskId"].to_string()).collect();
            assert_eq!(ids.len(), tasks, "{mode}: every task once: {warm:?}");
            assert!(
                warm.len() >= tasks && warm.len() < tasks + 4,
                "{mode}: one round, the last body filled up: {} updates",
                warm.len()
            );
            assert!(
                warm[..tasks].iter().all(|v| v["taskType"] == "lg_task"),
                "{mode}: first sights carry the task type: {warm:?}"
            );
            let totals = Totals::default();
            let start = Instant::now();
            s.drive(&totals, start, start + Duration::from_millis(50))
                .await;
            let timed: Vec<_> = seen.lock().unwrap().drain(..).collect();
            assert!(!timed.is_empty(), "{mode}: the timed run sent updates");
            assert!(
                timed.iter().all(|v| v.get("taskType").is_none()),
                "{mode}: no first sight in the timed run: {timed:?}"
            );
            assert_eq!(
                totals.accepted.load(Ordering::Relaxed),
                timed.len() as u64,
                "{mode}: the timed run counts its own updates only"
            );
        }
    }

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
