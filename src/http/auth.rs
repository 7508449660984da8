//! `--auth-token`: taskpulse's own API (`/api/v1/`) wants `Authorization: Bearer TOKEN`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error;
use crate::settings::Secret;

/// Refuses a request without the right bearer token (compared in constant time). Layered only
/// when a token is set.
pub async fn require_token(State(token): State<Arc<Secret>>, req: Request, next: Next) -> Response {
    if !bearer_matches(req.headers(), &token) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    next.run(req).await
}

/// Whether the request's `Authorization: Bearer ...` is `token`.
pub fn bearer_matches(headers: &axum::http::HeaderMap, token: &Secret) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(token.0.as_bytes()))
}
