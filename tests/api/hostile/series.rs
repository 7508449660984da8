//! Label values from input against the exposition format, and the bounds on series: label
//! caps, the scrape budget, worker expiry, concurrent scrapes.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use super::{family_sum, in_progress, label_values, ndjson, post, serve};
use crate::helpers::{metric_value, update, Backend, TestApp, TestDb};

/// Names that are legal in JSON and awkward in the exposition format.
const HOSTILE: &[&str] = &[
    "quote\"d",
    "back\\slash",
    "trailing\\",
    "curly}brace{",
    "#hash # TYPE x counter",
    "a=\"b\",c=\"d\"",
    "ünïcødé ✓ 名前 🚀",
    "   spaced   ",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_label_values_keep_metrics_valid_and_come_back_unchanged() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let body: Vec<Value> = HOSTILE
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut u = in_progress(&format!("hostile-{i}"), 40.0, 1_000);
            u["taskType"] = json!(name);
            u["workflowType"] = json!(format!("wf {name}"));
            u["workerId"] = json!(format!("w {name}"));
            u
        })
        .collect();
    let r = app.ingest(&json!(body)).await;
    assert_eq!(r["accepted"], HOSTILE.len(), "{r}");

    // rejected: control characters, and label values over 128 bytes
    let mut newline = update("nl", "SCHEDULED");
    newline["taskType"] = json!("a\nb");
    let mut long = update("long", "SCHEDULED");
    long["workerId"] = json!("w".repeat(129));
    let mut longest = update("longest", "SCHEDULED");
    longest["workflowType"] = json!("t".repeat(128));
    let r = app.ingest(&json!([newline, long, longest])).await;
    assert_eq!(r["accepted"], 1, "{r}");
    let rejected = r["rejected"].as_array().unwrap();
    assert!(rejected[0]["detail"]
        .as_str()
        .unwrap()
        .contains("control characters"));
    assert!(
        rejected[1]["detail"].as_str().unwrap().contains("128"),
        "{r}"
    );

    // values come back unchanged from memory and from the store
    for (i, name) in HOSTILE.iter().enumerate() {
        let id = format!("hostile-{i}");
        let t = app.task(&id).await;
        assert_eq!(t["taskType"], *name);
        assert_eq!(t["workflowType"], format!("wf {name}"));
        assert_eq!(t["workerId"], format!("w {name}"));
    }
    app.settle().await;
    for (i, name) in HOSTILE.iter().enumerate() {
        let rec = app.stored(&format!("hostile-{i}")).await.unwrap();
        assert_eq!(&*rec.task_type, *name);
    }

    // the exposition parses (prometheus_parse does not unescape label values, so they are read
    // back with the strict reader below), and every label value reads back exactly
    let text = app.metrics_text().await;
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("exposition parses");
    let samples: Vec<(String, Vec<(String, String)>)> = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unreadable sample line: {l:?}")))
        .collect();
    let has = |metric: &str, want: &[(&str, &str)]| {
        samples.iter().any(|(name, labels)| {
            name == metric
                && want
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
    };
    for (i, name) in HOSTILE.iter().enumerate() {
        let id = format!("hostile-{i}");
        let wf = format!("wf {name}");
        let worker = format!("w {name}");
        assert!(
            has(
                "taskpulse_task_progress_ratio",
                &[
                    ("task_id", id.as_str()),
                    ("task_type", name),
                    ("workflow_type", wf.as_str()),
                ]
            ),
            "progress series of {name:?} in:\n{text}"
        );
        assert!(
            has(
                "taskpulse_task_worker_info",
                &[("task_id", id.as_str()), ("worker_id", worker.as_str())]
            ),
            "worker series of {name:?}"
        );
        assert!(
            has(
                "taskpulse_tasks",
                &[("task_type", name), ("status", "IN_PROGRESS")]
            ),
            "state gauge of {name:?}"
        );
    }
    // every line is a comment or a sample: nothing a name contains started a line of its own
    for line in text.lines() {
        assert!(
            line.is_empty() || line.starts_with("# ") || line.starts_with("taskpulse_"),
            "stray line: {line:?}"
        );
    }
    promtool_check(&text);
    app.shutdown().await;
}

/// One exposition sample line, read strictly by the text format's rules: the metric name and
/// its labels with values unescaped (`\\`, `\"`, `\n`); `None` if the line breaks the format.
fn parse_sample(line: &str) -> Option<(String, Vec<(String, String)>)> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let mut labels = Vec::new();
    let mut chars = rest.chars().peekable();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            if chars.next() != Some('"') {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => match chars.next()? {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        _ => return None,
                    },
                    '\n' => return None,
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            match chars.next()? {
                ',' => continue,
                '}' => break,
                _ => return None,
            }
        }
    }
    let value: String = chars.collect();
    value.trim().parse::<f64>().ok()?;
    Some((name.to_string(), labels))
}

/// `promtool check metrics` on the text, when promtool is installed (skipped otherwise, unless
/// `TASKPULSE_REQUIRE_TOOLS=1`).
fn promtool_check(text: &str) {
    let promtool = crate::tools::Tool {
        env: None,
        local: None,
        names: &["promtool"],
        how: "apt-get install prometheus, or run scripts/test.sh",
    };
    let Some(promtool) = promtool.find() else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // promtool exits 3 for lint warnings only (naming conventions); 1 is a parse error
    assert!(
        out.status.code() != Some(1) && !stderr.contains("error while linting"),
        "promtool: {:?}\n{stderr}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Parses an exposition text.
fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// 20,000 tasks, each with a task type, workflow type and worker of its own, a quarter of
/// them finished: with default settings the scrape stays within 10,000 series and 2 MiB, the
/// labels taken from input keep at most 100 values per family (the rest are `__other__`, so
/// totals stay right), and what was folded is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatever_arrives_a_scrape_stays_within_its_series_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]).await;
    const N: usize = 20_000;
    const DONE: usize = N / 4;
    let client = reqwest::Client::new();
    let lines: Vec<Value> = (0..N)
        .map(|i| {
            let mut u = in_progress(&format!("t{i}"), 10.0, 1_000);
            u["taskType"] = json!(format!("type-{i}"));
            u["workflowType"] = json!(format!("flow-{i}"));
            u["workerId"] = json!(format!("pod-{i}"));
            u["startTime"] = json!(500);
            u
        })
        .chain((0..DONE).map(|i| {
            let mut u = update(&format!("t{i}"), "COMPLETED");
            u["taskType"] = json!(format!("type-{i}"));
            u["updateTime"] = json!(2_000);
            u
        }))
        .collect();
    for body in lines.chunks(5_000) {
        let (status, text) = post(
            &client,
            &server.url("/api/v1/updates"),
            ndjson(body.iter().cloned()),
            "application/x-ndjson",
        )
        .await;
        assert_eq!(status, 200, "{text}");
    }
    let text = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    assert!(series <= 10_000, "{series} series");
    assert!(text.len() <= 2 * 1024 * 1024, "{} bytes", text.len());
    let scrape = parse(&text);

    let in_flight = (N - DONE) as f64;
    for (family, label) in [
        ("taskpulse_tasks", "task_type"),
        ("taskpulse_tasks", "workflow_type"),
        ("taskpulse_worker_tasks", "worker_id"),
    ] {
        let values = label_values(&scrape, family, label);
        assert!(
            values.len() <= 101,
            "{family}: {} values of {label}",
            values.len()
        );
        assert!(
            values.contains(&"__other__".to_string()),
            "{family} {label}"
        );
        assert_eq!(
            family_sum(&scrape, family),
            in_flight,
            "{family}: the total stays right"
        );
    }
    let workers_seen = label_values(
        &scrape,
        "taskpulse_worker_last_seen_timestamp_seconds",
        "worker_id",
    );
    assert!(
        workers_seen.len() <= 101,
        "{} last-seen series",
        workers_seen.len()
    );
    let folded = |family: &str| {
        metric_value(
            &scrape,
            "taskpulse_label_sets_folded",
            &[("family", family)],
        )
    };
    assert!(folded("taskpulse_tasks").unwrap() > 0.0);
    assert!(folded("taskpulse_worker_tasks").unwrap() > 0.0);

    // durations: 30 task types keep series of their own, the rest go to __other__
    let types = label_values(
        &scrape,
        "taskpulse_task_duration_seconds_count",
        "task_type",
    );
    assert_eq!(types.len(), 31, "{types:?}");
    let observed: f64 = family_sum(&scrape, "taskpulse_task_duration_seconds_count");
    assert_eq!(observed, DONE as f64, "every duration is observed");
    let folded_obs = metric_value(
        &scrape,
        "taskpulse_folded_observations_total",
        &[("histogram", "taskpulse_task_duration_seconds")],
    );
    assert_eq!(folded_obs, Some((DONE - 30) as f64));

    // per-task series get what the aggregates leave; the rest are counted as omitted
    let per_task = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "taskpulse_task_progress_ratio")
        .count();
    let omitted = metric_value(&scrape, "taskpulse_task_series_omitted", &[]).unwrap();
    assert_eq!(per_task as f64 + omitted, in_flight);
    promtool_check(&text);
}

/// `--worker-expiry`: workers with nothing in flight leave the worker gauges once that long has
/// passed since their last accepted update (a rejected one does not count); the read API keeps
/// the worker of each attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_expire_and_rejected_updates_do_not_keep_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--worker-expiry", "2s"]).await;
    const PODS: usize = 80; // under --max-label-values, so each has a series of its own
    let lines = (0..PODS).flat_map(|i| {
        let mut start = in_progress(&format!("job-{i}"), 50.0, 1_000);
        start["workerId"] = json!(format!("pod-{i:03}-x7k2q"));
        let mut done = start.clone();
        done["status"] = json!("COMPLETED");
        done["updateTime"] = json!(2_000);
        [start, done]
    });
    let client = reqwest::Client::new();
    let (status, text) = post(
        &client,
        &server.url("/api/v1/updates"),
        ndjson(lines),
        "application/x-ndjson",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let accepted_at = taskpulse::now_ms() as f64 / 1000.0;
    let seen = |s: &prometheus_parse::Scrape| {
        label_values(
            s,
            "taskpulse_worker_last_seen_timestamp_seconds",
            "worker_id",
        )
        .len()
    };
    assert_eq!(seen(&server.scrape().await), PODS);

    // a late update from pod 0 to its finished task is rejected, and does not refresh it
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let mut late = in_progress("job-0", 60.0, 3_000);
    late["workerId"] = json!("pod-000-x7k2q");
    let r = server.ingest(&late).await;
    assert_eq!(r["rejected"][0]["reason"], "terminal", "{r}");
    let last_seen = metric_value(
        &server.scrape().await,
        "taskpulse_worker_last_seen_timestamp_seconds",
        &[("worker_id", "pod-000-x7k2q")],
    );
    match last_seen {
        Some(t) => assert!(
            t <= accepted_at + 0.5,
            "refreshed by a rejected update: {t}"
        ),
        None => panic!("pod 0 expired early"),
    }

    // expired within the expiry and one sweep
    let mut left = PODS;
    for _ in 0..80 {
        left = seen(&server.scrape().await);
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(left, 0, "worker series left after the expiry");
    // the read API still names the worker of the attempt
    let t = server.get_json("/api/v1/tasks/job-7").await;
    assert_eq!(t["attempts"][0]["workerId"], "pod-007-x7k2q", "{t:#}");
}

/// Ten scrapers at once, again and again, share renders: every scrape is answered, and far
/// fewer renders are made than scrapes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_scrapes_share_renders() {
    let dir = tempfile::tempdir().unwrap();
    let server = std::sync::Arc::new(serve(dir.path(), &[]).await);
    let client = reqwest::Client::new();
    let lines = (0..5_000).map(|i| in_progress(&format!("t{i}"), 20.0, 1_000));
    let (status, _) = post(
        &client,
        &server.url("/api/v1/updates"),
        ndjson(lines),
        "application/x-ndjson",
    )
    .await;
    assert_eq!(status, 200);
    let scrapers = (0..10).map(|_| {
        let server = server.clone();
        async move {
            let client = reqwest::Client::new();
            for _ in 0..10 {
                let r = client.get(server.url("/metrics")).send().await.unwrap();
                assert_eq!(r.status(), 200);
                let text = r.text().await.unwrap();
                assert!(text.contains("taskpulse_task_progress_ratio{"));
            }
        }
    });
    futures_util::future::join_all(scrapers).await;
    let scrape = server.scrape().await;
    let rendered = metric_value(
        &scrape,
        "taskpulse_scrapes_total",
        &[("outcome", "rendered")],
    )
    .unwrap();
    let shared =
        metric_value(&scrape, "taskpulse_scrapes_total", &[("outcome", "shared")]).unwrap();
    // the last scrape counted itself before rendering
    assert_eq!(rendered + shared, 101.0);
    assert!(rendered <= 60.0, "{rendered} renders for 101 scrapes");
    assert!(shared >= 40.0, "{shared} shared");
}
