//! The api's one error type. Each variant maps to exactly one HTTP status and a JSON body
//! `{error, error_type, field?}`; bad input is always a 4xx that names the field, internal
//! errors are logged and shown only as "internal error".

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON.
    #[error("{msg}")]
    InvalidJson { msg: String },
    /// The job spec (or schedule template) was rejected by the engine.
    #[error("{msg}")]
    InvalidSpec { field: Option<String>, msg: String },
    /// A path, query or body parameter is malformed.
    #[error("{field}: {msg}")]
    InvalidParam { field: String, msg: String },
    #[error("missing or unknown API key: send `Authorization: Bearer <token>` (create one with `attune admin create-key`)")]
    Unauthorized,
    #[error("{what} not found")]
    NotFound { what: String, field: String },
    #[error("{msg}")]
    Conflict { msg: String },
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{msg}")]
    BlobMissing { msg: String },
    #[error("{msg}")]
    BlobCorrupt { msg: String },
    #[error("{msg}")]
    Unavailable { msg: String },
    #[error("internal error")]
    Internal(String),
}

/// Every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// Stable machine-readable kind: `invalid_json`, `invalid_spec`, `invalid_parameter`,
    /// `unauthorized`, `not_found`, `conflict`, `payload_too_large`, `checkpoint_blob_missing`,
    /// `checkpoint_blob_corrupt`, `unavailable`, `internal`.
    pub error_type: String,
    /// The offending field, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidJson { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidSpec { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InvalidParam { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BlobMissing { .. } => StatusCode::GONE,
            ApiError::BlobCorrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::InvalidJson { .. } => "invalid_json",
            ApiError::InvalidSpec { .. } => "invalid_spec",
            ApiError::InvalidParam { .. } => "invalid_parameter",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound { .. } => "not_found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::BlobMissing { .. } => "checkpoint_blob_missing",
            ApiError::BlobCorrupt { .. } => "checkpoint_blob_corrupt",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn field(&self) -> Option<String> {
        match self {
            ApiError::InvalidSpec { field, .. } => field.clone(),
            ApiError::InvalidParam { field, .. } | ApiError::NotFound { field, .. } => {
                Some(field.clone())
            }
            _ => None,
        }
    }

    pub fn param(field: impl Into<String>, msg: impl Into<String>) -> Self {
        ApiError::InvalidParam {
            field: field.into(),
            msg: msg.into(),
        }
    }

    pub fn not_found(what: impl Into<String>, field: impl Into<String>) -> Self {
        ApiError::NotFound {
            what: what.into(),
            field: field.into(),
        }
    }

    /// An engine spec error, with the field it names (`field `x``, `unknown field `x``,
    /// `missing field `x``, `unknown variant` of `kind`...).
    pub fn spec(e: attune_engine::EngineError, prefix: &str) -> Self {
        let msg = e.to_string();
        let field = spec_field(&msg).map(|f| {
            if prefix.is_empty() {
                f
            } else {
                format!("{prefix}.{f}")
            }
        });
        ApiError::InvalidSpec {
            field: field.or_else(|| (!prefix.is_empty()).then(|| prefix.to_string())),
            msg,
        }
    }
}

/// The field an engine or serde message names, if any.
pub fn spec_field(msg: &str) -> Option<String> {
    let quoted = |after: &str| -> Option<String> {
        let i = msg.find(after)? + after.len();
        let rest = &msg[i..];
        let end = rest.find('`')?;
        Some(rest[..end].to_string())
    };
    for pat in ["unknown field `", "missing field `", "field `"] {
        if let Some(f) = quoted(pat) {
            return Some(f);
        }
    }
    if msg.contains("`kind`") || msg.contains("unknown variant") && msg.contains("train") {
        return Some("kind".into());
    }
    // Messages of the engine's own checks start with the field name ("severity must be …").
    let body = msg.strip_prefix("invalid spec: ").unwrap_or(msg);
    let first = body.split_whitespace().next()?;
    let looks_like_field = first
        .chars()
        .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
        && body[first.len()..].trim_start().starts_with("must");
    looks_like_field.then(|| first.to_string())
}

impl From<attune_service::Error> for ApiError {
    fn from(e: attune_service::Error) -> Self {
        use attune_service::Error as E;
        match e {
            E::Invalid { field, msg } => ApiError::InvalidParam { field, msg },
            E::BlobMissing { .. } => ApiError::BlobMissing { msg: e.to_string() },
            E::BlobCorrupt { .. } => ApiError::BlobCorrupt { msg: e.to_string() },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::Internal(format!("postgres: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(detail) => tracing::error!("internal error: {detail}"),
            ApiError::BlobCorrupt { msg } | ApiError::BlobMissing { msg } => {
                tracing::error!("{msg}")
            }
            _ => {}
        }
        let body = ErrorBody {
            error: self.to_string(),
            error_type: self.error_type().into(),
            field: self.field(),
        };
        (status, axum::Json(body)).into_response()
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::spec_field;

    #[test]
    fn finds_the_field_in_engine_messages() {
        assert_eq!(
            spec_field("invalid spec: field `seed`: invalid type: string \"x\", expected u64")
                .as_deref(),
            Some("seed")
        );
        assert_eq!(
            spec_field("invalid spec: unknown field `epoch`, expected one of `dataset`, `epochs`")
                .as_deref(),
            Some("epoch")
        );
        assert_eq!(
            spec_field(
                "invalid spec: missing field `kind` (one of: train, adapt, evaluate, sample)"
            )
            .as_deref(),
            Some("kind")
        );
        assert_eq!(
            spec_field("invalid spec: severity must be 1 to 5, got 7").as_deref(),
            Some("severity")
        );
        assert_eq!(spec_field("something else entirely"), None);
    }
}
