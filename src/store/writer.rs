//! The one batching writer in front of the store (group commit).
//!
//! Ingest never talks to the database: it sends [`Op`]s down an unbounded channel, in the order
//! it decided them (it sends while holding the task's entry, so the channel order is the
//! per-task decision order). The writer takes everything waiting, keeps the newest row per task,
//! writes the lot in one transaction, and only then answers the updates that wait for a commit
//! (status changes and terminal updates). While one batch commits, the next one gathers, so the
//! commit rate adapts to the load instead of the other way round. A batch nobody waits for
//! (coalesced progress, whose timers end one task at a time) is given [`GATHER`] to grow first.
//!
//! Unboundedness is deliberate and guarded elsewhere: the ingest path refuses updates that need a
//! commit once `pending()` passes `--max-pending-writes`.
//!
//! A batch that fails because the store is unreachable, restarting or locked is retried with
//! backoff, forever: every op in it was accepted into memory, and some of them were promised to
//! a client as "kept and written later". While it fails, [`WriterHandle::store_failing`] says
//! so, and the ingest path answers updates that need a commit with 503 at once instead of
//! letting each client wait for a commit that cannot come.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{is_transient, Batch, Store, StoreMetrics};
use crate::model::{Attempt, TaskEvent, TaskRecord};

/// Most ops taken into one transaction.
const MAX_BATCH: usize = 8192;

/// How long a batch that nobody waits for may gather more ops before it is written; an op that
/// someone waits for ends the wait at once. Coalesced progress writes come due one task at a
/// time, as each task's `--progress-min-interval` ends: written as they came, 2,000 tasks made
/// about 400 transactions a second of one or two rows, each a round of thread hand-offs and a
/// sync, and single-update ingest ran at 0.83x of what it did with no progress writes at all
/// (BENCHMARKS.md, issue 27's fifth stop). A coalesced value is already up to one interval
/// late; this adds at most 50 ms to that.
const GATHER: Duration = Duration::from_millis(50);

/// Longest pause between two attempts at a failing batch: short enough that writes resume
/// within seconds of the store coming back, long enough not to hammer a store that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why a task row is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// A throttled progress write.
    Progress,
    /// A status change, a terminal update or a new task: written at once.
    Status,
    /// A checker repair (written by the checker's executor, not through the writer).
    Repair,
}

impl WriteKind {
    pub fn label(self) -> &'static str {
        match self {
            WriteKind::Progress => "progress",
            WriteKind::Status => "status",
            WriteKind::Repair => "repair",
        }
    }
}

/// The answer to an update that waited for its commit.
#[derive(Clone, Debug, PartialEq)]
pub enum Commit {
    Written,
    /// The store holds a terminal or newer row; memory has been reloaded from it.
    Conflict(Option<Box<TaskRecord>>),
    /// The store refused the row itself (not a connectivity problem); nothing was written.
    Failed(String),
}

/// One thing for the writer to do. Not boxed: an op is moved once, into the channel, and a box
/// would cost an allocation per update on the hot path.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Op {
    Task {
        rec: TaskRecord,
        kind: WriteKind,
        /// Attempts (retry number, worker) seen since the task's last write.
        attempts: Vec<Attempt>,
        /// History of this write (an accepted status change): stored only if the row is.
        event: Option<TaskEvent>,
        ack: Option<oneshot::Sender<Commit>>,
    },
    Event(TaskEvent),
    /// Delete the task's history lines beyond the newest (`events`) and its attempts beyond
    /// the newest (`attempts`), after this batch's own are in.
    Prune {
        task_id: Arc<str>,
        events: bool,
        attempts: bool,
    },
    /// Answered once every op sent before it is committed (used by shutdown and tests).
    Barrier(oneshot::Sender<()>),
}

/// The sending side, cheap to clone.
#[derive(Clone, Debug)]
pub struct WriterHandle {
    tx: mpsc::UnboundedSender<Op>,
    pending: IntGauge,
    /// Ops that batches being applied may still send (see [`WriterHandle::reserve`]).
    reserved: Arc<AtomicI64>,
    /// Epoch ms of the first failed attempt of the batch being retried; 0 while writes succeed.
    failing_since: Arc<AtomicI64>,
}

/// Room in the writer's queue, held while a chunk of updates is applied; given back on drop
/// (the ops the chunk sent are counted as pending by then).
#[derive(Debug)]
pub struct Reservation {
    reserved: Arc<AtomicI64>,
    n: i64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reserved.fetch_sub(self.n, Ordering::AcqRel);
    }
}

impl WriterHandle {
    /// A handle and the receiving end of its channel, with no writer behind it: [`spawn`] puts
    /// the writer there; unit tests read the ops themselves.
    pub fn channel(pending: IntGauge) -> (WriterHandle, mpsc::UnboundedReceiver<Op>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = WriterHandle {
            tx,
            pending,
            reserved: Arc::new(AtomicI64::new(0)),
            failing_since: Arc::new(AtomicI64::new(0)),
        };
        (handle, rx)
    }

    /// Reserves room for `n` more ops if the queue, with what others reserved, stays within
    /// `limit`: the bound `--max-pending-writes` holds across concurrent requests, not only at
    /// the moment each one was admitted.
    pub fn reserve(&self, n: usize, limit: usize) -> Option<Reservation> {
        let n = n as i64;
        let before = self.reserved.fetch_add(n, Ordering::AcqRel);
        if self.pending.get() + before + n > limit as i64 {
            self.reserved.fetch_sub(n, Ordering::AcqRel);
            return None;
        }
        Some(Reservation {
            reserved: self.reserved.clone(),
            n,
        })
    }

    /// Queues an op; false when the writer has stopped.
    pub fn send(&self, op: Op) -> bool {
        self.pending.inc();
        if self.tx.send(op).is_err() {
            self.pending.dec();
            return false;
        }
        true
    }

    /// Ops queued or being written.
    pub fn pending(&self) -> usize {
        self.pending.get().max(0) as usize
    }

    /// True while the writer is retrying a batch the store failed for a reason that is not the
    /// data (unreachable, restarting, locked). Cleared by the next successful commit. The
    /// ingest path uses it to refuse updates that need a commit at once, with 503.
    pub fn store_failing(&self) -> bool {
        self.failing_since.load(Ordering::Relaxed) != 0
    }

    /// Since when (epoch ms) the store has been failing, if it is.
    pub fn store_failing_since(&self) -> Option<i64> {
        match self.failing_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    /// Waits until everything sent so far is committed.
    pub async fn barrier(&self) -> bool {
        let (tx, rx) = oneshot::channel();
        self.send(Op::Barrier(tx)) && rx.await.is_ok()
    }
}

/// A write nobody waited for that lost to the store: what the store holds, and what was tried.
#[derive(Debug)]
pub struct Lost {
    pub stored: TaskRecord,
    pub attempted: TaskRecord,
}

/// Starts the writer. Rows the store refused because it holds something newer or terminal, and
/// that nobody waits for (progress writes), are sent to `conflicts` as stored, so memory can
/// follow the store; the pipeline settles the ones it waits for itself.
///
/// The writer runs until `stop` is cancelled (or every handle is dropped), and writes
/// everything sent before that.
pub fn spawn(
    store: Store,
    metrics: StoreMetrics,
    conflicts: mpsc::UnboundedSender<Lost>,
    stop: CancellationToken,
) -> (WriterHandle, JoinHandle<()>) {
    let (handle, rx) = WriterHandle::channel(metrics.pending_writes.clone());
    let pending = handle.pending.clone();
    let health = handle.failing_since.clone();
    let join = tokio::spawn(run(store, metrics, rx, pending, health, conflicts, stop));
    (handle, join)
}

async fn run(
    store: Store,
    metrics: StoreMetrics,
    mut rx: mpsc::UnboundedReceiver<Op>,
    pending: IntGauge,
    health: Arc<AtomicI64>,
    conflicts: mpsc::UnboundedSender<Lost>,
    stop: CancellationToken,
) {
    let own = store.for_writer().await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the writer shares the store's connections: no connection of its own");
        None
    });
    let store = own.clone().unwrap_or(store);
    let mut ops = Vec::with_capacity(MAX_BATCH);
    loop {
        let taken = tokio::select! {
            biased;
            n = rx.recv_many(&mut ops, MAX_BATCH) => n,
            _ = stop.cancelled() => {
                // Nothing more is taken; what was sent is still written.
                rx.close();
                rx.recv_many(&mut ops, MAX_BATCH).await
            }
        };
        if taken == 0 {
            break;
        }
        if !ops.iter().any(Op::awaited) {
            gather(&mut rx, &mut ops, &stop).await;
        }
        let mut pb = PendingBatch {
            ops: ops.len() as i64,
            ..PendingBatch::default()
        };
        for op in ops.drain(..) {
            pb.add(op);
        }
        write_with_retry(&store, &metrics, &pending, &health, &conflicts, pb).await;
    }
    if let Some(own) = own {
        own.close().await;
    }
}

/// Takes more ops into `ops` for up to [`GATHER`], until one arrives that someone waits for,
/// the batch is full, or the writer is told to stop.
async fn gather(rx: &mut mpsc::UnboundedReceiver<Op>, ops: &mut Vec<Op>, stop: &CancellationToken) {
    let deadline = tokio::time::sleep(GATHER);
    tokio::pin!(deadline);
    while ops.len() < MAX_BATCH {
        let before = ops.len();
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = &mut deadline => return,
            n = rx.recv_many(ops, MAX_BATCH - before) => {
                if n == 0 || ops[before..].iter().any(Op::awaited) {
                    return;
                }
            }
        }
    }
}

impl Op {
    /// Someone waits for this op's commit: an update's answer, or a barrier.
    fn awaited(&self) -> bool {
        matches!(self, Op::Task { ack: Some(_), .. } | Op::Barrier(_))
    }
}

/// A batch being gathered: newest row per task, and who waits for what.
#[derive(Default)]
struct PendingBatch {
    batch: Batch,
    kinds: Vec<WriteKind>,
    by_task: HashMap<Arc<str>, usize>,
    attempts: HashMap<(Arc<str>, i32, Arc<str>), usize>,
    acks: Vec<(usize, oneshot::Sender<Commit>)>,
    barriers: Vec<oneshot::Sender<()>>,
    /// The ops gathered, which stop counting as pending once written.
    ops: i64,
}

impl PendingBatch {
    fn add(&mut self, op: Op) {
        match op {
            Op::Task {
                rec,
                kind,
                attempts,
                event,
                ack,
            } => {
                self.batch.task_events.extend(event);
                let i = match self.by_task.get(&rec.task_id) {
                    Some(&i) => {
                        // Newer state of the same task supersedes; a status write stays one.
                        self.batch.tasks[i] = rec;
                        if kind == WriteKind::Status {
                            self.kinds[i] = WriteKind::Status;
                        }
                        i
                    }
                    None => {
                        self.by_task
                            .insert(rec.task_id.clone(), self.batch.tasks.len());
                        self.batch.tasks.push(rec);
                        self.kinds.push(kind);
                        self.batch.tasks.len() - 1
                    }
                };
                for a in attempts {
                    let key = (a.task_id.clone(), a.attempt, a.worker_id.clone());
                    match self.attempts.get(&key) {
                        Some(&j) => self.batch.attempts[j].last_seen = a.last_seen,
                        None => {
                            self.attempts.insert(key, self.batch.attempts.len());
                            self.batch.attempts.push(a);
                        }
                    }
                }
                if let Some(ack) = ack {
                    self.acks.push((i, ack));
                }
            }
            Op::Event(e) => self.batch.events.push(e),
            Op::Prune {
                task_id,
                events,
                attempts,
            } => {
                if events && !self.batch.prune_events.contains(&task_id) {
                    self.batch.prune_events.push(task_id.clone());
                }
                if attempts && !self.batch.prune_attempts.contains(&task_id) {
                    self.batch.prune_attempts.push(task_id);
                }
            }
            Op::Barrier(tx) => self.barriers.push(tx),
        }
    }
}

async fn write_with_retry(
    store: &Store,
    metrics: &StoreMetrics,
    pending: &IntGauge,
    health: &AtomicI64,
    conflict_tx: &mpsc::UnboundedSender<Lost>,
    pb: PendingBatch,
) {
    let mut backoff = Duration::from_millis(50);
    // Attempts that failed on the data, not on the store's availability (outages are retried
    // inside `write_transient_retried`, for as long as they last).
    let mut refused = 0u32;
    let outcome: Vec<Option<Commit>> = loop {
        match write_transient_retried(store, metrics, health, &pb.batch).await {
            Ok(conflicts) => {
                let mut out = vec![None; pb.batch.tasks.len()];
                for i in conflicts {
                    out[i] = Some(resolve_conflict(store, &pb.batch.tasks[i]).await);
                }
                break out;
            }
            Err(e @ crate::Error::Database(sqlx::Error::Database(_))) if refused >= 2 => {
                // The server refuses the data itself, not the connection. Retrying the batch
                // forever would stall every other task; write rows one by one instead and
                // report the ones that cannot be stored.
                metrics.write_errors_total.inc();
                tracing::error!(error = %e, "store rejected a batch; writing its rows one by one");
                break write_one_by_one(store, metrics, health, &pb.batch).await;
            }
            Err(e) => {
                metrics.write_errors_total.inc();
                refused += 1;
                tracing::warn!(error = %e, retry_in = ?backoff, rows = pb.batch.tasks.len(), "store write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    for (i, kind) in pb.kinds.iter().enumerate() {
        if outcome[i].is_none() {
            metrics.written(*kind);
        }
    }
    let mut waited = vec![false; outcome.len()];
    for (i, _) in &pb.acks {
        waited[*i] = true;
    }
    for (i, o) in outcome.iter().enumerate() {
        if let (Some(Commit::Conflict(Some(stored))), false) = (o, waited[i]) {
            let _ = conflict_tx.send(Lost {
                stored: (**stored).clone(),
                attempted: pb.batch.tasks[i].clone(),
            });
        }
    }
    // Written: no longer pending by the time anyone hears so (a client answered after its
    // commit and sending its next body at once must not find the queue still full of it).
    pending.sub(pb.ops);
    for (i, ack) in pb.acks {
        let _ = ack.send(outcome[i].clone().unwrap_or(Commit::Written));
    }
    for b in pb.barriers {
        let _ = b.send(());
    }
}

async fn write_one_by_one(
    store: &Store,
    metrics: &StoreMetrics,
    health: &AtomicI64,
    batch: &Batch,
) -> Vec<Option<Commit>> {
    let mut out = Vec::with_capacity(batch.tasks.len());
    for rec in &batch.tasks {
        let single = Batch {
            tasks: vec![rec.clone()],
            events: batch
                .events
                .iter()
                .filter(|e| e.task_id == rec.task_id)
                .cloned()
                .collect(),
            task_events: batch
                .task_events
                .iter()
                .filter(|e| e.task_id == rec.task_id)
                .cloned()
                .collect(),
            attempts: batch
                .attempts
                .iter()
                .filter(|a| a.task_id == rec.task_id)
                .cloned()
                .collect(),
            prune_events: Vec::new(),
            prune_attempts: Vec::new(),
        };
        out.push(
            match write_transient_retried(store, metrics, health, &single).await {
                Ok(c) if c.is_empty() => None,
                Ok(_) => Some(resolve_conflict(store, rec).await),
                Err(e) => {
                    metrics.write_errors_total.inc();
                    tracing::error!(task_id = %rec.task_id, error = %e, "store refused a task row");
                    Some(Commit::Failed(e.to_string()))
                }
            },
        );
    }
    // History and attempts of tasks without a row in this batch (rejected updates).
    let orphans = Batch {
        tasks: Vec::new(),
        task_events: Vec::new(),
        events: batch
            .events
            .iter()
            .filter(|e| !batch.tasks.iter().any(|t| t.task_id == e.task_id))
            .cloned()
            .collect(),
        attempts: batch
            .attempts
            .iter()
            .filter(|a| !batch.tasks.iter().any(|t| t.task_id == a.task_id))
            .cloned()
            .collect(),
        prune_events: batch.prune_events.clone(),
        prune_attempts: batch.prune_attempts.clone(),
    };
    if !orphans.events.is_empty()
        || !orphans.attempts.is_empty()
        || !orphans.prune_events.is_empty()
        || !orphans.prune_attempts.is_empty()
    {
        if let Err(e) = write_transient_retried(store, metrics, health, &orphans).await {
            metrics.write_errors_total.inc();
            tracing::error!(error = %e, events = orphans.events.len(), "store refused task history");
        }
    }
    out
}

/// One write, retried with backoff for as long as it fails for transient reasons (the store
/// unreachable, restarting, locked, full). The first such failure sets the writer's "store
/// failing" flag, the next success clears it. Used for whole batches and, while a refused batch
/// is split, for each row, so an outage meanwhile doesn't turn good rows into refused ones.
async fn write_transient_retried(
    store: &Store,
    metrics: &StoreMetrics,
    health: &AtomicI64,
    batch: &Batch,
) -> crate::Result<Vec<usize>> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store.write_batch(batch).await {
            Err(e) if is_transient(&e) => {
                metrics.write_errors_total.inc();
                let first = health
                    .compare_exchange(
                        0,
                        crate::now_ms().max(1),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok();
                if first {
                    tracing::error!(error = %e, "the store is failing; writes are kept and retried, updates that need a commit get 503");
                }
                tracing::warn!(error = %e, retry_in = ?backoff, rows = batch.tasks.len(), "store write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            other => {
                if other.is_ok() {
                    metrics.commits_total.inc();
                    if health.swap(0, Ordering::Relaxed) != 0 {
                        tracing::info!("store writes succeed again");
                    }
                }
                return other;
            }
        }
    }
}

/// A conditional write did not apply. If the store already holds exactly this state (a retried
/// commit that had succeeded), that is success; otherwise memory must follow the store.
async fn resolve_conflict(store: &Store, ours: &TaskRecord) -> Commit {
    match store.get_task(&ours.task_id).await {
        Ok(Some(stored))
            if stored.status == ours.status && stored.update_time == ours.update_time =>
        {
            Commit::Written
        }
        Ok(Some(stored)) => Commit::Conflict(Some(Box::new(stored))),
        Ok(None) => Commit::Conflict(None),
        Err(e) => {
            tracing::warn!(task_id = %ours.task_id, error = %e, "could not read back a conflicting row");
            Commit::Conflict(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskRecord;
    use crate::store::sqlite::tests::{every_connection, sqlite_store};

    /// A writer on `store`, and the token that stops it. Lost writes are dropped unread.
    fn start(store: Store) -> (WriterHandle, JoinHandle<()>, CancellationToken) {
        let (writer, join, stop, _) = start_counted(store);
        (writer, join, stop)
    }

    /// [`start`], with the writer's metrics.
    fn start_counted(
        store: Store,
    ) -> (
        WriterHandle,
        JoinHandle<()>,
        CancellationToken,
        StoreMetrics,
    ) {
        let metrics = StoreMetrics::register(&prometheus::Registry::new()).unwrap();
        let (conflicts, _) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let (writer, join) = spawn(store, metrics.clone(), conflicts, stop.clone());
        (writer, join, stop, metrics)
    }

    /// A write of `rec` with no attempts or history; `ack` for one someone waits for.
    fn write(rec: TaskRecord, kind: WriteKind, ack: Option<oneshot::Sender<Commit>>) -> Op {
        Op::Task {
            rec,
            kind,
            attempts: Vec::new(),
            event: None,
            ack,
        }
    }

    /// A status write of task `id`, and what its commit will say.
    fn awaited(id: &str, at: i64) -> (Op, oneshot::Receiver<Commit>) {
        let (ack, commit) = oneshot::channel();
        let op = write(
            TaskRecord::in_progress(id, at),
            WriteKind::Status,
            Some(ack),
        );
        (op, commit)
    }

    /// A progress write, which nobody waits for.
    fn progress(i: usize) -> Op {
        let mut rec = TaskRecord::in_progress(&format!("p{i}"), 1_000 + i as i64);
        rec.progress = Some(50.0);
        write(rec, WriteKind::Progress, None)
    }

    /// Writes nobody waits for, arriving a millisecond apart (as coalesced progress comes due,
    /// one task at a time), share a transaction; a write someone waits for ends the gathering,
    /// and takes what gathered with it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_nobody_waits_for_share_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        let (writer, join, stop, metrics) = start_counted(store.clone());
        for i in 0..8 {
            writer.send(progress(i));
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (op, commit) = awaited("awaited", 2_000);
        writer.send(op);
        assert!(matches!(commit.await, Ok(Commit::Written)));
        let ids: Vec<String> = (0..8).map(|i| format!("p{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(
            store.get_tasks(&ids).await.unwrap().len(),
            8,
            "what gathered is committed with the awaited write"
        );
        let commits = metrics.commits_total.get();
        assert!(
            commits <= 2,
            "9 writes arriving within a few ms took {commits} transactions"
        );
        stop.cancel();
        join.await.unwrap();
    }

    /// A commit is heard only once its ops no longer count as pending: a client answered
    /// after its commit may send its next body at once and find the queue as the store has it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acknowledged_write_is_no_longer_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, join, stop) = start(sqlite_store(&dir).await);
        for i in 0..200 {
            let (op, commit) = awaited(&format!("t{i}"), 1_000 + i);
            writer.send(op);
            assert!(matches!(commit.await, Ok(Commit::Written)));
            assert_eq!(
                writer.pending(),
                0,
                "write {i} acknowledged while still pending"
            );
        }
        stop.cancel();
        join.await.unwrap();
    }

    /// The statements each of the shared pool's connections keeps prepared.
    async fn statements_kept(pool: &sqlx::SqlitePool) -> Vec<usize> {
        use sqlx::Connection;
        let conns = every_connection(pool).await;
        conns.iter().map(|c| c.cached_statements_size()).collect()
    }

    /// On SQLite the writer prepares its (large) statements on a connection of its own: the
    /// shared pool's connections keep none of them, whatever the batches were.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_keeps_its_statements_off_the_shared_connections() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(&dir).await;
        let Store::Sqlite(pool) = store.clone() else {
            unreachable!("a SQLite URL")
        };
        let before = statements_kept(&pool).await;
        let (writer, join, stop) = start(store.clone());
        let mut sent = 0;
        // bodies of 1 to 1,200 tasks: full chunks, partial ones and small ones
        for n in [1, 7, 120, 600, 1_200] {
            let mut commits = Vec::new();
            for i in sent..sent + n {
                let (op, commit) = awaited(&format!("t{i}"), 1_000 + i as i64);
                writer.send(op);
                commits.push(commit);
            }
            for c in commits {
                assert!(matches!(c.await, Ok(Commit::Written)));
            }
            sent += n;
        }
        let ids: Vec<String> = (0..sent).map(|i| format!("t{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        assert_eq!(store.get_tasks(&ids).await.unwrap().len(), sent);
        let after = statements_kept(&pool).await;
        // the read above prepared its one statement on one connection
        assert!(
            after.iter().sum::<usize>() <= before.iter().sum::<usize>() + 1,
            "the shared connections kept {after:?} statements after the writer's batches, {before:?} before"
        );
        stop.cancel();
        join.await.unwrap();
    }
}
