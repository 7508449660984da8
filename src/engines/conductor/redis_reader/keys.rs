//! Where Conductor keeps its keys (`docs/engines/conductor-redis.md` §1).

/// Conductor's key prefixes: namespace, queue namespace, stack, queue shard, domain.
#[derive(Clone, Debug)]
pub struct Keys {
    pub namespace: String,
    pub queue_namespace: String,
    pub stack: String,
    pub shard: String,
    pub domain: Option<String>,
}

impl Keys {
    /// `{namespace}.{stack}[.{domain}].{kind}`, blank parts left out.
    fn execution(&self, kind: &str) -> String {
        [
            Some(self.namespace.as_str()),
            Some(self.stack.as_str()),
            self.domain.as_deref(),
        ]
        .into_iter()
        .flatten()
        .filter(|p| !p.trim().is_empty())
        .chain([kind])
        .collect::<Vec<_>>()
        .join(".")
    }

    pub fn task(&self, id: &str) -> String {
        format!("{}.{id}", self.execution("TASK"))
    }

    pub fn in_progress_pattern(&self) -> String {
        format!("{}.*", self.execution("IN_PROGRESS_TASKS"))
    }

    /// `PENDING_WORKFLOWS.{workflowName}`: the ids of each workflow type's running workflows.
    pub fn pending_pattern(&self) -> String {
        format!("{}.*", self.execution("PENDING_WORKFLOWS"))
    }

    /// `WORKFLOW_TO_TASKS.{workflowId}`: every task id of one workflow.
    pub fn workflow_tasks(&self, workflow_id: &str) -> String {
        format!("{}.{workflow_id}", self.execution("WORKFLOW_TO_TASKS"))
    }

    /// A `SCAN MATCH` pattern covering `IN_PROGRESS_TASKS.*` and `PENDING_WORKFLOWS.*` in one
    /// walk (a few other keys may match: the reader filters by prefix).
    pub fn sets_pattern(&self) -> String {
        format!("{}*", self.execution("[IP][NE][_N][PD]"))
    }

    /// `{queue namespace}.{stack}.QUEUE.`: no blank check, no domain (as Conductor does it).
    pub fn queue_prefix(&self) -> String {
        format!("{}.{}.QUEUE.", self.queue_namespace, self.stack)
    }

    pub fn queue(&self, name: &str) -> String {
        format!("{}{name}.{}", self.queue_prefix(), self.shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_conductors_composition() {
        let k = Keys {
            namespace: "conductor".into(),
            queue_namespace: "conductor_queues".into(),
            stack: "test".into(),
            shard: "c".into(),
            domain: None,
        };
        assert_eq!(k.task("t1"), "conductor.test.TASK.t1");
        assert_eq!(
            k.in_progress_pattern(),
            "conductor.test.IN_PROGRESS_TASKS.*"
        );
        assert_eq!(k.pending_pattern(), "conductor.test.PENDING_WORKFLOWS.*");
        assert_eq!(k.sets_pattern(), "conductor.test.[IP][NE][_N][PD]*");
        assert_eq!(
            k.workflow_tasks("w1"),
            "conductor.test.WORKFLOW_TO_TASKS.w1"
        );
        assert_eq!(k.queue("WAIT"), "conductor_queues.test.QUEUE.WAIT.c");
        let k = Keys {
            namespace: String::new(),
            domain: Some("kd".into()),
            ..k
        };
        assert_eq!(
            k.task("t1"),
            "test.kd.TASK.t1",
            "a blank prefix is left out"
        );
        assert_eq!(
            k.queue("WAIT"),
            "conductor_queues.test.QUEUE.WAIT.c",
            "queues ignore the domain"
        );
    }
}
