//! specd-gateway: the network face of specd. It will hold the actix-web application — the
//! WebSocket streaming protocol (`GET /v1/stream`), the OpenAI-compatible HTTP + SSE endpoints,
//! `/metrics` and the demo page — talking to the engine only through its handle.
//!
//! What exists now is the piece every endpoint shares: the stable error codes that clients
//! see on both transports, and the HTTP status each maps to.

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
