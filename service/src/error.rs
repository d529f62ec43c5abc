//! The shared crate's one error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),

    #[error("applying migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    /// Something the caller asked for that is not valid (bad cron expression, bad spec).
    #[error("{field}: {msg}")]
    Invalid { field: String, msg: String },

    /// A checkpoint's bytes are not in the object store.
    #[error("checkpoint blob {sha256} is missing from the object store at {path}")]
    BlobMissing { sha256: String, path: String },

    /// A checkpoint's bytes do not hash to the sha256 recorded for them.
    #[error("checkpoint blob at {path} is corrupted: sha256 {found}, expected {expected}")]
    BlobCorrupt {
        path: String,
        expected: String,
        found: String,
    },
}

impl Error {
    pub fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }
    pub fn invalid(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
