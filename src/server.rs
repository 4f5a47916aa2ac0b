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

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::accept::{is_allowed, is_transient};
use crate::body::{PeerBody, ProxyBody};
use crate::config::Config;
use crate::conn::{AcceptBackoff, Listener};
use crate::metrics::Metrics;
pub use crate::reload::Reloader;
use crate::stack::request::Listening;
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
        let shared = Shared::build(config, client, metrics.clone(), &[], None);
        for identity in shared.identities.iter() {
            identity.keep_fresh(&shared.login);
        }
        let listener = crate::accept::listen(config.listen).map_err(|source| StartError::Bind {
            key: "server.listen",
            addr: config.listen,
            source,
        })?;
        let admin = match config.admin_listen {
            None => None,
            Some(addr) => Some(
                crate::accept::listen(addr).map_err(|source| StartError::Bind {
                    key: "admin.listen",
                    addr,
                    source,
                })?,
            ),
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
    /// period. Connections are held to the limits of [`crate::conn`], read from the config
    /// at start (a reload changes the per-request limits, not these).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let state = self.state;
        let limits = state.live.load().config.limits.clone();
        let main = Listener::new("main", &limits, state.metrics.clone());
        // Reads the same live state the reloader swaps.
        let service = Entry {
            live: state.live.clone(),
            local: None,
        };
        if let Some(admin) = self.admin {
            let mut admin_limits = limits.clone();
            admin_limits.max_connections = admin_limits.max_connections.min(ADMIN_CONNECTIONS);
            let listener = Listener::new("admin", &admin_limits, state.metrics.clone());
            tokio::spawn(crate::admin::serve_admin(admin, state.clone(), listener));
        }
        let mut backoff = AcceptBackoff::default();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => {
                            backoff.reset();
                            a
                        }
                        Err(e) => {
                            if !is_transient(&e) {
                                main.shed_idle();
                                tokio::time::sleep(backoff.failed(main.name, &e)).await;
                            }
                            continue;
                        }
                    };
                    if !is_allowed(&state.live.load().config.allowed_clients, peer) {
                        tracing::debug!(%peer, "connection refused: address not in server.allowed_clients");
                        continue;
                    }
                    let Some(permit) = main.admit().await else {
                        main.refuse(stream);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let service = Entry {
                        live: service.live.clone(),
                        local: stream.local_addr().ok().map(Listening),
                    };
                    let conn = main.clone().serve(stream, service, permit);
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
        if tokio::time::timeout(grace, main.drain()).await.is_err() {
            tracing::warn!("grace period over; closing the remaining connections");
        }
    }
}

/// Connections the admin listener holds at once (probes, scrapes, reloads).
const ADMIN_CONNECTIONS: usize = 64;

/// The front door of the stack: takes the live config's stack for each request, and turns
/// hyper's body into the stack's.
#[derive(Clone)]
struct Entry {
    live: Arc<Live>,
    /// The address this connection reached (for a `Location` when the `Host` is unusable).
    local: Option<Listening>,
}

/// The stack's future for one request, boxed once here: the layered future is several KiB, and
/// hyper moves the future it is given; a box makes those moves a pointer's (a request's
/// `memcpy` was 12% of its instructions before).
type EntryFuture = std::pin::Pin<Box<tower::util::Oneshot<Stack, Request<ProxyBody>>>>;

impl hyper::service::Service<Request<Incoming>> for Entry {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = EntryFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let shared = self.live.load();
        let bytes_in = &shared.metrics.bytes_in;
        let stall = shared.config.limits.body_read_timeout;
        let req = req.map(|body| {
            let bodiless = http_body::Body::is_end_stream(&body);
            let body = PeerBody::from(body).counted(bytes_in);
            // A body that may still arrive is held to server.body_read_timeout; its size limit
            // is set once the route is known (stack::route).
            ProxyBody::Stream(if bodiless {
                body
            } else {
                body.guarded(stall, None)
            })
        });
        let mut req = req;
        if let Some(local) = self.local {
            req.extensions_mut().insert(local);
        }
        // Readiness is the stack's, awaited per request by `Oneshot`.
        Box::pin(tower::ServiceExt::oneshot(shared.stack.clone(), req))
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
