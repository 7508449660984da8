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

pub use memory::{Page, Settled};
pub use metrics::PipelineMetrics;
pub use task::{Applied, TaskState};
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
    fn reject(&mut self, index: usize, task_id: Option<String>, r: &Rejection) {
        self.rejected_count += 1;
        *self.rejected_by_reason.entry(r.code()).or_default() += 1;
        if self.rejected.len() < MAX_LISTED_REJECTIONS {
            self.rejected.push(RejectedItem {
                index,
                task_id,
                reason: r.reason(),
                detail: r.detail(),
            });
        }
    }
}

/// An accepted update whose answer waits for its commit.
struct Waiting {
    index: usize,
    update: TaskUpdate,
    commit: oneshot::Receiver<Commit>,
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
    #[tracing::instrument(name = "batch", skip_all, fields(source = source, ack = ?ack))]
    pub async fn submit(
        &self,
        items: impl IntoIterator<Item = Item>,
        source: &str,
        ack: Ack,
    ) -> Result<Report, IngestError> {
        self.admit()?;
        let mut items = items.into_iter();
        let wait = ack == Ack::Commit;
        let mut report = Report::default();
        let mut waits: Vec<Waiting> = Vec::new();
        // A retried completion is a duplicate from memory, but while the store fails its first
        // attempt may still be waiting in the writer: a 200 now would acknowledge a completion
        // that is not durable yet. The caller gets an error until the store is back.
        let mut unconfirmed_duplicate = false;
        let chunk_len = CHUNK.min((self.max_pending_writes / 4).max(1));
        let mut chunk: Vec<Item> = Vec::with_capacity(chunk_len);
        loop {
            chunk.clear();
            chunk.extend(items.by_ref().take(chunk_len));
            if chunk.is_empty() {
                break;
            }
            if let Err(e) = self
                .apply_chunk(
                    &mut chunk,
                    source,
                    wait,
                    &mut report,
                    &mut waits,
                    &mut unconfirmed_duplicate,
                )
                .await
            {
                self.tracker
                    .metrics()
                    .counted(source, "accepted", report.accepted);
                return Err(e);
            }
        }
        let metrics = self.tracker.metrics();
        if unconfirmed_duplicate && waits.is_empty() {
            metrics.counted(source, "accepted", report.accepted);
            return Err(IngestError::StoreFailing);
        }
        if !waits.is_empty() {
            let (meta, receivers): (Vec<_>, Vec<_>) = waits
                .into_iter()
                .map(|w| ((w.index, w.update), w.commit))
                .unzip();
            let commits = match self.wait_for_commits(receivers).await {
                Ok(c) => c,
                Err(e) => {
                    metrics.counted(source, "accepted", report.accepted);
                    return Err(e);
                }
            };
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
        }
        metrics.counted(source, "accepted", report.accepted);
        metrics.counted(source, "duplicate", report.duplicates);
        metrics.counted(source, "rejected", report.rejected_count);
        Ok(report)
    }

    /// One chunk: room in the writer's queue, the store's rows of tasks not in memory, then
    /// each update through the table.
    async fn apply_chunk(
        &self,
        chunk: &mut Vec<Item>,
        source: &str,
        wait: bool,
        report: &mut Report,
        waits: &mut Vec<Waiting>,
        unconfirmed_duplicate: &mut bool,
    ) -> Result<(), IngestError> {
        let writer = self.tracker.writer();
        let Some(_room) = writer.reserve(chunk.len(), self.max_pending_writes) else {
            return Err(IngestError::StoreBehind {
                pending: writer.pending(),
                limit: self.max_pending_writes,
            });
        };
        // Tasks that are not in memory may still be in the store (finished past the retention,
        // evicted, another replica's): bring them back first, with one query for the chunk,
        // so the lifecycle decides on what the store holds rather than treating them as new.
        let unknown = self.tracker.unknown(
            chunk
                .iter()
                .filter_map(|i| i.parsed.as_ref().ok())
                .map(|u| u.task_id.as_str()),
        );
        if !unknown.is_empty() {
            // Unknown tasks are new (they need a commit) or must be read from the store first:
            // neither can succeed while the store is failing, so don't make the caller wait
            // for the pool's connect timeout.
            if writer.store_failing() {
                return Err(IngestError::StoreFailing);
            }
            match self.store.get_tasks(&unknown).await {
                Ok(found) => self.tracker.load_absent(found),
                Err(e) => return Err(IngestError::StoreRead(e)),
            }
        }
        let store_failing = wait && writer.store_failing();
        for item in chunk.drain(..) {
            match item.parsed {
                Err(e) => report.reject(item.index, e.task_id, &e.rejection),
                Ok(update) => match self.apply_one(&update, source) {
                    Applied::Accepted {
                        commit: Some(commit),
                    } if wait => waits.push(Waiting {
                        index: item.index,
                        update,
                        commit,
                    }),
                    Applied::Accepted { .. } => report.accepted += 1,
                    Applied::Duplicate => {
                        report.duplicates += 1;
                        *unconfirmed_duplicate |= store_failing && update.status.is_terminal();
                    }
                    Applied::Rejected(r) => report.reject(item.index, Some(update.task_id), &r),
                },
            }
        }
        Ok(())
    }

    /// One update through the table; what an engine reader had to drop or cut from it is
    /// counted with its source.
    fn apply_one(&self, update: &TaskUpdate, source: &str) -> Applied {
        if !update.adjusted.is_empty() {
            self.tracker
                .metrics()
                .engine_fields_adjusted(source, update);
        }
        self.tracker.apply(update)
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
