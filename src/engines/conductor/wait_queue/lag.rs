//! Wake-up lag, measured as it happens: diffing successive reads of the WAIT queue finds the
//! messages that stopped waiting, and when (see the module docs of [`super`] for the rules).

use std::collections::HashMap;
use std::time::Duration;

use super::reader::WaitRow;

/// One WAIT wake-up seen happen.
#[derive(Clone, Debug, PartialEq)]
pub struct Wakeup {
    pub workflow_type: String,
    pub lag_seconds: f64,
}

#[derive(Clone, Debug)]
struct Tracked {
    workflow_type: String,
    wake_at: Option<i64>,
    waiting: bool,
    /// Its wake-up was observed (kept while the id stays in the queue, so it counts once).
    observed: bool,
}

/// Finds WAIT wake-ups by diffing successive reads (see the module docs for the rules).
#[derive(Debug)]
pub struct LagTracker {
    tracked: HashMap<String, Tracked>,
    last_read_at: Option<i64>,
    max_gap_ms: i64,
}

impl LagTracker {
    /// `max_gap`: reads further apart than this can't place a departure in time; what left
    /// in between is not observed.
    pub fn new(max_gap: Duration) -> LagTracker {
        LagTracker {
            tracked: HashMap::new(),
            last_read_at: None,
            max_gap_ms: i64::try_from(max_gap.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Takes the next read; answers the wake-ups that happened since the previous one. The
    /// first read only sets the baseline.
    pub fn update(&mut self, rows: &[WaitRow], read_at: i64) -> Vec<Wakeup> {
        let placeable = self
            .last_read_at
            .is_some_and(|last| read_at >= last && read_at - last <= self.max_gap_ms);
        let mut out = Vec::new();
        let mut next = HashMap::with_capacity(rows.len());
        for row in rows {
            let prev = self.tracked.remove(&row.message_id);
            let mut t = Tracked {
                workflow_type: row.workflow_type.clone(),
                wake_at: row.wake_at,
                waiting: !row.popped,
                observed: prev.as_ref().is_some_and(|p| p.observed),
            };
            if row.popped && placeable {
                if let Some(w) = prev.as_ref().and_then(|p| departure(p, read_at)) {
                    out.push(w);
                    t.observed = true;
                }
            }
            next.insert(row.message_id.clone(), t);
        }
        if placeable {
            out.extend(self.tracked.values().filter_map(|p| departure(p, read_at)));
        }
        self.tracked = next;
        self.last_read_at = Some(read_at);
        out
    }
}

/// The wake-up of a message that stopped waiting at `at`, if it was one.
fn departure(p: &Tracked, at: i64) -> Option<Wakeup> {
    if !p.waiting || p.observed {
        return None;
    }
    let wake = p.wake_at?;
    (at >= wake).then(|| Wakeup {
        workflow_type: p.workflow_type.clone(),
        lag_seconds: (at - wake) as f64 / 1000.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn row(id: &str, wf: &str, wake: Option<i64>, popped: bool) -> WaitRow {
        WaitRow {
            message_id: id.into(),
            workflow_type: wf.into(),
            wake_at: wake,
            popped,
        }
    }

    fn tracker() -> LagTracker {
        LagTracker::new(Duration::from_secs(10))
    }

    #[test]
    fn first_read_is_only_a_baseline() {
        let mut t = tracker();
        assert!(t
            .update(&[row("a", "order", Some(NOW - 5_000), true)], NOW)
            .is_empty());
        // a row that was never seen waiting yields nothing when it goes
        assert!(t.update(&[], NOW + 1_000).is_empty());
    }

    #[test]
    fn a_message_that_goes_after_its_wake_up_is_observed_once() {
        let mut t = tracker();
        t.update(&[row("a", "order", Some(NOW - 2_000), false)], NOW);
        let got = t.update(&[], NOW + 500);
        assert_eq!(
            got,
            vec![Wakeup {
                workflow_type: "order".into(),
                lag_seconds: 2.5
            }]
        );
        assert!(t.update(&[], NOW + 1_000).is_empty());
    }

    #[test]
    fn popping_is_the_wake_up_and_counts_once() {
        let mut t = tracker();
        t.update(&[row("a", "order", Some(NOW), false)], NOW - 1_000);
        let got = t.update(&[row("a", "order", Some(NOW), true)], NOW + 300);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].lag_seconds, 0.3);
        // deleted after being popped: not again
        assert!(t.update(&[], NOW + 600).is_empty());

        // popped, put back by Conductor's unack processing, popped again: still once
        t.update(&[row("b", "order", Some(NOW), false)], NOW + 700);
        assert_eq!(
            t.update(&[row("b", "order", Some(NOW), true)], NOW + 800)
                .len(),
            1
        );
        assert!(t
            .update(&[row("b", "order", Some(NOW), false)], NOW + 900)
            .is_empty());
        assert!(t
            .update(&[row("b", "order", Some(NOW), true)], NOW + 1_000)
            .is_empty());
        assert!(t.update(&[], NOW + 1_100).is_empty());
    }

    #[test]
    fn leaving_before_the_wake_up_is_not_a_wake_up() {
        let mut t = tracker();
        t.update(
            &[
                row("early", "order", Some(NOW + 5_000), false),
                row("signal", "order", None, false),
            ],
            NOW,
        );
        assert!(t.update(&[], NOW + 1_000).is_empty());

        // popped early (second-rounded deliver_on) and postponed, then really woken
        t.update(&[row("p", "order", Some(NOW + 2_000), false)], NOW + 1_000);
        assert!(t
            .update(&[row("p", "order", Some(NOW + 2_000), true)], NOW + 1_500)
            .is_empty());
        assert!(t
            .update(&[row("p", "order", Some(NOW + 2_000), false)], NOW + 1_600)
            .is_empty());
        let got = t.update(&[], NOW + 2_100);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].lag_seconds, 0.1);
    }

    #[test]
    fn departures_across_a_gap_are_not_placed() {
        let mut t = tracker();
        t.update(&[row("a", "order", Some(NOW - 1_000), false)], NOW);
        assert!(t.update(&[], NOW + 60_000).is_empty());
        // clock going backwards is a gap too
        t.update(&[row("b", "order", Some(NOW - 1_000), false)], NOW + 61_000);
        assert!(t.update(&[], NOW).is_empty());
    }

    #[test]
    fn tracker_forgets_messages_that_left() {
        let mut t = tracker();
        let rows: Vec<WaitRow> = (0..100)
            .map(|i| row(&format!("m{i}"), "order", Some(NOW + 60_000), false))
            .collect();
        t.update(&rows, NOW);
        assert_eq!(t.tracked.len(), 100);
        t.update(&rows[..10], NOW + 1_000);
        assert_eq!(t.tracked.len(), 10);
    }
}
