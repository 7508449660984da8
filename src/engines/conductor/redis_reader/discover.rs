//! Which sets and queues exist, found by walking the keyspace (`SCAN MATCH`) a bounded
//! number of steps per poll (issue 24): a complete walk at start, then [`STEPS`] `SCAN` calls
//! per walk per poll, resumed from where the last poll stopped, so a poll costs the same
//! whatever the keyspace holds. A key found is used at once; a key is dropped only when a
//! complete walk no longer finds it.
//!
//! Two walks: `{prefix}.[IP][NE][_N][PD]*` (`IN_PROGRESS_TASKS.*` and `PENDING_WORKFLOWS.*`;
//! filtered exactly afterwards) and the queues' `{queue prefix}*`. A new set or queue is
//! found within `keys / (STEPS × 1000)` polls: the same poll on a small Redis, minutes on one
//! of millions of keys. Tasks of a workflow whose type's pending set is already known are
//! found through the workflow whatever their own type, so what waits for the walk is a
//! workflow type's first run, a task outside any followed workflow, and a new queue's depth.

use std::collections::BTreeSet;

use super::io::Io;
use super::queues::MAX_QUEUES;
use super::RedisReader;
use crate::error::Result;

/// `SCAN` calls per walk per poll, after the first complete walk.
pub const STEPS: usize = 4;

/// One keyspace walk, resumed across polls.
pub(super) struct Walk {
    pattern: String,
    cursor: u64,
    /// Found by the last complete walk.
    complete: BTreeSet<String>,
    /// Found so far by the walk under way.
    partial: BTreeSet<String>,
}

impl Walk {
    pub fn new(pattern: String) -> Walk {
        Walk {
            pattern,
            cursor: 0,
            complete: BTreeSet::new(),
            partial: BTreeSet::new(),
        }
    }

    /// Up to `steps` `SCAN` calls (`None`: until the walk completes).
    async fn step(&mut self, io: &mut Io, steps: Option<usize>) -> Result<()> {
        let mut left = steps;
        while left != Some(0) {
            let (next, keys) = io.scan_step(&self.pattern, self.cursor).await?;
            self.partial.extend(keys);
            self.cursor = next;
            if next == 0 {
                self.complete = std::mem::take(&mut self.partial);
                if steps.is_none() {
                    return Ok(());
                }
            }
            left = left.map(|n| n - 1);
        }
        Ok(())
    }

    /// Every key known: found by the last complete walk or by the one under way.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.complete.union(&self.partial)
    }
}

/// The two walks.
pub(super) struct Discovery {
    pub sets: Walk,
    pub queues: Walk,
    started: bool,
}

impl Discovery {
    pub fn new(keys: &super::Keys) -> Discovery {
        Discovery {
            sets: Walk::new(keys.sets_pattern()),
            queues: Walk::new(format!("{}*", keys.queue_prefix())),
            started: false,
        }
    }
}

impl RedisReader {
    /// A complete walk on the first poll, [`STEPS`] calls per walk after.
    pub(super) async fn discover(&mut self) -> Result<()> {
        let steps = self.discovery.started.then_some(STEPS);
        self.discovery.sets.step(&mut self.io, steps).await?;
        self.discovery.queues.step(&mut self.io, steps).await?;
        self.discovery.started = true;
        Ok(())
    }

    /// Known `IN_PROGRESS_TASKS.*` and `PENDING_WORKFLOWS.*` keys.
    pub(super) fn known_sets(&self) -> (Vec<String>, Vec<String>) {
        let in_progress = self.keys.in_progress_pattern();
        let pending = self.keys.pending_pattern();
        let (ip, pw) = (
            &in_progress[..in_progress.len() - 1],
            &pending[..pending.len() - 1],
        );
        let mut out = (Vec::new(), Vec::new());
        for k in self.discovery.sets.keys() {
            if k.starts_with(ip) {
                out.0.push(k.clone());
            } else if k.starts_with(pw) {
                out.1.push(k.clone());
            }
        }
        out
    }

    /// Known `QUEUE.*.{shard}` keys, sorted, at most [`MAX_QUEUES`] (more are logged).
    pub(super) fn known_queues(&self) -> Vec<String> {
        let prefix = self.keys.queue_prefix();
        let suffix = format!(".{}", self.keys.shard);
        let queues: Vec<String> = self
            .discovery
            .queues
            .keys()
            .filter(|k| k.ends_with(&suffix) && k.len() >= prefix.len() + suffix.len())
            .cloned()
            .collect();
        if queues.len() > MAX_QUEUES {
            tracing::warn!(
                queues = queues.len(),
                exported = MAX_QUEUES,
                "Conductor's Redis: more queues than are exported"
            );
        }
        queues.into_iter().take(MAX_QUEUES).collect()
    }
}
