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

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

use super::queues::wait_info;
use super::RedisReader;
use crate::engines::conductor::task_tail::{update_from_row, Seen};
use crate::engines::conductor::wait_queue::WAIT_QUEUE;
use crate::error::Result;

/// A task followed: a hash of its JSON as last read (an unchanged document is not parsed
/// again), what was last submitted, and whether it was terminal.
pub(super) struct Followed {
    hash: u64,
    seen: Option<Seen>,
    terminal: bool,
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
        self.read_and_submit(&plan.read).await?;
        self.followed.retain(|id, _| plan.keep.contains(id));
        self.workflows = pending;
        Ok(n)
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

    /// Reads these tasks' documents a chunk at a time and submits what changed.
    async fn read_and_submit(&mut self, ids: &[String]) -> Result<()> {
        for chunk in ids.chunks(super::io::PAGE) {
            let keys: Vec<String> = chunk.iter().map(|id| self.keys.task(id)).collect();
            let docs = self.io.documents(&keys).await?;
            let mut updates = Vec::new();
            for (id, doc) in chunk.iter().zip(docs) {
                let Some(doc) = doc else { continue };
                let hash = hash(&doc);
                if self.followed.get(id).is_some_and(|f| f.hash == hash) {
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
                    },
                );
                if let Some(u) = u.filter(|_| changed) {
                    updates.push(u);
                }
            }
            self.submit(updates).await;
        }
        Ok(())
    }
}
