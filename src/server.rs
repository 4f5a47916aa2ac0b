//! The listener: accept, serve HTTP/1.1 and h2c, shut down gracefully. Nothing else: what a
//! request goes through is the stack ([`crate::stack`]), the admin port is [`crate::admin`],
//! and reloads are [`crate::reload`].
//!
//! [`Server::bind`] binds and returns at once (tests bind `127.0.0.1:0` and read
//! [`Server::local_addr`]); [`Server::serve`] runs until the shutdown future resolves, then stops
//! accepting and gives in-flight requests up to `server.shutdown_grace` to finish.
//!
//! A connection from an address outside `server.allowed_clients` is closed at accept, before
//! any byte is read. Each request takes the stack of the config that is live when it arrives
//! ([`Entry`]) and keeps it to the end.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::accept::{is_allowed, is_transient};
use crate::body::{PeerBody, ProxyBody};
use crate::config::Config;
use crate::metrics::Metrics;
pub use crate::reload::Reloader;
use crate::stack::Stack;
use crate::state::{Live, ServerState, Shared};
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
    state: Arc<ServerState>,
}

impl Server {
    /// Binds the listeners of `config`.
    pub async fn bind(config: &Config) -> Result<Server, StartError> {
        let client = build_upstream(config)?;
        let metrics = Arc::new(Metrics::new());
        let shared = Shared::build(config, client, metrics.clone(), &[]);
        for identity in shared.identities.iter() {
            identity.keep_fresh(&shared.login);
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
            state: Arc::new(ServerState {
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
        self.state.live.load().client.egress()
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
        // Reads the same live state the reloader swaps.
        let service = Entry {
            live: state.live.clone(),
        };
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
            tokio::spawn(crate::admin::serve_admin(admin, state.clone()));
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

/// The front door of the stack: takes the live config's stack for each request, and turns
/// hyper's body into the stack's.
#[derive(Clone)]
struct Entry {
    live: Arc<Live>,
}

impl tower::Service<Request<Incoming>> for Entry {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = tower::util::Oneshot<Stack, Request<ProxyBody>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // Readiness is the stack's, awaited per request by `Oneshot`.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let shared = self.live.load();
        let bytes_in = &shared.metrics.bytes_in;
        let req = req.map(|body| ProxyBody::Stream(PeerBody::from(body).counted(bytes_in)));
        tower::ServiceExt::oneshot(shared.stack.clone(), req)
    }
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
