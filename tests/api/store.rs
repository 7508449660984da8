//! The store itself, on both backends: conditional writes, history, attempts, rebuild queries
//! and migrations.

use std::sync::Arc;

use taskpulse::model::Status;
use taskpulse::model::{Attempt, Outcome, TaskEvent, TaskRecord};
use taskpulse::store::{Batch, Store};

use crate::helpers::{stored_version, Backend, TestDb};
use crate::store_test;

fn rec(id: &str, status: Status, update_time: Option<i64>, progress: Option<f32>) -> TaskRecord {
    TaskRecord {
        task_id: id.into(),
        workflow_id: "wf".into(),
        task_type: "encode".into(),
        workflow_type: Some("media".into()),
        reference_task_name: Some("encode_ref".into()),
        seq: Some(3),
        iteration: Some(1),
        retry_count: Some(0),
        status,
        progress,
        progress_message: Some("msg with 'quotes' and ünïcode".into()),
        worker_id: Some("worker-1".into()),
        start_time: Some(1_000),
        update_time,
        timeout_seconds: Some(300),
        response_timeout_seconds: Some(60),
        wait_until: None,
        parent_task_id: None,
        iteration_value: None,
        end_time: None,
        reopened_at: None,
        first_seen: 5,
        last_seen: 6,
        progress_changed: 6,
        terminal_at: status.is_terminal().then_some(7),
    }
}

async fn migrated(backend: Backend) -> (TestDb, Store) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    store.migrate().await.expect("migrate");
    (db, store)
}

async fn write(store: &Store, tasks: Vec<TaskRecord>) -> Vec<usize> {
    store
        .write_batch(&Batch {
            tasks,
            ..Batch::default()
        })
        .await
        .expect("write batch")
}

/// Every field survives a round trip.
async fn round_trip(backend: Backend) {
    let (_db, store) = migrated(backend).await;
    let r = rec("t1", Status::InProgress, Some(10), Some(42.5));
    assert!(write(&store, vec![r.clone()]).await.is_empty());
    assert_eq!(store.get_task("t1").await.unwrap(), Some(r));
    assert_eq!(store.get_task("nope").await.unwrap(), None);
}
store_test!(round_trip);

/// A terminal row is never overwritten, and a newer updateTime never loses to an older one:
/// the write reports a conflict instead.
async fn conditional_writes_protect_terminal_and_newer_rows(backend: Backend) {
    let (_db, store) = migrated(backend).await;
    write(
        &store,
        vec![rec("done", Status::Completed, Some(20), Some(100.0))],
    )
    .await;
    write(
        &store,
        vec![rec("newer", Status::InProgress, Some(50), Some(50.0))],
    )
    .await;
    let conflicts = write(
        &store,
        vec![
            rec("done", Status::InProgress, Some(30), Some(10.0)),
            rec("newer", Status::InProgress, Some(40), Some(40.0)),
            rec("fresh", Status::Scheduled, Some(1), None),
            rec("newer2", Status::InProgress, None, Some(1.0)),
        ],
    )
    .await;
    assert_eq!(conflicts, vec![0, 1]);
    let done = store.get_task("done").await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.progress),
        (Status::Completed, Some(100.0))
    );
    let newer = store.get_task("newer").await.unwrap().unwrap();
    assert_eq!(newer.progress, Some(50.0));
    assert!(store.get_task("fresh").await.unwrap().is_some());

    // equal updateTime is not older: it applies, and the version counts the write
    assert!(write(
        &store,
        vec![rec("newer", Status::Completed, Some(50), Some(60.0))]
    )
    .await
    .is_empty());
    assert_eq!(stored_version(&store, "newer").await, 2);
    assert_eq!(stored_version(&store, "done").await, 1);
}
store_test!(conditional_writes_protect_terminal_and_newer_rows);

/// History and attempts: events are kept newest first; an attempt's worker keeps its first
/// sighting and the latest last sighting.
async fn history_and_attempts(backend: Backend) {
    let (_db, store) = migrated(backend).await;
    let event = |at: i64, outcome: Outcome, from: Option<Status>, to: Status| TaskEvent {
        task_id: Arc::from("t"),
        at,
        outcome,
        from,
        to,
        reason: (outcome == Outcome::Rejected).then(|| "terminal".to_string()),
        worker_id: Some("w1".into()),
        progress_percent: Some(10.0),
        update_time: Some(at),
        count: 1,
        last_at: None,
    };
    let attempt = |n: i32, w: &str, seen: i64| Attempt {
        task_id: Arc::from("t"),
        attempt: n,
        worker_id: w.into(),
        status: None,
        start_time: None,
        end_time: None,
        first_seen: seen,
        last_seen: seen,
    };
    store
        .write_batch(&Batch {
            tasks: vec![rec("t", Status::InProgress, Some(1), None)],
            events: vec![
                event(1, Outcome::Accepted, None, Status::InProgress),
                event(
                    2,
                    Outcome::Accepted,
                    Some(Status::InProgress),
                    Status::Completed,
                ),
                event(
                    3,
                    Outcome::Rejected,
                    Some(Status::Completed),
                    Status::InProgress,
                ),
            ],
            task_events: vec![],
            attempts: vec![attempt(0, "w1", 1), attempt(1, "w2", 2)],
            ..Default::default()
        })
        .await
        .unwrap();
    // the engine reports the first attempt's own state and times: kept, and not lost to a
    // later sight that reports none
    let mut reported = attempt(0, "w1", 5);
    reported.status = Some(Status::Failed);
    reported.start_time = Some(100);
    reported.end_time = Some(200);
    for a in [reported, attempt(0, "w1", 9)] {
        store
            .write_batch(&Batch {
                attempts: vec![a],
                ..Batch::default()
            })
            .await
            .unwrap();
    }
    let h = store.task_history("t", 2).await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(
        (h[0].at, h[0].outcome, h[0].reason.as_deref()),
        (3, Outcome::Rejected, Some("terminal"))
    );
    assert_eq!(h[1].to, Status::Completed);
    let a = store.task_attempts("t").await.unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(
        (
            a[0].attempt,
            &*a[0].worker_id,
            a[0].first_seen,
            a[0].last_seen
        ),
        (0, "w1", 1, 9)
    );
    assert_eq!(
        (a[0].status, a[0].start_time, a[0].end_time),
        (Some(Status::Failed), Some(100), Some(200))
    );
    assert_eq!(
        (a[1].attempt, &*a[1].worker_id, a[1].status),
        (1, "w2", None)
    );
}
store_test!(history_and_attempts);

/// Rebuild reads unfinished tasks and recently finished ones only.
async fn load_tasks_for_rebuild(backend: Backend) {
    let (_db, store) = migrated(backend).await;
    let mut old = rec("old-done", Status::Completed, Some(1), None);
    old.terminal_at = Some(100);
    let mut recent = rec("recent-done", Status::Failed, Some(1), None);
    recent.terminal_at = Some(10_000);
    write(
        &store,
        vec![
            old,
            recent,
            rec("running", Status::InProgress, Some(1), Some(5.0)),
        ],
    )
    .await;
    let mut ids: Vec<String> = store
        .load_tasks(5_000)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.task_id.to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["recent-done", "running"]);
}
store_test!(load_tasks_for_rebuild);

/// Migrations are idempotent, and readiness needs them applied.
async fn migrations_and_readiness(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    assert!(
        store.ready().await.is_err(),
        "an unmigrated store is not ready"
    );
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    store.ready().await.expect("ready after migrate");
}
store_test!(migrations_and_readiness);

#[tokio::test]
async fn unsupported_urls_are_refused_with_a_clear_error() {
    let err = Store::connect("mysql://root@localhost/x")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("sqlite://PATH or postgres://"),
        "{err}"
    );
}

/// The history of a write (an accepted status change, a new attempt) is stored only when the
/// row itself is; the history of a rejection is stored regardless.
async fn history_of_a_lost_write_is_not_stored(backend: Backend) {
    let (_db, store) = migrated(backend).await;
    write(&store, vec![rec("t", Status::Completed, Some(10), None)]).await;
    let accepted = TaskEvent {
        task_id: Arc::from("t"),
        at: 20,
        outcome: Outcome::Accepted,
        from: Some(Status::Completed),
        to: Status::InProgress,
        reason: None,
        worker_id: None,
        progress_percent: None,
        update_time: Some(20),
        count: 1,
        last_at: None,
    };
    let rejected = TaskEvent {
        outcome: Outcome::Rejected,
        reason: Some("terminal".into()),
        at: 21,
        ..accepted.clone()
    };
    let conflicts = store
        .write_batch(&Batch {
            tasks: vec![rec("t", Status::InProgress, Some(20), None)],
            events: vec![rejected],
            task_events: vec![accepted],
            attempts: vec![Attempt {
                task_id: Arc::from("t"),
                attempt: 0,
                worker_id: "late-worker".into(),
                status: None,
                start_time: None,
                end_time: None,
                first_seen: 20,
                last_seen: 20,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(conflicts, vec![0]);
    let h = store.task_history("t", 10).await.unwrap();
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h[0].outcome, Outcome::Rejected);
    assert!(store.task_attempts("t").await.unwrap().is_empty());
}
store_test!(history_of_a_lost_write_is_not_stored);
