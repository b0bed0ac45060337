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
                "origin `{origin}` may not open WebSockets or POST to this server (allow it in server.allowed_origins)"
            ),
        ))
    }
}

/// Refuses requests whose `Host` is a name the server was not told to answer to. A page on
/// another site whose name is made to resolve to this machine (DNS rebinding) sends its own
/// name as `Host` and, for WebSockets, as `Origin`; only IP literals, `localhost` and
/// `server.allowed_hosts` pass. Requests without a `Host` (HTTP/1.0 tools) pass.
pub fn check_host(req: &HttpRequest, config: &ServerConfig) -> Result<(), ApiError> {
    let Some(host) = req.headers().get(header::HOST) else {
        return Ok(());
    };
    let host = host.to_str().unwrap_or("");
    let name = host_name(host);
    let allowed = name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || config
            .allowed_hosts
            .iter()
            .any(|h| h == "*" || h.eq_ignore_ascii_case(name));
    if allowed {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::ForbiddenOrigin,
            format!(
                "host name `{name}` is not served here (add it to server.allowed_hosts); \
                 this guards against DNS rebinding"
            ),
        ))
    }
}

/// The host of a `Host` header value, without port or IPv6 brackets; anything malformed
/// (text after the brackets or a port that is not a number) is returned whole, so that it
/// matches no allowed name.
fn host_name(host: &str) -> &str {
    let is_port = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, "")) => ip,
            Some((ip, tail)) if tail.strip_prefix(':').is_some_and(is_port) => ip,
            _ => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if is_port(port) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_lose_port_and_brackets() {
        assert_eq!(host_name("127.0.0.1:8000"), "127.0.0.1");
        assert_eq!(host_name("[::1]:8000"), "::1");
        assert_eq!(host_name("localhost"), "localhost");
        assert_eq!(host_name("evil.example:80"), "evil.example");
        // Malformed values stay whole and so match nothing allowed.
        assert_eq!(host_name("[::1]evil"), "[::1]evil");
        assert_eq!(host_name("[::1]:80junk"), "[::1]:80junk");
        assert_eq!(host_name("127.0.0.1:"), "127.0.0.1:");
    }
}
