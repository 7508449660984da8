//! Rows read from an engine's own store: the engine's word is the truth, so what would get a
//! request rejected is dropped or cut and noted, and the row's transition is kept
//! (`docs/contract.md` §3.0.1).

use super::update::{truncate, Adjusted, Adjustment, MAX_ID_LEN, MAX_LABEL_LEN};
use super::{RawAttempt, RawUpdate, TaskUpdate};
use crate::lifecycle::Rejection;
use crate::model::Status;

impl RawUpdate {
    /// Validates a row read from an engine's own store, where the engine's word is the truth:
    /// a field that would get a request rejected is dropped, or cut when it is an over-long id
    /// or name (so it stays unique, [`fit`]), and noted in the update's `adjusted`; the
    /// transition is kept. Only a row that names no task, no workflow or no status taskpulse
    /// knows is refused.
    pub fn validate_from_engine(mut self) -> Result<TaskUpdate, Rejection> {
        let mut adjusted = Vec::new();
        self.sanitize(&mut adjusted);
        let mut u = self.validate()?;
        u.adjusted = adjusted;
        Ok(u)
    }

    /// Brings every field within what [`RawUpdate::validate`] takes, noting each change.
    fn sanitize(&mut self, adj: &mut Vec<Adjusted>) {
        let mut note = |field: &'static str, action: Adjustment| {
            let a = Adjusted { field, action };
            if !adj.contains(&a) {
                adj.push(a);
            }
        };
        engine_text(&mut self.task_id, "taskId", MAX_ID_LEN, true, &mut note);
        engine_text(
            &mut self.workflow_id,
            "workflowId",
            MAX_ID_LEN,
            false,
            &mut note,
        );
        let workflow_instance = &mut self.workflow_instance_id;
        engine_text(
            workflow_instance,
            "workflowId",
            MAX_ID_LEN,
            false,
            &mut note,
        );
        engine_text(
            &mut self.task_type,
            "taskType",
            MAX_LABEL_LEN,
            false,
            &mut note,
        );
        engine_text(
            &mut self.task_def_name,
            "taskType",
            MAX_LABEL_LEN,
            false,
            &mut note,
        );
        let workflow_type = &mut self.workflow_type;
        engine_text(
            workflow_type,
            "workflowType",
            MAX_LABEL_LEN,
            false,
            &mut note,
        );
        engine_text(
            &mut self.worker_id,
            "workerId",
            MAX_LABEL_LEN,
            false,
            &mut note,
        );
        let reference = &mut self.reference_task_name;
        engine_text(reference, "referenceTaskName", MAX_ID_LEN, false, &mut note);
        let parent = &mut self.parent_task_id;
        engine_text(parent, "parentTaskId", MAX_ID_LEN, false, &mut note);
        for (v, field) in [
            (&mut self.seq, "seq"),
            (&mut self.iteration, "iteration"),
            (&mut self.retry_count, "retryCount"),
        ] {
            if v.is_some_and(|n| !(0..=i32::MAX as i64).contains(&n)) {
                *v = None;
                note(field, Adjustment::Dropped);
            }
        }
        for (v, field) in [
            (&mut self.start_time, "startTime"),
            (&mut self.update_time, "updateTime"),
            (&mut self.timeout_seconds, "timeoutSeconds"),
            (&mut self.response_timeout_seconds, "responseTimeoutSeconds"),
            (&mut self.wait_until, "waitUntil"),
            (&mut self.wait_timeout, "waitUntil"),
        ] {
            if v.is_some_and(|n| n < 0) {
                *v = None;
                note(field, Adjustment::Dropped);
            }
        }
        let percent = |p: &mut Option<f64>, note: &mut dyn FnMut(&'static str, Adjustment)| {
            if p.is_some_and(|p| !(0.0..=100.0).contains(&p)) {
                *p = None; // NaN is not in the range either
                note("progress", Adjustment::Dropped);
            }
        };
        percent(&mut self.progress_percent, &mut note);
        if let Some(out) = self.output_data.as_mut() {
            percent(&mut out.progress_percent, &mut note);
            percent(&mut out.progress, &mut note);
            for (field, ..) in std::mem::take(&mut out.invalid) {
                let field = if field.ends_with("Message") {
                    "progressMessage"
                } else {
                    "progress"
                };
                note(field, Adjustment::Dropped);
            }
        }
        if let Some(list) = self.attempts.as_mut() {
            sanitize_attempts(list, &mut note);
        }
    }
}

/// An engine's id or name, as [`RawUpdate::validate`] takes it: control characters removed,
/// longer than `max` bytes cut with a marker ([`fit`]), blank left out (unless `required`:
/// then the validation refuses the row, which names nothing taskpulse could track).
fn engine_text(
    v: &mut Option<String>,
    field: &'static str,
    max: usize,
    required: bool,
    note: &mut dyn FnMut(&'static str, Adjustment),
) {
    let Some(s) = v.as_mut() else { return };
    if s.chars().any(char::is_control) {
        s.retain(|c| !c.is_control());
        note(field, Adjustment::Cut);
    }
    if s.trim().is_empty() {
        if !required {
            *v = None;
            note(field, Adjustment::Dropped);
        }
        return;
    }
    if s.len() > max {
        *s = fit(s, max);
        note(field, Adjustment::Cut);
    }
}

/// An engine's attempts as [`attempts`] takes them: an attempt without a worker is left out,
/// an unknown state or an odd number or time is dropped from it.
fn sanitize_attempts(list: &mut Vec<RawAttempt>, note: &mut dyn FnMut(&'static str, Adjustment)) {
    let before = list.len();
    list.retain_mut(|a| {
        engine_text(&mut a.worker_id, "attempts", MAX_LABEL_LEN, false, note);
        if a.attempt
            .is_some_and(|n| !(0..=i32::MAX as i64).contains(&n))
        {
            a.attempt = None;
            note("attempts", Adjustment::Dropped);
        }
        if a.status
            .as_deref()
            .is_some_and(|s| Status::parse(s).is_none())
        {
            a.status = None;
            note("attempts", Adjustment::Dropped);
        }
        for t in [&mut a.start_time, &mut a.end_time] {
            if t.is_some_and(|t| t < 0) {
                *t = None;
                note("attempts", Adjustment::Dropped);
            }
        }
        a.worker_id.is_some()
    });
    if list.len() < before {
        note("attempts", Adjustment::Dropped);
    }
}

/// Shortens `s` to at most `max` bytes so that it stays unique: its longest prefix that fits
/// at a character boundary, `~`, and 16 hex digits of a 64-bit FNV-1a hash of the whole value.
/// Two values that differ anywhere stay apart (up to hash collisions, about 1 in 2^64 per
/// pair), and the same value is always cut the same way, in every version and process.
pub fn fit(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let hash = s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let head = truncate(s, max.saturating_sub(17));
    format!("{head}~{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::update::tests::row;

    fn adjusted(u: &TaskUpdate) -> Vec<(&'static str, &'static str)> {
        u.adjusted
            .iter()
            .map(|a| (a.field, a.action.as_str()))
            .collect()
    }

    #[test]
    fn an_engines_odd_fields_are_dropped_and_its_transition_kept() {
        let odd = [
            (
                serde_json::json!({"outputData": {"progress": 250}}),
                vec![("progress", "dropped")],
            ),
            (
                serde_json::json!({"outputData": {"progressPercent": "ninety",
                    "progressMessage": {"step": 3}}}),
                vec![("progressMessage", "dropped"), ("progress", "dropped")],
            ),
            (
                serde_json::json!({"status": "FAILED", "workerId": ""}),
                vec![("workerId", "dropped")],
            ),
            (
                serde_json::json!({"retryCount": -1, "startTime": -5, "seq": 1u64 << 40}),
                vec![
                    ("seq", "dropped"),
                    ("retryCount", "dropped"),
                    ("startTime", "dropped"),
                ],
            ),
        ];
        for (extra, want) in odd {
            let strict = row(extra.clone()).validate();
            assert!(strict.is_err(), "a request with {extra} is rejected");
            let u = row(extra.clone())
                .validate_from_engine()
                .unwrap_or_else(|e| panic!("{extra}: {e:?}"));
            assert_eq!(adjusted(&u), want, "{extra}");
            assert!(u.progress.is_none() && u.progress_message.is_none());
        }
        let u = row(serde_json::json!({"status": "FAILED", "workerId": ""}))
            .validate_from_engine()
            .unwrap();
        assert_eq!((u.status, u.worker_id), (Status::Failed, None));
        // a good row is taken as it is, with nothing noted
        let u = row(serde_json::json!({"outputData": {"progress": 40}}))
            .validate_from_engine()
            .unwrap();
        assert_eq!((u.progress, u.adjusted.len()), (Some(40.0), 0));
        // what names no task, or no status taskpulse knows, is still refused
        assert!(row(serde_json::json!({"taskId": " "}))
            .validate_from_engine()
            .is_err());
        assert!(row(serde_json::json!({"status": "RUNNING"}))
            .validate_from_engine()
            .is_err());
    }

    #[test]
    fn over_long_names_are_cut_and_stay_unique() {
        let long = |end: &str| format!("{}{end}", "é".repeat(150));
        let (a, b) = (long("a"), long("b"));
        let cut = |name: &str| {
            let u = row(serde_json::json!({"taskType": name, "workflowType": name}))
                .validate_from_engine()
                .unwrap();
            assert_eq!(adjusted(&u), [("taskType", "cut"), ("workflowType", "cut")]);
            u.task_type.unwrap()
        };
        let (ca, cb) = (cut(&a), cut(&b));
        assert!(ca.len() <= MAX_LABEL_LEN && cb.len() <= MAX_LABEL_LEN);
        assert_ne!(ca, cb, "names that differ only at the end stay apart");
        assert_eq!(ca, cut(&a), "the same name is always cut the same way");
        assert!(ca.starts_with("éé") && ca.contains('~'), "{ca}");
        assert_eq!(fit("short", 10), "short");
        let id = "x".repeat(400);
        let u = row(serde_json::json!({"taskId": id}))
            .validate_from_engine()
            .unwrap();
        assert_eq!(u.task_id.len(), MAX_ID_LEN);
        assert_eq!(u.task_id, fit(&id, MAX_ID_LEN));
        // control characters are removed, not a reason to refuse
        let u = row(serde_json::json!({"taskType": "enc\u{7}ode"}))
            .validate_from_engine()
            .unwrap();
        assert_eq!(u.task_type.as_deref(), Some("encode"));
    }

    #[test]
    fn an_engines_odd_attempts_are_left_out_and_the_rest_kept() {
        let u = row(serde_json::json!({"attempts": [
            {"attempt": 0, "workerId": "", "status": "FAILED"},
            {"attempt": 1, "workerId": "w-b", "status": "SOMETHING_NEW", "startTime": -1}]}))
        .validate_from_engine()
        .unwrap();
        assert_eq!(u.attempts.len(), 1);
        assert_eq!(
            (u.attempts[0].worker_id.as_str(), u.attempts[0].status),
            ("w-b", None)
        );
        assert_eq!(adjusted(&u), [("attempts", "dropped")]);
    }
}
