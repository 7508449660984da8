//! The table's life besides the hot path: loading from the store, following it when it holds
//! something newer, settling writes that lost to it, eviction past the cap, sweeping, and the
//! reads the API, the metrics and the checker make.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::task::{diff_records, event, Entry, TaskState, WrittenProgress};
use super::tracker::Tracker;
use crate::lifecycle::{self, Current, Diff, Incoming, Rejection, Verdict};
use crate::model::{Outcome, TaskRecord};
use crate::now_ms;
use crate::store::writer::Lost;
use crate::store::{Op, WriteKind};
use crate::throttle::Pending;

/// One shard's table, as dashmap lays it out.
type Table = hashbrown::raw::RawTable<(Arc<str>, dashmap::SharedValue<Entry>)>;

/// Every shard of the table read-locked at once, from [`Tracker::read_all`]: the scrape's walk.
///
/// The scrape keeps references to the few thousand tasks it renders per-task series for,
/// instead of cloning their ids and looking them up again after the walk (the ids' reference
/// counts, a cache miss each, were a quarter of a render), and it reads the shards directly:
/// dashmap's iterator clones its shard guard's reference count for every item (an atomic
/// increment and decrement per task, another tenth). Writers wait for the render to end (a few
/// milliseconds, at most once per render gap); that can't deadlock, as dashmap's locks let
/// readers in while a writer waits and no writer waits for a second shard while it holds one.
pub struct ReadAll<'a> {
    guards: Vec<dashmap::RwLockReadGuard<'a, Table>>,
}

impl<'a> ReadAll<'a> {
    fn new<S: std::ops::Deref<Target = dashmap::RwLock<Table>>>(shards: &'a [S]) -> ReadAll<'a> {
        ReadAll {
            guards: shards.iter().map(|s| s.read()).collect(),
        }
    }

    /// Every task's id and entry, shard by shard.
    pub fn iter(&self) -> impl Iterator<Item = (&Arc<str>, &Entry)> + '_ {
        self.guards.iter().flat_map(entries_of)
    }
}

/// The entries of one read-locked shard, without dashmap's per-item guard.
fn entries_of<'g>(
    table: &'g dashmap::RwLockReadGuard<'_, Table>,
) -> impl Iterator<Item = (&'g Arc<str>, &'g Entry)> {
    // SAFETY: the table stays read-locked while the guard lives, and the items borrow the
    // guard: no bucket is moved or freed while an item is in use.
    unsafe { table.iter() }.map(|bucket| {
        // SAFETY: as above; `iter` yields full buckets only.
        let (id, entry) = unsafe { bucket.as_ref() };
        (id, entry.get())
    })
}

/// Values per interned name, kept by the name's address while a walk counts (a word hashed,
/// no string read or cloned per task) and folded by content after, so two equal names that
/// were not shared still count as one: how the scrape and the overview count by worker,
/// workflow type and task type.
pub struct ByName<V>(HashMap<usize, (Arc<str>, V), foldhash::fast::RandomState>);

impl<V> Default for ByName<V> {
    fn default() -> Self {
        ByName(HashMap::default())
    }
}

impl<V: Default> ByName<V> {
    /// The value of the name at address `at` (from [`super::addr`]); `name` gives the name
    /// the first time it is met (`None`: the empty name).
    pub fn entry(&mut self, at: usize, name: impl FnOnce() -> Option<Arc<str>>) -> &mut V {
        &mut self
            .0
            .entry(at)
            .or_insert_with(|| (name().unwrap_or_else(|| Arc::from("")), V::default()))
            .1
    }

    /// By content, each name's values merged.
    pub fn by_content(self, merge: impl Fn(&mut V, &V)) -> BTreeMap<Arc<str>, V> {
        let mut out: BTreeMap<Arc<str>, V> = BTreeMap::new();
        for (_, (name, v)) in self.0 {
            merge(out.entry(name).or_default(), &v);
        }
        out
    }
}

/// One page of the task list ([`Tracker::page`]).
#[derive(Debug)]
pub struct Page {
    /// The page's records, each with its sort key (for the next page's cursor).
    pub tasks: Vec<(i64, TaskRecord)>,
    /// More tasks follow this page.
    pub more: bool,
    /// Tasks that pass the filter, on every page.
    pub total: usize,
}

/// How a write that lost to the store ends, decided by the lifecycle on what the store holds.
#[derive(Debug, PartialEq)]
pub enum Settled {
    /// The store already holds this update.
    Duplicate,
    Rejected(Rejection),
}

impl Tracker {
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Resolves when a new task has put the table far over the cap (the sweeper then evicts
    /// without waiting for its next tick).
    pub async fn eviction_wanted(&self) {
        self.evict_now.notified().await
    }

    /// Evicts tasks until at most `--max-tracked-tasks` remain in memory; returns how many left.
    ///
    /// The policy: finished tasks go first (they are only kept for duplicate detection, which
    /// the store can answer as well), then unfinished ones, least recently touched in memory
    /// first (`touched`: a task loaded back from the store counts as updated when it was
    /// loaded). An evicted task leaves memory only: a coalesced progress value is handed to the
    /// writer before the entry is dropped, so the store holds everything memory held. When an
    /// update for it arrives later, the pipeline finds it missing from memory and loads it from
    /// the store before the lifecycle decides, exactly as for a finished task past
    /// `--terminal-retention`.
    ///
    /// This runs from the sweeper, not on the request path: it scans the whole table, one shard
    /// at a time, and takes each victim's entry only briefly. A task updated between the scan
    /// and its removal is kept (its `touched` time moved), so an eviction never loses an update.
    pub fn evict_over_cap(&self) -> usize {
        let mut evicted = 0;
        // Over the memory bound, the count to evict is estimated from the average size; a
        // round or two more settles what the estimate missed.
        for _ in 0..4 {
            let len = self.tasks.len();
            let bytes = self.tracked_bytes();
            let by_count = len.saturating_sub(self.max_tracked);
            let by_bytes = match bytes.checked_sub(self.max_bytes) {
                Some(over) if over > 0 && len > 0 => over.div_ceil((bytes / len).max(1)),
                _ => 0,
            };
            let excess = by_count.max(by_bytes).min(len);
            if excess == 0 {
                break;
            }
            let n = self.evict(excess);
            evicted += n;
            if n == 0 {
                break;
            }
        }
        if evicted > 0 {
            self.metrics.tasks_evicted_total.inc_by(evicted as u64);
            tracing::debug!(
                evicted,
                cap = self.max_tracked,
                "over --max-tracked-tasks or --max-tracked-memory: least recently updated tasks left memory"
            );
        }
        evicted
    }

    /// Evicts the `excess` least valuable tasks (see [`Tracker::evict_over_cap`]).
    fn evict(&self, excess: usize) -> usize {
        let mut candidates: Vec<(bool, i64, Arc<str>)> = self
            .tasks
            .iter()
            .map(|e| (!e.rec.status.is_terminal(), e.touched, e.key().clone()))
            .collect();
        if excess < candidates.len() {
            candidates.select_nth_unstable(excess - 1);
            candidates.truncate(excess);
        }
        let now = now_ms();
        let mut evicted = 0;
        for (_, seen, id) in candidates {
            if let Some(mut entry) = self.tasks.get_mut(&*id) {
                let st = entry.value_mut();
                if st.touched != seen {
                    continue;
                }
                if st.pending != Pending::Clean && !st.rec.status.is_terminal() {
                    self.send_task(st, WriteKind::Progress, now, None, None);
                } else if let Some(line) = st.unwritten.take_rejections() {
                    self.send_event(st, line);
                }
            }
            if let Some((_, st)) = self.tasks.remove_if(&*id, |_, st| {
                st.touched == seen && st.pending == Pending::Clean
            }) {
                self.forget_size(&st);
                evicted += 1;
            }
        }
        evicted
    }

    /// Writes every waiting value now, ignoring the limiter (shutdown).
    pub fn flush_all(&self) -> usize {
        let now = now_ms();
        let mut flushed = 0;
        for mut entry in self.tasks.iter_mut() {
            let st = entry.value_mut();
            if st.pending != Pending::Clean && !st.rec.status.is_terminal() {
                self.send_task(st, WriteKind::Progress, now, None, None);
                flushed += 1;
            } else if let Some(line) = st.unwritten.take_rejections() {
                self.send_event(st, line);
                flushed += 1;
            }
        }
        flushed
    }

    /// Puts one stored task into memory (the start-up rebuild, row by row); call
    /// [`Tracker::loaded`] after the last.
    pub fn load_one(&self, rec: TaskRecord) {
        let rec = self.intern(rec);
        let mut st = Entry::new(rec);
        self.resize(&mut st);
        if let Some(old) = self.tasks.insert(st.rec.task_id.clone(), st) {
            self.forget_size(&old);
        }
    }

    /// After loading: a store with more unfinished tasks than the cap keeps the most recently
    /// updated in memory.
    pub fn loaded(&self) {
        self.evict_over_cap();
    }

    /// Brings tasks that left memory (finished past the retention) back from the store before
    /// updates for them are decided, so the lifecycle sees what the store holds. A task that
    /// arrived in memory meanwhile is left as it is.
    pub fn load_absent(&self, records: Vec<TaskRecord>) {
        for rec in records {
            if let dashmap::Entry::Vacant(v) = self.tasks.entry(rec.task_id.clone()) {
                let rec = self.intern(rec);
                let mut st = Entry::new(rec);
                self.resize(&mut st);
                v.insert(st);
            }
        }
        self.check_cap();
    }

    /// Shares the record's names with the rest of the table.
    fn intern(&self, mut rec: TaskRecord) -> TaskRecord {
        rec.task_type = self.names.get(&rec.task_type);
        rec.workflow_id = self.names.get(&rec.workflow_id);
        rec.workflow_type = rec.workflow_type.map(|s| self.names.get(&s));
        if let Some(w) = rec.worker_id.take() {
            let w = self.names.get(&w);
            if !rec.status.is_terminal() {
                self.workers
                    .entry(w.clone())
                    .and_modify(|t| *t = (*t).max(rec.last_seen))
                    .or_insert(rec.last_seen);
            }
            rec.worker_id = Some(w);
        }
        rec
    }

    /// A write lost to what the store holds (another replica or a repair got there first). The
    /// lifecycle decides again, once, on the stored row: the update is a duplicate of it, or
    /// rejected like any other attempt to leave a final state or to go back in time. Memory
    /// follows the store either way.
    pub fn settle(&self, stored: TaskRecord, new: Incoming, diff: Diff) -> Settled {
        let (status, update_time) = (new.status, new.update_time);
        let current = Current {
            status: stored.status,
            update_time: stored.update_time,
            ended_at: stored.ended_at(),
        };
        let settled = match lifecycle::decide(current, new, diff) {
            Verdict::Duplicate => Settled::Duplicate,
            Verdict::Reject(r) => Settled::Rejected(r),
            // The store refused the write, so it holds a terminal or newer row; a verdict that
            // would take the update can only come from a row that moved again since. It is
            // older than what the store holds now.
            Verdict::Accept { .. } | Verdict::Reopen => Settled::Rejected(Rejection::Stale {
                stored: stored.update_time.unwrap_or(0),
                got: update_time.unwrap_or(0),
            }),
        };
        if let Settled::Rejected(r @ Rejection::Terminal { from, to }) = &settled {
            self.metrics.transition_rejected(*from, *to);
            let mut tried = stored.clone();
            tried.status = status;
            self.writer.send(Op::Event(event(
                &tried,
                Some(stored.status),
                Outcome::Rejected,
                Some(r.reason()),
                now_ms(),
            )));
        }
        self.reload(stored);
        settled
    }

    /// A write nobody waited for (a throttled progress write) lost to the store.
    pub fn settle_lost(&self, lost: Lost) {
        let diff = diff_records(&lost.stored, &lost.attempted);
        let new = Incoming {
            status: lost.attempted.status,
            update_time: lost.attempted.update_time,
            reopen: lost.attempted.reopened_at,
        };
        self.settle(lost.stored, new, diff);
    }

    /// The store holds something newer or terminal: memory follows it, unless memory has moved
    /// on since (a newer non-terminal update arrived meanwhile; its own write follows).
    pub fn reload(&self, rec: TaskRecord) {
        if let Some(mut st) = self.tasks.get_mut(&*rec.task_id) {
            // A finished task goes back only to a row the engine reopened (the lifecycle's
            // rule): a row read before the terminal write committed is older, whatever its
            // times say (both can carry the same millisecond).
            let leaves_terminal = st.rec.status.is_terminal() && !rec.status.is_terminal();
            if leaves_terminal && !lifecycle::reopens(rec.reopened_at, st.rec.ended_at()) {
                return;
            }
            let newer = rec.status.is_terminal()
                || (rec.update_time, rec.last_seen) >= (st.rec.update_time, st.rec.last_seen);
            if !newer {
                return;
            }
            tracing::debug!(task_id = %rec.task_id, stored = %rec.status, memory = %st.rec.status, "memory follows the store");
            if let Some(p) = rec.progress.filter(|p| Some(*p) != st.rec.progress) {
                st.sample(rec.update_time, rec.progress_changed, p);
            }
            st.rec = self.intern(rec);
            st.pending = Pending::Clean;
            st.written_progress = WrittenProgress::new(st.rec.progress);
            st.written_status = st.rec.status;
            self.resize(&mut st);
        }
    }

    /// Folds in rows read from the store (the leader's view of what other replicas accepted):
    /// unknown tasks are added, known ones follow the store where it is newer.
    pub fn merge_from_store(&self, records: Vec<TaskRecord>) {
        // At the cap, what other replicas hold stays in the store: adding it would only evict
        // it again. (`len` reads every shard, so it is read once, not per row.)
        let mut room = self.max_tracked.saturating_sub(self.tasks.len());
        let mut absent = Vec::new();
        for rec in records {
            if self.tasks.contains_key(&*rec.task_id) {
                self.reload(rec);
            } else if room > 0 {
                room -= 1;
                absent.push(rec);
            }
        }
        self.load_absent(absent);
    }

    /// Tasks whose state the store should hold exactly: nothing waiting to be written, and no
    /// update accepted after `before` (epoch ms). Each by its id and `lastSeen`, which tells
    /// whether it changed since; not its record: at 100,000 tasks the records' copies took
    /// 34 MB for the checker's pass, the ids 2.4.
    pub fn settled(&self, before: i64) -> Vec<(Arc<str>, i64)> {
        self.tasks
            .iter()
            .filter(|e| e.pending == Pending::Clean && e.rec.last_seen <= before)
            .map(|e| (e.rec.task_id.clone(), e.rec.last_seen))
            .collect()
    }

    /// Housekeeping: forget finished tasks after `retention_ms`, workers
    /// with no task in flight not seen for `worker_expiry_ms` (`--worker-expiry`), and unused
    /// names.
    pub fn sweep(&self, retention_ms: i64, worker_expiry_ms: i64) {
        let now = now_ms();
        // the inline status first: an unfinished task's boxed state is not read (a cache miss
        // per task, under the shard's write lock)
        self.tasks.retain(|_, st| {
            if !st.hot.status.is_terminal() {
                return true;
            }
            match st.rec.terminal_at {
                Some(t) if now - t >= retention_ms => {
                    // its last rejections go into the history before it leaves memory
                    if let Some(line) = st.unwritten.take_rejections() {
                        self.send_event(st, line);
                    }
                    self.forget_size(st);
                    false
                }
                _ => true,
            }
        });
        // Workers by the address of their interned name, as the tasks' inline copies hold it:
        // no name is cloned per task. Exact, as the interner keeps one string per name while
        // anything holds it, and the workers' names and the tasks' come from it.
        let mut busy: HashSet<usize, foldhash::fast::RandomState> = HashSet::default();
        self.for_each_entry(|_, e| {
            if !e.hot.status.is_terminal() && e.hot.worker != 0 {
                busy.insert(e.hot.worker);
            }
        });
        self.workers.retain(|w, seen| {
            busy.contains(&super::addr(Some(w))) || now - *seen < worker_expiry_ms
        });
        self.names.prune();
    }

    /// A copy of one task's record.
    pub fn get(&self, task_id: &str) -> Option<TaskRecord> {
        self.get_if(task_id, |_| true)
    }

    /// A copy of one task's record if `wanted` says so, looked at in place: the checker
    /// compares every task and copies only those that differ.
    pub fn get_if(
        &self,
        task_id: &str,
        wanted: impl FnOnce(&TaskRecord) -> bool,
    ) -> Option<TaskRecord> {
        let e = self.tasks.get(task_id)?;
        wanted(&e.rec).then(|| e.rec.clone())
    }

    /// A task's recent progress samples (epoch ms, percent), oldest first; empty when it
    /// reports no progress or is not in memory.
    pub fn progress_samples(&self, task_id: &str) -> Vec<(i64, f32)> {
        self.tasks
            .get(task_id)
            .and_then(|e| e.window.as_ref().map(|w| w.samples()))
            .unwrap_or_default()
    }

    /// The attempts of a task seen since its last write (the store has the earlier ones).
    pub fn unwritten_attempts(&self, task_id: &str) -> Vec<crate::model::Attempt> {
        self.tasks
            .get(task_id)
            .map(|e| e.unwritten.attempts().to_vec())
            .unwrap_or_default()
    }

    /// The line of rejected updates waiting for the task's write slot (the store has the
    /// earlier lines); newer than anything in the store.
    pub fn unwritten_rejections(&self, task_id: &str) -> Option<crate::model::TaskEvent> {
        self.tasks
            .get(task_id)
            .and_then(|e| e.unwritten.rejections().cloned())
    }

    /// Copies of the records that pass `filter`.
    pub fn select(&self, mut filter: impl FnMut(&TaskRecord) -> bool) -> Vec<TaskRecord> {
        self.tasks
            .iter()
            .filter(|e| filter(&e.rec))
            .map(|e| e.rec.clone())
            .collect()
    }

    /// One page of the tasks that pass `filter`, in ascending order of (`key`, task id),
    /// starting after `after` (the last (key, task id) of the previous page); with whether more
    /// follow and how many pass the filter in all. The caller's `key` encodes the sort and its
    /// direction. Only the page's records are copied: the walk keeps a key per match.
    pub fn page(
        &self,
        mut filter: impl FnMut(&TaskRecord) -> bool,
        key: impl Fn(&TaskRecord) -> i64,
        after: Option<(i64, &str)>,
        limit: usize,
    ) -> Page {
        let past = |k: i64, id: &str| match after {
            None => true,
            Some((after_k, after_id)) => k > after_k || (k == after_k && id > after_id),
        };
        let mut total = 0;
        let mut keys: Vec<(i64, Arc<str>)> = Vec::new();
        for e in self.tasks.iter() {
            if !filter(&e.rec) {
                continue;
            }
            total += 1;
            let k = key(&e.rec);
            if past(k, &e.rec.task_id) {
                keys.push((k, e.key().clone()));
            }
        }
        let more = keys.len() > limit;
        if more && limit > 0 {
            keys.select_nth_unstable(limit - 1);
        }
        keys.truncate(limit);
        keys.sort_unstable();
        let tasks = keys
            .iter()
            .filter_map(|(k, id)| Some((*k, self.get(id)?)))
            .collect();
        Page { tasks, more, total }
    }

    /// The whole table read-locked, for the scrape's walk (see [`ReadAll`]), which reads the
    /// entry's inline [`super::task::Hot`] and its state only where it must.
    pub fn read_all(&self) -> ReadAll<'_> {
        ReadAll::new(self.tasks.shards())
    }

    /// Calls `f` on every task's id and entry, holding one shard at a time (nothing is kept
    /// past the call): walks that only count, such as the status page's overview and the
    /// sweeper's, so writers wait for a shard's share of the walk, not the whole of it.
    pub fn for_each_entry(&self, mut f: impl FnMut(&Arc<str>, &Entry)) {
        for shard in self.tasks.shards() {
            let table = shard.read();
            for (id, e) in entries_of(&table) {
                f(id, e);
            }
        }
    }

    /// Runs `f` on one task's state, holding its shard only for the call.
    pub fn inspect<R>(&self, task_id: &str, f: impl FnOnce(&TaskState) -> R) -> Option<R> {
        self.tasks.get(task_id).map(|e| f(e.value()))
    }

    /// A task's predicted completion (epoch ms), where its progress rate allows one.
    pub fn predicted_completion(
        &self,
        task_id: &str,
        now: i64,
        stall_after_ms: i64,
    ) -> Option<i64> {
        self.tasks
            .get(task_id)
            .and_then(|e| e.predicted_completion(now, stall_after_ms))
    }

    /// Worker id -> last seen, epoch ms.
    pub fn workers(&self) -> HashMap<Arc<str>, i64> {
        self.workers
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect()
    }
}
