//! Talking to the Conductor server over HTTP: the worker proxy forwards through this, and the
//! checker rules that ask the engine use it too.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::http::seam::error;

/// Why the engine gave no answer to pass on.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("bad path: {0}")]
    BadPath(String),
    #[error("Conductor at {base} is unreachable: {reason}")]
    Unreachable { base: String, reason: String },
    #[error("Conductor at {base} did not answer within {after:?} (--conductor-timeout)")]
    Timeout { base: String, after: Duration },
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading a body failed: {0}")]
    Body(String),
    #[error("Conductor at {base} answered {status}")]
    Status { base: String, status: StatusCode },
    #[error("Conductor's answer is not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl IntoResponse for UpstreamError {
    fn into_response(self) -> Response {
        let status = match &self {
            UpstreamError::BadPath(_) => StatusCode::BAD_REQUEST,
            UpstreamError::Unreachable { .. }
            | UpstreamError::Body(_)
            | UpstreamError::Status { .. }
            | UpstreamError::Json(_) => StatusCode::BAD_GATEWAY,
            UpstreamError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        };
        error(status, self.to_string())
    }
}

/// An HTTP client for one Conductor server.
pub struct EngineClient {
    client: Client<HttpConnector, Body>,
    /// The engine's base URL, without a trailing `/` or `/api`.
    base: String,
    /// Longest the engine may take to start answering (`--conductor-timeout`).
    timeout: Duration,
}

impl std::fmt::Debug for EngineClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineClient")
            .field("base", &self.base)
            .finish()
    }
}

impl EngineClient {
    /// `url` is the engine's address (`http://conductor:8080`; a trailing `/api` is accepted).
    /// `timeout` bounds how long a caller waits for the engine's answer.
    pub fn new(url: &str, timeout: Duration) -> EngineClient {
        let base = url.trim_end_matches('/');
        let base = base.strip_suffix("/api").unwrap_or(base).to_string();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        EngineClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base,
            timeout,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request to the engine; `path_and_query` starts with `/api/`. The answer's
    /// hop-by-hop headers are dropped; its body streams.
    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Body,
    ) -> Result<Response, UpstreamError> {
        let uri: Uri = format!("{}{}", self.base, path_and_query)
            .parse()
            .map_err(|e: http::uri::InvalidUri| UpstreamError::BadPath(e.to_string()))?;
        strip_hop_by_hop(&mut headers);
        if let Some(authority) = uri.authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(header::HOST, host);
            }
        }
        let mut req = http::Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Ok(Response::from_parts(parts, Body::new(body)))
            }
            Ok(Err(e)) => Err(UpstreamError::Unreachable {
                base: self.base.clone(),
                reason: e.to_string(),
            }),
            Err(_) => Err(UpstreamError::Timeout {
                base: self.base.clone(),
                after: self.timeout,
            }),
        }
    }

    /// Sends a JSON request and wants a 2xx.
    pub async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<(), UpstreamError> {
        let r = self
            .send(method, path, json_headers(), Body::from(body))
            .await?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(self.refused(r.status()))
        }
    }

    fn refused(&self, status: StatusCode) -> UpstreamError {
        UpstreamError::Status {
            base: self.base.clone(),
            status,
        }
    }

    /// `GET` of a JSON document: `Ok(None)` for 404 or an empty answer.
    pub async fn get_json(&self, path: &str) -> Result<Option<serde_json::Value>, UpstreamError> {
        let resp = self
            .send(Method::GET, path, json_headers(), Body::empty())
            .await?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| UpstreamError::Body(e.to_string()))?
            .to_bytes();
        if status == StatusCode::NOT_FOUND
            || (status.is_success() && body.iter().all(u8::is_ascii_whitespace))
        {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.refused(status));
        }
        Ok(Some(serde_json::from_slice(&body)?))
    }
}

/// Reads a whole body, up to `limit` bytes.
pub async fn collect(body: Body, limit: usize) -> Result<Bytes, UpstreamError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(UpstreamError::TooLarge(limit)),
        Err(e) => Err(UpstreamError::Body(e.to_string())),
    }
}

pub fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    h
}

/// Percent-encodes a path segment.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Headers that belong to one connection, not to the message.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    const HOP: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    if let Some(listed) = headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_string())
    {
        for name in listed.split(',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                headers.remove(name);
            }
        }
    }
    for h in HOP {
        headers.remove(h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engine_base_url_is_normalized() {
        let t = Duration::from_secs(30);
        assert_eq!(
            EngineClient::new("http://c:8080/api/", t).base(),
            "http://c:8080"
        );
        assert_eq!(
            EngineClient::new("http://c:8080", t).base(),
            "http://c:8080"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert(
            "authorization",
            HeaderValue::from_static("Bearer engine-token"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["authorization"], "Bearer engine-token");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(urlencode("a b/c"), "a%20b%2Fc");
        assert_eq!(urlencode("task-1_x.y~"), "task-1_x.y~");
    }
}
