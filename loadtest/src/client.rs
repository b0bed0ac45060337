//! One WebSocket connection to specd and the requests run over it, timed.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use specd_protocol::{
    ClientFrame, ErrorCode, FinishReason, GenerateFrame, Hello, Method, ServerFrame,
    SpeculationParams, SpeculationReport,
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::prompts::Prompt;

/// Longest wait for the server's next frame before a request counts as failed.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the load goes: the server's WebSocket endpoint and its API key.
#[derive(Debug, Clone)]
pub struct Target {
    /// `ws://host:port/v1/stream`.
    pub ws_url: String,
    pub api_key: Option<String>,
}

impl Target {
    /// The target at `url` (`http://host:port`, `ws://host:port` or either with the path
    /// `/v1/stream`). Only loopback hosts unless `allow_remote`: a load test is not to be
    /// pointed at someone else's server by a typo.
    pub fn new(url: &str, api_key: Option<String>, allow_remote: bool) -> anyhow::Result<Self> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("--url {url:?} is not a URL"))?;
        let scheme = match uri.scheme_str() {
            Some("http" | "ws") => "ws",
            Some("https" | "wss") => "wss",
            _ => bail!("--url {url:?}: give http://HOST:PORT (or ws://, https://, wss://)"),
        };
        let Some(authority) = uri.authority() else {
            bail!("--url {url:?} has no host");
        };
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let loopback =
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !loopback && !allow_remote {
            bail!("--url {url:?} is not a loopback address; pass --allow-remote to load a remote server");
        }
        let path = match uri.path() {
            "" | "/" => "/v1/stream",
            p => p,
        };
        Ok(Self {
            ws_url: format!("{scheme}://{authority}{path}"),
            api_key,
        })
    }
}

impl Target {
    /// `http://host:port` (or https) of the same server, for `/metrics`.
    pub fn http_base(&self) -> String {
        let rest = self.ws_url.split_once("://").map_or("", |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or(rest);
        let scheme = if self.ws_url.starts_with("wss://") {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{authority}")
    }
}

/// How requests reach the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// The WebSocket protocol (`/v1/stream`), one connection per client.
    #[default]
    Ws,
    /// OpenAI's endpoints streamed as Server-Sent Events (`/v1/completions` for text prompts,
    /// `/v1/chat/completions` for chats).
    Openai,
}

/// What each request asks for, besides its prompt.
#[derive(Debug, Clone, Default)]
pub struct RequestTemplate {
    pub api: Api,
    pub max_tokens: usize,
    pub temperature: Option<f64>,
    /// The server's default when `None`.
    pub method: Option<Method>,
    pub max_draft: Option<usize>,
    /// Every request generates `max_tokens` (comparable runs).
    pub ignore_eos: bool,
}

impl RequestTemplate {
    /// The generate frame of request `id`.
    pub fn frame(&self, id: &str, prompt: &Prompt) -> ClientFrame {
        let (text, messages) = match prompt {
            Prompt::Text(t) => (Some(t.clone()), None),
            Prompt::Messages(m) => (None, Some(m.clone())),
        };
        let speculation =
            (self.method.is_some() || self.max_draft.is_some()).then(|| SpeculationParams {
                method: self.method,
                max_draft: self.max_draft.map(|k| k as i64),
                adaptive: None,
            });
        ClientFrame::Generate(Box::new(GenerateFrame {
            id: id.to_string(),
            prompt: text,
            messages,
            max_tokens: Some(self.max_tokens as i64),
            temperature: self.temperature,
            speculation,
            ignore_eos: self.ignore_eos.then_some(true),
            ..Default::default()
        }))
    }
}

/// One request's measurements. Times are seconds.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    /// When it was sent, from the start of its level.
    pub start_s: f64,
    /// Sending to the first chunk with tokens.
    pub ttft_s: Option<f64>,
    /// Sending to the final frame.
    pub e2e_s: f64,
    pub output_tokens: usize,
    /// Gaps between successive chunks (one chunk carries every token one engine step produced
    /// for the request: with speculation, several).
    pub itl_s: Vec<f64>,
    pub finish_reason: Option<FinishReason>,
    /// The error frame's code, for a failed request.
    pub error: Option<ErrorCode>,
    pub error_message: Option<String>,
    /// The `done` frame's speculation figures.
    pub speculation: Option<SpeculationReport>,
}

impl RequestRecord {
    /// A request sent at `start_s` (from its level's start), nothing received yet.
    pub fn started(start_s: f64) -> Self {
        Self {
            start_s,
            ttft_s: None,
            e2e_s: 0.0,
            output_tokens: 0,
            itl_s: Vec::new(),
            finish_reason: None,
            error: None,
            error_message: None,
            speculation: None,
        }
    }

    /// A request the server refused before it was sent (its connection was refused).
    pub fn refused(start_s: f64, e2e_s: f64, code: ErrorCode, message: String) -> Self {
        Self {
            e2e_s,
            error: Some(code),
            error_message: Some(message),
            ..Self::started(start_s)
        }
    }

    /// Time per output token after the first.
    pub fn tpot_s(&self) -> Option<f64> {
        let ttft = self.ttft_s?;
        (self.output_tokens > 1).then(|| (self.e2e_s - ttft) / (self.output_tokens - 1) as f64)
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open connection whose `hello` frame has been read.
pub struct Connection {
    ws: Socket,
    pub hello: Hello,
    /// The server sent an error for no request (it closes such a connection): open a new one.
    pub broken: bool,
}

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// The server answered the upgrade with an HTTP error (overloaded, unauthorized, ...): a
    /// refused request, not a broken run.
    Refused(ErrorCode, String),
    /// No server, or not specd.
    Failed(anyhow::Error),
}

impl Connection {
    /// Connects and reads the `hello` frame; a server that is down or is not specd is a clear
    /// error, and so is one that refuses the connection.
    pub async fn open(target: &Target) -> anyhow::Result<Self> {
        match Self::try_open(target).await {
            Ok(c) => Ok(c),
            Err(OpenError::Refused(code, message)) => {
                bail!(
                    "{} refused the connection: {code}: {message}",
                    target.ws_url
                )
            }
            Err(OpenError::Failed(e)) => Err(e),
        }
    }

    /// Like [`Connection::open`], telling a refusal by the server (HTTP 503 when it is at its
    /// connection limit, 401, 403) apart from a failure.
    pub async fn try_open(target: &Target) -> Result<Self, OpenError> {
        Self::connect(target).await.map_err(|e| {
            let refused = e.chain().find_map(|c| match c.downcast_ref::<WsError>() {
                Some(WsError::Http(resp)) => Some(resp.status()),
                _ => None,
            });
            match refused {
                Some(status) => {
                    let code = match status.as_u16() {
                        401 => ErrorCode::Unauthorized,
                        403 => ErrorCode::ForbiddenOrigin,
                        404 => ErrorCode::NotFound,
                        503 | 429 => ErrorCode::Overloaded,
                        400..=499 => ErrorCode::InvalidRequest,
                        _ => ErrorCode::Internal,
                    };
                    OpenError::Refused(code, format!("HTTP {status}"))
                }
                None => OpenError::Failed(e),
            }
        })
    }

    async fn connect(target: &Target) -> anyhow::Result<Self> {
        let mut req = target
            .ws_url
            .as_str()
            .into_client_request()
            .with_context(|| format!("{} is not a WebSocket URL", target.ws_url))?;
        if let Some(k) = &target.api_key {
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {k}"))?,
            );
        }
        let (mut ws, _) =
            tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(req))
                .await
                .map_err(|_| anyhow::anyhow!("connecting to {} timed out", target.ws_url))?
                .with_context(|| {
                    format!("cannot open {} (is specd serving there?)", target.ws_url)
                })?;
        match next_frame(&mut ws).await? {
            ServerFrame::Hello(hello) => Ok(Self {
                ws,
                hello,
                broken: false,
            }),
            other => bail!(
                "{}: expected a hello frame first, got {other:?}",
                target.ws_url
            ),
        }
    }

    /// Sends one request and reads it to its end. A refused or failed request is a record with
    /// its error code; a broken connection is an error. Its times count from `arrived` (the
    /// open loop's scheduled arrival, so that connecting under load is counted) or, when
    /// `None`, from sending.
    pub async fn run(
        &mut self,
        id: &str,
        prompt: &Prompt,
        template: &RequestTemplate,
        level_start: Instant,
        arrived: Option<Instant>,
    ) -> anyhow::Result<RequestRecord> {
        let frame = serde_json::to_string(&template.frame(id, prompt))?;
        let sent = arrived.unwrap_or_else(Instant::now);
        self.ws
            .send(Message::text(frame))
            .await
            .context("sending a request")?;
        let mut rec = RequestRecord::started((sent - level_start).as_secs_f64());
        let mut last_chunk: Option<Instant> = None;
        loop {
            let frame = next_frame(&mut self.ws).await?;
            let now = Instant::now();
            match frame {
                ServerFrame::Chunk(c) if c.id == id => {
                    if c.tokens.is_empty() {
                        continue;
                    }
                    rec.ttft_s.get_or_insert((now - sent).as_secs_f64());
                    if let Some(t) = last_chunk {
                        rec.itl_s.push((now - t).as_secs_f64());
                    }
                    last_chunk = Some(now);
                    rec.output_tokens += c.tokens.len();
                }
                ServerFrame::Done(d) if d.id == id => {
                    rec.finish_reason = Some(d.body.finish_reason);
                    rec.speculation = Some(d.body.speculation);
                    rec.e2e_s = (now - sent).as_secs_f64();
                    return Ok(rec);
                }
                ServerFrame::Error(e) if e.id.as_deref() == Some(id) || e.id.is_none() => {
                    // An error for no request (a frame over the size limit, say) ends the
                    // connection: the request in flight is lost with it.
                    self.broken |= e.id.is_none();
                    rec.error = Some(e.code);
                    rec.error_message = Some(e.message);
                    rec.e2e_s = (now - sent).as_secs_f64();
                    return Ok(rec);
                }
                other => bail!("a frame of no request in flight on this connection: {other:?}"),
            }
        }
    }
}

impl Connection {
    /// Sends a frame (the soak mode drives the protocol frame by frame).
    pub async fn send(&mut self, frame: &ClientFrame) -> anyhow::Result<()> {
        let text = serde_json::to_string(frame)?;
        self.ws
            .send(Message::text(text))
            .await
            .context("sending a frame")
    }

    /// The next frame from the server.
    pub async fn next(&mut self) -> anyhow::Result<ServerFrame> {
        next_frame(&mut self.ws).await
    }
}

/// The next server frame (pings are answered by the library while reading).
async fn next_frame(ws: &mut Socket) -> anyhow::Result<ServerFrame> {
    loop {
        let msg = tokio::time::timeout(FRAME_TIMEOUT, ws.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!("no frame from the server for {} s", FRAME_TIMEOUT.as_secs())
            })?
            .context("the server closed the connection")?
            .context("the connection failed")?;
        match msg {
            Message::Text(t) => {
                return serde_json::from_str(&t).with_context(|| format!("not a specd frame: {t}"));
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(c) => bail!("the server closed the connection: {c:?}"),
            other => bail!("unexpected message {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_the_stream_endpoint_and_remote_hosts_need_consent() {
        let t = Target::new("http://127.0.0.1:8000", None, false).unwrap();
        assert_eq!(t.ws_url, "ws://127.0.0.1:8000/v1/stream");
        let t = Target::new("ws://localhost:9/v1/stream", None, false).unwrap();
        assert_eq!(t.ws_url, "ws://localhost:9/v1/stream");
        let t = Target::new("http://[::1]:8000/", None, false).unwrap();
        assert_eq!(t.ws_url, "ws://[::1]:8000/v1/stream");
        assert_eq!(t.http_base(), "http://[::1]:8000");
        let e = Target::new("http://example.com:8000", None, false).unwrap_err();
        assert!(e.to_string().contains("--allow-remote"), "{e}");
        assert!(Target::new("https://example.com", None, true)
            .unwrap()
            .ws_url
            .starts_with("wss://example.com"));
        assert!(Target::new("ftp://127.0.0.1", None, false).is_err());
        assert!(Target::new("not a url", None, false).is_err());
    }

    #[test]
    fn the_template_makes_a_generate_frame() {
        let t = RequestTemplate {
            max_tokens: 16,
            method: Some(Method::Ngram),
            ignore_eos: true,
            ..Default::default()
        };
        let v = serde_json::to_value(t.frame("r1", &Prompt::Text("x".into()))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "generate", "id": "r1", "prompt": "x", "max_tokens": 16,
                "speculation": {"method": "ngram"}, "ignore_eos": true})
        );
    }
}
