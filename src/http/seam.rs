//! The HTTP server as an engine adapter sees it: the small public API an engine's routes are
//! written against (a webhook, a worker proxy), so no engine reaches into the server's
//! modules. A handler reads its body within the limit ([`read_body`]), answers a body that is
//! not JSON the way the update API does ([`bad_body`]), submits what it parsed and answers
//! with the pipeline's report ([`submit`]), and words every other refusal with [`error`].
//! What an engine adds to the router, and how it reports readiness, are [`Routes`] and
//! [`Readiness`]. `tests/api/architecture.rs` checks that engines import nothing else of
//! `crate::http`.

pub use super::auth::bearer_matches;
pub use super::body::{read_body, BodyRejected};
pub use super::ingest::{bad_body, submit};
pub use super::{error, Readiness, Routes};
