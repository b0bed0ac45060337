//! The actix-web application: routes, shared state, the Prometheus recorder, and a [`Server`]
//! that runs it on its own thread and shuts it down gracefully.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use specd_engine::metrics as m;

use crate::auth;
use crate::backend::Backend;
use crate::config::Config;
use crate::error::{ApiError, ErrorCode};
use crate::lifecycle::{Lifecycle, Phase};
use crate::{openai, ws};

/// The demo page, served from the binary.
const PAGE: &str = include_str!("page/index.html");

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub config: Config,
    backend: OnceLock<Arc<Backend>>,
    pub lifecycle: Arc<Lifecycle>,
    connections: AtomicUsize,
    metrics: PrometheusHandle,
}

impl AppState {
    fn new(config: Config) -> Self {
        Self {
            config,
            backend: OnceLock::new(),
            lifecycle: Arc::new(Lifecycle::default()),
            connections: AtomicUsize::new(0),
            metrics: prometheus(),
        }
    }

    /// The backend, or `overloaded` while the models are still loading.
    pub fn backend(&self) -> Result<Arc<Backend>, ApiError> {
        self.backend.get().cloned().ok_or_else(|| {
            ApiError::new(
                ErrorCode::Overloaded,
                "the models are still loading; retry shortly",
            )
        })
    }

    /// Refuses new requests once shutdown has begun.
    pub fn accepting(&self) -> Result<(), ApiError> {
        if self.lifecycle.phase() == Phase::Serving {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Overloaded,
                "the server is shutting down and takes no new requests",
            ))
        }
    }

    /// The checks every generating HTTP request passes: key, a browser's origin, readiness,
    /// shutdown.
    pub fn guard_http(&self, req: &HttpRequest) -> Result<Arc<Backend>, ApiError> {
        auth::authorize(req, &self.config.server, &[])?;
        auth::check_origin(req, &self.config.server)?;
        let b = self.backend()?;
        self.accepting()?;
        Ok(b)
    }

    /// Takes one of the WebSocket connection slots.
    pub fn connect(state: &web::Data<Self>) -> Result<ConnectionPermit, ApiError> {
        let limit = state.config.limits.max_connections;
        let taken = state
            .connections
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            });
        match taken {
            Ok(_) => {
                // Relative updates: servers sharing the process recorder (tests) add up.
                metrics::gauge!(m::WEBSOCKET_CONNECTIONS).increment(1.0);
                Ok(ConnectionPermit(state.clone()))
            }
            Err(_) => Err(ApiError::new(
                ErrorCode::Overloaded,
                format!("{limit} WebSocket connections are open (limits.max_connections)"),
            )),
        }
    }

    /// Open WebSocket connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// One open WebSocket; releases its slot when dropped.
#[derive(Debug)]
pub struct ConnectionPermit(web::Data<AppState>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(m::WEBSOCKET_CONNECTIONS).decrement(1.0);
    }
}

/// The process-wide Prometheus recorder (installed once; later calls share it).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for (name, buckets) in m::buckets() {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(name.to_string()), &buckets)
                    .expect("bucket lists are not empty");
            }
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may own the process (an embedding program); then /metrics
            // shows only what this one sees.
            if metrics::set_global_recorder(recorder).is_ok() {
                m::describe();
                process_metrics().describe();
            }
            handle
        })
        .clone()
}

/// The server process's own figures (`specd_process_resident_memory_bytes`, CPU seconds, open
/// files, threads), read at each scrape: the soak test watches the resident memory.
fn process_metrics() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| metrics_process::Collector::new(m::PREFIX))
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ))
        .body(PAGE)
}

async fn health(state: web::Data<AppState>) -> HttpResponse {
    match (state.backend(), state.lifecycle.phase()) {
        (Ok(b), Phase::Serving) => {
            HttpResponse::Ok().json(json!({"status": "ok", "model": b.model_name()}))
        }
        (Ok(_), _) => HttpResponse::ServiceUnavailable().json(json!({"status": "draining"})),
        (Err(_), _) => HttpResponse::ServiceUnavailable().json(json!({"status": "loading"})),
    }
}

async fn metrics_text(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    auth::authorize(&req, &state.config.server, &[])?;
    process_metrics().collect();
    state.metrics.run_upkeep();
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render()))
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

/// Checks the `Host` of every request (DNS rebinding) before routing it.
async fn host_guard(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    // Fails closed: without the state there is no allow-list to check against.
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal("the server state is missing"))?;
    auth::check_host(req.request(), &state.config.server)?;
    next.call(req).await
}

/// Routes and shared state.
fn configure(state: web::Data<AppState>) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(state)
            .route("/", web::get().to(page))
            .route("/health", web::get().to(health))
            .route("/metrics", web::get().to(metrics_text))
            .route("/v1/stream", web::get().to(ws::stream))
            .route("/v1/models", web::get().to(openai::models))
            .route("/v1/completions", web::post().to(openai::completions))
            .route(
                "/v1/chat/completions",
                web::post().to(openai::chat_completions),
            )
            .default_service(web::to(not_found));
    }
}

/// A running server: its own thread and actix system, bound before `start` returns.
#[derive(Debug)]
pub struct Server {
    state: web::Data<AppState>,
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Binds `config`'s address and starts serving. Until [`Server::set_backend`], `/health`
    /// answers 503 and generation endpoints `overloaded`.
    pub fn start(config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.bind_addr()?)?;
        let addr = listener.local_addr()?;
        let workers = config.server.workers;
        let state = web::Data::new(AppState::new(config));
        let (tx, rx) = std::sync::mpsc::channel();
        let app_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("specd-http".into())
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .wrap(from_fn(host_guard))
                            .configure(configure(app_state.clone()))
                    })
                    .workers(workers)
                    // Every chunk frame leaves at once: with Nagle's algorithm a small write
                    // waits for the ACK of the one before, which the client may delay by
                    // 40 ms (the load tester saw streams arrive in 40 ms bursts).
                    .tcp_nodelay(true)
                    // A client that closes its side is gone: drop its handler and request.
                    .h1_allow_half_closed(false)
                    .disable_signals()
                    .shutdown_timeout(2)
                    .listen(listener)?
                    .run();
                    let _ = tx.send(server.handle());
                    server.await
                })
            })?;
        let handle = rx
            .recv()
            .map_err(|_| std::io::Error::other("the HTTP server failed to start"))?;
        Ok(Self {
            state,
            addr,
            handle,
            thread: Some(thread),
        })
    }

    /// Where the server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared state (backend, lifecycle, counters).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Makes the server ready: from now on it generates with `backend`.
    pub fn set_backend(&self, backend: Backend) {
        let _ = self.state.backend.set(Arc::new(backend));
    }

    /// Graceful shutdown: refuses new requests, gives those in flight the configured grace
    /// period, cancels what is left (each stream ends with a final frame), closes sockets,
    /// stops the server and the engine. Returns how many requests had to be cancelled.
    pub fn shutdown(mut self) -> usize {
        let grace = Config::secs(self.state.config.server.shutdown_timeout_secs);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build();
        let mut cancelled = 0;
        if let Ok(rt) = rt {
            let (c, left) = rt.block_on(
                self.state
                    .lifecycle
                    .shut_down(grace, Duration::from_secs(5)),
            );
            cancelled = c;
            if left > 0 {
                tracing::warn!("{left} requests did not end after cancellation");
            }
            // Sockets close once their last request ended; give them a moment to send it.
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
            rt.block_on(self.handle.stop(true));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        cancelled
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            // Not shut down gracefully: stop at once.
            let handle = self.handle.clone();
            let _ = std::thread::spawn(move || {
                actix_web::rt::System::new().block_on(handle.stop(false))
            })
            .join();
            let _ = t.join();
        }
    }
}
