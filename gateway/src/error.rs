//! The gateway's one error type: a stable code, a message naming the field and the limit, and
//! the parameter at fault. WebSocket `error` frames and HTTP error bodies (OpenAI's shape) are
//! both rendered from it.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

pub use specd_protocol::ErrorCode;

/// The code for an engine error (the engine names it: [`specd_engine::Error::code`]).
pub fn code_of_engine_error(e: &specd_engine::Error) -> ErrorCode {
    ErrorCode::from_wire(e.code()).unwrap_or(ErrorCode::Internal)
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
        Self::new(code_of_engine_error(e), e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_client_codes() {
        let e = specd_engine::Error::ContextLength { len: 10, limit: 5 };
        assert_eq!(code_of_engine_error(&e), ErrorCode::PromptTooLong);
        let e = specd_engine::Error::InvalidRequest("`top_p` must be in (0, 1]".into());
        assert_eq!(code_of_engine_error(&e), ErrorCode::InvalidRequest);
    }
}
