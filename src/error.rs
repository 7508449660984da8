//! The library's error type. Binaries wrap it in `anyhow` at the edge.

/// Everything that can go wrong inside taskpulse, typed so callers can react (an HTTP handler
/// maps `StoreUnavailable` to 503, start-up maps `Config` to a message naming the setting).
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

    #[error("the store did not confirm the write in time")]
    StoreUnavailable,

    #[error("taskpulse is shutting down")]
    ShuttingDown,

    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
