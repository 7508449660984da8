//! The library's error type for start-up, the store and the commands. Binaries wrap it in
//! `anyhow` at the edge; the ingest path has its own ([`crate::pipeline::IngestError`]).

/// Everything that can go wrong outside the ingest path, typed so callers can react
/// (start-up maps `Config` to exit code 2 with a message naming the setting; the writer retries
/// what [`crate::store::is_transient`] calls an outage).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    #[error("unsupported database URL `{0}`: expected sqlite://PATH or postgres://...")]
    UnsupportedDatabase(String),

    #[error("{0}")]
    NotMigrated(String),

    #[error("the store did not take the last writes within {0:?} of shutting down")]
    DrainTimeout(std::time::Duration),

    #[error("stopped by a second signal before the last writes were flushed")]
    Aborted,

    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    /// An engine's own store (Conductor's Redis) could not be read.
    #[error("{0}")]
    Engine(String),

    /// Something a setting names (the store, an engine's database or Redis) could not be
    /// reached or read at start: not a configuration error, though it stops start-up.
    #[error("{what}: {source}")]
    Unavailable {
        what: String,
        #[source]
        source: Box<Error>,
    },

    /// An engine could not carry out what was asked of it (a repair, a look-up); the adapter's
    /// own error is kept as the source.
    #[error("{0}")]
    EngineCall(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error and its causes on one line, each cause once: these errors already show their
/// source's text (`database error: {0}`), so walking the chain would repeat every level.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line = format!("{line}: {text}");
        }
        cause = c.source();
    }
    line
}
