//! specd's wire protocol, one set of types for everyone who speaks it: the gateway (which
//! parses client frames and writes server frames), the load tester and the tests (which do the
//! opposite), and the engine (whose speculation method, finish reasons and chat messages are
//! the ones on the wire).
//!
//! The WebSocket endpoint (`GET /v1/stream`) carries JSON text frames, each an object whose
//! `type` names it: [`ClientFrame`] from the client, [`ServerFrame`] from the server. Every type
//! here is `Serialize` and `Deserialize`. The client frames refuse unknown fields (a misspelt
//! option is an error, not a silent default); the server frames accept them, so that a client
//! built against this version keeps working when a server adds a field (not a new frame type,
//! method, finish reason or error code: those need this crate's new version).

mod error;
mod frames;
mod method;

pub use error::ErrorCode;
pub use frames::{
    CancelFrame, ChunkFrame, ClientFrame, DoneBody, DoneFrame, ErrorFrame, FinishReason,
    GenerateFrame, Hello, HelloLimits, HelloSpeculation, LookupReport, Message, ServerFrame,
    SpeculationParams, SpeculationReport, Timings, Usage,
};
pub use method::{Method, UnknownMethod};
