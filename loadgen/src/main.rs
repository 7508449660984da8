//! `taskpulse-loadgen`: simulates an engine against a running taskpulse (or anything that
//! takes the same requests), to measure what taskpulse costs and how that grows with the work.
//! A binary of its own, beside `taskpulse`, so the sidecar's library carries none of it.
//!
//! N tasks report progress at R updates per second each; a share of them are WAIT tasks with
//! wake-up times; every task finishes after K updates and is replaced by a new one, so tasks
//! finish at N * R / K per second (the first tasks' lives are spread over K lengths, so that
//! rate is steady from the start rather than all N at once every K rounds). Updates go as
//! single-update requests over keep-alive connections or as NDJSON batches. The report gives
//! accepted updates per second and request latency percentiles. `taskpulse-loadgen --sink` instead runs the baseline server: it reads
//! each body and answers 200, to show what the network path itself allows. With
//! `--protocol pushgateway` the same workload goes to a Prometheus Pushgateway (one group per
//! task), the alternative users reach for today, for a side-by-side.

mod sender;
mod workload;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use sender::{Sender, Totals};
use workload::Workload;

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
    let senders: Vec<Sender> = (0..args.connections)
        .map(|conn| {
            let share =
                args.tasks / args.connections + usize::from(conn < args.tasks % args.connections);
            let work = Workload::new(
                conn,
                share,
                args.wait_fraction,
                args.updates_per_task,
                !args.never_finish,
            );
            Sender::new(work, client.clone(), &base, &url, args)
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
