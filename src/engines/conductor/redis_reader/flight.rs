//! The tasks followed: every task of the workflows in flight, and every task in an
//! `IN_PROGRESS_TASKS` set (`docs/engines/conductor-redis.md` §2).
//!
//! Conductor adds a workflow's id to `PENDING_WORKFLOWS.{name}` when it stores it and removes
//! it at its terminal write; each task id goes into `WORKFLOW_TO_TASKS.{workflowId}` when the
//! task is created, and stays. So a task created and finished between two polls is still a
//! member of its workflow's set when the reader looks, even when the workflow finished too:
//! the reader held that workflow's id at the previous poll and reads its set once more after
//! it left. What no poll can see is a whole workflow started and finished between two polls.
//!
//! A document is read (`MGET`) only when it may have changed: a task new to the reader, one
//! not terminal when last read, every task of a workflow that (re)entered the pending set
//! (a rerun reopens finished tasks), and a task that left the sets (read once more, to learn
//! how it ended). A terminal task of a running workflow is not read again.
//!
//! A poll reads at most [`POLL_DOC_BYTES`] of documents (at least one chunk): past it, the
//! rest wait for the next poll, the tasks of workflows that just finished first (their last
//! chance), then tasks new to the reader, then those read longest ago, so with more in flight
//! than one poll can read the reads go round and every task is read within a few intervals
//! (the lag grows; Redis's load per poll does not).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

use super::queues::wait_info;
use super::RedisReader;
use crate::engines::conductor::task_tail::{update_from_row, Seen};
use crate::engines::conductor::wait_queue::WAIT_QUEUE;
use crate::error::Result;

/// Bytes of task documents one poll reads at most (at least one `MGET` chunk).
pub const POLL_DOC_BYTES: usize = 64 << 20;

/// A task followed: a hash of its JSON as last read (an unchanged document is not parsed
/// again), what was last submitted, whether it was terminal, and the poll that last read it.
pub(super) struct Followed {
    hash: u64,
    seen: Option<Seen>,
    terminal: bool,
    read_at: u64,
}

/// Which tasks to follow this poll, and which to read.
struct Plan {
    /// Task ids followed after this poll.
    keep: HashSet<String>,
    /// Task ids whose document is read this poll.
    read: Vec<String>,
}

fn hash(doc: &str) -> u64 {
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    h.write(doc.as_bytes());
    h.finish()
}

impl RedisReader {
    /// Members of every set in `sets`, deduplicated.
    async fn union(&mut self, sets: Vec<String>) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        for set in sets {
            if let Some(m) = self.io.members(&set).await? {
                out.extend(m.members);
            }
        }
        Ok(out)
    }

    /// Every task id of these workflows: each `WORKFLOW_TO_TASKS` set's first page in one
    /// pipeline, the rare larger set read on by `SSCAN`.
    async fn workflow_tasks(
        &mut self,
        workflows: &[String],
    ) -> Result<HashMap<String, Vec<String>>> {
        let keys: Vec<String> = workflows
            .iter()
            .map(|w| self.keys.workflow_tasks(w))
            .collect();
        let pages = self.io.first_pages(&keys).await?;
        let mut out = HashMap::with_capacity(workflows.len());
        for ((wf, key), page) in workflows.iter().zip(&keys).zip(pages) {
            let tasks = match page {
                None => continue,
                Some((0, members)) => members,
                Some(_) => match self.io.members(key).await? {
                    Some(c) => c.members,
                    None => continue,
                },
            };
            out.insert(wf.clone(), tasks);
        }
        Ok(out)
    }

    /// Reads what may have changed among the tasks followed, submits what changed. Returns
    /// the number of tasks in flight (in a set, or of a running workflow).
    pub(super) async fn read_tasks(&mut self) -> Result<usize> {
        let (in_progress, pending) = self.known_sets();
        let in_progress = self.union(in_progress).await?;
        let pending = self.union(pending).await?;
        let entered: HashSet<String> = pending.difference(&self.workflows).cloned().collect();
        let left: Vec<String> = self.workflows.difference(&pending).cloned().collect();
        let mut asked: Vec<String> = pending.iter().cloned().collect();
        asked.extend(left.iter().cloned());
        let by_workflow = self.workflow_tasks(&asked).await?;
        let plan = self.plan(&in_progress, &pending, &entered, &by_workflow);
        let n = plan.keep.len();
        let last_chance: HashSet<&String> = left
            .iter()
            .filter_map(|wf| by_workflow.get(wf))
            .flatten()
            .collect();
        let read = self.by_priority(plan.read, &last_chance);
        let deferred: HashSet<String> = self.read_and_submit(&read).await?.into_iter().collect();
        if !deferred.is_empty() {
            tracing::debug!(
                deferred = deferred.len(),
                "Conductor's Redis: documents past this poll's byte budget wait for the next"
            );
        }
        self.followed
            .retain(|id, _| plan.keep.contains(id) || deferred.contains(id));
        // a finished workflow whose tasks were not all read stays asked for
        let unread_left: Vec<String> = left
            .into_iter()
            .filter(|wf| {
                by_workflow
                    .get(wf)
                    .is_some_and(|t| t.iter().any(|id| deferred.contains(id)))
            })
            .collect();
        self.workflows = pending.into_iter().chain(unread_left).collect();
        Ok(n)
    }

    /// The reads in the order a byte budget cuts them: tasks of workflows that just left the
    /// pending set, then tasks new to the reader, then those read longest ago.
    fn by_priority(&self, mut read: Vec<String>, last_chance: &HashSet<&String>) -> Vec<String> {
        read.sort_by_key(|id| {
            let followed = self.followed.get(id);
            let rank = if last_chance.contains(id) {
                0
            } else if followed.is_none() {
                1
            } else {
                2
            };
            (rank, followed.map_or(0, |f| f.read_at))
        });
        read
    }

    /// What to follow and what to read (see the module's doc).
    fn plan(
        &self,
        in_progress: &HashSet<String>,
        pending: &HashSet<String>,
        entered: &HashSet<String>,
        by_workflow: &HashMap<String, Vec<String>>,
    ) -> Plan {
        let mut keep: HashSet<String> = in_progress.clone();
        let mut read: HashSet<String> = HashSet::new();
        for (wf, tasks) in by_workflow {
            let running = pending.contains(wf);
            let reopened = entered.contains(wf);
            for id in tasks {
                if running {
                    keep.insert(id.clone());
                }
                if reopened || self.may_change(id) {
                    read.insert(id.clone());
                }
            }
        }
        read.extend(in_progress.iter().filter(|id| self.may_change(id)).cloned());
        // those that left every set: read once more (how they ended), then forgotten
        read.extend(
            self.followed
                .iter()
                .filter(|(id, f)| !keep.contains(*id) && !f.terminal)
                .map(|(id, _)| id.clone()),
        );
        let mut read: Vec<String> = read.into_iter().collect();
        read.sort_unstable();
        Plan { keep, read }
    }

    /// New to the reader, or not terminal when last read.
    fn may_change(&self, id: &str) -> bool {
        self.followed.get(id).is_none_or(|f| !f.terminal)
    }

    /// Reads these tasks' documents a chunk at a time, in order, until [`POLL_DOC_BYTES`],
    /// and submits what changed. Returns the ids left for the next poll.
    async fn read_and_submit(&mut self, ids: &[String]) -> Result<Vec<String>> {
        self.polls += 1;
        let mut left = POLL_DOC_BYTES;
        for (n, chunk) in ids.chunks(super::io::PAGE).enumerate() {
            let keys: Vec<String> = chunk.iter().map(|id| self.keys.task(id)).collect();
            let (docs, read) = self.io.documents_within(&keys, left).await?;
            left = left.saturating_sub(docs.iter().flatten().map(String::len).sum::<usize>());
            let mut updates = Vec::new();
            for (id, doc) in chunk[..read].iter().zip(docs) {
                let Some(doc) = doc else { continue };
                let hash = hash(&doc);
                if let Some(f) = self.followed.get_mut(id).filter(|f| f.hash == hash) {
                    f.read_at = self.polls;
                    continue;
                }
                let u = update_from_row(id, &doc);
                // a WAIT task's labels and timer, so the WAIT queue read needn't fetch it again
                if let Some(w) = u
                    .as_ref()
                    .filter(|u| u.task_type.as_deref() == Some(WAIT_QUEUE))
                {
                    self.wait_info.insert(id.clone(), wait_info(w));
                }
                let now = u.as_ref().map(Seen::of);
                let changed = self.followed.get(id).map(|f| &f.seen) != Some(&now);
                let terminal = u.as_ref().is_some_and(|u| u.status.is_terminal());
                self.followed.insert(
                    id.clone(),
                    Followed {
                        hash,
                        seen: now,
                        terminal,
                        read_at: self.polls,
                    },
                );
                if let Some(u) = u.filter(|_| changed) {
                    updates.push(u);
                }
            }
            self.submit(updates).await;
            if read < chunk.len() || left == 0 {
                return Ok(ids[n * super::io::PAGE + read..].to_vec());
            }
        }
        Ok(Vec::new())
    }
}
