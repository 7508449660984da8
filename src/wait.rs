//! The WAIT queue as taskpulse reports it, whatever it is read from: the updates taskpulse
//! sees, or an engine's own queue (an engine adapter's source). One classification decides
//! what is waiting, overdue and due soon, so every source counts the same way.
//!
//! A waiting task is **overdue** when it is more than `--wait-grace` past its wake-up time, and
//! **due within the minute** when its wake-up time is from now to 60 s ahead. A task with no
//! wake-up time (waiting to be signalled) only counts as waiting.

use std::collections::HashMap;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus::{HistogramOpts, HistogramVec, Registry};
use tokio::sync::watch;

use crate::cardinality::{Folding, LabelCap, HISTOGRAM_LABEL_VALUES};

/// "Due soon" means due within this long (`taskpulse_wait_due_next_minute_tasks`).
pub const DUE_WINDOW_MS: i64 = 60_000;

/// Counts for one workflow type.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WaitCounts {
    pub waiting: i64,
    pub overdue: i64,
    pub due_next_minute: i64,
}

impl WaitCounts {
    /// Counts one waiting task that wakes at `wake` (epoch ms; `None`: no timer). Returns how
    /// late it is (ms) when it is overdue.
    pub fn add(&mut self, wake: Option<i64>, now: i64, grace_ms: i64) -> Option<i64> {
        self.waiting += 1;
        let late = now.saturating_sub(wake?);
        if late > grace_ms {
            self.overdue += 1;
            return Some(late);
        }
        if (-DUE_WINDOW_MS..=0).contains(&late) {
            self.due_next_minute += 1;
        }
        None
    }

    pub fn merge(&mut self, o: &WaitCounts) {
        self.waiting += o.waiting;
        self.overdue += o.overdue;
        self.due_next_minute += o.due_next_minute;
    }
}

/// The WAIT queue as last read by a source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WaitSnapshot {
    pub by_workflow_type: HashMap<String, WaitCounts>,
    /// Lateness past the wake-up time (seconds) of the most overdue WAIT task, counting only
    /// tasks past wake-up + grace; 0 if none.
    pub oldest_overdue_seconds: f64,
    /// When it was read (epoch ms, the source's clock).
    pub read_at: i64,
}

/// Builds a [`WaitSnapshot`] one waiting task at a time.
#[derive(Debug)]
pub struct WaitTally {
    now: i64,
    grace_ms: i64,
    snapshot: WaitSnapshot,
    oldest_overdue_ms: i64,
}

impl WaitTally {
    pub fn new(now: i64, grace: std::time::Duration) -> WaitTally {
        WaitTally {
            now,
            grace_ms: i64::try_from(grace.as_millis()).unwrap_or(i64::MAX),
            snapshot: WaitSnapshot {
                read_at: now,
                ..Default::default()
            },
            oldest_overdue_ms: 0,
        }
    }

    /// Counts one waiting task of `workflow_type` ("" when unknown).
    pub fn add(&mut self, workflow_type: &str, wake: Option<i64>) {
        let counts = match self.snapshot.by_workflow_type.get_mut(workflow_type) {
            Some(c) => c,
            None => self
                .snapshot
                .by_workflow_type
                .entry(workflow_type.to_string())
                .or_default(),
        };
        if let Some(late) = counts.add(wake, self.now, self.grace_ms) {
            self.oldest_overdue_ms = self.oldest_overdue_ms.max(late);
        }
    }

    pub fn finish(mut self) -> WaitSnapshot {
        self.snapshot.oldest_overdue_seconds = self.oldest_overdue_ms as f64 / 1000.0;
        self.snapshot
    }
}

/// The WAIT queue as an engine source keeps it current.
pub type WaitSource = watch::Receiver<WaitSnapshot>;

/// `taskpulse_wait_wakeup_lag_seconds`: observed by whichever source sees WAIT tasks wake (the
/// pipeline from updates, or an engine's queue reader; never both).
#[derive(Clone, Debug)]
pub struct WaitMetrics {
    pub wakeup_lag_seconds: HistogramVec,
    /// The workflow types the histogram keeps series for.
    workflow_types: Arc<LabelCap>,
    /// The latest wake-up's lag (f64 bits; [`NO_LAG`] before the first): the status page's
    /// figure, where the histogram gives Prometheus the distribution.
    last_lag: Arc<AtomicU64>,
}

const NO_LAG: u64 = u64::MAX;

impl WaitMetrics {
    pub fn register(registry: &Registry, folding: &Folding) -> prometheus::Result<WaitMetrics> {
        let wakeup_lag_seconds = HistogramVec::new(
            HistogramOpts::new(
                "taskpulse_wait_wakeup_lag_seconds",
                "How late WAIT tasks finished after their wake-up time.",
            )
            .buckets(vec![
                0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
            ]),
            &["workflow_type"],
        )?;
        registry.register(Box::new(wakeup_lag_seconds.clone()))?;
        Ok(WaitMetrics {
            wakeup_lag_seconds,
            workflow_types: Arc::new(
                folding.cap("taskpulse_wait_wakeup_lag_seconds", HISTOGRAM_LABEL_VALUES),
            ),
            last_lag: Arc::new(AtomicU64::new(NO_LAG)),
        })
    }

    pub fn unregistered() -> WaitMetrics {
        WaitMetrics::register(&Registry::new(), &Folding::unregistered()).expect("fresh registry")
    }

    /// One WAIT task woke `lag_seconds` after its wake-up time.
    pub fn woke(&self, workflow_type: &str, lag_seconds: f64) {
        self.wakeup_lag_seconds
            .with_label_values(&[self.workflow_types.label(workflow_type)])
            .observe(lag_seconds.max(0.0));
        self.last_lag
            .store(lag_seconds.max(0.0).to_bits(), Ordering::Relaxed);
    }

    /// How late the latest WAIT task woke, in seconds; `None` before the first.
    pub fn last_lag_seconds(&self) -> Option<f64> {
        let bits = self.last_lag.load(Ordering::Relaxed);
        (bits != NO_LAG).then(|| f64::from_bits(bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn one_classification_for_every_source() {
        let mut t = WaitTally::new(NOW, Duration::from_secs(30));
        t.add("order", Some(NOW - 120_000)); // overdue by 120 s
        t.add("order", Some(NOW - 30_000)); // exactly at grace: not overdue
        t.add("order", Some(NOW + 30_000)); // due next minute
        t.add("order", Some(NOW)); // due right now: next minute
        t.add("order", Some(NOW + 60_000)); // edge of the minute: due
        t.add("order", Some(NOW + 60_001)); // later
        t.add("billing", Some(NOW - 45_000)); // overdue by 45 s
        t.add("billing", None); // until signalled
        t.add("", Some(NOW + 1_000));
        let s = t.finish();
        assert_eq!(s.read_at, NOW);
        assert_eq!(s.oldest_overdue_seconds, 120.0);
        assert_eq!(
            s.by_workflow_type["order"],
            WaitCounts {
                waiting: 6,
                overdue: 1,
                due_next_minute: 3
            }
        );
        assert_eq!(
            s.by_workflow_type["billing"],
            WaitCounts {
                waiting: 2,
                overdue: 1,
                due_next_minute: 0
            }
        );
        assert_eq!(s.by_workflow_type[""].due_next_minute, 1);
    }

    #[test]
    fn an_empty_queue_gives_zeroes_and_extremes_do_not_overflow() {
        let s = WaitTally::new(NOW, Duration::ZERO).finish();
        assert!(s.by_workflow_type.is_empty());
        assert_eq!(s.oldest_overdue_seconds, 0.0);
        let mut c = WaitCounts::default();
        assert_eq!(c.add(Some(i64::MIN), i64::MAX, 0), Some(i64::MAX));
        assert_eq!(c.add(Some(i64::MAX), i64::MIN, 0), None);
        assert_eq!(c.waiting, 2);
    }
}
