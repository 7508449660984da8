//! The task state machine (`docs/contract.md` §3).
//!
//! | from \ to            | SCHEDULED | IN_PROGRESS | terminal |
//! |----------------------|-----------|-------------|----------|
//! | (unknown)            | accept    | accept      | accept   |
//! | SCHEDULED            | accept    | accept      | accept   |
//! | IN_PROGRESS          | accept    | accept      | accept   |
//! | terminal             | `terminal`| `terminal`  | duplicate if identical, else `terminal` |
//!
//! `IN_PROGRESS -> SCHEDULED` is legal because Conductor stores a worker's IN_PROGRESS as
//! SCHEDULED and requeues the task; that flapping is normal. Terminal states are final: a late
//! IN_PROGRESS after COMPLETED (conductor-oss#176) is rejected and counted, never applied.
//! Independently of the move, an update whose `updateTime` is older than the stored one is
//! `stale`: engines deliver updates out of order and the older one must not win.

use crate::model::Status;

/// Why an update was turned away. The `reason` strings are part of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The task is already terminal and the update differs from what was stored.
    Terminal { from: Status, to: Status },
    /// The update's `updateTime` is older than the stored one.
    Stale { stored: i64, got: i64 },
    /// The update's `updateTime` is further ahead of taskpulse's clock than `--max-clock-skew`
    /// (a non-terminal update; a terminal one is taken with its time set to taskpulse's).
    ClockSkew { ahead_ms: i64, limit_ms: i64 },
    /// The update itself is malformed or incomplete.
    Invalid(String),
}

impl Rejection {
    /// The short, stable reason clients match on (for `invalid`, with what was wrong).
    pub fn reason(&self) -> String {
        match self {
            Rejection::Invalid(msg) => format!("invalid: {msg}"),
            other => other.code().into(),
        }
    }

    /// The reason's code alone: `terminal`, `stale`, `clock_skew` or `invalid`.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Terminal { .. } => "terminal",
            Rejection::Stale { .. } => "stale",
            Rejection::ClockSkew { .. } => "clock_skew",
            Rejection::Invalid(_) => "invalid",
        }
    }

    /// A sentence for humans.
    pub fn detail(&self) -> String {
        match self {
            Rejection::Terminal { from, to } => {
                format!("task is already {from} (final); {to} rejected")
            }
            Rejection::Stale { stored, got } => {
                format!("updateTime {got} is older than the stored {stored}")
            }
            Rejection::ClockSkew { ahead_ms, limit_ms } => format!(
                "updateTime is {:.1}s ahead of taskpulse's clock, more than --max-clock-skew ({}s); check the sender's clock",
                *ahead_ms as f64 / 1000.0,
                limit_ms / 1000
            ),
            Rejection::Invalid(msg) => msg.clone(),
        }
    }
}

/// What an update would change on the stored task, worked out by the caller that holds both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Progress, message, worker or any descriptive field differs.
    pub content_changed: bool,
    /// `updateTime` moves forward.
    pub time_advanced: bool,
}

/// The lifecycle's verdict on one update to a known task (a task seen for the first time is
/// always taken: it may be first seen in any status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A legal move; `status_changed` says whether the status itself moved.
    Accept {
        status_changed: bool,
    },
    /// Changes nothing.
    Duplicate,
    Reject(Rejection),
}

/// The stored side of a decision.
#[derive(Clone, Copy, Debug)]
pub struct Current {
    pub status: Status,
    pub update_time: Option<i64>,
}

/// Decides what happens to an update with status `to` and `update_time`, given the task's
/// current state and what the update would change.
pub fn decide(cur: Current, to: Status, update_time: Option<i64>, diff: Diff) -> Verdict {
    if cur.status.is_terminal() {
        // A repeat of the final update (the SDK retries completions) is a duplicate, whatever
        // its updateTime; anything else is an attempt to leave a final state.
        return if to == cur.status && !diff.content_changed {
            Verdict::Duplicate
        } else {
            Verdict::Reject(Rejection::Terminal {
                from: cur.status,
                to,
            })
        };
    }
    if let (Some(stored), Some(got)) = (cur.update_time, update_time) {
        if got < stored {
            return Verdict::Reject(Rejection::Stale { stored, got });
        }
    }
    let status_changed = to != cur.status;
    if !status_changed && !diff.content_changed && !diff.time_advanced {
        return Verdict::Duplicate;
    }
    Verdict::Accept { status_changed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Status::{self, *};

    fn cur(status: Status, t: Option<i64>) -> Current {
        Current {
            status,
            update_time: t,
        }
    }
    const CHANGED: Diff = Diff {
        content_changed: true,
        time_advanced: true,
    };
    const SAME: Diff = Diff {
        content_changed: false,
        time_advanced: false,
    };

    #[test]
    fn the_lifecycle_table() {
        // non-terminal -> anything: accepted
        for from in [Scheduled, InProgress] {
            for to in Status::ALL {
                assert_eq!(
                    decide(cur(from, Some(1)), to, Some(2), CHANGED),
                    Verdict::Accept {
                        status_changed: from != to
                    },
                    "{from} -> {to}"
                );
            }
        }
        // terminal -> anything else: rejected as terminal
        for from in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in Status::ALL {
                let v = decide(cur(from, Some(1)), to, Some(2), CHANGED);
                assert_eq!(
                    v,
                    Verdict::Reject(Rejection::Terminal { from, to }),
                    "{from} -> {to}"
                );
            }
            // an identical repeat is a duplicate, even with another updateTime
            assert_eq!(
                decide(cur(from, Some(5)), from, Some(9), SAME),
                Verdict::Duplicate
            );
            assert_eq!(
                decide(cur(from, Some(5)), from, Some(1), SAME),
                Verdict::Duplicate
            );
        }
    }

    #[test]
    fn conductor_oss_176_late_in_progress_after_completed_is_rejected() {
        let v = decide(
            cur(Completed, Some(2_000)),
            InProgress,
            Some(1_000),
            CHANGED,
        );
        assert_eq!(
            v,
            Verdict::Reject(Rejection::Terminal {
                from: Completed,
                to: InProgress
            })
        );
        // even when the late update claims to be newer
        let v = decide(
            cur(Completed, Some(2_000)),
            InProgress,
            Some(3_000),
            CHANGED,
        );
        assert!(matches!(v, Verdict::Reject(Rejection::Terminal { .. })));
    }

    #[test]
    fn stale_updates_are_rejected_and_equal_times_are_not() {
        assert_eq!(
            decide(cur(InProgress, Some(10)), InProgress, Some(9), CHANGED),
            Verdict::Reject(Rejection::Stale { stored: 10, got: 9 })
        );
        assert_eq!(
            decide(cur(InProgress, Some(10)), Completed, Some(9), CHANGED),
            Verdict::Reject(Rejection::Stale { stored: 10, got: 9 })
        );
        assert_eq!(
            decide(cur(InProgress, Some(10)), InProgress, Some(10), CHANGED),
            Verdict::Accept {
                status_changed: false
            }
        );
        // no updateTime on either side: no ordering to enforce
        assert_eq!(
            decide(cur(InProgress, None), InProgress, Some(1), CHANGED),
            Verdict::Accept {
                status_changed: false
            }
        );
        assert_eq!(
            decide(cur(InProgress, Some(10)), InProgress, None, CHANGED),
            Verdict::Accept {
                status_changed: false
            }
        );
    }

    #[test]
    fn an_update_that_changes_nothing_is_a_duplicate() {
        assert_eq!(
            decide(cur(InProgress, Some(10)), InProgress, Some(10), SAME),
            Verdict::Duplicate
        );
        let only_time = Diff {
            content_changed: false,
            time_advanced: true,
        };
        assert_eq!(
            decide(cur(InProgress, Some(10)), InProgress, Some(11), only_time),
            Verdict::Accept {
                status_changed: false
            },
            "a heartbeat refreshes the task's updateTime"
        );
        assert_eq!(
            decide(cur(InProgress, Some(10)), Scheduled, Some(10), SAME),
            Verdict::Accept {
                status_changed: true
            }
        );
    }
}
