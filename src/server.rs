//! The listeners: accept loop, HTTP/1.1 + h2c, graceful shutdown, and the admin endpoints.
//!
//! [`Server::bind`] binds and returns at once (tests bind `127.0.0.1:0` and read
//! [`Server::local_addr`]); [`Server::serve`] runs until the shutdown future resolves, then stops
//! accepting and gives in-flight requests up to `server.shutdown_grace` to finish.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
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
use crate::proxy::{stack, Shared};
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

/// A bound proxy, ready to serve.
pub struct Server {
    listener: TcpListener,
    admin: Option<TcpListener>,
    shared: Arc<Shared>,
    client: crate::pool::Upstream,
    allowed: Arc<[IpBlock]>,
    grace: Duration,
}

impl Server {
    /// Binds the listeners of `config`.
    pub async fn bind(config: &Config) -> Result<Server, StartError> {
        let client = build_upstream(config)?;
        let shared = Shared::new(config, client.clone());
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
            shared,
            client,
            allowed: config.allowed_clients.clone().into(),
            grace: config.shutdown_grace,
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

    /// Shared state (identities and their sessions), for `check` and tests.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests for up to the grace
    /// period.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let service = stack(self.shared.clone(), self.client.clone());
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
            tokio::spawn(serve_admin(
                admin,
                self.shared.clone(),
                self.allowed.clone(),
            ));
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
                    if !is_allowed(&self.allowed, peer) {
                        tracing::debug!(%peer, "connection refused: address not in server.allowed_clients");
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    let conn = builder.serve_connection(
                        TokioIo::new(stream),
                        TowerToHyperService::new(service.clone()),
                    );
                    let conn = graceful.watch(conn.into_owned());
                    tokio::spawn(async move {
                        if let Err(e) = conn.await {
                            tracing::debug!(%peer, "connection ended with an error: {e}");
                        }
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        drop(self.listener);
        tracing::info!(grace = ?self.grace, "shutting down: no new connections; waiting for in-flight requests");
        if tokio::time::timeout(self.grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("grace period over; closing the remaining connections");
        }
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

async fn serve_admin(listener: TcpListener, shared: Arc<Shared>, allowed: Arc<[IpBlock]>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, peer)) if is_allowed(&allowed, peer) => stream,
            Ok(_) => continue,
            Err(e) => {
                if !is_transient(&e) {
                    // e.g. out of file descriptors: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(serve_admin_conn(stream, shared));
    }
}

async fn serve_admin_conn(stream: TcpStream, shared: Arc<Shared>) {
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(admin_answer(&req, &shared)) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
}

/// `/healthz`: the process runs. `/readyz`: every identity holds a session (else 503 naming
/// those that do not). Full readiness and metrics are a later issue's work.
fn admin_answer(req: &Request<Incoming>, shared: &Shared) -> Response<ProxyBody> {
    let (status, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, r#"{"status":"ok"}"#.to_string()),
        "/readyz" => {
            let missing: Vec<serde_json::Value> = shared
                .identities
                .iter()
                .filter(|i| {
                    i.current()
                        .is_none_or(|s| s.expires_in().is_some_and(|left| left.is_zero()))
                })
                .map(|i| serde_json::json!({"identity": i.name().as_ref(), "reason": if i.is_oauth2() { "no valid OAuth 2.0 token yet (or the last token request failed)" } else { "no Creatio session yet (or the last login failed)" }}))
                .collect();
            if missing.is_empty() {
                (StatusCode::OK, r#"{"status":"ready"}"#.to_string())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"status": "not_ready", "identities": missing}).to_string(),
                )
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            r#"{"error":"not_found","message":"admin endpoints: /healthz, /readyz"}"#.to_string(),
        ),
    };
    let mut r = Response::new(ProxyBody::full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
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
