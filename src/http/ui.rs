//! The status page (`/`): its files embedded in the binary (`src/http/ui/`), so it works offline
//! and a release is one file. The page itself holds no data: it reads the API with the token the
//! user gives it, so it is served without `--auth-token`.
//!
//! The script is a set of ES modules (`/ui/app.js` imports the others from `/ui/`), loaded as
//! `<script type="module">`: no build step. Every file under `/ui/` is one of [`FILES`], served
//! with the same headers; any other name is a 404.
//!
//! `Content-Security-Policy: default-src 'self'` makes the browser refuse anything from another
//! origin, scripts included: the page cannot leak what it shows, even if a task's message holds
//! markup. Its `script-src 'self'` admits the page's own modules and nothing else.

use axum::extract::Path;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::set_header::SetResponseHeaderLayer;

const INDEX: &str = include_str!("ui/index.html");

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The files under `/ui/`: (name, content, content type). A module the page imports that is not
/// listed here fails to load (a 404), which the browser test sees.
const FILES: &[(&str, &str, &str)] = &[
    ("app.css", include_str!("ui/app.css"), CSS),
    ("app.js", include_str!("ui/app.js"), JS),
    ("api.js", include_str!("ui/api.js"), JS),
    ("auth.js", include_str!("ui/auth.js"), JS),
    ("chart.js", include_str!("ui/chart.js"), JS),
    ("figures.js", include_str!("ui/figures.js"), JS),
    ("format.js", include_str!("ui/format.js"), JS),
    ("helpers.js", include_str!("ui/helpers.js"), JS),
    ("inflight.js", include_str!("ui/inflight.js"), JS),
    ("live.js", include_str!("ui/live.js"), JS),
    ("overview.js", include_str!("ui/overview.js"), JS),
    ("repairs.js", include_str!("ui/repairs.js"), JS),
    ("router.js", include_str!("ui/router.js"), JS),
    ("task.js", include_str!("ui/task.js"), JS),
    ("wait.js", include_str!("ui/wait.js"), JS),
    ("widgets.js", include_str!("ui/widgets.js"), JS),
];

const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// The page's header block: on every file of the page (not on the 404 of a name that isn't one).
const PAGE_HEADERS: [(HeaderName, &str); 4] = [
    (header::CONTENT_SECURITY_POLICY, CSP),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    // a new binary brings new files: the browser asks again rather than run stale code
    (header::CACHE_CONTROL, "no-cache"),
];

/// `/` and `/ui/{file}`, with [`PAGE_HEADERS`].
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    PAGE_HEADERS.into_iter().fold(
        Router::new()
            .route("/", get(index))
            .route("/ui/{file}", get(file)),
        |router, (name, value)| {
            let value = HeaderValue::from_static(value);
            router.layer(SetResponseHeaderLayer::overriding(
                name,
                move |r: &Response| r.status().is_success().then(|| value.clone()),
            ))
        },
    )
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

/// `/ui/{file}`: one of [`FILES`], else the API's own 404.
async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, ..)| *n == name) {
        Some((_, body, content_type)) => asset(body, content_type),
        None => super::read::not_found().await,
    }
}
