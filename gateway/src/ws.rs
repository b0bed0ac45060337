//! `GET /v1/stream`: one task per socket reads client frames, starts a task per request, and
//! writes every request's frames in the order they come. Heartbeat pings, a client timeout,
//! an idle timeout and a frame-size limit keep dead or abusive sockets from holding
//! resources; a closed socket cancels its requests (their KV blocks are freed before the
//! engine's next step).

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::{HeaderValue, SEC_WEBSOCKET_PROTOCOL};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Session};
use specd_engine::actors::{EngineRequest, Event, Method};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::auth;
use crate::backend::{Backend, EndpointDefaults};
use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::lifecycle::{InflightGuard, Phase};
use crate::protocol::{
    chunk_frame, done_frame, error_frame, frame_json, frame_params, frame_prompt,
    parse_client_frame, CancelFrame, ClientFrame, GenerateFrame, ServerFrame,
};
use crate::server::{AppState, ConnectionPermit};
use specd_protocol::{Hello, HelloLimits, HelloSpeculation};

/// Defaults of the WebSocket protocol: greedy, up to 256 tokens.
const DEFAULTS: EndpointDefaults = EndpointDefaults {
    max_tokens: Some(256),
    temperature: 0.0,
};

/// The upgrade: key, origin, readiness and the connection limit are checked before it.
pub async fn stream(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let protocols = auth::offered_subprotocols(&req);
    auth::authorize(&req, &state.config.server, &protocols)?;
    auth::check_origin(&req, &state.config.server)?;
    let backend = state.backend()?;
    state.accepting()?;
    let permit = AppState::connect(&state)?;
    let (mut res, session, msgs) = actix_ws::handle(&req, body).map_err(|e| {
        ApiError::invalid("upgrade", format!("not a WebSocket upgrade request: {e}"))
    })?;
    if protocols.iter().any(|p| p == auth::SUBPROTOCOL) {
        res.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(auth::SUBPROTOCOL),
        );
    }
    let limit = state.config.limits.max_frame_bytes;
    let msgs = msgs
        .max_frame_size(limit)
        .aggregate_continuations()
        .max_continuation_size(limit);
    let conn = Connection {
        config: state.config.clone(),
        state: state.clone(),
        backend,
        requests: HashMap::new(),
        recent: VecDeque::new(),
        draining: false,
        heard: Instant::now(),
        active: Instant::now(),
        _permit: permit,
    };
    actix_web::rt::spawn(conn.run(session, msgs));
    Ok(res)
}

/// A frame from a request task; `last` marks the frame that ends the request.
struct Outgoing {
    id: String,
    frame: ServerFrame,
    last: bool,
    /// When the frame was produced: a client whose backlog grows older than the client
    /// timeout reads too slowly to keep up and is dropped.
    queued: Instant,
}

/// A request in flight on the socket.
struct InFlight {
    cancel: Option<oneshot::Sender<()>>,
    task: actix_web::rt::task::JoinHandle<()>,
}

struct Connection {
    config: Config,
    state: web::Data<AppState>,
    backend: Arc<Backend>,
    requests: HashMap<String, InFlight>,
    /// Ids of the last requests that ended: a `cancel` racing their final frame is ignored.
    recent: VecDeque<String>,
    draining: bool,
    /// When the client last sent a frame (a pong counts): silent past the client timeout, the
    /// socket is closed.
    heard: Instant,
    /// When a request last began or ended: with none in flight past the idle timeout, the
    /// socket is closed.
    active: Instant,
    _permit: ConnectionPermit,
}

/// How many ended request ids a connection remembers.
const RECENT_IDS: usize = 64;

/// Sends a frame, giving up when the client has not taken it within `limit` (it stopped
/// reading): a socket that cannot be written is dropped like one that went silent.
async fn send(session: &mut Session, frame: &ServerFrame, limit: Duration) -> bool {
    matches!(
        tokio::time::timeout(limit, session.text(frame_json(frame))).await,
        Ok(Ok(()))
    )
}

impl Connection {
    async fn run(mut self, mut session: Session, mut msgs: AggregatedMessageStream) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
        let mut phase = self.state.lifecycle.watch();
        // Shutdown may have begun between the upgrade and now.
        self.draining = *phase.borrow_and_update() >= Phase::Draining;
        let heartbeat = Config::secs(self.config.server.heartbeat_secs);
        let client_timeout = Config::secs(self.config.server.client_timeout_secs);
        let mut ticks = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        // After a slow send, one ping, not a burst of the missed ones.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        (self.heard, self.active) = (Instant::now(), Instant::now());
        if !send(&mut session, &self.hello(), client_timeout).await {
            return self.abandon();
        }
        let close: Option<CloseReason> = loop {
            if self.draining && self.requests.is_empty() {
                break Some(reason(CloseCode::Away, "the server is shutting down"));
            }
            let flow = tokio::select! {
                // The client's frames first: its pongs must count before the timeout check.
                biased;
                msg = msgs.recv() => self.on_message(msg, &mut session, &tx).await,
                Some(out) = rx.recv() => self.on_outgoing(out, &mut session).await,
                _ = ticks.tick() => self.on_tick(&mut session).await,
                changed = phase.changed(), if !self.draining => {
                    // The lifecycle outlives every connection; an error would mean it is gone.
                    if changed.is_err() || *phase.borrow() >= Phase::Draining {
                        self.draining = true;
                    }
                    ControlFlow::Continue(())
                }
            };
            if let ControlFlow::Break(close) = flow {
                break close;
            }
        };
        self.abandon();
        if let Some(r) = close {
            let _ = tokio::time::timeout(client_timeout, session.close(Some(r))).await;
        }
    }

    fn client_timeout(&self) -> Duration {
        Config::secs(self.config.server.client_timeout_secs)
    }

    /// A frame from the client (`None`: the stream ended). Breaks with the close to send, if
    /// any, when the socket must end.
    async fn on_message(
        &mut self,
        msg: Option<Result<AggregatedMessage, actix_ws::ProtocolError>>,
        session: &mut Session,
        tx: &mpsc::UnboundedSender<Outgoing>,
    ) -> ControlFlow<Option<CloseReason>> {
        let client_timeout = self.client_timeout();
        self.heard = Instant::now();
        let reply = match msg {
            None => return ControlFlow::Break(None),
            Some(Ok(AggregatedMessage::Text(text))) => {
                self.active = Instant::now();
                self.on_text(&text, tx)
            }
            Some(Ok(AggregatedMessage::Binary(_))) => Some(error_frame(
                None,
                ApiError::invalid(
                    "frame",
                    "binary frames are not supported: send JSON text frames",
                ),
            )),
            Some(Ok(AggregatedMessage::Ping(b))) => {
                let pong = tokio::time::timeout(client_timeout, session.pong(&b));
                if !matches!(pong.await, Ok(Ok(()))) {
                    return ControlFlow::Break(None);
                }
                None
            }
            Some(Ok(AggregatedMessage::Pong(_))) => None,
            Some(Ok(AggregatedMessage::Close(_))) => {
                return ControlFlow::Break(Some(reason(CloseCode::Normal, "bye")));
            }
            Some(Err(e)) if is_overflow(&e) => {
                let limit = self.config.limits.max_frame_bytes;
                let e = ApiError::invalid(
                    "frame",
                    format!("a message exceeds {limit} bytes (limits.max_frame_bytes)"),
                );
                if !send(session, &error_frame(None, e), client_timeout).await {
                    return ControlFlow::Break(None);
                }
                return ControlFlow::Break(Some(reason(CloseCode::Size, "message too big")));
            }
            Some(Err(e)) => {
                return ControlFlow::Break(Some(reason(CloseCode::Protocol, &e.to_string())))
            }
        };
        match reply {
            Some(frame) if !send(session, &frame, client_timeout).await => ControlFlow::Break(None),
            _ => ControlFlow::Continue(()),
        }
    }

    /// A request task's frame, written to the client; a request's last frame ends it here.
    async fn on_outgoing(
        &mut self,
        out: Outgoing,
        session: &mut Session,
    ) -> ControlFlow<Option<CloseReason>> {
        let client_timeout = self.client_timeout();
        if out.queued.elapsed() > client_timeout {
            return ControlFlow::Break(Some(reason(
                CloseCode::Away,
                "the client reads too slowly",
            )));
        }
        if out.last {
            self.requests.remove(&out.id);
            let recent_cap = RECENT_IDS.max(self.config.limits.max_requests_per_connection);
            if self.recent.len() >= recent_cap {
                self.recent.pop_front();
            }
            self.recent.push_back(out.id);
            self.active = Instant::now();
        }
        if !send(session, &out.frame, client_timeout).await {
            return ControlFlow::Break(None);
        }
        ControlFlow::Continue(())
    }

    /// The heartbeat: the client and idle timeouts, then a ping.
    async fn on_tick(&mut self, session: &mut Session) -> ControlFlow<Option<CloseReason>> {
        let client_timeout = self.client_timeout();
        let idle_timeout = Config::secs(self.config.server.idle_timeout_secs);
        if self.heard.elapsed() > client_timeout {
            return ControlFlow::Break(Some(reason(
                CloseCode::Away,
                "no frame or pong within the client timeout",
            )));
        }
        if self.requests.is_empty() && self.active.elapsed() > idle_timeout {
            return ControlFlow::Break(Some(reason(CloseCode::Normal, "idle timeout")));
        }
        let ping = tokio::time::timeout(client_timeout, session.ping(b""));
        if !matches!(ping.await, Ok(Ok(()))) {
            return ControlFlow::Break(None);
        }
        ControlFlow::Continue(())
    }

    /// Cancels every request still in flight (the socket is gone or closing): dropping a
    /// request's engine stream cancels it in the engine.
    fn abandon(&mut self) {
        for (_, r) in self.requests.drain() {
            r.task.abort();
        }
    }

    fn hello(&self) -> ServerFrame {
        let b = &self.backend;
        let (method, policy) = b.defaults();
        let limits = &self.config.limits;
        ServerFrame::Hello(Hello {
            model: b.model_name().to_string(),
            draft_model: b.draft_name().map(str::to_string),
            glide_model: b.glide_name().map(str::to_string),
            methods: b.methods().to_vec(),
            speculation: HelloSpeculation {
                method,
                max_draft: policy.max_draft,
            },
            limits: HelloLimits {
                max_tokens: limits.max_tokens,
                max_prompt_tokens: b.max_prompt_tokens(limits),
                max_requests_per_connection: limits.max_requests_per_connection,
                max_frame_bytes: limits.max_frame_bytes,
            },
        })
    }

    /// Handles a text frame; returns a frame to send at once (an error), if any.
    fn on_text(&mut self, text: &str, tx: &mpsc::UnboundedSender<Outgoing>) -> Option<ServerFrame> {
        match parse_client_frame(text) {
            // A bad frame reusing the id of a request in flight must not look like its end.
            Err((id, e)) => Some(error_frame(
                id.filter(|i| !self.requests.contains_key(i)),
                e,
            )),
            Ok(ClientFrame::Cancel(CancelFrame { id })) => match self.requests.get_mut(&id) {
                Some(r) => {
                    if let Some(c) = r.cancel.take() {
                        let _ = c.send(());
                    }
                    None
                }
                // The request ended while the cancel was on its way: nothing to do.
                None if self.recent.contains(&id) => None,
                None => Some(error_frame(
                    None,
                    ApiError::new(
                        ErrorCode::NotFound,
                        format!("no request with `id` `{id}` is in flight on this connection"),
                    )
                    .with_param("id"),
                )),
            },
            Ok(ClientFrame::Generate(g)) => match self.admit(&g) {
                Ok((req, guard)) => {
                    let (cancel_tx, cancel_rx) = oneshot::channel();
                    let task = actix_web::rt::spawn(run_request(
                        self.backend.clone(),
                        g.id.clone(),
                        req,
                        tx.clone(),
                        cancel_rx,
                        self.state.lifecycle.watch(),
                        guard,
                    ));
                    self.requests.insert(
                        g.id.clone(),
                        InFlight {
                            cancel: Some(cancel_tx),
                            task,
                        },
                    );
                    None
                }
                Err(e) => {
                    // A duplicate id names a request that goes on: not attributed to it.
                    let id = (!self.requests.contains_key(&g.id)).then(|| g.id.clone());
                    Some(error_frame(id, e))
                }
            },
        }
    }

    fn admit(&self, g: &GenerateFrame) -> Result<(EngineRequest, InflightGuard), ApiError> {
        if self.requests.contains_key(&g.id) {
            return Err(ApiError::invalid(
                "id",
                format!("`id` `{}` is already in flight on this connection", g.id),
            ));
        }
        let limit = self.config.limits.max_requests_per_connection;
        if self.requests.len() >= limit {
            return Err(ApiError::new(
                ErrorCode::Overloaded,
                format!(
                    "{limit} requests are already in flight on this connection (limits.max_requests_per_connection)"
                ),
            ));
        }
        let req = self.backend.prepare(
            frame_prompt(g)?,
            &frame_params(g),
            DEFAULTS,
            &self.config.limits,
        )?;
        let guard = self.state.lifecycle.try_enter();
        match guard {
            Some(g) if !self.draining => Ok((req, g)),
            _ => Err(shutting_down()),
        }
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(
        ErrorCode::Overloaded,
        "the server is shutting down and takes no new requests",
    )
}

/// A message over the size limit: one frame (`Overflow`) or joined continuations (an I/O
/// error from the aggregator).
fn is_overflow(e: &actix_ws::ProtocolError) -> bool {
    match e {
        actix_ws::ProtocolError::Overflow => true,
        actix_ws::ProtocolError::Io(io) => io.to_string().contains("continuation size"),
        _ => false,
    }
}

fn reason(code: CloseCode, description: &str) -> CloseReason {
    CloseReason {
        code,
        description: Some(description.to_string()),
    }
}

/// Runs one request: submits it, forwards its events, cancels it on the client's `cancel` or
/// when the server's shutdown grace period ends.
async fn run_request(
    backend: Arc<Backend>,
    id: String,
    req: EngineRequest,
    tx: mpsc::UnboundedSender<Outgoing>,
    mut cancel: oneshot::Receiver<()>,
    mut phase: watch::Receiver<Phase>,
    _guard: InflightGuard,
) {
    let method: Method = req.method;
    let send = |frame: ServerFrame, last: bool| {
        let _ = tx.send(Outgoing {
            id: id.clone(),
            frame,
            last,
            queued: Instant::now(),
        });
    };
    let mut stream = match backend.submit(req).await {
        Ok(s) => s,
        Err(e) => return send(error_frame(Some(id.clone()), e), true),
    };
    let mut cancelled = *phase.borrow_and_update() == Phase::Cancelling;
    if cancelled {
        backend.engine().cancel(stream.id());
    }
    loop {
        tokio::select! {
            ev = stream.next_event() => match ev {
                Some(Event::Chunk(c)) => send(chunk_frame(&id, c), false),
                Some(Event::Done(d)) => return send(done_frame(&id, &d, method), true),
                Some(Event::Error(e)) => {
                    return send(error_frame(Some(id.clone()), e.into()), true)
                }
                None => {
                    let e = ApiError::internal("the engine stopped");
                    return send(error_frame(Some(id.clone()), e), true);
                }
            },
            _ = &mut cancel, if !cancelled => {
                cancelled = true;
                backend.engine().cancel(stream.id());
            }
            changed = phase.changed(), if !cancelled => {
                if changed.is_err() || *phase.borrow() == Phase::Cancelling {
                    cancelled = true;
                    backend.engine().cancel(stream.id());
                }
            }
        }
    }
}
