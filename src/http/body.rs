//! Request bodies: the size limit's answer, and the deadline by which a body must have arrived.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytesize::ByteSize;

use super::error;

/// A body that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyRejected {
    #[error("request body is larger than --max-body-bytes ({0})")]
    TooLarge(String),
    #[error("{1}")]
    Unreadable(StatusCode, String),
}

impl IntoResponse for BodyRejected {
    fn into_response(self) -> Response {
        let status = match &self {
            BodyRejected::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            BodyRejected::Unreadable(status, _) => *status,
        };
        error(status, self.to_string())
    }
}

/// The body, or why not (413 naming the limit).
pub fn read_body(
    limit: ByteSize,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, BodyRejected> {
    match body {
        Ok(b) => Ok(b),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            Err(BodyRejected::TooLarge(limit.display().iec().to_string()))
        }
        Err(e) => Err(BodyRejected::Unreadable(e.status(), e.body_text())),
    }
}

/// `--body-read-timeout`: a request whose body has not fully arrived this long after its head
/// gets 408 and its connection is closed.
///
/// Without it a client that sends a head with `Content-Length: 8000000` and then trickles (or
/// stops) would hold its connection, and the handler waiting for the body, forever. The deadline
/// runs from when the head was read; a body nobody reads costs nothing.
///
/// Not tower-http's `RequestBodyTimeoutLayer`: its timeout runs between frames and restarts
/// with each one, so a client trickling a byte a second never hits it, and the handler would
/// see an unreadable body (400) where this answers 408 and closes the connection
/// (`tests/api/hostile/connections.rs`).
pub async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    use axum::body::HttpBody;
    if req.body().is_end_stream() {
        return next.run(req).await;
    }
    let expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|inner| {
        axum::body::Body::new(DeadlineBody {
            inner,
            due: tokio::time::Instant::now() + limit,
            deadline: None,
            limit,
            expired: expired.clone(),
        })
    });
    let resp = next.run(req).await;
    if !expired.load(Ordering::Relaxed) {
        return resp;
    }
    let mut r = error(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within --body-read-timeout ({})",
            humantime::format_duration(limit)
        ),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// The body did not arrive in time (`--body-read-timeout`).
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {}", humantime::format_duration(*.0))]
struct BodyTimeout(Duration);

/// A request body that fails once its deadline has passed.
struct DeadlineBody {
    inner: axum::body::Body,
    /// When the body must have arrived: `--body-read-timeout` after the head.
    due: tokio::time::Instant,
    /// The timer, set only once the body has to be waited for: a body that came with its head
    /// (most requests) costs no timer at all.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    limit: Duration,
    expired: Arc<AtomicBool>,
}

impl axum::body::HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let due = this.due;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyTimeout(this.limit).into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
