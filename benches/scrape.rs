//! `cargo bench --bench scrape`: how long rendering `/metrics` takes with N tracked tasks, in
//! process (no HTTP, no client), so the figure is the exporter's own cost.
//!
//! Each task gets two progress updates through the real ingest path (so it has a prediction
//! window), from 50 workers and 20 task types; the store is a real SQLite file. Prints the median
//! and the minimum of `SCRAPE_RUNS` renders (default 15) for each (tasks, series cap) pair, and
//! the output size. `SCRAPE_TASKS=1000,10000` narrows the task counts.

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

fn main() {
    let counts: Vec<usize> = std::env::var("SCRAPE_TASKS")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("SCRAPE_TASKS: comma-separated task counts")
        })
        .collect();
    let runs: usize = std::env::var("SCRAPE_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    println!("| tasks | series cap | render ms (median) | render ms (min) | bytes |");
    println!("|---|---|---|---|---|");
    for n in counts {
        for cap in [2000usize, 100_000] {
            let (ms_median, ms_min, bytes) = rt.block_on(measure(n, cap, runs));
            println!("| {n} | {cap} | {ms_median:.2} | {ms_min:.2} | {bytes} |");
        }
    }
}

async fn measure(n: usize, cap: usize, runs: usize) -> (f64, f64, usize) {
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
    let (throttle, _timers) = Throttle::new(Duration::from_secs(5), 0.0);
    let tracker = Arc::new(Tracker::new(
        throttle,
        writer,
        pipeline_metrics,
        wait_metrics,
    ));
    let now = taskpulse::now_ms();
    for round in 0..2 {
        for i in 0..n {
            let body = format!(
                r#"{{"taskId":"bench-task-{i}","workflowId":"bench-wf-{w}","status":"IN_PROGRESS","updateTime":{t},"taskType":"type_{tt}","workflowType":"flow_{wt}","startTime":{now},"timeoutSeconds":3600,"workerId":"worker-{wk}","progressPercent":{p}}}"#,
                w = i / 10,
                t = now - 10_000 + round * 5_000,
                tt = i % 20,
                wt = i % 5,
                wk = i % 50,
                p = 10 + round * 10 + (i % 7) as i64,
            );
            let items = parse_body(body.as_bytes(), Format::Json).expect("valid body");
            let update = items[0].parsed.as_ref().expect("valid update");
            let _ = tracker.apply(update);
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
    for _ in 0..runs {
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
