//! Property tests of the lifecycle. For any interleaving of updates, with duplicates,
//! reordering and replays: a terminal state is never left, `updateTime` never goes backwards,
//! and after a flush the store holds exactly what memory holds. First against the pure
//! `lifecycle::decide`, then against the real application on SQLite, checked against a model.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};
use taskpulse::lifecycle::{decide, Current, Diff, Incoming, Rejection, Verdict};
use taskpulse::model::Status;

use crate::helpers::{Backend, TestApp, TestDb};

/// Statuses, weighted towards the non-terminal ones so sequences have something to leave.
fn status() -> impl Strategy<Value = Status> {
    prop_oneof![
        3 => Just(Status::Scheduled),
        4 => Just(Status::InProgress),
        1 => Just(Status::Completed),
        1 => Just(Status::Failed),
        1 => Just(Status::Canceled),
    ]
}

/// One update: status, `updateTime` from a small range (so collisions, duplicates and
/// reorderings are common), progress in steps of 10 (exact as f32).
#[derive(Clone, Debug)]
struct Upd {
    task: usize,
    status: Status,
    time: Option<i64>,
    progress: Option<f32>,
}

fn upd(tasks: usize) -> impl Strategy<Value = Upd> {
    (
        0..tasks,
        status(),
        proptest::option::weighted(0.85, 1i64..12),
        proptest::option::weighted(0.6, (0u8..=10).prop_map(|p| f32::from(p) * 10.0)),
    )
        .prop_map(|(task, status, time, progress)| Upd {
            task,
            status,
            time,
            progress,
        })
}

/// A sequence, then replays of some of its own updates (at-least-once delivery, retries).
fn sequence(tasks: usize, max: usize) -> impl Strategy<Value = Vec<Upd>> {
    proptest::collection::vec(upd(tasks), 1..max).prop_flat_map(|base| {
        let n = base.len();
        proptest::collection::vec(0..n, 0..n).prop_map(move |replays| {
            let mut all = base.clone();
            all.extend(replays.into_iter().map(|i| base[i].clone()));
            all
        })
    })
}

/// The model of one task: what `docs/contract.md` says memory and the store hold.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Model {
    status: Status,
    time: Option<i64>,
    progress: Option<f32>,
}

/// Outcome by the contract, written independently of `decide`.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Outcome {
    Accepted,
    Duplicate,
    Terminal,
    Stale,
}

fn model_apply(m: &mut Option<Model>, u: &Upd) -> Outcome {
    let Some(cur) = m else {
        *m = Some(Model {
            status: u.status,
            time: u.time,
            progress: u.progress,
        });
        return Outcome::Accepted;
    };
    let content_changed = u.progress.is_some() && u.progress != cur.progress;
    if cur.status.is_terminal() {
        return if u.status == cur.status && !content_changed {
            Outcome::Duplicate
        } else {
            Outcome::Terminal
        };
    }
    if matches!((cur.time, u.time), (Some(s), Some(g)) if g < s) {
        return Outcome::Stale;
    }
    let time_advanced = match (u.time, cur.time) {
        (Some(n), Some(o)) => n > o,
        (Some(_), None) => true,
        _ => false,
    };
    if u.status == cur.status && !content_changed && !time_advanced {
        return Outcome::Duplicate;
    }
    cur.status = u.status;
    cur.time = cur.time.max(u.time);
    cur.progress = u.progress.or(cur.progress);
    Outcome::Accepted
}

proptest! {
    #![proptest_config(Config::with_cases(500))]

    /// `decide` alone: applied to a state machine, terminal is absorbing, time is monotonic,
    /// and it agrees with the model above on every step.
    #[test]
    fn decide_never_leaves_terminal_nor_goes_back_in_time(seq in sequence(1, 40)) {
        let mut state: Option<Current> = None;
        let mut progress: Option<f32> = None;
        let mut model: Option<Model> = None;
        for u in &seq {
            let before = state;
            let diff = Diff {
                content_changed: u.progress.is_some() && u.progress != progress,
                time_advanced: match (u.time, state.and_then(|c| c.update_time)) {
                    (Some(n), Some(o)) => n > o,
                    (Some(_), None) => true,
                    _ => false,
                },
            };
            // A task seen for the first time is taken in any status (the table's rule; the
            // lifecycle decides on known tasks).
            let verdict = match state {
                None => Verdict::Accept { status_changed: true },
                // updates from workers and webhooks carry no reopen evidence
                Some(cur) => decide(
                    cur,
                    Incoming { status: u.status, update_time: u.time, reopen: None },
                    diff,
                ),
            };
            let expected = model_apply(&mut model, u);
            match &verdict {
                Verdict::Accept { .. } => {
                    prop_assert_eq!(expected, Outcome::Accepted, "{:?}", u);
                    let t = state.and_then(|c| c.update_time).max(u.time);
                    state = Some(Current { status: u.status, update_time: t, ended_at: t });
                    progress = u.progress.or(progress);
                }
                Verdict::Duplicate => prop_assert_eq!(expected, Outcome::Duplicate),
                Verdict::Reject(Rejection::Terminal { from, to }) => {
                    prop_assert_eq!(expected, Outcome::Terminal);
                    prop_assert!(from.is_terminal());
                    prop_assert_eq!(*to, u.status);
                }
                Verdict::Reject(Rejection::Stale { stored, got }) => {
                    prop_assert_eq!(expected, Outcome::Stale);
                    prop_assert!(got < stored);
                }
                Verdict::Reject(r) => prop_assert!(false, "unexpected {:?}", r),
                Verdict::Reopen => prop_assert!(false, "reopened without evidence: {:?}", u),
            }
            if let Some(b) = before {
                let now = state.unwrap();
                if b.status.is_terminal() {
                    prop_assert_eq!(now.status, b.status, "left a terminal state");
                }
                prop_assert!(now.update_time >= b.update_time, "updateTime went back");
            }
            if let (Some(s), Some(m)) = (state, model) {
                prop_assert_eq!((s.status, s.update_time, progress), (m.status, m.time, m.progress));
            }
        }
    }

    /// Replaying everything already applied, in any order, changes nothing once every task is
    /// terminal.
    #[test]
    fn replays_after_the_end_change_nothing(seq in sequence(1, 20), end in 0usize..3) {
        let terminal = [Status::Completed, Status::Failed, Status::Canceled][end];
        let mut model = None;
        for u in &seq {
            model_apply(&mut model, u);
        }
        let fin = Upd { task: 0, status: terminal, time: Some(100), progress: None };
        model_apply(&mut model, &fin);
        let settled = model;
        for u in seq.iter().rev() {
            let out = model_apply(&mut model, u);
            prop_assert_ne!(out, Outcome::Accepted);
            prop_assert_eq!(model, settled);
        }
    }
}

fn body(u: &Upd, ids: &[String]) -> Value {
    let id = &ids[u.task];
    let mut b = json!({
        "taskId": id,
        "workflowId": format!("wf-{id}"),
        "taskType": "prop",
        "status": u.status.as_str(),
    });
    if let Some(t) = u.time {
        b["updateTime"] = json!(t);
    }
    if let Some(p) = u.progress {
        b["progressPercent"] = json!(p);
    }
    b
}

fn outcome_of(resp: &Value, index: usize) -> Outcome {
    for r in resp["rejected"].as_array().unwrap() {
        if r["index"] == index {
            return match r["reason"].as_str().unwrap() {
                "terminal" => Outcome::Terminal,
                "stale" => Outcome::Stale,
                other => panic!("unexpected rejection {other}: {resp}"),
            };
        }
    }
    match (resp["accepted"].as_u64(), resp["duplicates"].as_u64()) {
        (Some(1), Some(0)) => Outcome::Accepted,
        (Some(0), Some(1)) => Outcome::Duplicate,
        _ => panic!("one update, no verdict: {resp}"),
    }
}

/// The real application: every update of a generated interleaving (over three tasks, with
/// replays) is posted on its own; each answer must match the model, memory must never leave a
/// terminal state or go back in time, and after a flush the store must equal memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_follows_the_model_and_the_store_equals_memory_after_a_flush() {
    let started = Instant::now();
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    // Every run, shrinking included, gets fresh task ids.
    let case = std::sync::atomic::AtomicUsize::new(0);
    let result = tokio::task::block_in_place(|| {
        runner.run(&sequence(3, 16), |seq| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ids: Vec<String> = (0..3).map(|k| format!("p{n}-{k}")).collect();
            handle.block_on(check_case(&app, &ids, &seq))
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    app.shutdown().await;
}

async fn check_case(app: &TestApp, ids: &[String], seq: &[Upd]) -> Result<(), TestCaseError> {
    let mut models: HashMap<usize, Option<Model>> = HashMap::new();
    for u in seq {
        let before = app.tracker.get(&ids[u.task]);
        let resp = app.ingest(&json!([body(u, ids)])).await;
        let got = outcome_of(&resp, 0);
        let expected = model_apply(models.entry(u.task).or_default(), u);
        prop_assert_eq!(got, expected, "{:?} answered {}", u, resp);
        let after = app
            .tracker
            .get(&ids[u.task])
            .expect("a task seen is in memory");
        if let Some(b) = before {
            if b.status.is_terminal() {
                prop_assert_eq!(after.status, b.status, "left a terminal state");
            }
            prop_assert!(after.update_time >= b.update_time, "updateTime went back");
        }
    }
    // flush what the throttle holds, wait for the writer, then memory == store == model
    app.tracker.flush_all();
    app.settle().await;
    for (task, model) in models {
        let Some(m) = model else { continue };
        let mem = app.tracker.get(&ids[task]).unwrap();
        let stored = app.stored(&ids[task]).await.expect("stored");
        prop_assert_eq!(
            (mem.status, mem.update_time, mem.progress),
            (m.status, m.time, m.progress),
            "memory vs model"
        );
        prop_assert_eq!(
            (stored.status, stored.update_time, stored.progress),
            (mem.status, mem.update_time, mem.progress),
            "store vs memory"
        );
    }
    Ok(())
}
