//! The simulated engine's tasks: which task reports next, and what its update says.

use std::fmt::Write as _;

use crate::now_ms;

/// One simulated task.
pub(crate) struct SimTask {
    id: String,
    workflow: String,
    wait: bool,
    sent: u32,
    /// Updates before it finishes (or is abandoned).
    budget: u32,
}

/// The tasks one connection drives.
pub(crate) struct Workload {
    /// Unique per run, so a second run against the same taskpulse doesn't hit finished tasks.
    run: String,
    conn: usize,
    pub(crate) tasks: Vec<SimTask>,
    next: usize,
    generation: u64,
    updates_per_task: u32,
    /// Every this many slots is a WAIT task; None with --wait-fraction 0.
    wait_every: Option<usize>,
    /// Send the completion after the last update (false: abandon the task instead).
    finish: bool,
}

impl Workload {
    pub(crate) fn new(
        conn: usize,
        count: usize,
        wait_fraction: f64,
        updates_per_task: u32,
        finish: bool,
    ) -> Workload {
        let wait_every = if wait_fraction <= 0.0 {
            None
        } else {
            Some((1.0 / wait_fraction.min(1.0)).round().max(1.0) as usize)
        };
        // A finishing task needs one update to start and one to finish.
        let least = if finish { 2 } else { 1 };
        let updates_per_task = updates_per_task.max(least);
        let mut w = Workload {
            run: format!("{:x}", now_ms()),
            conn,
            tasks: Vec::with_capacity(count),
            next: 0,
            generation: 0,
            updates_per_task,
            wait_every,
            finish,
        };
        // The first tasks' lives are spread over `updates_per_task` lengths, so that tasks
        // start and finish at the steady rate the load describes (`count / updates_per_task`
        // a round), not all in the same round of every `updates_per_task`.
        for i in 0..count {
            let mut t = w.fresh(i);
            let spread = (i as u64 * u64::from(updates_per_task) / count as u64) as u32;
            t.budget = least.saturating_add(spread);
            w.tasks.push(t);
        }
        w
    }

    fn fresh(&mut self, slot: usize) -> SimTask {
        self.generation += 1;
        SimTask {
            id: format!("lg{}-{}-{}-{}", self.run, self.conn, slot, self.generation),
            workflow: format!("lgwf{}-{}-{}", self.run, self.conn, self.generation / 10),
            wait: self.wait_every.is_some_and(|n| slot % n == 0),
            sent: 0,
            budget: self.updates_per_task,
        }
    }

    /// Picks the next task round-robin and counts one more update for it.
    fn advance(&mut self) -> Option<usize> {
        if self.tasks.is_empty() {
            return None;
        }
        let slot = self.next % self.tasks.len();
        self.next += 1;
        self.tasks[slot].sent += 1;
        Some(slot)
    }

    /// Replaces the task in `slot` with a new one once it has sent all its updates.
    fn retire_if_done(&mut self, slot: usize) {
        if self.tasks[slot].sent >= self.tasks[slot].budget {
            let fresh = self.fresh(slot);
            self.tasks[slot] = fresh;
        }
    }

    /// Writes the next update as a Pushgateway push: the group path into `path` and the text
    /// exposition body into `out`.
    pub(crate) fn next_push(&mut self, path: &mut String, out: &mut String) {
        let Some(slot) = self.advance() else { return };
        let t = &self.tasks[slot];
        let progress = (t.sent as f64 / t.budget as f64).min(1.0);
        let _ = write!(path, "/metrics/job/loadgen/task_id/{}", t.id);
        let _ = writeln!(
            out,
            "loadgen_task_progress_ratio{{workflow_type=\"loadgen\",task_type=\"lg_task\",workflow_id=\"{}\"}} {progress}",
            t.workflow
        );
        // A finished task's group is simply no longer pushed: the Pushgateway keeps it.
        self.retire_if_done(slot);
    }

    /// Appends the next update (one JSON object, no newline) to `out`.
    pub(crate) fn next_update(&mut self, out: &mut String, now_ms: i64) {
        let Some(slot) = self.advance() else { return };
        let t = &self.tasks[slot];
        let done = self.finish && t.sent >= t.budget;
        let progress = (t.sent as f64 * 100.0 / t.budget as f64).min(100.0);
        let status = if done { "COMPLETED" } else { "IN_PROGRESS" };
        let _ = write!(
            out,
            r#"{{"taskId":"{}","workflowId":"{}","status":"{}","updateTime":{}"#,
            t.id, t.workflow, status, now_ms
        );
        if t.sent == 1 {
            if t.wait {
                let _ = write!(
                    out,
                    r#","taskType":"WAIT","workflowType":"loadgen","waitUntil":{}"#,
                    now_ms + 30_000
                );
            } else {
                let _ = write!(
                    out,
                    r#","taskType":"lg_task","workflowType":"loadgen","startTime":{},"timeoutSeconds":3600,"responseTimeoutSeconds":600,"workerId":"lg-worker-{}""#,
                    now_ms, self.conn
                );
            }
        }
        if !t.wait {
            let _ = write!(out, r#","progressPercent":{progress:.1}"#);
        }
        out.push('}');
        self.retire_if_done(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_finishes_and_replaces_tasks() {
        let mut w = Workload::new(0, 10, 0.1, 4, true);
        let first: Vec<String> = w.tasks.iter().map(|t| t.id.clone()).collect();
        let mut out = String::new();
        let mut completed = 0;
        // the first tasks live 2 to 5 updates (spread), their successors 4
        for _ in 0..50 {
            out.clear();
            w.next_update(&mut out, 1_000);
            let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
            if v["status"] == "COMPLETED" {
                completed += 1;
            }
        }
        assert_eq!(completed, 10, "each of the 10 first tasks finished once");
        assert!(
            w.tasks.iter().all(|t| !first.contains(&t.id)),
            "finished tasks were replaced"
        );
        // one in ten is a WAIT task, announced with its wake-up time on its first update
        out.clear();
        let mut w = Workload::new(1, 10, 0.1, 4, true);
        w.next_update(&mut out, 5);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["taskType"], "WAIT");
        assert_eq!(v["waitUntil"], 30_005);
    }

    /// Tasks start and finish at a steady rate: `tasks / updates_per_task` in every round of
    /// updates, not all of them in the same round.
    #[test]
    fn tasks_finish_at_a_steady_rate() {
        let mut w = Workload::new(0, 100, 0.0, 10, true);
        let mut out = String::new();
        for round in 1..=50 {
            let mut completed = 0;
            for _ in 0..100 {
                out.clear();
                w.next_update(&mut out, 1_000);
                let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
                completed += usize::from(v["status"] == "COMPLETED");
            }
            if round > 1 {
                assert_eq!(
                    completed, 10,
                    "round {round}: 100 tasks living 10 updates each"
                );
            }
        }
    }

    #[test]
    fn never_finish_floods_distinct_unfinished_tasks() {
        let mut w = Workload::new(0, 3, 0.0, 1, false);
        let mut ids = std::collections::HashSet::new();
        let mut out = String::new();
        for _ in 0..30 {
            out.clear();
            w.next_update(&mut out, 1_000);
            let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
            assert_eq!(v["status"], "IN_PROGRESS", "{v}");
            assert_eq!(
                v["taskType"], "lg_task",
                "every update starts a new task: {v}"
            );
            ids.insert(v["taskId"].as_str().unwrap().to_string());
        }
        assert_eq!(ids.len(), 30, "30 updates, 30 distinct tasks");
    }

    #[test]
    fn pushgateway_pushes_one_group_per_task() {
        let mut w = Workload::new(0, 2, 0.0, 2, true);
        let (mut path, mut body) = (String::new(), String::new());
        w.next_push(&mut path, &mut body);
        assert!(
            path.starts_with("/metrics/job/loadgen/task_id/lg"),
            "{path}"
        );
        assert!(
            body.starts_with("loadgen_task_progress_ratio{workflow_type=\"loadgen\""),
            "{body}"
        );
        assert!(body.trim_end().ends_with(" 0.5"), "{body}");
        let first = path.clone();
        for _ in 0..3 {
            path.clear();
            body.clear();
            w.next_push(&mut path, &mut body);
        }
        assert_ne!(
            path, first,
            "finished tasks are replaced by new ones (new groups)"
        );
    }
}
