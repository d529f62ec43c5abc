//! Extractors that turn every rejection into an [`ApiError`] naming the field.

use crate::error::{spec_field, ApiError};
use crate::AppState;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// The authenticated key: `Authorization: Bearer <token>` (or `X-Api-Key: <token>`).
pub struct Auth(pub Uuid);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let h = &parts.headers;
        let token = h
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .ok_or(ApiError::Unauthorized)?;
        match attune_service::store::authenticate(&state.pool, token).await? {
            Some(id) => Ok(Auth(id)),
            None => Err(ApiError::Unauthorized),
        }
    }
}

/// A JSON body: 413 above the limit, 400 for malformed JSON, 400 naming the field for a body
/// that does not fit `T`.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: state.cfg.max_body_bytes,
                }
            } else {
                ApiError::InvalidJson {
                    msg: format!("cannot read the request body: {e}"),
                }
            }
        })?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidJson {
                msg: format!("the body is not valid JSON: {e}"),
            })?;
        let t = serde_json::from_value(v).map_err(|e| {
            let msg = e.to_string();
            ApiError::InvalidParam {
                field: spec_field(&msg).unwrap_or_else(|| "body".into()),
                msg,
            }
        })?;
        Ok(Body(t))
    }
}

/// Query parameters; unknown or malformed ones are a 400 naming the parameter.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|q| Q(q.0))
            .map_err(|e| {
                let text = e.body_text();
                let msg = text
                    .strip_prefix("Failed to deserialize query string: ")
                    .unwrap_or(&text)
                    .to_string();
                // axum reports type errors as `<param>: <message>`.
                let by_path = msg.split_once(": ").and_then(|(p, _)| {
                    p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_')
                        .then(|| p.to_string())
                });
                ApiError::InvalidParam {
                    field: spec_field(&msg)
                        .or(by_path)
                        .unwrap_or_else(|| "query".into()),
                    msg: format!("query string: {msg}"),
                }
            })
    }
}

/// A path id.
pub fn parse_id(s: &str, field: &str) -> Result<Uuid, ApiError> {
    s.parse()
        .map_err(|_| ApiError::param(field, format!("`{s}` is not a UUID")))
}
