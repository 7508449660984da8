//! The table's decisions, read off the ops it hands the writer (no store: the writer's channel
//! is read here directly).

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use serde_json::json;
use tokio::sync::mpsc;

use super::*;
use crate::ingest::Reopen;
use crate::ingest::{parse_value, TaskUpdate};
use crate::lifecycle::{Diff, Incoming, Rejection};
use crate::model::{Outcome, ReopenKind, Status};
use crate::store::{Op, WriteKind, WriterHandle};
use crate::throttle::{Flush, Pending, Throttle};
use crate::wait::WaitMetrics;

/// An update with this status and no time, as the lifecycle sees it.
fn incoming(status: Status) -> Incoming {
    Incoming {
        status,
        update_time: None,
        reopen: None,
    }
}

struct Table {
    tracker: Tracker,
    ops: mpsc::UnboundedReceiver<Op>,
}

fn table(interval: Duration) -> Table {
    let (writer, ops) = WriterHandle::channel(IntGauge::new("pending", "pending").unwrap());
    let (throttle, _timers) = Throttle::new(interval, 0.0);
    // The timer requests are dropped: tests call `flush` themselves.
    std::mem::forget(_timers);
    Table {
        tracker: Tracker::new(
            throttle,
            writer,
            PipelineMetrics::unregistered(),
            WaitMetrics::unregistered(),
        ),
        ops,
    }
}

impl Table {
    /// Everything handed to the writer so far.
    fn sent(&mut self) -> Vec<Op> {
        let mut out = Vec::new();
        while let Ok(op) = self.ops.try_recv() {
            out.push(op);
        }
        out
    }
}

fn update(v: serde_json::Value) -> TaskUpdate {
    let mut base = json!({"taskId": "t1", "workflowId": "w1", "taskType": "encode"});
    for (k, val) in v.as_object().unwrap() {
        base[k] = val.clone();
    }
    parse_value(&base).expect("a valid update")
}

fn task_writes(ops: &[Op]) -> Vec<(WriteKind, Status, Option<f32>, bool)> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Task {
                rec,
                kind,
                attempts,
                ..
            } => Some((*kind, rec.status, rec.progress, !attempts.is_empty())),
            _ => None,
        })
        .collect()
}

fn events(ops: &[Op]) -> Vec<(Outcome, Status)> {
    lines(ops).into_iter().map(|(o, to, _)| (o, to)).collect()
}

/// History lines handed to the writer: outcome, status, and how many updates each stands for.
fn lines(ops: &[Op]) -> Vec<(Outcome, Status, u32)> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Event(e) => Some((e.outcome, e.to, e.count)),
            Op::Task { event: Some(e), .. } => Some((e.outcome, e.to, e.count)),
            _ => None,
        })
        .collect()
}

/// Runs the task's timer as the throttle's timer loop would, once its interval is over.
fn after_interval(t: &Table, interval: Duration, id: &str) {
    std::thread::sleep(interval + Duration::from_millis(30));
    t.tracker.flush(&Arc::from(id));
}

#[test]
fn a_new_task_is_written_at_once_and_waits_for_its_commit() {
    let mut t = table(Duration::from_secs(60));
    let applied = t
        .tracker
        .apply(&update(json!({"status": "SCHEDULED", "workerId": "w-a"})));
    assert!(matches!(applied, Applied::Accepted { commit: Some(_) }));
    let ops = t.sent();
    assert_eq!(
        task_writes(&ops),
        vec![(WriteKind::Status, Status::Scheduled, None, true)],
        "one status write, with the worker's attempt"
    );
    assert_eq!(events(&ops), vec![(Outcome::Accepted, Status::Scheduled)]);
}

#[test]
fn a_task_first_seen_without_a_type_is_rejected() {
    let mut t = table(Duration::from_secs(60));
    let u = parse_value(&json!({"taskId": "x", "workflowId": "w", "status": "SCHEDULED"})).unwrap();
    match t.tracker.apply(&u) {
        Applied::Rejected(r) => assert!(r.reason().contains("taskType"), "{}", r.reason()),
        other => panic!("{other:?}"),
    }
    assert!(t.sent().is_empty());
    assert!(t.tracker.is_empty());
}

#[test]
fn progress_inside_the_interval_is_coalesced_and_the_newest_value_written_later() {
    let mut t = table(Duration::from_millis(200));
    t.tracker.apply(&update(json!({"status": "IN_PROGRESS"})));
    t.sent();
    for p in [10, 20, 30] {
        let a = t.tracker.apply(&update(
            json!({"status": "IN_PROGRESS", "progressPercent": p}),
        ));
        assert!(matches!(a, Applied::Accepted { commit: None }));
    }
    assert!(
        task_writes(&t.sent()).is_empty(),
        "the status write used the slot"
    );
    assert_eq!(t.tracker.inspect("t1", |s| s.pending), Some(Pending::Timed));
    assert_eq!(
        t.tracker.get("t1").unwrap().progress,
        Some(30.0),
        "memory has the newest"
    );
    std::thread::sleep(Duration::from_millis(250));
    let id: Arc<str> = "t1".into();
    t.tracker.flush(&id);
    assert_eq!(
        task_writes(&t.sent()),
        vec![(WriteKind::Progress, Status::InProgress, Some(30.0), false)]
    );
    assert_eq!(t.tracker.inspect("t1", |s| s.pending), Some(Pending::Clean));
}

#[test]
fn a_terminal_update_carries_waiting_progress_and_nothing_follows_it() {
    let mut t = table(Duration::from_millis(100));
    t.tracker.apply(&update(json!({"status": "IN_PROGRESS"})));
    t.tracker.apply(&update(
        json!({"status": "IN_PROGRESS", "progressPercent": 90}),
    ));
    t.sent();
    let a = t.tracker.apply(&update(
        json!({"status": "COMPLETED", "progressPercent": 100}),
    ));
    assert!(matches!(a, Applied::Accepted { commit: Some(_) }));
    assert_eq!(
        task_writes(&t.sent()),
        vec![(WriteKind::Status, Status::Completed, Some(100.0), false)]
    );
    std::thread::sleep(Duration::from_millis(150));
    t.tracker.flush(&Arc::from("t1"));
    assert_eq!(t.tracker.flush_all(), 0);
    assert!(
        t.sent().is_empty(),
        "nothing is written after the terminal write"
    );
}

#[test]
fn a_late_in_progress_after_completed_is_rejected_and_kept_in_history() {
    let interval = Duration::from_millis(100);
    let mut t = table(interval);
    t.tracker.apply(&update(json!({"status": "COMPLETED"})));
    t.sent();
    match t.tracker.apply(&update(json!({"status": "IN_PROGRESS"}))) {
        Applied::Rejected(Rejection::Terminal { from, to }) => {
            assert_eq!((from, to), (Status::Completed, Status::InProgress))
        }
        other => panic!("{other:?}"),
    }
    let m = &t.tracker.metrics().transitions_rejected_total;
    assert_eq!(m.with_label_values(&["COMPLETED", "IN_PROGRESS"]).get(), 1);
    // the completion's write used the task's slot: the line waits for the next one
    assert!(t.sent().is_empty());
    after_interval(&t, interval, "t1");
    assert_eq!(
        lines(&t.sent()),
        vec![(Outcome::Rejected, Status::InProgress, 1)]
    );
    // an identical repeat of the completion is a duplicate, not a rejection
    assert!(matches!(
        t.tracker.apply(&update(json!({"status": "COMPLETED"}))),
        Applied::Duplicate
    ));
    assert_eq!(t.tracker.get("t1").unwrap().status, Status::Completed);
}

#[test]
fn a_flood_of_rejections_costs_one_history_line_per_interval() {
    let interval = Duration::from_millis(100);
    let mut t = table(interval);
    t.tracker.apply(&update(json!({"status": "FAILED"})));
    t.sent();
    for _ in 0..50 {
        t.tracker.apply(&update(json!({"status": "IN_PROGRESS"})));
    }
    assert!(t.sent().is_empty(), "nothing written inside the interval");
    after_interval(&t, interval, "t1");
    assert_eq!(
        lines(&t.sent()),
        vec![(Outcome::Rejected, Status::InProgress, 50)],
        "one line, counting all fifty"
    );
    let m = &t.tracker.metrics().transitions_rejected_total;
    assert_eq!(m.with_label_values(&["FAILED", "IN_PROGRESS"]).get(), 50);
    // the next one, with the slot free again, is written at once
    std::thread::sleep(interval);
    t.tracker.apply(&update(json!({"status": "SCHEDULED"})));
    assert_eq!(
        lines(&t.sent()),
        vec![(Outcome::Rejected, Status::Scheduled, 1)]
    );
}

#[test]
fn scheduled_in_progress_flapping_is_written_like_progress() {
    let interval = Duration::from_millis(100);
    let mut t = table(interval);
    t.tracker.apply(&update(json!({"status": "SCHEDULED"})));
    t.sent();
    for (i, status) in ["IN_PROGRESS", "SCHEDULED", "IN_PROGRESS"]
        .iter()
        .enumerate()
    {
        let a = t.tracker.apply(&update(
            json!({"status": status, "updateTime": 1_000 + i as i64}),
        ));
        assert!(
            matches!(a, Applied::Accepted { commit: None }),
            "acknowledged from memory, like progress: {a:?}"
        );
    }
    assert!(t.sent().is_empty(), "no write inside the interval");
    assert_eq!(t.tracker.get("t1").unwrap().status, Status::InProgress);
    after_interval(&t, interval, "t1");
    let ops = t.sent();
    assert_eq!(
        task_writes(&ops),
        vec![(WriteKind::Progress, Status::InProgress, None, false)],
        "the newest status, once"
    );
    assert_eq!(
        lines(&ops),
        vec![(Outcome::Accepted, Status::InProgress, 1)]
    );
    // a terminal update is still written at once, and waits for its commit
    let a = t.tracker.apply(&update(json!({"status": "COMPLETED"})));
    assert!(matches!(a, Applied::Accepted { commit: Some(_) }));
    assert_eq!(task_writes(&t.sent()).len(), 1);
}

#[test]
fn the_throttle_keeps_every_attempt_between_two_writes() {
    let interval = Duration::from_millis(100);
    let mut t = table(interval);
    t.tracker
        .apply(&update(json!({"status": "IN_PROGRESS", "workerId": "a"})));
    t.sent();
    for (worker, retry) in [("b", 0), ("a", 0), ("c", 1)] {
        let a = t.tracker.apply(&update(
            json!({"status": "IN_PROGRESS", "workerId": worker, "retryCount": retry}),
        ));
        assert!(matches!(a, Applied::Accepted { commit: None }));
    }
    assert!(t.sent().is_empty(), "coalesced");
    after_interval(&t, interval, "t1");
    let ops = t.sent();
    assert_eq!(ops.len(), 1, "{ops:?}");
    match &ops[0] {
        Op::Task { attempts, .. } => {
            let seen: Vec<(i32, &str)> = attempts
                .iter()
                .map(|a| (a.attempt, &*a.worker_id))
                .collect();
            assert_eq!(seen, vec![(0, "b"), (0, "a"), (1, "c")]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn times_ahead_of_the_clock_are_bounded() {
    let mut t = table(Duration::from_secs(60));
    t.tracker = t.tracker.with_max_clock_skew(Duration::from_secs(300));
    let now = crate::now_ms();
    // far ahead, not terminal: rejected, naming the clock
    match t.tracker.apply(&update(
        json!({"status": "IN_PROGRESS", "updateTime": now + 3_600_000}),
    )) {
        Applied::Rejected(r @ Rejection::ClockSkew { .. }) => {
            assert_eq!(r.reason(), "clock_skew");
            assert!(r.detail().contains("--max-clock-skew"), "{}", r.detail());
        }
        other => panic!("{other:?}"),
    }
    // a little ahead: taken, at taskpulse's time
    t.tracker.apply(&update(
        json!({"status": "IN_PROGRESS", "updateTime": now + 60_000}),
    ));
    let stored = t.tracker.get("t1").unwrap().update_time.unwrap();
    assert!(stored <= crate::now_ms(), "{stored} is ahead of the clock");
    // and so a later update with an honest clock is not stale
    let a = t.tracker.apply(&update(
        json!({"status": "IN_PROGRESS", "updateTime": now + 10, "progressPercent": 5}),
    ));
    assert!(matches!(a, Applied::Accepted { .. }), "{a:?}");
    // a terminal update far ahead is never lost: taken at taskpulse's time
    let a = t.tracker.apply(&update(
        json!({"status": "COMPLETED", "updateTime": 253_402_300_799_999_i64}),
    ));
    assert!(matches!(a, Applied::Accepted { .. }), "{a:?}");
    assert!(t.tracker.get("t1").unwrap().update_time.unwrap() <= crate::now_ms());
}

#[test]
fn history_past_what_a_task_keeps_is_pruned() {
    let mut t = table(Duration::from_millis(1));
    t.tracker.apply(&update(json!({"status": "SCHEDULED"})));
    let mut prunes = 0;
    for i in 0..200 {
        std::thread::sleep(Duration::from_millis(2));
        let status = if i % 2 == 0 {
            "IN_PROGRESS"
        } else {
            "SCHEDULED"
        };
        t.tracker.apply(&update(json!({"status": status})));
        prunes += t
            .sent()
            .iter()
            .filter(|op| matches!(op, Op::Prune { events: true, .. }))
            .count();
    }
    // one prune per half of what a task keeps, past the first full set
    assert!((3..=6).contains(&prunes), "{prunes} prunes for 200 lines");
}

/// What a scrape reads of an entry, kept inline apart from the boxed state, follows every
/// change: a stale copy would count a finished task as in flight.
#[test]
fn what_a_scrape_reads_of_a_task_follows_every_change() {
    let t = table(Duration::from_secs(60));
    let check = |what: &str| {
        let e = t.tracker.tasks.get("t1").expect("tracked");
        assert_eq!(e.hot, super::Hot::of(&e), "after {what}");
    };
    t.tracker.apply(&update(
        json!({"status": "SCHEDULED", "timeoutSeconds": 60}),
    ));
    check("a new task");
    let working = json!({"status": "IN_PROGRESS", "progressPercent": 10, "workerId": "w"});
    t.tracker.apply(&update(working));
    check("progress and a worker");
    t.tracker.apply(&update(
        json!({"status": "IN_PROGRESS", "progressPercent": 30}),
    ));
    check("more progress");
    t.tracker.apply(&update(json!({"status": "COMPLETED"})));
    check("the end");
    assert!(t.tracker.tasks.get("t1").unwrap().hot.status.is_terminal());
}

#[test]
fn memory_is_counted_per_task_and_given_back() {
    let t = table(Duration::from_secs(60));
    assert_eq!(t.tracker.tracked_bytes(), 0);
    t.tracker.apply(&update(json!({"status": "IN_PROGRESS"})));
    let small = t.tracker.tracked_bytes();
    assert!(small >= super::task::TASK_OVERHEAD, "{small}");
    t.tracker.apply(&update(
        json!({"status": "IN_PROGRESS", "progressMessage": "x".repeat(1000)}),
    ));
    assert!(t.tracker.tracked_bytes() >= small + 1000);
    t.tracker.apply(&update(json!({"status": "COMPLETED"})));
    std::thread::sleep(Duration::from_millis(5));
    t.tracker.sweep(1, 60_000);
    assert_eq!(t.tracker.tracked_bytes(), 0, "all given back");
}

#[test]
fn an_older_update_time_is_stale_and_a_repeat_a_duplicate() {
    let mut t = table(Duration::from_secs(60));
    t.tracker.apply(&update(
        json!({"status": "IN_PROGRESS", "updateTime": 2000}),
    ));
    t.sent();
    assert!(matches!(
        t.tracker
            .apply(&update(json!({"status": "SCHEDULED", "updateTime": 1000}))),
        Applied::Rejected(Rejection::Stale {
            stored: 2000,
            got: 1000
        })
    ));
    assert!(matches!(
        t.tracker.apply(&update(
            json!({"status": "IN_PROGRESS", "updateTime": 2000})
        )),
        Applied::Duplicate
    ));
}

#[test]
fn equal_names_share_one_allocation() {
    let t = table(Duration::from_secs(60));
    for id in ["a", "b"] {
        t.tracker
            .apply(&update(json!({"taskId": id, "status": "SCHEDULED"})));
    }
    let (a, b) = (t.tracker.get("a").unwrap(), t.tracker.get("b").unwrap());
    assert!(Arc::ptr_eq(&a.task_type, &b.task_type));
    assert!(Arc::ptr_eq(&a.workflow_id, &b.workflow_id));
}

#[test]
fn eviction_keeps_the_most_recently_touched_and_writes_what_waits_first() {
    let (writer, mut ops) = WriterHandle::channel(IntGauge::new("p", "p").unwrap());
    let (throttle, timers) = Throttle::new(Duration::from_secs(60), 0.0);
    std::mem::forget(timers);
    let tracker = Tracker::new(
        throttle,
        writer,
        PipelineMetrics::unregistered(),
        WaitMetrics::unregistered(),
    )
    .with_max_tracked(2);
    for (i, id) in ["old", "mid", "new"].iter().enumerate() {
        tracker.apply(&update(json!({"taskId": id, "status": "IN_PROGRESS"})));
        // a coalesced value waits on the oldest task
        if i == 0 {
            tracker.apply(&update(
                json!({"taskId": id, "status": "IN_PROGRESS", "progressPercent": 42}),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    while ops.try_recv().is_ok() {}
    assert_eq!(tracker.evict_over_cap(), 1);
    assert!(
        tracker.get("old").is_none(),
        "the least recently touched left"
    );
    assert!(tracker.get("mid").is_some() && tracker.get("new").is_some());
    let flushed: Vec<_> = std::iter::from_fn(|| ops.try_recv().ok()).collect();
    assert_eq!(
        task_writes(&flushed),
        vec![(WriteKind::Progress, Status::InProgress, Some(42.0), false)],
        "its coalesced value went to the writer before it left"
    );
    assert_eq!(tracker.metrics().tasks_evicted_total.get(), 1);
}

#[test]
fn the_sweeper_forgets_finished_tasks_after_the_retention() {
    let t = table(Duration::from_secs(60));
    t.tracker
        .apply(&update(json!({"taskId": "done", "status": "COMPLETED"})));
    t.tracker
        .apply(&update(json!({"taskId": "run", "status": "IN_PROGRESS"})));
    t.tracker.sweep(60_000, 60_000);
    assert_eq!(t.tracker.len(), 2, "within the retention both stay");
    std::thread::sleep(Duration::from_millis(5));
    t.tracker.sweep(1, 60_000);
    assert!(t.tracker.get("done").is_none());
    assert!(
        t.tracker.get("run").is_some(),
        "unfinished tasks are never swept"
    );
}

#[test]
fn the_sweeper_keeps_the_workers_of_unfinished_tasks_past_their_expiry() {
    let t = table(Duration::from_secs(60));
    for (id, status, worker) in [
        ("a", "IN_PROGRESS", "busy"),
        ("b", "IN_PROGRESS", "idle"),
        ("b", "COMPLETED", "idle"),
    ] {
        let u = json!({"taskId": id, "status": status, "workerId": worker});
        assert!(matches!(
            t.tracker.apply(&update(u)),
            Applied::Accepted { .. }
        ));
    }
    std::thread::sleep(Duration::from_millis(5));
    t.tracker.sweep(60_000, 1);
    let workers: Vec<String> = t.tracker.workers().keys().map(|w| w.to_string()).collect();
    assert_eq!(
        workers,
        ["busy"],
        "past the expiry only a busy worker stays"
    );
}

#[test]
fn a_write_lost_to_the_store_is_decided_again_on_the_stored_row() {
    let mut t = table(Duration::from_secs(60));
    t.tracker.apply(&update(json!({"status": "IN_PROGRESS"})));
    t.sent();
    let mut stored = t.tracker.get("t1").unwrap();
    stored.status = Status::Completed;
    let changed = Diff {
        content_changed: true,
        time_advanced: false,
    };
    let settled = t
        .tracker
        .settle(stored.clone(), incoming(Status::InProgress), changed);
    assert_eq!(
        settled,
        Settled::Rejected(Rejection::Terminal {
            from: Status::Completed,
            to: Status::InProgress
        })
    );
    assert_eq!(
        t.tracker.get("t1").unwrap().status,
        Status::Completed,
        "memory follows"
    );
    assert_eq!(
        events(&t.sent()),
        vec![(Outcome::Rejected, Status::InProgress)]
    );
    // the same completion, already stored: a duplicate, nothing recorded
    let same = t
        .tracker
        .settle(stored, incoming(Status::Completed), Diff::default());
    assert_eq!(same, Settled::Duplicate);
    assert!(t.sent().is_empty());
}

#[test]
fn unknown_names_each_missing_task_once() {
    let t = table(Duration::from_secs(60));
    t.tracker
        .apply(&update(json!({"taskId": "known", "status": "SCHEDULED"})));
    let mut absent = Absent::default();
    for (index, id) in ["known", "a", "b", "a"].into_iter().enumerate() {
        let u = update(json!({"taskId": id, "status": "IN_PROGRESS"}));
        if absent.holds(&u) || t.tracker.apply_if_known(&u).is_none() {
            absent.set_aside(index, u);
        }
    }
    let mut ids: Vec<&str> = absent.ids.iter().map(String::as_str).collect();
    ids.sort();
    assert_eq!(ids, ["a", "b"], "the store is asked for each once");
    let order: Vec<usize> = absent.updates.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        order,
        [1, 2, 3],
        "and every update of theirs is kept, in body order"
    );
}

/// An update read from an engine's store, with the engine's evidence of a reopen at `at`.
fn from_store(v: serde_json::Value, kind: ReopenKind, at: i64) -> TaskUpdate {
    let mut u = update(v);
    u.reopen = Some(Reopen { kind, at });
    u
}

#[test]
fn the_engine_reopens_a_finished_task_and_a_late_write_of_the_run_that_ended_does_not() {
    let mut t = table(Duration::from_secs(60));
    let run = json!({"status": "IN_PROGRESS", "startTime": 1_000, "updateTime": 1_000,
                     "progressPercent": 40, "timeoutSeconds": 60});
    t.tracker.apply(&update(run));
    t.tracker
        .apply(&update(json!({"status": "FAILED", "updateTime": 5_000})));
    t.sent();
    let rec = t.tracker.get("t1").unwrap();
    assert_eq!((rec.end_time, rec.ended_at()), (Some(5_000), Some(5_000)));

    // conductor-oss#176: a late write of the run that ended, its times from before the end
    let late = from_store(
        json!({"status": "IN_PROGRESS", "updateTime": 6_000}),
        ReopenKind::Rerun,
        1_000,
    );
    assert!(matches!(
        t.tracker.apply(&late),
        Applied::Rejected(Rejection::Terminal { .. })
    ));
    // a worker's or a webhook's update carries no evidence: refused too
    let worker = update(json!({"status": "SCHEDULED", "updateTime": 9_000}));
    assert!(matches!(
        t.tracker.apply(&worker),
        Applied::Rejected(Rejection::Terminal { .. })
    ));
    t.sent();

    // Conductor's rerun: scheduled again at 9,000, after the end
    let rerun = from_store(
        json!({"status": "SCHEDULED", "updateTime": 9_000}),
        ReopenKind::Rerun,
        9_000,
    );
    assert!(matches!(
        t.tracker.apply(&rerun),
        Applied::Accepted { commit: Some(_) }
    ));
    let ops = t.sent();
    assert_eq!(
        task_writes(&ops),
        vec![(WriteKind::Status, Status::Scheduled, None, false)],
        "written at once, the ended run's progress dropped"
    );
    let line = ops
        .iter()
        .find_map(|op| match op {
            Op::Task { event: Some(e), .. } => Some(e.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (line.outcome, line.from, line.to, line.reason.as_deref()),
        (
            Outcome::Reopened,
            Some(Status::Failed),
            Status::Scheduled,
            Some("reopened by the engine (rerun)")
        )
    );
    let rec = t.tracker.get("t1").unwrap();
    assert_eq!(
        (
            rec.terminal_at,
            rec.end_time,
            rec.reopened_at,
            rec.start_time
        ),
        (None, None, Some(9_000), None)
    );
    assert_eq!(rec.run_start(), 9_000, "the new run began at the reopen");
    assert_eq!(
        rec.deadline_ms(),
        Some(69_000),
        "its timeout counts from there"
    );

    // the new run finishes: its own duration, from the reopen
    t.tracker.apply(&update(
        json!({"status": "COMPLETED", "updateTime": 12_000}),
    ));
    let m = t.tracker.metrics();
    let done = m
        .task_duration_seconds
        .with_label_values(&["encode", "COMPLETED"]);
    assert_eq!((done.get_sample_count(), done.get_sample_sum()), (1, 3.0));
    assert_eq!(m.task_reopens_total.with_label_values(&["rerun"]).get(), 1);
}

#[test]
fn a_reopen_that_finished_between_two_reads_counts_the_new_run() {
    let mut t = table(Duration::from_secs(60));
    t.tracker.apply(&update(
        json!({"status": "IN_PROGRESS", "startTime": 1_000, "updateTime": 1_000}),
    ));
    t.tracker
        .apply(&update(json!({"status": "FAILED", "updateTime": 4_000})));
    t.sent();
    // Kestra: FAILED, RETRYING at 6,000, the second attempt started at 7,000 and succeeded
    let retried = from_store(
        json!({"status": "COMPLETED", "startTime": 1_000, "updateTime": 10_000,
               "retryCount": 1}),
        ReopenKind::Retry,
        6_000,
    );
    assert!(matches!(
        t.tracker.apply(&retried),
        Applied::Accepted { commit: Some(_) }
    ));
    let ops = t.sent();
    assert_eq!(
        events(&ops),
        vec![(Outcome::Reopened, Status::Completed)],
        "one line: reopened, and finished again"
    );
    let rec = t.tracker.get("t1").unwrap();
    assert_eq!(
        (rec.status, rec.start_time, rec.end_time, rec.reopened_at),
        (Status::Completed, None, Some(10_000), Some(6_000)),
        "a start from before the reopen belongs to the first run"
    );
    assert!(rec.terminal_at.is_some());
    let m = t.tracker.metrics();
    let failed = m
        .task_duration_seconds
        .with_label_values(&["encode", "FAILED"]);
    let done = m
        .task_duration_seconds
        .with_label_values(&["encode", "COMPLETED"]);
    assert_eq!(failed.get_sample_sum(), 3.0, "the first run: 1 s to 4 s");
    assert_eq!(
        done.get_sample_sum(),
        4.0,
        "the second: the reopen at 6 s to 10 s"
    );
    // the same row read again is a duplicate, not a second reopen
    assert!(matches!(t.tracker.apply(&retried), Applied::Duplicate));
    assert_eq!(m.task_reopens_total.with_label_values(&["retry"]).get(), 1);
}

#[test]
fn memory_never_goes_back_to_a_row_read_before_the_task_finished() {
    let t = table(Duration::from_secs(60));
    t.tracker.apply(&update(json!({"status": "IN_PROGRESS"})));
    let running = t.tracker.get("t1").unwrap();
    t.tracker.apply(&update(json!({"status": "COMPLETED"})));
    // the leader's merge read the row before the completion committed (same millisecond)
    let mut stale = running.clone();
    stale.last_seen = t.tracker.get("t1").unwrap().last_seen;
    t.tracker.reload(stale);
    assert_eq!(t.tracker.get("t1").unwrap().status, Status::Completed);
    // a row the engine reopened after the end is followed
    let done = t.tracker.get("t1").unwrap();
    let mut reopened = running;
    reopened.reopened_at = Some(done.ended_at().unwrap() + 1);
    reopened.last_seen = done.last_seen + 1;
    t.tracker.reload(reopened);
    assert_eq!(t.tracker.get("t1").unwrap().status, Status::InProgress);
}

#[test]
fn an_update_of_a_task_memory_lacks_is_set_aside_untouched() {
    let mut t = table(Duration::from_secs(60));
    let u = update(json!({"status": "IN_PROGRESS", "progressPercent": 5}));
    assert!(
        t.tracker.apply_if_known(&u).is_none(),
        "nothing to apply to"
    );
    assert!(t.tracker.get("t1").is_none(), "and nothing made");
    assert!(t.sent().is_empty(), "nor written");
    assert_eq!(t.tracker.accepted(), 0);
    assert!(matches!(t.tracker.apply(&u), Applied::Accepted { .. }));
    let again = update(json!({"status": "IN_PROGRESS", "progressPercent": 6}));
    assert!(matches!(
        t.tracker.apply_if_known(&again),
        Some(Applied::Accepted { .. })
    ));
    assert_eq!(t.tracker.accepted(), 2);
}

#[test]
fn rejections_are_listed_in_body_order_whenever_they_are_decided() {
    let mut report = Report::default();
    let r = Rejection::Invalid("bad".into());
    // a chunk's set-aside updates are decided after the rest of it: indexes come out of order
    for index in (0..150).rev().chain([7, 300]) {
        report.reject(index, None, &r);
    }
    let listed: Vec<usize> = report.rejected.iter().map(|x| x.index).collect();
    let mut want: Vec<usize> = (0..150).chain([7]).collect();
    want.sort();
    want.truncate(MAX_LISTED_REJECTIONS);
    assert_eq!(listed, want);
    assert_eq!(report.rejected_count, 152);
}
