//! specd-gateway: the network face of specd, an actix-web application talking to the engine
//! only through its handle.
//!
//! - [`ws`]: `GET /v1/stream`, the WebSocket protocol ([`protocol`]): several requests per
//!   socket, chunk/done/error frames, cancel, heartbeat, timeouts, a frame-size limit.
//! - [`openai`]: `POST /v1/completions`, `POST /v1/chat/completions` (JSON or Server-Sent
//!   Events), `GET /v1/models`.
//! - [`server`]: routes, `/health`, `/metrics` (Prometheus), the demo page at `/`, and the
//!   [`Server`] that runs it all and shuts down gracefully ([`lifecycle`]).
//! - [`backend`]: request checks (every rejection names the field and the limit) and the
//!   engine they go to; [`auth`]: API key and WebSocket origin checks; [`config`]: the one
//!   typed configuration; [`error`]: the one error type with stable codes.

pub mod auth;
pub mod backend;
pub mod config;
pub mod error;
pub mod lifecycle;
pub mod openai;
pub mod protocol;
pub mod server;
pub mod ws;

pub use backend::{Backend, BackendOptions};
pub use config::Config;
pub use error::{ApiError, ErrorCode};
pub use server::Server;
