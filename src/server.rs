//! The listeners: accept loop, HTTP/1.1 + h2c, graceful shutdown, and the admin endpoints.
//!
//! [`Server::bind`] binds and returns at once (tests bind `127.0.0.1:0` and read
//! [`Server::local_addr`]); [`Server::serve`] runs until the shutdown future resolves, then stops
//! accepting and gives in-flight requests up to `server.shutdown_grace` to finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};

use crate::body::ProxyBody;
use crate::config::{Config, IpBlock};
use crate::metrics::{IdentityState, Metrics};
use crate::proxy::{stack, Live, Shared};
use crate::upstream::{build_upstream, ClientError};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({key}): {source}")]
    Bind {
        /// Config key.
        key: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The upstream client could not be built.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What the listeners, the admin endpoints and reloads share.
struct State {
    live: Arc<Live>,
    metrics: Arc<Metrics>,
    /// SIGTERM arrived: `/readyz` answers 503 while in-flight requests finish.
    draining: AtomicBool,
    /// The config file that SIGHUP and `POST /reload` read (set by `run`).
    config_path: std::sync::OnceLock<PathBuf>,
}

/// A bound proxy, ready to serve.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    state: Arc<State>,
}

impl Server {
    /// Binds the listeners of `config`.
    pub async fn bind(config: &Config) -> Result<Server, StartError> {
        let client = build_upstream(config)?;
        let metrics = Arc::new(Metrics::new());
        let shared = Shared::build(config, client, metrics.clone(), &[]);
        for identity in &shared.identities {
            identity.keep_fresh(shared.login_context());
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    key: "server.listen",
                    addr: config.listen,
                    source,
                })?;
        let admin = match config.admin_listen {
            None => None,
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| StartError::Bind {
                            key: "admin.listen",
                            addr,
                            source,
                        })?,
                )
            }
        };
        Ok(Server {
            listener,
            admin,
            state: Arc::new(State {
                live: Arc::new(Live::new(shared)),
                metrics,
                draining: AtomicBool::new(false),
                config_path: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The admin listener's address, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// How connections to Creatio leave this host: `direct` or the egress proxy's address.
    pub fn egress(&self) -> String {
        self.state.live.load().client().egress()
    }

    /// The state requests use now (identities and their sessions), for `check` and tests.
    pub fn shared(&self) -> Arc<Shared> {
        self.state.live.load_full()
    }

    /// The config file that `POST /reload` on the admin listener re-reads.
    pub fn set_config_path(&self, path: PathBuf) {
        let _ = self.state.config_path.set(path);
    }

    /// A handle that applies new configs to this server while it serves.
    pub fn reloader(&self) -> Reloader {
        Reloader {
            state: self.state.clone(),
        }
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests for up to the grace
    /// period.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let state = self.state;
        // The stack reads the same live state the reloader swaps.
        let service = stack(state.live.clone());
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30))
            // half_close stays off (hyper's default): a client that shuts down its sending side
            // is treated as gone, as nginx does. With it on, hyper stops watching the socket
            // during a request and cannot notice a client that hung up, so abandoned requests
            // would hold their Creatio connection until upstream_timeout.
            .keep_alive(true);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        if let Some(admin) = self.admin {
            tokio::spawn(serve_admin(admin, state.clone()));
        }
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            if !is_transient(&e) {
                                tracing::error!("accept failed: {e}; pausing for 100 ms");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            continue;
                        }
                    };
                    if !is_allowed(&state.live.load().config.allowed_clients, peer) {
                        tracing::debug!(%peer, "connection refused: address not in server.allowed_clients");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let conn = builder.serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service.clone()),
                    );
                    let conn = graceful.watch(conn.into_owned());
                    let open = state.metrics.open_connections.clone();
                    open.inc();
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, "connection ended with an error: {e}");
                        }
                        open.dec();
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        state.draining.store(true, Ordering::Release);
        drop(self.listener);
        let grace = state.live.load().config.shutdown_grace;
        tracing::info!(grace = ?grace, "shutting down: no new connections; waiting for in-flight requests");
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing the remaining connections");
        }
    }
}

/// Applies a new config to a running server (SIGHUP).
#[derive(Clone)]
pub struct Reloader {
    state: Arc<State>,
}

impl Reloader {
    /// Reads `path` and applies it; on any error the running config stays and the error is
    /// logged and returned.
    pub fn reload_file(&self, path: &Path) -> Result<(), String> {
        let result = Config::load(path)
            .map_err(|e| format!("invalid config {}: {e}", path.display()))
            .and_then(|config| self.apply(&config));
        match &result {
            Ok(()) => self.state.metrics.reload(true),
            Err(e) => {
                self.state.metrics.reload(false);
                tracing::error!("config reload refused, the running config stays: {e}");
            }
        }
        result
    }

    /// Applies `config` to new requests. Requests under way finish with the config they
    /// started with; open connections stay open. Identities whose settings did not change
    /// keep their sessions, unless the way to Creatio changed (`[creatio]`, timeouts,
    /// back-off), which starts every identity afresh over a new connection pool.
    pub fn apply(&self, config: &Config) -> Result<(), String> {
        let old = self.state.live.load_full();
        // The listener stays where it was bound: the new access rules must be safe there.
        config.check_exposure_at(old.config.listen).map_err(|e| {
            format!(
                "{e} (the proxy still listens on {}: a listen change needs a restart)",
                old.config.listen
            )
        })?;
        let same_upstream = old.config.same_upstream(config);
        let client = if same_upstream {
            if config.insecure_skip_verify {
                tracing::warn!(
                    "creatio.insecure_skip_verify = true: the TLS certificates of Creatio and the \
                     Identity Service are NOT checked; give the server's CA with creatio.ca_file instead"
                );
            }
            old.client().clone()
        } else {
            build_upstream(config).map_err(|e| e.to_string())?
        };
        let keep: &[Arc<crate::auth::Identity>] = if same_upstream { &old.identities } else { &[] };
        let shared = Shared::build(config, client, self.state.metrics.clone(), keep);
        for identity in &shared.identities {
            identity.keep_fresh(shared.login_context());
        }
        let kept = shared
            .identities
            .iter()
            .filter(|i| old.identities.iter().any(|o| Arc::ptr_eq(o, i)))
            .count();
        for (what, changed) in [
            ("server.listen", old.config.listen != config.listen),
            (
                "admin.listen",
                old.config.admin_listen != config.admin_listen,
            ),
            (
                "log.format and log.level",
                old.config.log.format != config.log.format
                    || old.config.log.level != config.log.level,
            ),
        ] {
            if changed {
                tracing::warn!(
                    "config reload: {what} changed; that takes effect at the next restart"
                );
            }
        }
        tracing::info!(
            identities = shared.identities.len(),
            kept_sessions = kept,
            routes = config.routes.len(),
            "config reloaded; new requests use it"
        );
        self.state.live.store(shared);
        Ok(())
    }
}

/// SIGHUP, caught from now on. Call it as early as possible: until a handler is installed,
/// SIGHUP's default action ends the process (a `systemctl reload` right after `start`).
/// Needs a Tokio runtime context.
pub fn catch_sighup() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(hup) => Some(hup),
        Err(e) => {
            eprintln!("creatio-proxy: cannot catch SIGHUP ({e}); config reloads need a restart");
            None
        }
    }
}

/// Reloads the config file on every SIGHUP (caught by [`catch_sighup`]), until the process
/// ends. A SIGHUP that arrived before this runs is handled at once.
pub async fn reload_on_sighup(
    reloader: Reloader,
    path: PathBuf,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
        let _ = reloader.reload_file(&path);
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted
    )
}

fn is_allowed(allowed: &[IpBlock], peer: SocketAddr) -> bool {
    allowed.is_empty() || allowed.iter().any(|b| b.contains(peer.ip()))
}

async fn serve_admin(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            // Loopback is always let in: the image's HEALTHCHECK and `creatio-proxy reload` run
            // beside the proxy, whatever server.allowed_clients says about remote clients.
            Ok((stream, peer))
                if peer.ip().to_canonical().is_loopback()
                    || is_allowed(&state.live.load().config.allowed_clients, peer) =>
            {
                (stream, peer)
            }
            Ok(_) => continue,
            Err(e) => {
                if !is_transient(&e) {
                    // e.g. out of file descriptors: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        tokio::spawn(serve_admin_conn(stream, peer, state.clone()));
    }
}

async fn serve_admin_conn(stream: TcpStream, peer: SocketAddr, state: Arc<State>) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(admin_answer(&req, peer, &state).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
}

/// Longest time `/readyz` waits for a login it started (probes time out after a few seconds).
const READY_WAIT: Duration = Duration::from_secs(2);

/// `/healthz`: the process runs. `/readyz`: every identity holds a usable session or token,
/// or just got one (the probe logs in when there is none, within the login back-off).
/// `/metrics`: Prometheus text. `POST /reload`: re-read the config file, from loopback only.
async fn admin_answer(
    req: &Request<Incoming>,
    peer: SocketAddr,
    state: &Arc<State>,
) -> Response<ProxyBody> {
    if req.uri().path() == "/reload" {
        return reload_answer(req, peer, state).await;
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return admin_response(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method_not_allowed","message":"the admin endpoints answer GET"}"#
                .to_string(),
            "application/json; charset=utf-8",
        );
    }
    match req.uri().path() {
        "/healthz" => admin_response(
            StatusCode::OK,
            r#"{"status":"ok"}"#.to_string(),
            "application/json; charset=utf-8",
        ),
        "/readyz" => {
            let (status, body) = readiness(state).await;
            admin_response(status, body.to_string(), "application/json; charset=utf-8")
        }
        "/metrics" => {
            let shared = state.live.load_full();
            let identities: Vec<IdentityState> = shared
                .identities
                .iter()
                .map(|i| {
                    let current = i.current();
                    IdentityState {
                        name: i.name().clone(),
                        backoff: i.backoff().map(|(_, left)| left),
                        session_age: current.as_ref().map(|s| s.obtained.elapsed()),
                        ready: current.as_deref().is_some_and(usable),
                    }
                })
                .collect();
            admin_response(
                StatusCode::OK,
                state.metrics.render(&identities),
                crate::metrics::CONTENT_TYPE,
            )
        }
        _ => admin_response(
            StatusCode::NOT_FOUND,
            r#"{"error":"not_found","message":"admin endpoints: GET /healthz, /readyz, /metrics; POST /reload"}"#
                .to_string(),
            "application/json; charset=utf-8",
        ),
    }
}

/// `POST /reload`: the same as SIGHUP, with the outcome in the answer. Only a client on this
/// host's loopback may ask (in a pod: `kubectl exec`; the admin port itself may face the pod
/// network for the kubelet's probes), since a reload re-reads files and restarts identities.
async fn reload_answer(
    req: &Request<Incoming>,
    peer: SocketAddr,
    state: &Arc<State>,
) -> Response<ProxyBody> {
    const JSON: &str = "application/json; charset=utf-8";
    if req.method() != http::Method::POST {
        return admin_response(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"error":"method_not_allowed","message":"POST /reload re-reads the config file"}"#
                .to_string(),
            JSON,
        );
    }
    if !peer.ip().to_canonical().is_loopback() {
        return admin_response(
            StatusCode::FORBIDDEN,
            r#"{"error":"forbidden","message":"POST /reload is answered only to clients on this host's loopback (e.g. creatio-proxy reload run beside the proxy)"}"#
                .to_string(),
            JSON,
        );
    }
    let Some(path) = state.config_path.get().cloned() else {
        return admin_response(
            StatusCode::CONFLICT,
            r#"{"error":"no_config_file","message":"this proxy was not started from a config file"}"#
                .to_string(),
            JSON,
        );
    };
    let reloader = Reloader {
        state: state.clone(),
    };
    // Reading files blocks: off the async workers.
    let outcome = tokio::task::spawn_blocking(move || reloader.reload_file(&path)).await;
    let (status, body) = match outcome {
        Ok(Ok(())) => (
            StatusCode::OK,
            serde_json::json!({"status": "applied", "message": "config reloaded; new requests use it"}),
        ),
        Ok(Err(e)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"status": "refused", "message": format!("the running config stays: {e}")}),
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            serde_json::json!({"status": "refused", "message": "the reload failed unexpectedly; the running config stays"}),
        ),
    };
    admin_response(status, body.to_string(), JSON)
}

/// A session that may be sent now: a cookie session, or a token before its stop time.
fn usable(s: &crate::auth::Session) -> bool {
    s.expires_in().is_none_or(|left| !left.is_zero())
}

async fn readiness(state: &State) -> (StatusCode, serde_json::Value) {
    if state.draining.load(Ordering::Acquire) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "shutting_down", "message": "the proxy is finishing in-flight requests and stops soon"}),
        );
    }
    let shared = state.live.load_full();
    let mut checks = tokio::task::JoinSet::new();
    let mut unanswered = Vec::new();
    for (index, identity) in shared.identities.iter().enumerate() {
        if identity.current().as_deref().is_some_and(usable) {
            continue;
        }
        unanswered.push(index);
        let identity = identity.clone();
        let ctx = shared.login_context().clone();
        checks.spawn(async move {
            let outcome = tokio::time::timeout(READY_WAIT, identity.session(&ctx)).await;
            (index, identity, outcome)
        });
    }
    let mut not_ready = Vec::new();
    while let Some(joined) = checks.join_next().await {
        // A check that panicked leaves its index in `unanswered`: not ready, below.
        let Ok((index, identity, outcome)) = joined else {
            continue;
        };
        unanswered.retain(|i| *i != index);
        let mut entry = serde_json::json!({
            "identity": identity.name().as_ref(),
            "principal": identity.principal(),
        });
        match outcome {
            Ok(Ok(session)) if usable(&session) => continue,
            Ok(Ok(_)) => {
                entry["error"] = "token_expired".into();
                entry["reason"] = "the token just obtained is already past its usable time".into();
            }
            Ok(Err(e)) => {
                entry["error"] = e.code().into();
                if let crate::error::ProxyError::LoginFailed {
                    failure,
                    retry_after,
                    ..
                } = &e
                {
                    entry["diagnosis"] = failure.diagnosis.code().into();
                    if let Some(wait) = retry_after {
                        entry["retry_after_seconds"] = wait.as_secs().max(1).into();
                    }
                }
                entry["reason"] = e.to_string().into();
            }
            Err(_) => {
                entry["error"] = "login_in_progress".into();
                entry["reason"] = format!(
                    "a {} is under way and did not finish within {READY_WAIT:?}",
                    if identity.is_oauth2() {
                        "token request"
                    } else {
                        "Creatio login"
                    }
                )
                .into();
            }
        }
        not_ready.push((index, entry));
    }
    for index in unanswered {
        if let Some(identity) = shared.identities.get(index) {
            let entry = serde_json::json!({
                "identity": identity.name().as_ref(),
                "principal": identity.principal(),
                "error": "check_failed",
                "reason": "the readiness check of this identity failed unexpectedly",
            });
            not_ready.push((index, entry));
        }
    }
    if not_ready.is_empty() {
        return (StatusCode::OK, serde_json::json!({"status": "ready"}));
    }
    not_ready.sort_by_key(|(i, _)| *i);
    let identities: Vec<serde_json::Value> = not_ready.into_iter().map(|(_, e)| e).collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"status": "not_ready", "identities": identities}),
    )
}

fn admin_response(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
