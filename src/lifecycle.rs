//! The task state machine (contract section 3).
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

use serde::{Deserialize, Serialize};

/// Conductor's task statuses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Scheduled,
    InProgress,
    Completed,
    CompletedWithErrors,
    Failed,
    FailedWithTerminalError,
    TimedOut,
    Canceled,
    Skipped,
}

impl Status {
    pub const ALL: [Status; 9] = [
        Status::Scheduled,
        Status::InProgress,
        Status::Completed,
        Status::CompletedWithErrors,
        Status::Failed,
        Status::FailedWithTerminalError,
        Status::TimedOut,
        Status::Canceled,
        Status::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "SCHEDULED",
            Status::InProgress => "IN_PROGRESS",
            Status::Completed => "COMPLETED",
            Status::CompletedWithErrors => "COMPLETED_WITH_ERRORS",
            Status::Failed => "FAILED",
            Status::FailedWithTerminalError => "FAILED_WITH_TERMINAL_ERROR",
            Status::TimedOut => "TIMED_OUT",
            Status::Canceled => "CANCELED",
            Status::Skipped => "SKIPPED",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Terminal statuses are final (contract 3).
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Scheduled | Status::InProgress)
    }

    /// Terminal and successful, as Conductor defines it.
    pub fn is_successful(self) -> bool {
        matches!(
            self,
            Status::Completed | Status::CompletedWithErrors | Status::Skipped
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an update was turned away. The `reason` strings are part of the API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The task is already terminal and the update differs from what was stored.
    Terminal { from: Status, to: Status },
    /// The update's `updateTime` is older than the stored one.
    Stale { stored: i64, got: i64 },
    /// The update itself is malformed or incomplete.
    Invalid(String),
}

impl Rejection {
    /// The short, stable reason code clients match on.
    pub fn reason(&self) -> String {
        match self {
            Rejection::Terminal { .. } => "terminal".into(),
            Rejection::Stale { .. } => "stale".into(),
            Rejection::Invalid(msg) => format!("invalid: {msg}"),
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

/// The lifecycle's verdict on one update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// First sight of the task.
    New,
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
/// current state (`None` when unknown) and what the update would change.
pub fn decide(
    current: Option<Current>,
    to: Status,
    update_time: Option<i64>,
    diff: Diff,
) -> Verdict {
    let Some(cur) = current else {
        return Verdict::New;
    };
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
    use Status::*;

    fn cur(status: Status, t: Option<i64>) -> Option<Current> {
        Some(Current {
            status,
            update_time: t,
        })
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
    fn statuses_round_trip_and_classify() {
        for st in Status::ALL {
            assert_eq!(Status::parse(st.as_str()), Some(st));
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
        assert_eq!(Status::parse("in_progress"), None);
        let terminal: Vec<_> = Status::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(terminal.len(), 7);
        assert!(!Scheduled.is_terminal() && !InProgress.is_terminal());
        assert!(Skipped.is_successful() && !TimedOut.is_successful());
    }

    #[test]
    fn the_lifecycle_table() {
        // unknown -> anything: new
        for to in Status::ALL {
            assert_eq!(decide(None, to, Some(1), CHANGED), Verdict::New);
        }
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
