//! The engine's one error type. Every message names what was expected and what was found, and for
//! missing data the command that fetches it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A name in a spec (method, corruption, dataset, architecture, ...) is not one we know.
    #[error("unknown {kind} `{name}`; valid names: {}", valid.join(", "))]
    UnknownName {
        kind: &'static str,
        name: String,
        valid: Vec<String>,
    },

    /// A spec that parsed but whose values make no sense (severity 7, batch size 0, ...).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),

    /// A data file that is missing: says which command fetches it.
    #[error("{what} not found at {}: run `{fetch_cmd}` to fetch it (or set ATTUNE_DATA_DIR)", path.display())]
    MissingData {
        what: String,
        path: PathBuf,
        fetch_cmd: String,
    },

    /// A file that exists but is not what it should be (truncated, wrong magic, wrong shape, bad checksum).
    #[error("{}: {msg}", path.display())]
    BadFile { path: PathBuf, msg: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A tensor operation failed (shape mismatch, device error).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("json: {0}")]
    Json(#[from] serde_json::Error),

    /// A tokenizer failed to encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The verifier sandbox could not be set up or run (not a verdict on the code it ran).
    #[error("sandbox: {0}")]
    Sandbox(String),

    /// The job was cancelled through its cancellation token.
    #[error("cancelled")]
    Cancelled,
}

impl EngineError {
    pub fn bad_file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        EngineError::BadFile {
            path: path.into(),
            msg: msg.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn unknown(
        kind: &'static str,
        name: &str,
        valid: impl IntoIterator<Item = impl ToString>,
    ) -> Self {
        EngineError::UnknownName {
            kind,
            name: name.to_string(),
            valid: valid.into_iter().map(|v| v.to_string()).collect(),
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
