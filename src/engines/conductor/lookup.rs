//! What Conductor holds of a task, for the checker's rules: read from its own store when
//! taskpulse follows one (`--conductor-db`, `--conductor-redis`: one batched query by primary
//! key, no REST round trip), else asked of its REST API (`--conductor-url`, one call per task).
//! Read-only like the store readers: `SELECT ... WHERE task_id = ANY($1)` or `MGET`.

use std::collections::HashMap;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use sqlx::{PgPool, Row};
use tokio::sync::OnceCell;

use super::client::{urlencode, EngineClient, UpstreamError};
use super::redis_reader::{self, Keys};
use super::task_tail::update_from_row;
use super::wait_queue::lazy_read_only;
use crate::error::Result;
use crate::model::Status;

/// Tasks asked of a store per query.
pub const STORE_BATCH: usize = 2_000;
/// Tasks asked of the REST API per rule per pass, at most (one call each).
pub const REST_BATCH: usize = 500;

const FETCH: &str = "SELECT task_id::text, json_data FROM task WHERE task_id = ANY($1)";

/// What the engine holds of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineTask {
    pub status: Option<Status>,
    /// The last change, epoch ms: the larger of `updateTime` and `endTime`, from a store or REST.
    pub update_time: Option<i64>,
    pub worker_id: Option<String>,
    /// The engine's own sign that it put the task back to work after it finished, engine
    /// time (see `task_tail::update_from_row`); `None` when the record shows none.
    pub reopened_at: Option<i64>,
}

/// Where the checker reads the engine's side.
pub enum Lookup {
    Rest(Arc<EngineClient>),
    Postgres(PgPool),
    Redis(Box<RedisLookup>),
}

/// A connection to Conductor's Redis made on first use.
pub struct RedisLookup {
    url: String,
    password: Option<String>,
    keys: Keys,
    con: OnceCell<ConnectionManager>,
}

impl Lookup {
    /// A store look-up, connecting on first use.
    pub fn postgres(url: &str) -> Result<Lookup> {
        Ok(Lookup::Postgres(lazy_read_only(url)?))
    }

    pub fn redis(url: &str, password: Option<String>, keys: Keys) -> Lookup {
        Lookup::Redis(Box::new(RedisLookup {
            url: url.to_string(),
            password,
            keys,
            con: OnceCell::new(),
        }))
    }

    /// How it reads, for evidence: `rest`, `conductor_db` or `conductor_redis`.
    pub fn via(&self) -> &'static str {
        match self {
            Lookup::Rest(_) => "rest",
            Lookup::Postgres(_) => super::task_tail::SOURCE,
            Lookup::Redis(_) => redis_reader::SOURCE,
        }
    }

    /// Whether it reads the engine's store (the whole store can be swept), not its API.
    pub fn is_store(&self) -> bool {
        !matches!(self, Lookup::Rest(_))
    }

    /// Most tasks worth asking in one pass of one rule.
    pub fn per_pass(&self) -> usize {
        match self {
            Lookup::Rest(_) => REST_BATCH,
            _ => 50 * STORE_BATCH,
        }
    }

    /// The engine's side of these tasks; a task it doesn't hold (or holds unreadably) is
    /// absent from the answer. An error when the engine or its store can't be read.
    pub async fn tasks(
        &self,
        ids: &[String],
    ) -> std::result::Result<HashMap<String, EngineTask>, LookupError> {
        let mut out = HashMap::with_capacity(ids.len());
        match self {
            Lookup::Rest(client) => {
                for id in ids.iter().take(REST_BATCH) {
                    if let Some(t) = rest_task(client, id).await? {
                        out.insert(id.clone(), t);
                    }
                }
            }
            Lookup::Postgres(pool) => {
                for chunk in ids.chunks(STORE_BATCH) {
                    let rows = sqlx::query(FETCH)
                        .bind(chunk)
                        .fetch_all(pool)
                        .await
                        .map_err(LookupError::Database)?;
                    for row in rows {
                        let (Ok(id), Ok(json)) =
                            (row.try_get::<String, _>(0), row.try_get::<String, _>(1))
                        else {
                            continue;
                        };
                        if let Some(t) = from_json(&id, &json) {
                            out.insert(id, t);
                        }
                    }
                }
            }
            Lookup::Redis(r) => {
                let mut con = r
                    .con
                    .get_or_try_init(|| redis_reader::connect(&r.url, r.password.as_deref()))
                    .await
                    .map_err(|e| LookupError::Connect(Box::new(e)))?
                    .clone();
                for chunk in ids.chunks(redis_reader::BATCH) {
                    let keys: Vec<String> = chunk.iter().map(|id| r.keys.task(id)).collect();
                    let docs: Vec<Option<String>> = redis::cmd("MGET")
                        .arg(&keys)
                        .query_async(&mut con)
                        .await
                        .map_err(LookupError::Redis)?;
                    for (id, doc) in chunk.iter().zip(docs) {
                        if let Some(t) = doc.and_then(|d| from_json(id, &d)) {
                            out.insert(id.clone(), t);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Why the engine's side of some tasks could not be read (the pass retries later).
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("Conductor's database: {0}")]
    Database(#[source] sqlx::Error),
    #[error("Conductor's Redis: {0}")]
    Redis(#[source] redis::RedisError),
    #[error("Conductor's Redis: {0}")]
    Connect(#[source] Box<crate::error::Error>),
    #[error(transparent)]
    Rest(#[from] UpstreamError),
}

/// A stored `TaskModel` read as the store readers read it.
fn from_json(id: &str, json: &str) -> Option<EngineTask> {
    update_from_row(id, json).map(|u| EngineTask {
        status: Some(u.status),
        update_time: u.update_time,
        worker_id: u.worker_id,
        reopened_at: u.reopen.map(|r| r.at),
    })
}

/// `GET /api/tasks/{taskId}`: `Ok(None)` when the engine doesn't know the task.
pub async fn rest_task(
    client: &EngineClient,
    task_id: &str,
) -> std::result::Result<Option<EngineTask>, UpstreamError> {
    let path = format!("/api/tasks/{}", urlencode(task_id));
    Ok(client.get_json(&path).await?.map(|v| from_rest(&v)))
}

/// A REST `Task` read as the store look-ups read a `TaskModel`: the last change is the larger of
/// `updateTime` and `endTime`, since Conductor's terminal write sets `endTime` and leaves
/// `updateTime` at the last non-terminal write (`ExecutionDAOFacade.updateTask`).
fn from_rest(v: &serde_json::Value) -> EngineTask {
    let time = |field: &str| v.get(field).and_then(|t| t.as_i64()).filter(|t| *t > 0);
    EngineTask {
        status: v
            .get("status")
            .and_then(|s| s.as_str())
            .and_then(Status::parse),
        update_time: time("updateTime").max(time("endTime")),
        worker_id: v
            .get("workerId")
            .and_then(|w| w.as_str())
            .map(str::to_string),
        reopened_at: None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::routing::get;
    use axum::{Json, Router};
    use serde_json::json;

    use super::*;

    /// `GET /api/tasks/{taskId}` of a task completed by its worker: Conductor answers the
    /// poll's `updateTime` and the completion's `endTime`; the look-up takes the later.
    #[tokio::test]
    async fn the_rest_look_up_takes_the_later_of_update_and_end_time() {
        let task = json!({"taskId": "t-1", "taskType": "encode", "status": "COMPLETED",
            "workflowInstanceId": "wf-1", "workerId": "w-1", "scheduledTime": 1_000,
            "startTime": 2_000, "updateTime": 2_000, "endTime": 9_000});
        let app = Router::new().route(
            "/api/tasks/t-1",
            get(move || {
                let task = task.clone();
                async move { Json(task) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = EngineClient::new(&format!("http://{addr}"), Duration::from_secs(5));
        let t = rest_task(&client, "t-1").await.unwrap().unwrap();
        assert_eq!(t.status, Some(Status::Completed));
        assert_eq!(t.update_time, Some(9_000));
        assert_eq!(t.worker_id.as_deref(), Some("w-1"));
        assert_eq!(rest_task(&client, "t-2").await.unwrap(), None);
        server.abort();
    }

    #[test]
    fn a_running_task_keeps_its_update_time() {
        let t = from_rest(&json!({"status": "IN_PROGRESS", "updateTime": 5_000, "endTime": 0}));
        assert_eq!(t.update_time, Some(5_000));
        assert_eq!(from_rest(&json!({})).update_time, None);
    }
}
