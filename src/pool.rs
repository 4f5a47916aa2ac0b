//! The connection pool to Creatio: HTTP/1.1 keep-alive connections, reused last-in first-out.
//!
//! All requests go to one origin (`creatio.url`), so the pool is a plain list of idle
//! connections rather than hyper-util's general client (a map of origins, a boxed future and a
//! channel hop per request, which cost several per cent of a small request's CPU). Requests
//! with no body or a buffered one are exchanged by the proxy's own HTTP/1.1 client
//! ([`crate::wire`]); a request whose body streams from the client goes through hyper's.
//!
//! Rules:
//! 1. A connection is idle once the answer it carried has been read to the end; the answer's
//!    body ([`PeerBody`]) hands it back then. An answer abandoned half-way closes it.
//! 2. A request goes out on the most recently idled connection that is still open (checked
//!    with a non-blocking read as it is taken); when there is none, on a new one (TCP, then
//!    TLS when the URL is https).
//! 3. A pooled connection may have been closed by Creatio in the meantime. When not one byte
//!    of the request was accepted (or hyper gives the request back unsent), it is sent again
//!    on another connection; once any byte of it may have been written, it is never sent
//!    again (the caller sees the error).
//! 4. At most [`MAX_IDLE`] idle connections are kept; more are closed. A connection idle for
//!    longer than [`IDLE_LIMIT`] is closed rather than used: servers and load balancers drop
//!    idle connections (IIS after 120 s, cloud load balancers after a few minutes), and a
//!    request written into a connection that is being closed cannot be safely re-sent.
//! 5. A connection that carried a streamed (unbuffered) request body is not pooled: Creatio may
//!    answer before the upload ends, and the next request would wait behind it.
//! 6. At most [`MAX_CONNECTING`] new connections are being made at once. A request that finds
//!    no idle connection and no turn to connect takes the first connection handed back, or
//!    the first turn, whichever comes first. Without this, a burst (1,000 requests released
//!    by one login) opens a connection per request at the same instant: Creatio's accept
//!    queue overflows, and the dropped connection attempts wait a second for TCP's retry.
//! 7. While a login is in flight, each request waiting for it after the first has a
//!    connection made ahead ([`Upstream::connect_ahead`]), as long as the idle ones are fewer
//!    than the waiters: they all want one the moment the login is done.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use http::uri::PathAndQuery;
use http::{header, HeaderValue, Request, Response, Uri};
use http_body::Body;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};
use tower::{Service, ServiceExt};

use crate::body::{PeerBody, ProxyBody};
use crate::egress::{Connector, EgressError, EgressRules, Route};
use crate::wire::{self, Conn, GiveBack};

/// Idle connections kept at most.
pub(crate) const MAX_IDLE: usize = 1024;

/// Longest time a connection may sit idle and still be used.
pub(crate) const IDLE_LIMIT: Duration = Duration::from_secs(55);

/// How often a request whose pooled connection turned out closed is tried on another one.
const STALE_RETRIES: usize = 8;

/// New connections being made to Creatio at once, at most (rule 6).
pub(crate) const MAX_CONNECTING: usize = 128;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure to get an answer from Creatio. Each keeps its cause as its `source()`; `detail`
/// is that chain in one line, for the diagnosis sentences.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// TCP or TLS connection failed.
    #[error("connection failed: {detail}")]
    Connect {
        /// Which kind of failure, for the advice.
        kind: ConnectKind,
        /// The cause's chain in one line.
        detail: String,
        /// The connector's or handshake's error.
        #[source]
        source: BoxError,
    },
    /// The exchange failed after the connection was made.
    #[error("{detail}")]
    Exchange {
        /// The cause's chain in one line.
        detail: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
}

impl UpstreamError {
    fn connect(kind: ConnectKind, source: BoxError) -> Self {
        UpstreamError::Connect {
            kind,
            detail: describe(source.as_ref()),
            source,
        }
    }

    fn exchange(source: BoxError) -> Self {
        UpstreamError::Exchange {
            detail: describe(source.as_ref()),
            source,
        }
    }
}

/// Why a connection could not be made; each has its own advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectKind {
    /// The host name did not resolve.
    Dns,
    /// Nothing listens at the address.
    Refused,
    /// No TCP connection within `creatio.connect_timeout`.
    TimedOut,
    /// The server's certificate is not signed by a trusted CA (or is otherwise refused).
    Certificate,
    /// The server's certificate does not name the host connected to.
    CertificateName,
    /// The server's certificate has expired or is not valid yet.
    CertificateExpired,
    /// The egress proxy could not be reached, or refused the tunnel.
    Egress,
    /// Anything else (other TLS failures, resets, ...).
    Other,
}

/// Sorts a connector error by walking its sources. rustls errors travel inside `io::Error`s,
/// whose `source()` skips the wrapped error itself, so for those the walk follows `get_ref`.
fn connect_kind(e: &(dyn std::error::Error + 'static)) -> ConnectKind {
    let mut node: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = node {
        if err.downcast_ref::<EgressError>().is_some() {
            return ConnectKind::Egress;
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return tls_kind(tls);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return ConnectKind::Refused,
                std::io::ErrorKind::TimedOut => return ConnectKind::TimedOut,
                _ => {}
            }
            // The wrapped error is the next link (hyper-rustls wraps tokio-rustls's io::Error,
            // which wraps the rustls::Error).
            if let Some(inner) = io.get_ref() {
                node = Some(inner);
                continue;
            }
        }
        // hyper-util's connector says "dns error" for a failed name lookup (its error type
        // is private, its message is stable).
        if err.to_string().starts_with("dns error") {
            return ConnectKind::Dns;
        }
        node = err.source();
    }
    ConnectKind::Other
}

fn tls_kind(e: &rustls::Error) -> ConnectKind {
    match e {
        rustls::Error::InvalidCertificate(cert) => match cert {
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. } => {
                ConnectKind::CertificateName
            }
            rustls::CertificateError::Expired
            | rustls::CertificateError::ExpiredContext { .. }
            | rustls::CertificateError::NotValidYet
            | rustls::CertificateError::NotValidYetContext { .. } => {
                ConnectKind::CertificateExpired
            }
            _ => ConnectKind::Certificate,
        },
        _ => ConnectKind::Other,
    }
}

fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

struct Pool {
    connector: HttpsConnector<Connector>,
    rules: Arc<EgressRules>,
    origin: Uri,
    /// `Host` for every request: Creatio's authority.
    host: HeaderValue,
    /// Plain HTTP through an egress proxy: requests carry the absolute URL (and the proxy's
    /// credentials, if any).
    forward: Option<Option<HeaderValue>>,
    /// Idle connections with the time each became idle; newest at the back.
    idle: Mutex<VecDeque<(Box<Conn>, Instant)>>,
    /// Turns to make a new connection (rule 6).
    connecting: Semaphore,
    /// Told when a connection is handed back, for requests waiting for a turn to connect.
    returned: Notify,
}

impl GiveBack for Pool {
    fn give_back(&self, conn: Box<Conn>) {
        if let Ok(mut idle) = self.idle.lock() {
            // Close the connections that have been idle too long (the oldest are at the front).
            while idle
                .front()
                .is_some_and(|(_, since)| since.elapsed() >= IDLE_LIMIT)
            {
                idle.pop_front();
            }
            if idle.len() < MAX_IDLE {
                idle.push_back((conn, Instant::now()));
            }
        }
        self.returned.notify_one();
    }
}

/// A handle on the pool; cheap to clone. Implements `tower::Service`.
#[derive(Clone)]
pub(crate) struct Upstream {
    pool: Arc<Pool>,
}

impl Upstream {
    /// A pool of connections to `origin` (scheme and authority) made by `connector`.
    pub(crate) fn new(
        connector: HttpsConnector<Connector>,
        rules: Arc<EgressRules>,
        origin: Uri,
    ) -> Self {
        let host = origin
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("localhost"));
        let forward = match rules.route(&origin) {
            Route::Proxy { auth, .. } if origin.scheme_str() == Some("http") => Some(auth),
            _ => None,
        };
        Upstream {
            pool: Arc::new(Pool {
                connector,
                rules,
                origin,
                host,
                forward,
                idle: Mutex::new(VecDeque::new()),
                connecting: Semaphore::new(MAX_CONNECTING),
                returned: Notify::new(),
            }),
        }
    }

    /// A separate pool to another origin, with the same connector (TLS roots, timeouts).
    pub(crate) fn sibling(&self, origin: Uri) -> Upstream {
        Upstream::new(self.pool.connector.clone(), self.pool.rules.clone(), origin)
    }

    /// How this pool's connections leave the host: `direct` or the egress proxy (no
    /// credentials), for the start-up log line.
    pub(crate) fn egress(&self) -> String {
        self.pool.rules.describe(&self.pool.origin)
    }

    /// Sends one request and returns Creatio's answer head; the body streams. The request's
    /// URI may be absolute; it is sent in origin form with Creatio's `Host`.
    pub(crate) async fn request(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<PeerBody>, UpstreamError> {
        if let Some(auth) = &self.pool.forward {
            self.absolute_form(&mut req);
            if let Some(auth) = auth {
                req.headers_mut()
                    .insert(header::PROXY_AUTHORIZATION, auth.clone());
            }
        } else if req.uri().scheme().is_some() {
            let path_and_query = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(path_and_query);
        }
        match req.body() {
            ProxyBody::Empty | ProxyBody::Full(_) => self.send_buffered(req).await,
            // A client's request without a body.
            body if body.is_end_stream() => self.send_buffered(req).await,
            ProxyBody::Stream(_) | ProxyBody::Prefixed(..) => self.send_streamed(req).await,
        }
    }

    /// A request whose body is in memory, through the proxy's own HTTP/1.1 client
    /// ([`crate::wire`]).
    async fn send_buffered(
        &self,
        req: Request<ProxyBody>,
    ) -> Result<Response<PeerBody>, UpstreamError> {
        let body = match req.body() {
            ProxyBody::Full(Some(bytes)) => Some(bytes.clone()),
            _ => None,
        };
        let (head, rest) = wire::encode(&req, &self.pool.host, body.as_ref());
        let method = req.method();
        let pool: Arc<dyn GiveBack> = self.pool.clone();
        let mut stale = 0;
        loop {
            let (conn, fresh) = self.obtain().await?;
            match wire::exchange(conn, &head, rest.as_ref(), method, &pool).await {
                Ok(response) => return Ok(response.map(PeerBody::wire)),
                // Not one byte accepted by a pooled connection: safe to send on another.
                Err(e) if e.unsent && !fresh && stale < STALE_RETRIES => stale += 1,
                Err(e) => return Err(UpstreamError::exchange(Box::new(e.error))),
            }
        }
    }

    /// A request whose body streams from the client, through hyper's client, which writes
    /// the body while it waits for an answer that may come first. The connection is not
    /// pooled afterwards (rule 5).
    async fn send_streamed(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<PeerBody>, UpstreamError> {
        req.headers_mut()
            .insert(header::HOST, self.pool.host.clone());
        let mut stale = 0;
        loop {
            let (conn, fresh) = self.obtain().await?;
            let Some(io) = conn.into_io() else {
                continue;
            };
            let mut sender = match handshake(io).await {
                Ok(sender) => sender,
                Err(_) if !fresh => continue,
                Err(e) => return Err(UpstreamError::connect(ConnectKind::Other, Box::new(e))),
            };
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(response.map(PeerBody::new)),
                Err(mut e) => match e.take_message() {
                    // Never written on a pooled connection: safe to send on another.
                    Some(unsent) if !fresh && stale < STALE_RETRIES => {
                        stale += 1;
                        req = unsent;
                    }
                    _ => return Err(UpstreamError::exchange(Box::new(e.into_error()))),
                },
            }
        }
    }

    /// A connection for one request, and whether it is new (rules 2 and 6): the newest idle
    /// one that is still open; else a new one, when fewer than [`MAX_CONNECTING`] are being
    /// made; else whichever comes first, a connection handed back or a turn to connect.
    async fn obtain(&self) -> Result<(Box<Conn>, bool), UpstreamError> {
        if let Some(conn) = self.checkout() {
            return Ok((conn, false));
        }
        // One place in the queue for a turn, kept while connections handed back are missed.
        let turn = self.pool.connecting.acquire();
        tokio::pin!(turn);
        loop {
            let returned = self.pool.returned.notified();
            tokio::pin!(returned);
            // Registered before looking, so a connection handed back meanwhile is not missed.
            returned.as_mut().enable();
            if let Some(conn) = self.checkout() {
                return Ok((conn, false));
            }
            tokio::select! {
                biased;
                permit = &mut turn => {
                    // The semaphore is never closed; held while this connection is made.
                    let _permit = permit;
                    let io = self.connect().await?;
                    return Ok((Conn::new(TokioIo::new(io)), true));
                }
                () = &mut returned => {}
            }
        }
    }

    /// Makes one connection in the background and leaves it idle, unless `waiters` are
    /// already covered by idle connections: for requests waiting for a login in flight, which
    /// will all want a connection at the same moment once it is done (rule 7). Takes a turn
    /// to connect like any request.
    /// True when it started one.
    pub(crate) fn connect_ahead(&self, waiters: usize) -> bool {
        let idle = self.pool.idle.lock().map_or(usize::MAX, |idle| idle.len());
        if idle >= waiters {
            return false;
        }
        let up = self.clone();
        tokio::spawn(async move {
            let Ok(_turn) = up.pool.connecting.acquire().await else {
                return;
            };
            match up.connect().await {
                Ok(io) => up.pool.give_back(Conn::new(TokioIo::new(io))),
                // The requests connect (and report the failure) themselves.
                Err(e) => tracing::debug!("a connection made ahead of a login failed: {e}"),
            }
        });
        true
    }

    /// `http://creatio/path?query`, as an HTTP proxy expects a plain-HTTP request.
    fn absolute_form(&self, req: &mut Request<ProxyBody>) {
        let path_and_query = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = self.pool.origin.clone().into_parts();
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }

    /// The newest idle connection that is still open (rules 2 to 4).
    fn checkout(&self) -> Option<Box<Conn>> {
        loop {
            let (mut conn, since) = self.pool.idle.lock().ok()?.pop_back()?;
            if since.elapsed() < IDLE_LIMIT && conn.is_open() {
                return Some(conn);
            }
        }
    }

    /// A new connection: TCP, then TLS when the URL is https, possibly through the egress
    /// proxy.
    async fn connect(&self) -> Result<MaybeHttpsStream<TokioIo<TcpStream>>, UpstreamError> {
        self.pool
            .connector
            .clone()
            .oneshot(self.pool.origin.clone())
            .await
            .map_err(|e: BoxError| UpstreamError::connect(connect_kind(e.as_ref()), e))
    }
}

/// hyper's HTTP/1.1 client on `io`; its connection task ends with the exchange.
async fn handshake(
    io: MaybeHttpsStream<TokioIo<TcpStream>>,
) -> Result<SendRequest<ProxyBody>, hyper::Error> {
    let (sender, connection) = http1::Builder::new().handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("Creatio connection ended: {e}");
        }
    });
    Ok(sender)
}

impl Service<Request<ProxyBody>> for Upstream {
    type Response = Response<PeerBody>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<PeerBody>, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        let upstream = self.clone();
        Box::pin(async move { upstream.request(req).await })
    }
}

#[cfg(test)]
mod tests {
    // Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
    // whose failure is this test failing; none of it is on a request path.
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper_util::rt::TokioExecutor;
    use hyper_util::server::conn::auto;

    /// A server on 127.0.0.1:0 that counts connections; `keep_alive = false` closes each
    /// connection after one answer. `/big` answers 1 MiB.
    async fn server(keep_alive: bool) -> (Uri, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let body = if req.uri().path() == "/big" {
                            Bytes::from(vec![7u8; 1 << 20])
                        } else {
                            Bytes::from_static(b"ok")
                        };
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(body)))
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http1().keep_alive(keep_alive);
                    let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        (format!("http://{addr}/").parse().expect("uri"), connections)
    }

    fn upstream(origin: Uri) -> Upstream {
        let config = crate::config::Config::from_toml_str(&format!(
            "[creatio]\nurl = \"{}\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n",
            origin.to_string().trim_end_matches('/')
        ))
        .expect("config");
        crate::upstream::build_upstream(&config).expect("pool")
    }

    async fn get(up: &Upstream, path: &str) -> (u16, usize) {
        let req = Request::get(path).body(ProxyBody::Empty).expect("request");
        let resp = up.request(req).await.expect("answer");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body.len())
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (origin, connections) = server(true).await;
        let up = upstream(origin);
        for _ in 0..50 {
            assert_eq!(get(&up, "/x").await, (200, 2));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connections_closed_by_the_peer_are_replaced_without_failing_requests() {
        let (origin, connections) = server(false).await;
        let up = upstream(origin);
        for _ in 0..20 {
            assert_eq!(get(&up, "/x").await, (200, 2));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 20);
    }

    #[tokio::test]
    async fn connections_idle_too_long_are_not_used() {
        let (origin, connections) = server(true).await;
        let up = upstream(origin);
        assert_eq!(get(&up, "/x").await, (200, 2));
        tokio::time::pause();
        tokio::time::advance(IDLE_LIMIT + Duration::from_secs(1)).await;
        tokio::time::resume();
        assert_eq!(get(&up, "/x").await, (200, 2));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "the stale connection was replaced"
        );
        assert_eq!(get(&up, "/x").await, (200, 2));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "the new one is reused"
        );
    }

    #[tokio::test]
    async fn a_connection_that_carried_a_streamed_upload_is_not_pooled() {
        let (origin, connections) = server(true).await;
        let up = upstream(origin);
        // A streamed request body: a real client connection's body, relayed by a local server.
        let relay = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let relay_addr = relay.local_addr().expect("addr");
        let relayed = up.clone();
        tokio::spawn(async move {
            let Ok((stream, _)) = relay.accept().await else {
                return;
            };
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let up = relayed.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    let req = Request::from_parts(parts, ProxyBody::Stream(body.into()));
                    let resp = up.request(req).await.expect("answer");
                    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes)))
                }
            });
            let _ = http1_server()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
        let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let resp = client
            .request(
                Request::post(format!("http://{relay_addr}/x"))
                    .body(Full::new(Bytes::from_static(b"payload")))
                    .expect("request"),
            )
            .await
            .expect("relay answers");
        assert_eq!(resp.status(), 200);
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(get(&up, "/x").await, (200, 2));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "the upload's connection was not reused"
        );
        assert_eq!(get(&up, "/x").await, (200, 2));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "a buffered request's connection is"
        );
    }

    #[tokio::test]
    async fn without_a_turn_to_connect_a_request_takes_the_next_connection_handed_back() {
        let (origin, connections) = server(true).await;
        let up = upstream(origin);
        assert_eq!(get(&up, "/x").await, (200, 2));
        // Every turn to connect taken, and the one idle connection held outside the pool.
        let turns = up
            .pool
            .connecting
            .acquire_many(MAX_CONNECTING as u32)
            .await
            .expect("turns");
        let held = up.checkout().expect("the idle connection");
        let mut waiting = Box::pin(get(&up, "/x"));
        let first = std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await;
        assert!(
            first.is_pending(),
            "no idle connection and no turn: it waits"
        );
        up.pool.give_back(held);
        assert_eq!(waiting.await, (200, 2));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "it took the connection handed back, not a new one"
        );
        drop(turns);
    }

    #[tokio::test]
    async fn connections_made_ahead_of_a_login_wait_idle_for_the_requests() {
        let (origin, connections) = server(true).await;
        let up = upstream(origin);
        // No idle connection and one other waiter: one is made, and handed to the pool.
        let handed_back = up.pool.returned.notified();
        tokio::pin!(handed_back);
        handed_back.as_mut().enable();
        assert!(up.connect_ahead(1), "one is started");
        handed_back.await;
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        // As many idle as waiters: nothing more is made.
        assert!(!up.connect_ahead(1), "none is started");
        assert_eq!(get(&up, "/x").await, (200, 2));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            1,
            "the request used the connection made ahead"
        );
    }

    fn http1_server() -> hyper::server::conn::http1::Builder {
        hyper::server::conn::http1::Builder::new()
    }

    #[tokio::test]
    async fn an_abandoned_answer_does_not_return_its_connection() {
        let (origin, connections) = server(true).await;
        let up = upstream(origin);
        let req = Request::get("/big")
            .body(ProxyBody::Empty)
            .expect("request");
        let resp = up.request(req).await.expect("answer");
        drop(resp);
        assert_eq!(get(&up, "/x").await, (200, 2));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "the half-read connection was not reused"
        );
        assert_eq!(get(&up, "/big").await, (200, 1 << 20));
        assert_eq!(get(&up, "/x").await, (200, 2));
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "a fully read answer returns its connection"
        );
    }
}
