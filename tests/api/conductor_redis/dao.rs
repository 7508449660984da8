//! `RedisExecutionDAO`'s writes replayed as Conductor makes them (conductor-oss b54f0d4e,
//! `redis-persistence/.../dao/RedisExecutionDAO.java`): the same keys, in the same order, each
//! its own command (the DAO uses no MULTI, no WATCH, no script). Tasks without a concurrency
//! limit, as in the default task definition.

use serde_json::{json, Value};

use super::Conductor;

/// A `WorkflowModel` as stored: `tasks` is written empty; `workflowName` comes from
/// `workflowDefinition.name`.
pub(crate) fn workflow_model(id: &str, name: &str, status: &str, now: i64) -> Value {
    json!({
        "workflowId": id, "status": status, "tasks": [], "input": {}, "output": {},
        "workflowDefinition": {"name": name, "version": 1, "tasks": []},
        "createTime": now, "updatedTime": now, "endTime": 0, "priority": 0,
        "workflowName": name, "workflowVersion": 1
    })
}

/// `yyyyMMdd` of `createTime` (the DAO's `dateStr`, in the JVM's zone; UTC here).
fn date_str(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

fn terminal(status: &str) -> bool {
    !matches!(status, "SCHEDULED" | "IN_PROGRESS" | "RUNNING" | "PAUSED")
}

impl Conductor {
    async fn cmd(&mut self, args: &[&str]) -> redis::Value {
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        c.query_async(&mut self.con).await.unwrap()
    }

    /// `insertOrUpdateWorkflow` (L608-647): SET `WORKFLOW`, on create SADD
    /// `WORKFLOW_DEF_TO_WORKFLOWS.{name}.{date}`, then SADD or (terminal) SREM
    /// `PENDING_WORKFLOWS.{name}`. (`ExecutionDAOFacade.createWorkflow` then pushes the id to
    /// the decider queue, a queue write left out here.)
    pub(crate) async fn store_workflow(&mut self, wf: &Value, create: bool) {
        let id = wf["workflowId"].as_str().unwrap();
        let name = wf["workflowDefinition"]["name"].as_str().unwrap();
        self.cmd(&[
            "SET",
            &format!("conductor.test.WORKFLOW.{id}"),
            &wf.to_string(),
        ])
        .await;
        if create {
            let date = date_str(wf["createTime"].as_i64().unwrap());
            let key = format!("conductor.test.WORKFLOW_DEF_TO_WORKFLOWS.{name}.{date}");
            self.cmd(&["SADD", &key, id]).await;
        }
        let pending = format!("conductor.test.PENDING_WORKFLOWS.{name}");
        let op = if terminal(wf["status"].as_str().unwrap()) {
            "SREM"
        } else {
            "SADD"
        };
        self.cmd(&[op, &pending, id]).await;
    }

    /// `createTasks` (L142-195) for one task: HSET `SCHEDULED_TASKS.{workflowId}`, SADD
    /// `WORKFLOW_TO_TASKS`, SADD `IN_PROGRESS_TASKS.{taskDefName}`, then `updateTask`.
    pub(crate) async fn create_task(&mut self, task: &Value) {
        let id = task["taskId"].as_str().unwrap();
        let wf = task["workflowInstanceId"].as_str().unwrap();
        let field = format!(
            "{}{}",
            task["referenceTaskName"].as_str().unwrap(),
            task["retryCount"]
        );
        let scheduled = format!("conductor.test.SCHEDULED_TASKS.{wf}");
        self.cmd(&["HSET", &scheduled, &field, id]).await;
        let to_tasks = format!("conductor.test.WORKFLOW_TO_TASKS.{wf}");
        self.cmd(&["SADD", &to_tasks, id]).await;
        let def = task["taskDefName"].as_str().unwrap();
        self.cmd(&[
            "SADD",
            &format!("conductor.test.IN_PROGRESS_TASKS.{def}"),
            id,
        ])
        .await;
        self.update_task(task).await;
    }

    /// `updateTask` (L198-277) without a concurrency limit: SET `TASK`, SREM
    /// `IN_PROGRESS_TASKS` when terminal, SMEMBERS `WORKFLOW_TO_TASKS` and SADD if missing.
    pub(crate) async fn update_task(&mut self, task: &Value) {
        let id = task["taskId"].as_str().unwrap();
        let wf = task["workflowInstanceId"].as_str().unwrap();
        let def = task["taskDefName"].as_str().unwrap();
        self.cmd(&[
            "SET",
            &format!("conductor.test.TASK.{id}"),
            &task.to_string(),
        ])
        .await;
        if terminal(task["status"].as_str().unwrap()) {
            self.cmd(&[
                "SREM",
                &format!("conductor.test.IN_PROGRESS_TASKS.{def}"),
                id,
            ])
            .await;
        }
        let to_tasks = format!("conductor.test.WORKFLOW_TO_TASKS.{wf}");
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&to_tasks)
            .query_async(&mut self.con)
            .await
            .unwrap();
        if !members.iter().any(|m| m == id) {
            self.cmd(&["SADD", &to_tasks, id]).await;
        }
    }
}

/// A task of workflow `wf`, as `task_model` makes it.
pub(crate) fn task_of(wf: &str, id: &str, def: &str, status: &str, at: i64) -> Value {
    let mut t = super::task_model(id, def, status, at);
    t["workflowInstanceId"] = json!(wf);
    t["workflowType"] = json!("orders");
    t
}

/// The same task, moved to `status` at `at` (as `ExecutionDAOFacade.updateTask` stamps it).
pub(crate) fn moved(task: &Value, status: &str, at: i64) -> Value {
    let mut t = task.clone();
    t["status"] = json!(status);
    if terminal(status) {
        t["endTime"] = json!(at);
    } else {
        t["updateTime"] = json!(at);
        t["startTime"] = json!(at);
    }
    t
}

#[test]
fn date_str_is_conductors_yyyymmdd() {
    assert_eq!(date_str(0), "19700101");
    assert_eq!(date_str(1_780_315_260_000), "20260601");
    assert_eq!(date_str(951_782_400_000), "20000229");
}
