//! Throttled progress writes (`docs/contract.md` §3.1).
//!
//! Workers may report progress ten times a second; the store should see at most one progress
//! write per task per `--progress-min-interval`. A keyed `governor` limiter (one cell per task,
//! burst 1) decides whether a write may go now. Its per-task state is a [`Slot`] the task's own
//! entry in the tracker holds, not a second per-task map next to the tracker's (a lookup and a
//! hash of the task id per update, and memory per task, saved). When it may not, the update is *coalesced*: the
//! task is marked pending and a timer is set for the moment the limiter will allow the next
//! write. When the timer fires, whatever is newest in memory then is written, so the last value
//! is never lost, only delayed by at most one interval.
//!
//! `--progress-min-delta` drops writes for changes too small to matter; such a change is still
//! kept in memory (and exported) and rides along with the next write the task gets.

use std::hash::{Hash, Hasher};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use governor::clock::{Clock, DefaultClock};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::{Quota, RateLimiter};
use tokio::sync::mpsc;
use tokio_util::time::DelayQueue;

/// Whether the newest values of a task still need a store write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pending {
    /// The store has what memory has.
    #[default]
    Clean,
    /// A coalesced value waits for a timer.
    Timed,
    /// A change below `--progress-min-delta` waits for the task's next write.
    Untimed,
}

/// What to do with a progress-only update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressWrite {
    /// Write it now.
    Now,
    /// Coalesced: write what is newest after this delay (schedule a timer unless one is set).
    After(Duration),
    /// Too small a change: keep it for the task's next write.
    WithNextWrite,
}

/// A task's write slot: governor's GCRA state for the task (the theoretical arrival time of its
/// next write, in ns after the throttle started; 0 before its first), held in the task's entry.
/// The limiter's keys are the slots themselves, so a slot's identity is its address: it equals
/// only itself, and hashes to nothing (the limiter never hashes it: [`InSlot`] looks nothing up).
#[derive(Debug, Default)]
pub struct Slot(AtomicU64);

impl PartialEq for Slot {
    fn eq(&self, other: &Slot) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Slot {}

impl Hash for Slot {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

impl Clone for Slot {
    fn clone(&self) -> Slot {
        Slot(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

/// governor's state store for slots their tasks hold: the key is the state.
#[derive(Debug, Default)]
pub struct InSlot;

impl StateStore for InSlot {
    type Key = Slot;

    /// As governor's own `InMemoryState` does it: 0 is "no state yet", and the new state is
    /// stored only if no one changed it meanwhile (the tracker holds the task's entry, so no one
    /// does).
    fn measure_and_replace<T, F, E>(&self, slot: &Slot, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let mut prev = slot.0.load(Ordering::Acquire);
        loop {
            let (result, new) = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())))?;
            match slot.0.compare_exchange_weak(
                prev,
                new.into(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(result),
                Err(now) => prev = now,
            }
        }
    }
}

/// The per-task limiter and the queue of coalesced tasks waiting for their interval to end.
pub struct Throttle {
    limiter: RateLimiter<Slot, InSlot, DefaultClock>,
    clock: DefaultClock,
    min_delta: f32,
    timers: mpsc::UnboundedSender<(Arc<str>, Duration)>,
}

impl Throttle {
    /// Returns the throttle and the receiving end of its timer requests, for [`run_timers`].
    pub fn new(
        min_interval: Duration,
        min_delta: f64,
    ) -> (Throttle, mpsc::UnboundedReceiver<(Arc<str>, Duration)>) {
        let quota = Quota::with_period(min_interval)
            .expect("validated: interval > 0")
            .allow_burst(NonZeroU32::MIN);
        let clock = DefaultClock::default();
        let (timers, rx) = mpsc::unbounded_channel();
        let throttle = Throttle {
            limiter: RateLimiter::new(quota, InSlot, clock.clone()),
            clock,
            min_delta: min_delta as f32,
            timers,
        };
        (throttle, rx)
    }

    /// Decides a progress-only update. `written` is the progress last sent to the store;
    /// `message_changed` forces a write (subject to the interval) whatever the delta.
    pub fn progress(
        &self,
        slot: &Slot,
        written: Option<f32>,
        now: Option<f32>,
        message_changed: bool,
    ) -> ProgressWrite {
        let small = match (written, now) {
            (Some(w), Some(n)) => (n - w).abs() < self.min_delta,
            _ => false,
        };
        if small && !message_changed {
            return ProgressWrite::WithNextWrite;
        }
        self.acquire(slot)
    }

    /// Takes the task's write slot if it is free, or says how long until it is.
    pub fn acquire(&self, slot: &Slot) -> ProgressWrite {
        match self.limiter.check_key(slot) {
            Ok(()) => ProgressWrite::Now,
            Err(not_until) => ProgressWrite::After(not_until.wait_time_from(self.clock.now())),
        }
    }

    /// A status write goes out regardless of the limiter, and uses up the task's slot so that
    /// progress right after it is coalesced instead of written again at once.
    pub fn note_write(&self, slot: &Slot) {
        let _ = self.limiter.check_key(slot);
    }

    /// Asks the timer loop to flush `task_id` after `delay`.
    pub fn schedule(&self, task_id: Arc<str>, delay: Duration) {
        let _ = self.timers.send((task_id, delay));
    }
}

/// What the timer loop should do after trying to flush a task.
pub enum Flushed {
    Done,
    /// The slot is not free yet; try again after this long.
    Retry(Duration),
}

/// Whoever holds the task state flushes it.
pub trait Flush: Send + Sync + 'static {
    fn flush(&self, task_id: &Arc<str>) -> Flushed;
}

/// Runs coalesced flushes when their interval ends. Stops when every [`Throttle`] is gone.
pub async fn run_timers<F: Flush>(
    target: Arc<F>,
    mut requests: mpsc::UnboundedReceiver<(Arc<str>, Duration)>,
) {
    let mut queue: DelayQueue<Arc<str>> = DelayQueue::new();
    loop {
        tokio::select! {
            req = requests.recv() => match req {
                Some((id, delay)) => { queue.insert(id, delay); }
                None => break,
            },
            Some(expired) = queue.next(), if !queue.is_empty() => {
                let id = expired.into_inner();
                if let Flushed::Retry(delay) = target.flush(&id) {
                    queue.insert(id, delay);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_write_per_interval_then_coalesced() {
        let (t, _rx) = Throttle::new(Duration::from_secs(60), 0.0);
        let id = Slot::default();
        assert_eq!(t.progress(&id, None, Some(1.0), false), ProgressWrite::Now);
        for p in 2..100 {
            match t.progress(&id, Some(1.0), Some(p as f32), false) {
                ProgressWrite::After(d) => assert!(d <= Duration::from_secs(60)),
                other => panic!("update {p} should be coalesced, got {other:?}"),
            }
        }
        // another task has its own slot
        let other = Slot::default();
        assert_eq!(
            t.progress(&other, None, Some(1.0), false),
            ProgressWrite::Now
        );
    }

    #[test]
    fn a_status_write_uses_the_slot() {
        let (t, _rx) = Throttle::new(Duration::from_secs(60), 0.0);
        let id = Slot::default();
        t.note_write(&id);
        assert!(matches!(
            t.progress(&id, None, Some(5.0), false),
            ProgressWrite::After(_)
        ));
    }

    #[test]
    fn small_changes_wait_for_the_next_write_unless_the_message_changes() {
        let (t, _rx) = Throttle::new(Duration::from_millis(1), 5.0);
        let id = Slot::default();
        assert_eq!(
            t.progress(&id, Some(10.0), Some(12.0), false),
            ProgressWrite::WithNextWrite
        );
        assert_eq!(
            t.progress(&id, Some(10.0), Some(12.0), true),
            ProgressWrite::Now
        );
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            t.progress(&id, Some(10.0), Some(15.0), false),
            ProgressWrite::Now
        );
    }

    #[test]
    fn a_slot_is_its_tasks_alone_and_the_throttle_keeps_nothing_per_task() {
        let (t, _rx) = Throttle::new(Duration::from_millis(20), 0.0);
        let slots: Vec<Slot> = (0..1000).map(|_| Slot::default()).collect();
        for s in &slots {
            assert_eq!(t.acquire(s), ProgressWrite::Now, "a fresh slot is free");
        }
        // each slot is taken, and a copy of one (a task's entry cloned) is a slot of its own
        assert!(slots.iter().all(|s| t.acquire(s) != ProgressWrite::Now));
        assert_ne!(slots[0], slots[0].clone());
        // a slot taken frees itself after the interval, with no sweep of the throttle
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(t.acquire(&slots[7]), ProgressWrite::Now);
        assert_eq!(std::mem::size_of::<Slot>(), 8);
    }
}
