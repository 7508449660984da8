//! The update pipeline: everything an update goes through after it has been parsed, whichever
//! source it came from (the HTTP API, an engine's webhook, proxy or store reader).
//!
//! [`Pipeline::submit`] is the one entry point. It admits the batch (not while shutting down,
//! not while the store is too far behind), brings tasks that left memory back from the store,
//! applies each update through the lifecycle and the throttle in the in-memory table
//! ([`Tracker`]), and, when the caller asks for it ([`Ack::Commit`]), waits for the commits an
//! acknowledgement needs. A write that loses to what the store holds (another replica or a
//! repair got there first) is decided again, once, by the lifecycle on the stored row. The
//! answer is a [`Report`] or a typed [`IngestError`]; mapping either to HTTP is the HTTP
//! layer's business.

pub mod background;
mod interner;
mod memory;
mod metrics;
mod task;
#[cfg(test)]
mod tests;
mod tracker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::sync::oneshot;

use crate::ingest::{Item, TaskUpdate};
use crate::lifecycle::Rejection;
use crate::store::{Commit, Store};

pub use memory::{ByName, Page, ReadAll, Settled};
pub use metrics::PipelineMetrics;
pub(crate) use task::addr;
pub use task::{Applied, Entry, Hot, TaskState};
pub use tracker::Tracker;

/// How long an update that needs a commit waits for it before the caller gets
/// [`IngestError::CommitTimeout`].
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a caller waiting for a commit looks at the writer's health: once the store is
/// known to fail, it gets [`IngestError::StoreFailing`] within this, not after the whole
/// [`COMMIT_TIMEOUT`].
const HEALTH_POLL: Duration = Duration::from_millis(100);

/// Whether the caller's answer waits for the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ack {
    /// New tasks, status changes and terminal updates are acknowledged only once committed
    /// (the API and the webhook: a 200 for a completion survives a crash).
    Commit,
    /// Acknowledged from memory (the worker proxy answers with the engine's own response;
    /// store readers re-read what they miss).
    Memory,
}

/// Why a batch was not (wholly) taken. Updates accepted into memory before the error stay
/// there and are written later; a retry of them is answered as a duplicate.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("taskpulse is shutting down")]
    ShuttingDown,
    #[error("the store is behind: {pending} writes waiting (limit --max-pending-writes {limit})")]
    StoreBehind { pending: usize, limit: usize },
    #[error("the store is unavailable; retry (accepted updates are kept and written when it is back, and a retry is answered as a duplicate)")]
    StoreFailing,
    #[error("the store did not confirm the write in time; retry (accepted updates are kept and a retry is answered as a duplicate)")]
    CommitTimeout,
    #[error("store unavailable: {0}")]
    StoreRead(#[source] crate::Error),
}

/// Rejections a [`Report`] lists one by one, at most; the rest are only counted by reason, so
/// an answer stays small whatever the body held.
pub const MAX_LISTED_REJECTIONS: usize = 100;

/// Items taken from a batch at a time: the store is asked about the tasks of one chunk at once,
/// and room in the writer's queue is reserved per chunk.
const CHUNK: usize = 1024;

/// One rejected item in a [`Report`].
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RejectedItem {
    pub index: usize,
    pub task_id: Option<String>,
    pub reason: String,
    pub detail: String,
}

/// What became of a batch.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub accepted: u64,
    pub duplicates: u64,
    /// The first [`MAX_LISTED_REJECTIONS`] rejections, in body order.
    pub rejected: Vec<RejectedItem>,
    /// Every rejection, listed or not.
    pub rejected_count: u64,
    /// Every rejection by reason code (`terminal`, `stale`, `clock_skew`, `invalid`).
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
}

impl Report {
    /// Counts a rejection, and lists it if it is among the first [`MAX_LISTED_REJECTIONS`] of
    /// the body (updates of tasks brought back from the store are decided after the rest of
    /// their chunk, so rejections do not always arrive in body order).
    fn reject(&mut self, index: usize, task_id: Option<String>, r: &Rejection) {
        self.rejected_count += 1;
        *self.rejected_by_reason.entry(r.code()).or_default() += 1;
        let full = self.rejected.len() >= MAX_LISTED_REJECTIONS;
        if full && self.rejected.last().is_some_and(|last| last.index < index) {
            return;
        }
        let at = self.rejected.partition_point(|x| x.index < index);
        self.rejected.insert(
            at,
            RejectedItem {
                index,
                task_id,
                reason: r.reason(),
                detail: r.detail(),
            },
        );
        self.rejected.truncate(MAX_LISTED_REJECTIONS);
    }
}

/// An accepted update whose answer waits for its commit.
struct Waiting {
    index: usize,
    update: TaskUpdate,
    commit: oneshot::Receiver<Commit>,
}

/// What a batch has come to so far.
#[derive(Default)]
struct Batch {
    /// The answer waits for commits ([`Ack::Commit`]).
    wait: bool,
    report: Report,
    waits: Vec<Waiting>,
    /// The store was failing when the current chunk began (asked once per chunk).
    store_failing: bool,
    /// A terminal update was answered as a duplicate while the store was failing.
    unconfirmed_duplicate: bool,
}

impl Batch {
    fn tally(&mut self, index: usize, update: TaskUpdate, applied: Applied) {
        match applied {
            Applied::Accepted {
                commit: Some(commit),
            } if self.wait => self.waits.push(Waiting {
                index,
                update,
                commit,
            }),
            Applied::Accepted { .. } => self.report.accepted += 1,
            Applied::Duplicate => {
                self.report.duplicates += 1;
                self.unconfirmed_duplicate |= self.store_failing && update.status.is_terminal();
            }
            Applied::Rejected(r) => self.report.reject(index, Some(update.task_id), &r),
        }
    }
}

/// Updates of tasks memory did not hold, set aside until the store has been asked for them.
/// Once a task's update is set aside, so are its later ones in the chunk: its updates are
/// decided in body order even if another request brings it into memory meanwhile.
#[derive(Default)]
struct Absent {
    updates: Vec<(usize, TaskUpdate)>,
    ids: std::collections::HashSet<String>,
}

impl Absent {
    fn holds(&self, update: &TaskUpdate) -> bool {
        !self.ids.is_empty() && self.ids.contains(&update.task_id)
    }

    fn set_aside(&mut self, index: usize, update: TaskUpdate) {
        if !self.ids.contains(&update.task_id) {
            self.ids.insert(update.task_id.clone());
        }
        self.updates.push((index, update));
    }
}

/// The pipeline, shared by every source.
pub struct Pipeline {
    tracker: Arc<Tracker>,
    store: Store,
    max_pending_writes: usize,
    closed: AtomicBool,
}

impl Pipeline {
    pub fn new(tracker: Arc<Tracker>, store: Store, max_pending_writes: usize) -> Pipeline {
        Pipeline {
            tracker,
            store,
            max_pending_writes,
            closed: AtomicBool::new(false),
        }
    }

    /// The in-memory table, for reading.
    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// From now on every batch gets [`IngestError::ShuttingDown`].
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Whether a batch would be taken now: not shutting down, the store not too far behind.
    /// Cheap; callers may ask before reading a body.
    pub fn admit(&self) -> Result<(), IngestError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(IngestError::ShuttingDown);
        }
        let pending = self.tracker.writer().pending();
        if pending > self.max_pending_writes {
            return Err(IngestError::StoreBehind {
                pending,
                limit: self.max_pending_writes,
            });
        }
        Ok(())
    }

    /// Takes a parsed batch from `source` (the `source` label of `taskpulse_updates_total`),
    /// a chunk at a time.
    #[tracing::instrument(name = "batch", level = "debug", skip_all, fields(source = source, ack = ?ack))]
    pub async fn submit(
        &self,
        items: impl IntoIterator<Item = Item>,
        source: &str,
        ack: Ack,
    ) -> Result<Report, IngestError> {
        self.admit()?;
        let mut batch = Batch {
            wait: ack == Ack::Commit,
            ..Batch::default()
        };
        let taken = self.take_items(items.into_iter(), source, &mut batch).await;
        let metrics = self.tracker.metrics();
        let result = match taken {
            Err(e) => Err(e),
            // A retried completion is a duplicate from memory, but while the store fails its
            // first attempt may still be waiting in the writer: a 200 now would acknowledge a
            // completion that is not durable yet. The caller gets an error until the store is
            // back.
            Ok(()) if batch.unconfirmed_duplicate && batch.waits.is_empty() => {
                Err(IngestError::StoreFailing)
            }
            Ok(()) => self.settle_commits(&mut batch).await,
        };
        metrics.counted(source, "accepted", batch.report.accepted);
        result?;
        metrics.counted(source, "duplicate", batch.report.duplicates);
        metrics.counted(source, "rejected", batch.report.rejected_count);
        Ok(batch.report)
    }

    /// Every item through the table, a chunk at a time: room in the writer's queue is reserved
    /// for a chunk, each update is applied as it is parsed, and the updates of tasks memory
    /// doesn't hold are set aside and applied at the end of the chunk, once one query brought
    /// those tasks back from the store (so the lifecycle decides on what the store holds
    /// rather than treating them as new).
    async fn take_items(
        &self,
        items: impl Iterator<Item = Item>,
        source: &str,
        batch: &mut Batch,
    ) -> Result<(), IngestError> {
        let writer = self.tracker.writer();
        let chunk_len = CHUNK.min((self.max_pending_writes / 4).max(1));
        let mut absent = Absent::default();
        let mut items = items.peekable();
        // Room is reserved only for a chunk that has an item: a body's trailing newline or
        // blank lines must not ask for room (a full queue would refuse the body at its end).
        while items.peek().is_some() {
            // room for the chunk, as far as the body says how much is left
            let room = match items.size_hint() {
                (_, Some(most)) => chunk_len.min(most),
                _ => chunk_len,
            };
            let Some(_room) = writer.reserve(room, self.max_pending_writes) else {
                return Err(IngestError::StoreBehind {
                    pending: writer.pending(),
                    limit: self.max_pending_writes,
                });
            };
            batch.store_failing = batch.wait && writer.store_failing();
            for item in items.by_ref().take(room) {
                match item.parsed {
                    Err(e) => batch.report.reject(item.index, e.task_id, &e.rejection),
                    Ok(update) => {
                        self.count_adjusted(&update, source);
                        let applied = match absent.holds(&update) {
                            true => None,
                            false => self.tracker.apply_if_known(&update),
                        };
                        match applied {
                            Some(applied) => batch.tally(item.index, update, applied),
                            None => absent.set_aside(item.index, update),
                        }
                    }
                }
            }
            if !absent.updates.is_empty() {
                self.bring_back(&absent).await?;
                for (index, update) in absent.updates.drain(..) {
                    let applied = self.tracker.apply(&update);
                    batch.tally(index, update, applied);
                }
                absent.ids.clear();
            }
        }
        Ok(())
    }

    /// Reads the tasks of set-aside updates from the store into memory, with one query.
    async fn bring_back(&self, absent: &Absent) -> Result<(), IngestError> {
        // Such updates are of new tasks (they need a commit) or must be read from the store
        // first: neither can succeed while the store is failing, so don't make the caller wait
        // for the pool's connect timeout.
        if self.tracker.writer().store_failing() {
            return Err(IngestError::StoreFailing);
        }
        let ids: Vec<&str> = absent.ids.iter().map(String::as_str).collect();
        match self.store.get_tasks(&ids).await {
            Ok(found) => {
                self.tracker.load_absent(found);
                Ok(())
            }
            Err(e) => Err(IngestError::StoreRead(e)),
        }
    }

    /// Waits for the commits the batch's answer needs and counts what they say.
    async fn settle_commits(&self, batch: &mut Batch) -> Result<(), IngestError> {
        if batch.waits.is_empty() {
            return Ok(());
        }
        let (meta, receivers): (Vec<_>, Vec<_>) = std::mem::take(&mut batch.waits)
            .into_iter()
            .map(|w| ((w.index, w.update), w.commit))
            .unzip();
        let commits = self.wait_for_commits(receivers).await?;
        let report = &mut batch.report;
        for ((index, update), commit) in meta.into_iter().zip(commits) {
            let task_id = || Some(update.task_id.clone());
            match commit {
                Ok(Commit::Written) => report.accepted += 1,
                Ok(Commit::Conflict(Some(stored))) => {
                    let d = task::diff(&stored, &update);
                    let new = crate::lifecycle::Incoming {
                        status: update.status,
                        update_time: update.update_time,
                        reopen: update.reopen.map(|r| r.at),
                    };
                    match self.tracker.settle(*stored, new, d) {
                        Settled::Duplicate => report.duplicates += 1,
                        Settled::Rejected(r) => report.reject(index, task_id(), &r),
                    }
                }
                Ok(Commit::Conflict(None)) => report.reject(
                    index,
                    task_id(),
                    &Rejection::Invalid("the store refused the update".into()),
                ),
                Ok(Commit::Failed(msg)) => report.reject(
                    index,
                    task_id(),
                    &Rejection::Invalid(format!("the store refused the update: {msg}")),
                ),
                Err(_) => return Err(IngestError::ShuttingDown),
            }
        }
        Ok(())
    }

    /// What an engine reader had to drop or cut from an update, counted with its source (once
    /// per update, as it is taken, whether it is applied at once or set aside).
    fn count_adjusted(&self, update: &TaskUpdate, source: &str) {
        if !update.adjusted.is_empty() {
            self.tracker
                .metrics()
                .engine_fields_adjusted(source, update);
        }
    }

    /// Waits for the commits an acknowledgement needs, up to [`COMMIT_TIMEOUT`], but gives up
    /// as soon as the writer reports the store failing: the commit cannot come until the store
    /// is back, and a quick error lets the client back off instead of holding a connection.
    async fn wait_for_commits(
        &self,
        receivers: Vec<oneshot::Receiver<Commit>>,
    ) -> Result<Vec<Result<Commit, oneshot::error::RecvError>>, IngestError> {
        let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
        let all = futures_util::future::join_all(receivers);
        tokio::pin!(all);
        loop {
            tokio::select! {
                // A commit that arrived wins over a failure seen at the same time.
                biased;
                commits = &mut all => return Ok(commits),
                _ = tokio::time::sleep(HEALTH_POLL) => {
                    if self.tracker.writer().store_failing() {
                        return Err(IngestError::StoreFailing);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(IngestError::CommitTimeout);
                    }
                }
            }
        }
    }
}
