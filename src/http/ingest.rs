//! `POST /api/v1/updates`, and the answers every ingest route shares: a parsed body goes to the
//! pipeline, its report becomes a 200, its error a 503 with `Retry-After`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::{unavailable, HttpState};
use crate::ingest::{BodyError, Format, Item};
use crate::pipeline::{Ack, IngestError, Pipeline, Report};

/// Where updates posted to the generic API come from (`source` label).
pub const SOURCE: &str = "api";

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        unavailable(self.to_string())
    }
}

/// 400 for a body that is not JSON at all, naming line and column.
pub fn bad_body(e: &BodyError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": e.to_string(), "line": e.line, "column": e.column })),
    )
        .into_response()
}

/// Submits parsed items and answers as every ingest route does.
pub async fn submit(
    pipeline: &Pipeline,
    items: impl IntoIterator<Item = Item>,
    source: &str,
) -> Response {
    match pipeline.submit(items, source, Ack::Commit).await {
        Ok(report) => answer(report),
        Err(e) => e.into_response(),
    }
}

pub fn answer(report: Report) -> Response {
    (StatusCode::OK, Json(report)).into_response()
}

/// `POST /api/v1/updates`.
pub async fn post_updates(
    State(s): State<HttpState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match super::body::read_body(s.settings.max_body_bytes, body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    // Refuse before parsing when the batch could not be taken anyway.
    if let Err(e) = s.pipeline.admit() {
        return e.into_response();
    }
    let format = Format::from_content_type(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    );
    // Items are parsed as the pipeline takes them, a chunk at a time.
    let items = match crate::ingest::items(&body, format) {
        Ok(items) => items,
        Err(e) => return bad_body(&e),
    };
    submit(&s.pipeline, items, SOURCE).await
}
