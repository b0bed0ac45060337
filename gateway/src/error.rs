//! The gateway's one error type: a stable code, a message naming the field and the limit, and
//! the parameter at fault. WebSocket `error` frames and HTTP error bodies (OpenAI's shape) are
//! both rendered from it.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// A client-facing error code. The string forms are part of the wire protocol and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame or body is not valid JSON.
    InvalidJson,
    /// A field is missing, has the wrong type or is out of range (the message names it).
    InvalidRequest,
    /// The prompt does not fit the model's context.
    PromptTooLong,
    /// The server is at its limit of queued work or connections.
    Overloaded,
    /// Missing or wrong API key.
    Unauthorized,
    /// A browser `Origin` outside the allow-list.
    ForbiddenOrigin,
    /// No such route, model or request id.
    NotFound,
    /// A failure inside the server.
    Internal,
}

impl ErrorCode {
    /// Every code, in a fixed order.
    pub const ALL: [ErrorCode; 8] = [
        Self::InvalidJson,
        Self::InvalidRequest,
        Self::PromptTooLong,
        Self::Overloaded,
        Self::Unauthorized,
        Self::ForbiddenOrigin,
        Self::NotFound,
        Self::Internal,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::PromptTooLong => "prompt_too_long",
            Self::Overloaded => "overloaded",
            Self::Unauthorized => "unauthorized",
            Self::ForbiddenOrigin => "forbidden_origin",
            Self::NotFound => "not_found",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status of an error with this code.
    pub fn http_status(self) -> u16 {
        match self {
            Self::InvalidJson | Self::InvalidRequest | Self::PromptTooLong => 400,
            Self::Unauthorized => 401,
            Self::ForbiddenOrigin => 403,
            Self::NotFound => 404,
            Self::Overloaded => 503,
            Self::Internal => 500,
        }
    }

    /// The code for an engine error (the engine names it: [`specd_engine::Error::code`]).
    pub fn from_engine(e: &specd_engine::Error) -> Self {
        Self::from_wire(e.code()).unwrap_or(Self::Internal)
    }

    /// The code whose wire form is `s`.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error a client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// The request field at fault, when there is one (`max_tokens`, `speculation.method`).
    pub param: Option<String>,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
        }
    }

    /// An `invalid_request` about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message).with_param(param)
    }

    /// Names the parameter at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// An `internal` error (the message is logged in full, the client gets it too: nothing
    /// secret reaches this type).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// The OpenAI error body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn openai_body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.code.openai_type(),
                "param": self.param,
                "code": self.code.as_str(),
            }
        })
    }
}

impl From<&specd_engine::Error> for ApiError {
    fn from(e: &specd_engine::Error) -> Self {
        Self::new(ErrorCode::from_engine(e), e.to_string())
    }
}

impl From<specd_engine::actors::RequestError> for ApiError {
    fn from(e: specd_engine::actors::RequestError) -> Self {
        Self::new(
            ErrorCode::from_wire(e.code).unwrap_or(ErrorCode::Internal),
            e.message,
        )
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(self.openai_body())
    }
}

impl ErrorCode {
    /// OpenAI's error `type` for this code (clients branch on it).
    pub fn openai_type(self) -> &'static str {
        match self {
            Self::InvalidJson | Self::InvalidRequest | Self::PromptTooLong => {
                "invalid_request_error"
            }
            Self::Unauthorized => "authentication_error",
            Self::ForbiddenOrigin => "permission_error",
            Self::NotFound => "not_found_error",
            Self::Overloaded => "overloaded_error",
            Self::Internal => "server_error",
        }
    }
}

/// Serializes as the wire string.
impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_snake_case_and_map_to_error_statuses() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(
                s.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{s}"
            );
            assert!((400..600).contains(&c.http_status()));
        }
    }

    #[test]
    fn engine_errors_map_to_client_codes() {
        let e = specd_engine::Error::ContextLength { len: 10, limit: 5 };
        assert_eq!(ErrorCode::from_engine(&e), ErrorCode::PromptTooLong);
        let e = specd_engine::Error::InvalidRequest("`top_p` must be in (0, 1]".into());
        assert_eq!(ErrorCode::from_engine(&e), ErrorCode::InvalidRequest);
    }
}
