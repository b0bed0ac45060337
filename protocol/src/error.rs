//! Error codes: the `code` of error frames and of OpenAI error bodies.

use serde::{Deserialize, Serialize};

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

/// Reads the wire string; a code this version does not know is an error naming the known ones.
impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_wire(&s).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.map(Self::as_str).to_vec();
            serde::de::Error::custom(format!(
                "unknown error code `{s}`; expected one of {}",
                known.join(", ")
            ))
        })
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
    fn codes_round_trip_through_json() {
        for c in ErrorCode::ALL {
            let text = serde_json::to_string(&c).unwrap();
            assert_eq!(text, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&text).unwrap(), c);
        }
        let e = serde_json::from_str::<ErrorCode>("\"teapot\"").unwrap_err();
        assert!(e.to_string().contains("teapot"), "{e}");
    }
}
