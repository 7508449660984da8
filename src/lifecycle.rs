//! The task state machine (`docs/contract.md` §3).
//!
//! | from \ to            | SCHEDULED | IN_PROGRESS | terminal |
//! |----------------------|-----------|-------------|----------|
//! | (unknown)            | accept    | accept      | accept   |
//! | SCHEDULED            | accept    | accept      | accept   |
//! | IN_PROGRESS          | accept    | accept      | accept   |
//! | terminal             | `terminal`| `terminal`  | duplicate if identical, else `terminal` |
//! | terminal, reopened by the engine | reopen | reopen | reopen |
//!
//! `IN_PROGRESS -> SCHEDULED` is legal because Conductor stores a worker's IN_PROGRESS as
//! SCHEDULED and requeues the task; that flapping is normal. Terminal states are final to
//! workers, webhooks and the API: a late IN_PROGRESS after COMPLETED (conductor-oss#176) is
//! rejected and counted, never applied. Only the engine itself puts a finished task back to
//! work under the same id (Conductor's rerun, Kestra's retry and restart, Airflow's clear), and
//! only a reader of the engine's own store can show it: an update carrying [`Incoming::reopen`]
//! evidence from after the task's end is a reopen. A late write of the same run carries the
//! times of that run, all before its end, so it is still refused.
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

/// Longest quoted value a rejection's message repeats from the update; longer ones are cut.
const QUOTED_MAX_CHARS: usize = 40;
/// Longest message a rejection carries, whatever it quotes.
const MESSAGE_MAX_BYTES: usize = 512;

/// A message as a rejection carries it: each quoted value (`"..."`, as serde quotes what it
/// could not take) cut to [`QUOTED_MAX_CHARS`], the whole to [`MESSAGE_MAX_BYTES`]. An answer
/// then costs a few hundred bytes per listed rejection, whatever the refused values held.
pub fn cut_message(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(MESSAGE_MAX_BYTES + 8));
    let mut rest = msg;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..=open]);
        let inner = &rest[open + 1..];
        let (quoted, after) = match inner.find('"') {
            Some(close) => (&inner[..close], &inner[close..]),
            None => (inner, ""),
        };
        match quoted.char_indices().nth(QUOTED_MAX_CHARS) {
            Some((cut, _)) => {
                out.push_str(&quoted[..cut]);
                out.push('…');
            }
            None => out.push_str(quoted),
        }
        if after.is_empty() {
            rest = "";
            break;
        }
        out.push('"');
        rest = &after[1..];
    }
    out.push_str(rest);
    if out.len() > MESSAGE_MAX_BYTES {
        let mut end = MESSAGE_MAX_BYTES;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

impl Rejection {
    /// The short, stable reason clients match on (for `invalid`, with what was wrong).
    pub fn reason(&self) -> String {
        match self {
            Rejection::Invalid(msg) => format!("invalid: {}", cut_message(msg)),
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
            Rejection::Invalid(msg) => cut_message(msg),
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
    /// The engine put the finished task back to work: a new run begins (and may have ended
    /// already, when the update is terminal again).
    Reopen,
    /// Changes nothing.
    Duplicate,
    Reject(Rejection),
}

/// The stored side of a decision.
#[derive(Clone, Copy, Debug)]
pub struct Current {
    pub status: Status,
    pub update_time: Option<i64>,
    /// When a terminal task ended ([`crate::model::TaskRecord::ended_at`]).
    pub ended_at: Option<i64>,
}

/// The update's side of a decision.
#[derive(Clone, Copy, Debug)]
pub struct Incoming {
    pub status: Status,
    pub update_time: Option<i64>,
    /// Engine time of the engine's own evidence that it reopened the task (see
    /// [`crate::ingest::Reopen`]); `None` from every source but an engine's store.
    pub reopen: Option<i64>,
}

/// Whether `reopen` evidence reopens a task that ended at `ended_at`: it must come after that
/// end. Without a known end nothing can be reopened.
pub fn reopens(reopen: Option<i64>, ended_at: Option<i64>) -> bool {
    matches!((reopen, ended_at), (Some(at), Some(end)) if at > end)
}

/// Decides what happens to an update, given the task's current state and what the update
/// would change.
pub fn decide(cur: Current, new: Incoming, diff: Diff) -> Verdict {
    let (to, update_time) = (new.status, new.update_time);
    if cur.status.is_terminal() {
        if reopens(new.reopen, cur.ended_at) {
            return Verdict::Reopen;
        }
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
            ended_at: t,
        }
    }

    fn decide(cur: Current, to: Status, update_time: Option<i64>, diff: Diff) -> Verdict {
        super::decide(
            cur,
            Incoming {
                status: to,
                update_time,
                reopen: None,
            },
            diff,
        )
    }

    fn reopen(cur: Current, to: Status, update_time: i64, at: i64) -> Verdict {
        super::decide(
            cur,
            Incoming {
                status: to,
                update_time: Some(update_time),
                reopen: Some(at),
            },
            CHANGED,
        )
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

    #[test]
    fn only_engine_evidence_from_after_the_end_reopens_a_finished_task() {
        // Conductor's rerun: the task ended at 2,000 and is scheduled again at 5,000.
        for from in Status::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in Status::ALL {
                assert_eq!(
                    reopen(cur(from, Some(2_000)), to, 5_000, 5_000),
                    Verdict::Reopen,
                    "{from} -> {to}"
                );
            }
        }
        // evidence from the end itself is not after it: a duplicate of the final state
        assert!(matches!(
            reopen(cur(Failed, Some(2_000)), InProgress, 6_000, 2_000),
            Verdict::Reject(Rejection::Terminal { .. })
        ));
        // conductor-oss#176: the late write carries the run's own times, all before its end
        assert_eq!(
            reopen(cur(Completed, Some(2_000)), InProgress, 6_000, 1_500),
            Verdict::Reject(Rejection::Terminal {
                from: Completed,
                to: InProgress
            })
        );
        // no end known: nothing to compare with, nothing reopened
        assert!(matches!(
            reopen(cur(Failed, None), Scheduled, 6_000, 5_000),
            Verdict::Reject(Rejection::Terminal { .. })
        ));
        // evidence on a task that is not finished changes nothing about the ordinary rules
        assert_eq!(
            reopen(cur(InProgress, Some(2_000)), InProgress, 3_000, 5_000),
            Verdict::Accept {
                status_changed: false
            }
        );
        assert!(reopens(Some(4), Some(3)) && !reopens(Some(3), Some(3)) && !reopens(None, Some(1)));
    }

    #[test]
    fn messages_never_repeat_a_long_refused_value() {
        let long = "x".repeat(80_000);
        let msg = format!("`seq`: invalid type: string \"{long}\", expected i64");
        let r = Rejection::Invalid(msg);
        for text in [r.reason(), r.detail()] {
            assert!(text.len() < 200, "{} bytes", text.len());
            assert!(text.ends_with("…\", expected i64"), "{text}");
            assert!(text.contains("`seq`"));
        }
        assert_eq!(cut_message("a \"short\" one"), "a \"short\" one");
        assert_eq!(
            cut_message(&format!("open \"{}", "é".repeat(50))),
            format!("open \"{}…", "é".repeat(40))
        );
        assert!(cut_message(&"y".repeat(10_000)).len() <= 512 + 3);
    }
}
