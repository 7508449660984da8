//! `cargo bench --bench scrape`: how long rendering `/metrics` takes with N tracked tasks, in
//! process (no HTTP, no client), so the figure is the exporter's own cost.
//!
//! Each task gets two progress updates through the real ingest path (so it has a prediction
//! window), from 50 workers and 20 task types; the store is a real SQLite file. Prints the median
//! and the minimum of `SCRAPE_RUNS` renders (default 15) for each (tasks, series cap) pair, and
//! the output size. `SCRAPE_TASKS=1000,10000` narrows the task counts, `SCRAPE_CAPS=2000` the
//! series caps.
//!
//! Two kinds of render are timed: `quiet`, where no task changed since the previous render,
//! and `moving`, where every task reported new progress since it (one update each, applied
//! between renders and not timed): what a scrape costs when everything is moving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use taskpulse::cardinality::Folding;
use taskpulse::checker::CheckerMetrics;
use taskpulse::ingest::{parse_body, Format};
use taskpulse::leader;
use taskpulse::metrics::state::{ScrapeConfig, StateCollector};
use taskpulse::metrics::{Budget, Exposition};
use taskpulse::pipeline::{PipelineMetrics, Tracker};
use taskpulse::store::{self, Store, StoreMetrics};
use taskpulse::throttle::Throttle;
use taskpulse::wait::WaitMetrics;
use tokio_util::sync::CancellationToken;

/// A comma-separated list of numbers from the environment variable `name`, or `default`.
fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: comma-separated numbers, got {s:?}"))
        })
        .collect()
}

fn main() {
    let counts = env_list("SCRAPE_TASKS", "1000,10000,100000");
    let caps = env_list("SCRAPE_CAPS", "2000,100000");
    let runs: usize = std::env::var("SCRAPE_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    println!("| tasks | series cap | tasks between renders | render ms (median) | render ms (min) | bytes |");
    println!("|---|---|---|---|---|---|");
    for n in counts {
        for &cap in &caps {
            for moving in [false, true] {
                let (ms_median, ms_min, bytes) = rt.block_on(measure(n, cap, runs, moving));
                let kind = if moving { "moving" } else { "quiet" };
                println!("| {n} | {cap} | {kind} | {ms_median:.2} | {ms_min:.2} | {bytes} |");
            }
        }
    }
}

/// Task `i`'s update at `t` (epoch ms) with progress `p`, through the real parser.
fn update(i: usize, t: i64, p: i64) -> taskpulse::ingest::TaskUpdate {
    let body = format!(
        r#"{{"taskId":"bench-task-{i}","workflowId":"bench-wf-{w}","status":"IN_PROGRESS","updateTime":{t},"taskType":"type_{tt}","workflowType":"flow_{wt}","startTime":{now},"timeoutSeconds":3600,"workerId":"worker-{wk}","progressPercent":{p}}}"#,
        w = i / 10,
        now = t - 10_000,
        tt = i % 20,
        wt = i % 5,
        wk = i % 50,
    );
    let mut items = parse_body(body.as_bytes(), Format::Json).expect("valid body");
    items.remove(0).parsed.expect("valid update")
}

async fn measure(n: usize, cap: usize, runs: usize, moving: bool) -> (f64, f64, usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = Store::connect(&url).await.expect("open SQLite");
    store.migrate().await.expect("migrate");
    // The same families a serving process registers, so the render costs the same.
    let registry = Registry::new();
    let folding = Folding::register(&registry).expect("register");
    let pipeline_metrics = PipelineMetrics::register(&registry, &folding).expect("register");
    let store_metrics = StoreMetrics::register(&registry).expect("register");
    let wait_metrics = WaitMetrics::register(&registry, &folding).expect("register");
    let checker_metrics = CheckerMetrics::register(&registry).expect("register");
    let (conflict_tx, _conflicts) = tokio::sync::mpsc::unbounded_channel();
    let (writer, _writer_join) = store::writer::spawn(
        store.clone(),
        store_metrics,
        conflict_tx,
        CancellationToken::new(),
    );
    // An interval longer than the run: the moving renders are not timed against the writer
    // writing coalesced progress on the other core.
    let (throttle, _timers) = Throttle::new(Duration::from_secs(3600), 0.0);
    let tracker = Arc::new(Tracker::new(
        throttle,
        writer,
        pipeline_metrics,
        wait_metrics,
    ));
    let now = taskpulse::now_ms();
    for round in 0..2 {
        for i in 0..n {
            let t = now - 10_000 + round * 5_000;
            let _ = tracker.apply(&update(i, t, 10 + round * 10 + (i % 7) as i64));
        }
    }
    let (leadership, _election) = leader::start(
        &store,
        Duration::from_secs(3600),
        checker_metrics.leader.clone(),
        CancellationToken::new(),
    )
    .await;
    let state = StateCollector::new(
        tracker.clone(),
        ScrapeConfig {
            stall_after: Duration::from_secs(600),
            wait_grace: Duration::from_secs(60),
            max_task_series: cap,
            max_label_values: 100,
        },
        leadership,
        None,
    );
    // No series or byte budget: the per-task cap alone decides what is rendered, as in the
    // figures BENCHMARKS.md compares.
    let unbounded = Budget {
        series: usize::MAX,
        bytes: usize::MAX,
    };
    let metrics = Exposition::new(registry, vec![Arc::new(state)], unbounded).expect("register");
    let mut times = Vec::with_capacity(runs);
    let mut bytes = 0;
    for run in 0..runs {
        if moving {
            // every task moves on (times stay in the past: updates from the future are capped)
            let (t, p) = (taskpulse::now_ms(), 30 + (run % 60) as i64);
            let updates: Vec<_> = (0..n).map(|i| update(i, t, p)).collect();
            for u in &updates {
                let _ = tracker.apply(u);
            }
            drop(updates);
            // glibc merges the chunks just freed (600,000 strings) on the next large
            // allocation; that is the updates' cost, so it is paid here, not timed as the
            // render's. In the server each request's own allocations pay it as they go.
            drop(std::hint::black_box(Vec::<u8>::with_capacity(1 << 20)));
        }
        // not timed against the writer storing what the updates changed
        while tracker.writer().pending() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        let text = metrics.render();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        bytes = text.len();
        assert!(
            text.contains("taskpulse_task_progress_ratio{"),
            "no per-task series rendered"
        );
    }
    times.sort_by(f64::total_cmp);
    (times[runs / 2], times[0], bytes)
}
