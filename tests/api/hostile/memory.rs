//! The in-memory table's bounds (`--max-tracked-tasks`, `--max-tracked-memory`), what one
//! request may cost, and the task list's pages.

use std::time::Duration;

use serde_json::{json, Value};

use super::{eventually, in_progress, ndjson, post, serve};
use crate::conductor::{Emulator, TaskSpec};
use crate::helpers::{metric_value, update, Backend, TestApp, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unfinished_tasks_stays_within_the_cap_and_evicted_tasks_survive() {
    const CAP: usize = 20;
    let db = TestDb::new(Backend::Sqlite).await;
    // A long throttle interval: a coalesced value is written only by the eviction itself.
    let app = TestApp::spawn_with(&db, |s| {
        s.pipeline.max_tracked_tasks = CAP;
        s.throttle.progress_min_interval = Duration::from_secs(3600);
    })
    .await;

    // "held" has a coalesced progress value when it is evicted; "old" is an evicted task that
    // later gets a stale update; "done" finished and is evicted first.
    app.ingest(&in_progress("held", 10.0, 1_000)).await;
    let r = app.ingest(&in_progress("held", 20.0, 2_000)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    app.ingest(&in_progress("old", 50.0, 5_000)).await;
    app.ingest(&update("done", "COMPLETED")).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        app.stored("held").await.unwrap().progress,
        Some(10.0),
        "20% is coalesced, not written yet"
    );

    // 200 distinct tasks that never finish, in batches of 20
    for batch in 0..10 {
        let body: Vec<Value> = (0..20)
            .map(|i| in_progress(&format!("flood-{batch}-{i}"), 1.0, 1_000))
            .collect();
        let r = app.ingest(&json!(body)).await;
        assert_eq!(r["accepted"], 20, "{r}");
        // never far over the cap, even before the sweeper catches up (a new task a tenth over
        // the cap wakes it; allow it a batch or two of lag on a busy machine)
        assert!(
            app.tracker.len() <= 3 * CAP,
            "{} tasks in memory",
            app.tracker.len()
        );
    }
    assert!(
        eventually(Duration::from_secs(8), || app.tracker.len() <= CAP).await,
        "memory never came down to the cap: {} tasks",
        app.tracker.len()
    );
    let evicted = app
        .metric_value("taskpulse_tasks_evicted_total", &[])
        .await
        .unwrap();
    assert!(evicted >= 183.0, "evicted {evicted}");
    for id in ["held", "old", "done"] {
        assert!(app.tracker.get(id).is_none(), "{id} is still in memory");
    }

    // the coalesced value was written before "held" left memory
    app.settle().await;
    let held = app.stored("held").await.expect("held stays in the store");
    assert_eq!(held.progress, Some(20.0));
    assert_eq!(held.update_time, Some(2_000));
    assert_eq!(app.task("held").await["progressPercent"], 20.0);

    // progress for an evicted task is decided against the stored row and accepted
    let r = app.ingest(&in_progress("held", 30.0, 3_000)).await;
    assert_eq!(r["accepted"], 1, "{r}");
    assert_eq!(app.tracker.get("held").unwrap().progress, Some(30.0));
    // a stale update for an evicted task is rejected, as if it had never left memory
    let r = app.ingest(&in_progress("old", 60.0, 4_000)).await;
    assert_eq!(r["accepted"], 0, "{r}");
    assert_eq!(r["rejected"][0]["reason"], "stale", "{r}");
    assert_eq!(app.stored("old").await.unwrap().progress, Some(50.0));
    // and a finished, evicted task still can't be reopened
    let r = app.ingest(&update("done", "IN_PROGRESS")).await;
    assert_eq!(r["rejected"][0]["reason"], "terminal", "{r}");

    // the store has every task; memory only the most recent
    app.shutdown().await;
    let store = db.store().await;
    for id in ["held", "old", "done", "flood-0-0", "flood-9-19"] {
        assert!(store.get_task(id).await.unwrap().is_some(), "{id} lost");
    }
    assert_eq!(
        store.get_task("held").await.unwrap().unwrap().progress,
        Some(30.0)
    );
}

/// A body of `n` empty objects, `[{},{},...]`.
fn empty_objects(n: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(n * 3 + 1);
    body.push(b'[');
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{}");
    }
    body.push(b']');
    body
}

/// Four 2 MiB bodies of nothing but invalid items, at once (`scripts/overload.sh` sends
/// bodies of the largest size, 8 MiB): each answer
/// lists the first 100 rejections and counts the rest by reason, and the process's peak memory
/// grows by a small multiple of what the bodies hold (the README's bound: the body, 8 bytes per
/// item and one chunk of updates, per request at a time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_empty_objects_gets_a_short_answer_and_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]).await;
    let n = (2 * 1024 * 1024 - 2) / 3;
    let body = empty_objects(n);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let url = server.url("/api/v1/updates");
    let before = server.proc.memory_kib("VmHWM");
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all((0..4).map(|_| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move { post(&client, &url, body, "application/json").await }
    }))
    .await;
    let took = started.elapsed();
    let grew_kib = server.proc.memory_kib("VmHWM").saturating_sub(before);
    for (status, text) in &answers {
        assert_eq!(*status, 200, "{}", &text[..text.len().min(300)]);
        assert!(text.len() < 32 * 1024, "a {} byte answer", text.len());
        let r: Value = serde_json::from_str(text).unwrap();
        assert_eq!(r["accepted"], 0);
        assert_eq!(r["rejectedCount"], n);
        assert_eq!(r["rejectedByReason"], json!({"invalid": n}));
        let listed = r["rejected"].as_array().unwrap();
        assert_eq!(listed.len(), 100);
        assert_eq!(listed[99]["index"], 99);
        assert!(
            listed[0]["detail"].as_str().unwrap().contains("taskId"),
            "{}",
            listed[0]
        );
    }
    eprintln!("4 x {n} empty objects: {took:?}, peak memory grew by {grew_kib} KiB");
    // the bound: 4 x (2 MiB of body + 8 bytes for each of its 700,000 items) = 30 MiB, and
    // as much again for the allocator, the HTTP buffers and the answers
    assert!(grew_kib < 60 * 1024, "peak memory grew by {grew_kib} KiB");
}

/// The worker proxy keeps what it needs to check each forwarded completion, not the
/// completion: 40 completions of 1 MiB each, which the engine never confirms (its look-ups
/// fail), leave 40 entries and no bodies kept; small ones are kept for a repost.
/// (`scripts/overload.sh` sends 300.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_completions_are_kept_within_bounds() {
    let emu = Emulator::start().await;
    emu.fail_lookups(500);
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &["--conductor-url", &emu.url()]).await;
    let client = reqwest::Client::new();
    const BIG: usize = 40;
    const SMALL: usize = 10;
    let ids: Vec<String> = (0..BIG + SMALL)
        .map(|_| emu.start_task(TaskSpec::new("encode")))
        .collect();
    let polled = client
        .get(server.url(&format!(
            "/api/tasks/poll/batch/encode?workerid=w1&count={}&timeout=100",
            BIG + SMALL
        )))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(polled.as_array().unwrap().len(), BIG + SMALL);
    let rss_before = server.proc.memory_kib("VmRSS");
    let blob = "x".repeat(1024 * 1024);
    let complete = |id: &str, output: &str| {
        let wf = emu.task(id).unwrap().workflow_instance_id;
        format!(
            r#"{{"taskId":"{id}","workflowInstanceId":"{wf}","workerId":"w1","status":"COMPLETED","outputData":{output}}}"#
        )
    };
    for chunk in ids[..BIG].chunks(4) {
        let sends = chunk.iter().map(|id| {
            client
                .post(server.url("/api/tasks"))
                .header("content-type", "application/json")
                .body(complete(id, &format!(r#"{{"blob":"{blob}"}}"#)))
                .send()
        });
        for r in futures_util::future::join_all(sends).await {
            assert_eq!(r.unwrap().status(), 200);
        }
    }
    for id in &ids[BIG..] {
        let r = client
            .post(server.url("/api/tasks"))
            .header("content-type", "application/json")
            .body(complete(id, r#"{"frames":42}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for id in &ids {
        assert_eq!(emu.task(id).unwrap().status, "COMPLETED");
    }
    // the checker's look-ups fail: nothing is confirmed (the rule runs every --check-interval)
    let scrape = server.scrape().await;
    let gauge = |name| metric_value(&scrape, name, &[]).unwrap_or(f64::NAN);
    assert_eq!(
        gauge("taskpulse_conductor_unconfirmed_terminal_updates"),
        (BIG + SMALL) as f64
    );
    let kept = gauge("taskpulse_conductor_unconfirmed_terminal_update_bytes");
    assert!(
        kept > 0.0 && kept < (SMALL * 1024) as f64,
        "{kept} bytes kept: only the small ones"
    );
    let grew_kib = server.proc.memory_kib("VmRSS").saturating_sub(rss_before);
    eprintln!("{BIG} forwarded completions of 1 MiB: memory grew by {grew_kib} KiB");
    assert!(grew_kib < 20 * 1024, "memory grew by {grew_kib} KiB");
}

/// Tasks with the longest ids and messages against `--max-tracked-memory`: memory holds what
/// fits the budget as the estimate counts it (the least recently updated leave memory, not
/// the store), and the task list comes a capped page at a time, each task once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_holds_with_long_ids_and_the_task_list_is_paged() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        &[
            "--max-tracked-memory",
            "4MiB",
            "--progress-min-interval",
            "1h",
        ],
    )
    .await;
    let client = reqwest::Client::new();
    const N: usize = 8_000;
    let message = "m".repeat(1024);
    let id = |i: usize| format!("{i:06}{}", "t".repeat(250));
    for batch in (0..N).collect::<Vec<_>>().chunks(1000) {
        let lines = batch.iter().map(|&i| {
            let mut u = in_progress(&id(i), 10.0, 1_000);
            u["workflowId"] = json!(format!("{:0>256}", i));
            u["progressMessage"] = json!(message);
            u
        });
        let (status, text) = post(
            &client,
            &server.url("/api/v1/updates"),
            ndjson(lines),
            "application/x-ndjson",
        )
        .await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap()["accepted"],
            1000
        );
    }
    // the sweeper brings memory within the budget
    let mut tracked = (0.0, 0.0);
    for _ in 0..100 {
        let s = server.scrape().await;
        tracked = (
            metric_value(&s, "taskpulse_tracked_tasks", &[]).unwrap(),
            metric_value(&s, "taskpulse_tracked_memory_bytes", &[]).unwrap(),
        );
        if tracked.1 <= 4.0 * 1024.0 * 1024.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (tasks, bytes) = tracked;
    assert!(bytes <= 4.0 * 1024.0 * 1024.0, "{bytes} bytes tracked");
    assert!(tasks > 500.0 && tasks < N as f64, "{tasks} tasks tracked");
    // every task is about 2.5 KB as counted (700 bytes of entry, 256 + 256 of ids, 1 KB of
    // message, its attempt and history line)
    let per_task = bytes / tasks;
    assert!(
        (2_000.0..4_000.0).contains(&per_task),
        "{per_task} bytes per task"
    );
    let evicted = metric_value(&server.scrape().await, "taskpulse_tasks_evicted_total", &[]);
    assert_eq!(evicted, Some(N as f64 - tasks));

    // the store has every task
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tasks")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, N as i64);
    pool.close().await;

    // pages: at most 1,000 tasks each, every tracked task exactly once
    let r = client
        .get(server.url("/api/v1/tasks?limit=10000"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("`limit` must be a number from 1 to 1000"));
    let mut seen = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let page = server
            .get_json(&format!("/api/v1/tasks?limit=1000&cursor={cursor}"))
            .await;
        let listed = page["tasks"].as_array().unwrap();
        assert!(listed.len() <= 1000);
        for t in listed {
            assert!(
                seen.insert(t["taskId"].as_str().unwrap().to_string()),
                "listed twice"
            );
        }
        match page["next"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len() as f64, tasks);
}

/// One body of nothing but empty attempts (`{"attempts": [{},{},...]}`, 8 MiB): only the newest
/// 20 are ever held, so peak memory grows by about the body, not by a parsed struct per
/// attempt (it grew by 265 MiB when the whole list was built before it was cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_empty_attempts_is_cut_while_it_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]).await;
    let head =
        br#"{"taskId":"t-att","workflowId":"w","taskType":"x","status":"IN_PROGRESS","attempts":["#;
    let n = (8 * 1024 * 1024 - head.len() - 2) / 3;
    let mut body = head.to_vec();
    for i in 0..n {
        body.extend_from_slice(if i == 0 { b"{}" } else { b",{}" });
    }
    body.extend_from_slice(b"]}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let before = server.proc.memory_kib("VmHWM");
    let (status, text) = post(
        &client,
        &server.url("/api/v1/updates"),
        body,
        "application/json",
    )
    .await;
    let grew_kib = server.proc.memory_kib("VmHWM").saturating_sub(before);
    assert_eq!(status, 200, "{}", &text[..text.len().min(300)]);
    let r: Value = serde_json::from_str(&text).unwrap();
    let detail = r["rejected"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("attempts[{}].workerId", n - 20)),
        "the first kept attempt is named by its place in the body: {detail}"
    );
    eprintln!("{n} empty attempts: peak memory grew by {grew_kib} KiB");
    // the body (8 MiB) and its copy in the HTTP layer, and the allocator's share
    assert!(grew_kib < 40 * 1024, "peak memory grew by {grew_kib} KiB");
}

/// A rejection names what was wrong and quotes at most a few dozen characters of the refused
/// value: 90 items with an 80 KB `seq` string, and a webhook notification with a 4 MB
/// `startTime`, get answers of a few KB (they were 16 MB and 8 MB: each value quoted twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_quote_little_of_what_they_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[]).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let long = "7".repeat(80_000);
    let items: Vec<Value> = (0..90)
        .map(|i| {
            json!({"taskId": format!("t-{i}"), "workflowId": "w", "taskType": "x",
                        "status": "IN_PROGRESS", "seq": long})
        })
        .collect();
    let body = serde_json::to_vec(&items).unwrap();
    let (status, text) = post(
        &client,
        &server.url("/api/v1/updates"),
        body,
        "application/json",
    )
    .await;
    assert_eq!(status, 200);
    assert!(text.len() < 48 * 1024, "a {} byte answer", text.len());
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["rejectedCount"], 90);
    let detail = r["rejected"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("`seq`") && detail.contains('…'), "{detail}");

    let start = "2".repeat(4 * 1024 * 1024);
    let note = json!({"taskId": "t-hook", "workflowId": "w", "taskType": "x",
                      "status": "IN_PROGRESS", "startTime": start});
    let body = serde_json::to_vec(&note).unwrap();
    let (status, text) = post(
        &client,
        &server.url("/api/v1/conductor/task-status"),
        body,
        "application/json",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        text.len() < 4 * 1024,
        "a {} byte answer: {}",
        text.len(),
        &text[..300]
    );
    assert!(text.contains("startTime"), "{text}");
}
