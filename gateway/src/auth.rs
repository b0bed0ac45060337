//! Who may call: the optional API key (`Authorization: Bearer`, or for browsers the WebSocket
//! subprotocol `bearer.KEY`) and the browser `Origin` allow-list for WebSockets, which stops
//! other sites from opening sockets with a visitor's network position (cross-site WebSocket
//! hijacking).

use actix_web::http::header;
use actix_web::HttpRequest;
use subtle::ConstantTimeEq;

use crate::config::ServerConfig;
use crate::error::{ApiError, ErrorCode};

/// The subprotocol the server answers to (browsers need one echoed when they offer any).
pub const SUBPROTOCOL: &str = "specd";
/// Prefix of the subprotocol that carries an API key.
pub const BEARER_SUBPROTOCOL: &str = "bearer.";

/// The subprotocols a WebSocket client offered.
pub fn offered_subprotocols(req: &HttpRequest) -> Vec<String> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Checks the API key, if the server has one. `subprotocols`: those a WebSocket client
/// offered (a key may come as `bearer.KEY` there).
pub fn authorize(
    req: &HttpRequest,
    config: &ServerConfig,
    subprotocols: &[String],
) -> Result<(), ApiError> {
    let Some(key) = config.api_key.as_deref() else {
        return Ok(());
    };
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let from_protocol = subprotocols
        .iter()
        .find_map(|p| p.strip_prefix(BEARER_SUBPROTOCOL));
    match from_header.or(from_protocol) {
        None => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "missing API key: send `Authorization: Bearer <key>`",
        )),
        Some(given) if bool::from(given.as_bytes().ct_eq(key.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::new(ErrorCode::Unauthorized, "invalid API key")),
    }
}

/// Refuses a browser WebSocket from an origin that is neither the server's own nor allowed.
/// Clients that send no `Origin` (not browsers) pass.
pub fn check_origin(req: &HttpRequest, config: &ServerConfig) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    let allowed = config
        .allowed_origins
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let same_origin = origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest.eq_ignore_ascii_case(host));
    if allowed || same_origin {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::ForbiddenOrigin,
            format!(
                "origin `{origin}` may not open WebSockets on this server (allow it in server.allowed_origins)"
            ),
        ))
    }
}
