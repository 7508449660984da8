//! The HTTP surface (`docs/contract.md` §2 and §5): ingest, reading state, the status page and
//! its live feed, health and `/metrics`, served by
//! our own accept loop ([`server`]). Handlers parse, call the pipeline or read memory and the
//! store, and turn the outcome into a response; nothing here decides about an update.
//!
//! Engines add routes of their own ([`Routes`]): under `/api/v1/` behind the same token, or at
//! the root (a worker proxy). This module never names an engine.

mod auth;
pub mod body;
pub mod ingest;
mod live;
pub mod overview;
mod query;
mod read;
pub mod seam;
pub mod server;
mod ui;
mod views;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tracing::Instrument;

use crate::metrics::Exposition;
use crate::pipeline::Pipeline;
use crate::settings::HttpSettings;
use crate::store::Store;

pub use auth::bearer_matches;
pub use live::{max_streams, LiveStreams};
pub use overview::{Overview, OverviewSources};
pub use read::SharedLists;
pub use views::TaskView;

/// Shared by the core's handlers. One reference count: axum clones the state for every
/// handler call, and a struct of ten shared fields cost ten atomic increments and decrements
/// per request (about 3 % of the server's time under single-update requests).
#[derive(Clone)]
pub struct HttpState(Arc<HttpShared>);

impl HttpState {
    pub fn new(shared: HttpShared) -> HttpState {
        HttpState(Arc::new(shared))
    }
}

impl std::ops::Deref for HttpState {
    type Target = HttpShared;
    fn deref(&self) -> &HttpShared {
        &self.0
    }
}

/// What [`HttpState`] shares.
pub struct HttpShared {
    pub pipeline: Arc<Pipeline>,
    pub store: Store,
    pub exposition: Arc<Exposition>,
    pub settings: Arc<HttpSettings>,
    /// `--stall-after`, for the task views' `stalled`.
    pub stall_after: Duration,
    /// Set when shutdown starts: readiness turns false at once.
    pub draining: Arc<AtomicBool>,
    /// The engines' readiness checks (a source they read that is failing).
    pub engine_readiness: Arc<Vec<Readiness>>,
    /// The status page's overview, shared by every page and stream.
    pub overview: Arc<Overview>,
    /// The open event streams (`/api/v1/events`), bounded.
    pub live: Arc<LiveStreams>,
    /// Task-list answers shared by requests that accept a recent one (`maxAge`).
    pub shared_lists: Arc<SharedLists>,
}

/// A readiness check a source adds: `Some(why)` while it is failing (`/readyz` answers 503).
pub type Readiness = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Routes an engine adds, each with its own state already applied.
#[derive(Default)]
pub struct Routes {
    /// Nested under `/api/v1`, behind `--auth-token` like the core's own API.
    pub api: Router,
    /// At the root, outside taskpulse's own API.
    pub root: Router,
}

impl Routes {
    pub fn merge(mut self, other: Routes) -> Routes {
        self.api = self.api.merge(other.api);
        self.root = self.root.merge(other.root);
        self
    }
}

/// The router: the core's routes, the engines' routes, and the limits every request gets.
pub fn router(state: HttpState, extra: Routes) -> Router {
    let api = Router::new()
        .route("/updates", post(ingest::post_updates))
        .route("/tasks", get(read::list_tasks))
        .route("/tasks/{task_id}", get(read::get_task))
        .route("/task", get(read::get_task_by_query))
        .route("/repairs", get(read::list_repairs))
        .route("/overview", get(read::overview))
        .route("/events", get(live::events))
        // the rest of /api/v1/ is ours too: never anyone else's route (the worker proxy's)
        .route("/{*rest}", axum::routing::any(read::not_found))
        .with_state(state.clone())
        .merge(extra.api);
    // Without a token there is nothing to check: no layer, rather than one that passes every
    // request through a boxed call.
    let api = match state.settings.auth_token.clone() {
        Some(token) => api.layer(middleware::from_fn_with_state(
            Arc::new(token),
            auth::require_token,
        )),
        None => api,
    };
    let router = ui::routes()
        .route("/healthz", get(read::healthz))
        .route("/readyz", get(read::readyz))
        .route("/metrics", get(read::metrics))
        .with_state(state.clone())
        .nest("/api/v1", api)
        .merge(extra.root)
        .fallback(read::not_found)
        .layer(middleware::from_fn_with_state(
            state.settings.body_read_timeout,
            body::deadline,
        ));
    // The span is a debug one: where debug is off for good (the level is set at start-up)
    // it would never be made, and its layer would still cost a boxed call per request.
    let router = if tracing::enabled!(tracing::Level::DEBUG) {
        router.layer(middleware::from_fn(request_span))
    } else {
        router
    };
    router.layer(DefaultBodyLimit::max(
        state.settings.max_body_bytes.as_u64() as usize,
    ))
}

/// Every request's events under one span (method and path, the path cut to 120 bytes), so
/// `TASKPULSE_LOG=debug` groups what one request did. A debug span, and its layer only there
/// when debug is on: at the default level neither costs a request anything.
async fn request_span(req: axum::extract::Request, next: middleware::Next) -> Response {
    let path = crate::ingest::truncate(req.uri().path(), 120);
    let span = tracing::debug_span!("request", method = %req.method(), path = path);
    next.run(req).instrument(span).await
}

/// A JSON error body with a status.
pub fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// 503 with `Retry-After: 1`.
pub fn unavailable(msg: impl Into<String>) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, msg);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}
