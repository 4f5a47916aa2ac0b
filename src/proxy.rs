//! The request path: [`Gateway`] (front) → [`Auth`] (tower layer) → the pooled client.
//!
//! [`Gateway`] gives every request an id, checks inbound access, refuses dot-segment paths,
//! picks the route, turns [`ProxyError`]s into JSON answers and writes the access log line.
//!
//! [`Auth`] does the Creatio part for the identity the route chose:
//! 1. rewrites the path (`/ssp` rule) under `creatio.url`, drops hop-by-hop headers and the
//!    client's own credentials;
//! 2. buffers a body up to `server.replay_buffer` so it can be replayed (a larger one streams
//!    through untouched);
//! 3. attaches the identity's `Cookie` line and `BPMCSRF` header (precomputed per session);
//! 4. merges every `Set-Cookie` of the answer into the identity's jar and never passes it on;
//! 5. on an expired-session answer ([`crate::auth::expiry`]): renews the session (one login for
//!    all requests that saw the same expiry) and replays the request once. A body too large to
//!    replay gets a 503 that says it is safe to retry; a second expiry in a row is a 502.
//!
//! Legacy clients that log in themselves (the WSO2 connector does it for every message) are
//! answered by the proxy: a `POST .../ServiceModel/AuthService.svc/Login` returns Creatio's
//! success body with placeholder cookies, using (or making) the shared session, so it costs
//! Creatio nothing; `.../AuthService.svc/Logout` is acknowledged without ending the shared
//! session.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

use crate::auth::diagnosis::network_failure;
use crate::auth::expiry::{classify, is_login_page, is_non_ssp_refusal, Verdict, LOGIN_PAGE_SCAN};
use crate::auth::{Identity, LoginContext, Session};
use crate::body::{read_ahead, ProxyBody, ReadAhead};
use crate::config::{Config, CreatioUrl, Secret};
use crate::error::ProxyError;
use crate::metrics::{Metrics, Replay, RouteMetrics};
use crate::pool::{PeerBody, Upstream, UpstreamError};
use crate::routes::{apply_ssp, has_dot_segment, remove_ssp, RouteDecision, RouteTable};
use crate::upstream::{remove_hop_by_hop, strip_client_credentials, BPMCSRF_HEADER};

/// The request id header, read from clients and set on every answer.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// State shared by every request, built from one config. A reload builds a new one and
/// swaps it in ([`Live`]); requests under way finish with the one they started with.
pub struct Shared {
    /// Identities, indexed as in the config.
    pub identities: Vec<Arc<Identity>>,
    routes: RouteTable,
    creatio: CreatioUrl,
    replay_limit: usize,
    upstream_timeout: Duration,
    login: LoginContext,
    client_tokens: Vec<Secret>,
    route_prefixes: Vec<Arc<str>>,
    /// Creatio's host:port, for error messages.
    target: String,
    client: Upstream,
    /// Per route, in config order, then one for paths no route matches.
    route_metrics: Box<[RouteMetrics]>,
    metrics: Arc<Metrics>,
    /// The config this state was built from.
    pub config: Config,
}

impl Shared {
    /// Builds the shared state with metrics of its own (for `check`).
    pub fn new(config: &Config, client: Upstream) -> Arc<Shared> {
        Shared::build(config, client, Arc::new(Metrics::new()), &[])
    }

    /// Builds the shared state. An identity in `keep` whose config is unchanged is kept,
    /// session and all; the others start without a session.
    pub fn build(
        config: &Config,
        client: Upstream,
        metrics: Arc<Metrics>,
        keep: &[Arc<Identity>],
    ) -> Arc<Shared> {
        let identities = config
            .identities
            .iter()
            .map(|i| {
                keep.iter()
                    .find(|old| old.same_config(i))
                    .cloned()
                    .unwrap_or_else(|| {
                        let oauth2 = matches!(i.login, crate::config::LoginConfig::OAuth2(_));
                        Arc::new(Identity::new(i, &client, metrics.identity(&i.name, oauth2)))
                    })
            })
            .collect();
        let route_metrics = config
            .routes
            .iter()
            .map(|r| Some(r.prefix.as_str()))
            .chain([None])
            .map(|prefix| metrics.route(prefix))
            .collect();
        Arc::new(Shared {
            identities,
            routes: RouteTable::new(config),
            creatio: config.creatio.clone(),
            replay_limit: config.replay_buffer,
            upstream_timeout: config.upstream_timeout,
            login: LoginContext::new(config, client.clone()),
            client_tokens: config.client_tokens.clone(),
            route_prefixes: config
                .routes
                .iter()
                .map(|r| Arc::from(r.prefix.as_str()))
                .collect(),
            target: config.creatio.host_port(),
            client,
            route_metrics,
            metrics,
            config: config.clone(),
        })
    }

    /// The settings logins use.
    pub fn login_context(&self) -> &LoginContext {
        &self.login
    }

    /// The connection pool to Creatio.
    pub fn client(&self) -> &Upstream {
        &self.client
    }

    /// The metrics this state counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The metric handles of route `index` (`None`: no route matched).
    fn route_metrics(&self, index: Option<usize>) -> &RouteMetrics {
        let last = self.route_metrics.len() - 1;
        &self.route_metrics[index.unwrap_or(last).min(last)]
    }
}

/// The state requests use now; a reload swaps it.
pub type Live = ArcSwap<Shared>;

/// Facts about a forwarded request, attached to the answer for the access log.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Creatio's status (of the last attempt).
    pub upstream_status: u16,
    /// The request met an expired session and was replayed after a new login.
    pub relogin: bool,
}

/// What [`Auth`] forwards through: the connection pool, or a stand-in with the same shape.
pub trait UpstreamService:
    Service<Request<ProxyBody>, Response = Response<PeerBody>, Error = UpstreamError, Future: Send>
    + Clone
    + Send
    + 'static
{
}

impl<S> UpstreamService for S where
    S: Service<
            Request<ProxyBody>,
            Response = Response<PeerBody>,
            Error = UpstreamError,
            Future: Send,
        > + Clone
        + Send
        + 'static
{
}

// === impl AuthLayer ===

/// Wraps the client with Creatio session handling.
#[derive(Clone)]
pub struct AuthLayer {
    shared: Arc<Shared>,
}

impl AuthLayer {
    /// A layer over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        AuthLayer { shared }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The session-attaching service (see the module docs).
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<Request<Incoming>> for Auth<S>
where
    S: UpstreamService,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    // Boxed: the future awaits a login and possibly a replay; one allocation next to a
    // network round trip.
    type Future = BoxFuture<Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Readiness of the client is awaited per attempt in `send` (a replay needs it twice).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        Box::pin(async move { forward(inner, shared, req).await })
    }
}

/// A request body, ready to send (and maybe to send again).
enum PreparedBody {
    /// Held in memory: can be replayed.
    Replayable(Bytes),
    /// Too large to hold: streams once.
    Streaming(ProxyBody),
}

async fn prepare_body(
    body: PeerBody,
    limit: usize,
    deadline: Duration,
) -> Result<PreparedBody, ProxyError> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok(PreparedBody::Replayable(Bytes::new()));
    }
    if body.size_hint().exact().is_some_and(|n| n > limit as u64) {
        return Ok(PreparedBody::Streaming(ProxyBody::Stream(body)));
    }
    // A client that announces a body and then stalls must not hold the request forever.
    match tokio::time::timeout(deadline, read_ahead(body, limit)).await {
        Err(_) => Err(ProxyError::ClientBody(format!(
            "the body did not arrive within {deadline:?}"
        ))),
        Ok(Ok(ReadAhead::Complete(bytes))) => Ok(PreparedBody::Replayable(bytes)),
        Ok(Ok(ReadAhead::Partial(prefix, rest))) => {
            Ok(PreparedBody::Streaming(ProxyBody::Prefixed(prefix, rest)))
        }
        Ok(Err(e)) => Err(ProxyError::ClientBody(e.to_string())),
    }
}

async fn forward<S>(
    mut inner: S,
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError>
where
    S: UpstreamService,
{
    let decision = req
        .extensions()
        .get::<RouteDecision>()
        .copied()
        .ok_or(ProxyError::NoRoute)?;
    let identity = shared
        .identities
        .get(decision.identity)
        .cloned()
        .ok_or(ProxyError::NoRoute)?;
    let (mut parts, body) = req.into_parts();

    if let Some(local) = answer_client_login(&parts.method, parts.uri.path()) {
        return match local {
            LocalAuth::Login => {
                identity.session(&shared.login).await?;
                Ok(login_success_response())
            }
            LocalAuth::Logout => Ok(json_response(StatusCode::OK, "{}")),
        };
    }

    let uri = upstream_uri(&shared.creatio, &parts.uri, decision.ssp)?;
    remove_hop_by_hop(&mut parts.headers);
    strip_client_credentials(&mut parts.headers);

    let body = PeerBody::from(body).counted(&shared.metrics.bytes_in);
    let body = prepare_body(body, shared.replay_limit, shared.upstream_timeout).await?;
    let session = identity.session(&shared.login).await?;
    let target = &shared.target;
    let observe = Observe {
        latency: &shared.route_metrics(decision.route).upstream,
        bytes_out: &shared.metrics.bytes_out,
    };

    let (first_body, replay) = match body {
        PreparedBody::Replayable(bytes) => (ProxyBody::full(bytes.clone()), Some(bytes)),
        PreparedBody::Streaming(body) => (body, None),
    };
    let spare_headers = replay.as_ref().map(|_| parts.headers.clone());
    let response = send(
        &mut inner,
        &parts.method,
        uri.clone(),
        parts.headers,
        &session,
        first_body,
        shared.upstream_timeout,
        target,
        observe,
    )
    .await?;
    match inspect(response, shared.upstream_timeout).await? {
        Inspected::Pass(response)
            if response.status() == StatusCode::FORBIDDEN
                && !decision.ssp
                && !has_ssp(parts.uri.path()) =>
        {
            // Rare: boxed like `recover`.
            let response = Box::pin(portal_hint(
                response,
                &shared,
                &identity,
                decision,
                uri.path(),
            ))
            .await?;
            Ok(finish(response, &identity, session.generation, false))
        }
        Inspected::Pass(response) => Ok(finish(response, &identity, session.generation, false)),
        Inspected::Expired => {
            // The rare path is boxed so the common path's future stays small (it is moved
            // into a box on every request).
            Box::pin(recover(
                inner,
                shared.clone(),
                identity,
                session.generation,
                parts.method,
                uri,
                replay.zip(spare_headers),
                decision.route,
            ))
            .await
        }
    }
}

/// After an expired-session answer: renew the session (or take the one another request just
/// made) and replay the request once, if its body was kept.
#[allow(clippy::too_many_arguments)]
async fn recover<S>(
    mut inner: S,
    shared: Arc<Shared>,
    identity: Arc<Identity>,
    stale: u64,
    method: Method,
    uri: Uri,
    replay: Option<(Bytes, HeaderMap)>,
    route: Option<usize>,
) -> Result<Response<ProxyBody>, ProxyError>
where
    S: UpstreamService,
{
    if let Some(wait) = identity.relogin_paused() {
        return Err(ProxyError::ReloginPaused {
            identity: identity.name().to_string(),
            retry_after: wait,
        });
    }
    let fresh = identity.renew(&shared.login, Some(stale)).await?;
    let Some((bytes, headers)) = replay else {
        identity.metrics().replay(Replay::NotReplayable);
        return Err(ProxyError::ExpiredDuringUpload);
    };
    let observe = Observe {
        latency: &shared.route_metrics(route).upstream,
        bytes_out: &shared.metrics.bytes_out,
    };
    let response = send(
        &mut inner,
        &method,
        uri,
        headers,
        &fresh,
        ProxyBody::full(bytes),
        shared.upstream_timeout,
        &shared.target,
        observe,
    )
    .await?;
    match inspect(response, shared.upstream_timeout).await? {
        Inspected::Pass(response) => {
            identity.replay_worked();
            identity.metrics().replay(Replay::Ok);
            Ok(finish(response, &identity, fresh.generation, true))
        }
        Inspected::Expired => {
            identity.metrics().replay(Replay::ExpiredAgain);
            identity.replay_refused(&shared.login);
            Err(ProxyError::ExpiredAgain {
                identity: identity.name().to_string(),
                oauth2: identity.is_oauth2(),
            })
        }
    }
}

/// True when the client's path already carries the `/ssp` segment where the /ssp rule puts it.
fn has_ssp(path: &str) -> bool {
    matches!(apply_ssp(path), Cow::Borrowed(_))
}

/// Creatio's URI for a client's request target: the client's path and query under
/// `creatio.url`, with the /ssp rule applied when the route asks for it. The common case (no
/// virtual directory, no rewrite) reuses the client's path-and-query bytes as they are.
fn upstream_uri(creatio: &CreatioUrl, client: &Uri, ssp: bool) -> Result<Uri, ProxyError> {
    let path = client.path();
    let path: Cow<'_, str> = if ssp {
        apply_ssp(path)
    } else {
        Cow::Borrowed(path)
    };
    let path_and_query = match (&path, creatio.base_path.is_empty(), client.path_and_query()) {
        (Cow::Borrowed(_), true, Some(pq)) => pq.clone(),
        _ => {
            let mut s = String::with_capacity(creatio.base_path.len() + client.path().len() + 32);
            s.push_str(&creatio.base_path);
            s.push_str(&path);
            if let Some(q) = client.query() {
                s.push('?');
                s.push_str(q);
            }
            PathAndQuery::from_maybe_shared(Bytes::from(s))
                .map_err(|_| ProxyError::BadRequestTarget)?
        }
    };
    Uri::builder()
        .scheme(creatio.scheme.clone())
        .authority(creatio.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::BadRequestTarget)
}

/// Where [`send`] records what it saw.
#[derive(Clone, Copy)]
struct Observe<'a> {
    latency: &'a Histogram,
    bytes_out: &'a Counter,
}

#[allow(clippy::too_many_arguments)]
async fn send<S>(
    inner: &mut S,
    method: &Method,
    uri: Uri,
    mut headers: HeaderMap,
    session: &Session,
    body: ProxyBody,
    timeout: Duration,
    target: &str,
    observe: Observe<'_>,
) -> Result<Response<PeerBody>, ProxyError>
where
    S: Service<Request<ProxyBody>, Response = Response<PeerBody>, Error = UpstreamError>,
{
    if let Some(cookie) = &session.cookie {
        headers.insert(header::COOKIE, cookie.clone());
    }
    if let Some(csrf) = &session.csrf {
        headers.insert(BPMCSRF_HEADER.clone(), csrf.clone());
    }
    if let Some(authorization) = &session.authorization {
        headers.insert(header::AUTHORIZATION, authorization.clone());
    }
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    let unreachable = |e: UpstreamError| ProxyError::Unreachable {
        target: target.to_string(),
        cause: network_failure(&e, target, "creatio.url").1,
    };
    let svc = inner.ready().await.map_err(unreachable)?;
    let started = Instant::now();
    match tokio::time::timeout(timeout, svc.call(req)).await {
        Err(_) => Err(ProxyError::UpstreamTimeout(timeout)),
        Ok(Err(e)) => Err(unreachable(e)),
        Ok(Ok(r)) => {
            observe.latency.observe(started.elapsed().as_secs_f64());
            Ok(r.map(|b| b.counted(observe.bytes_out)))
        }
    }
}

// The `Pass` variant is a response head (~200 bytes) that is returned at once, never stored.
#[allow(clippy::large_enum_variant)]
enum Inspected {
    Pass(Response<ProxyBody>),
    Expired,
}

/// Decides whether an answer means "session expired"; reads at most the first 4 KB of an
/// HTML answer, and gives those bytes back to the body otherwise.
async fn inspect(response: Response<PeerBody>, timeout: Duration) -> Result<Inspected, ProxyError> {
    match classify(response.status(), response.headers()) {
        Verdict::Pass => Ok(Inspected::Pass(response.map(ProxyBody::Stream))),
        Verdict::Expired => Ok(Inspected::Expired),
        Verdict::Inspect => {
            let (response, head) = peek(response, timeout).await?;
            if is_login_page(&head) {
                Ok(Inspected::Expired)
            } else {
                Ok(Inspected::Pass(response))
            }
        }
    }
}

/// Reads the first [`LOGIN_PAGE_SCAN`] bytes of an answer (or all of a shorter one) and
/// returns the answer, whole again, with a copy of those bytes.
async fn peek(
    response: Response<PeerBody>,
    timeout: Duration,
) -> Result<(Response<ProxyBody>, Vec<u8>), ProxyError> {
    let (parts, body) = response.into_parts();
    let ahead = tokio::time::timeout(timeout, read_ahead(body, LOGIN_PAGE_SCAN - 1))
        .await
        .map_err(|_| ProxyError::UpstreamTimeout(timeout))?
        .map_err(|e| ProxyError::Unreachable {
            target: "Creatio".to_string(),
            cause: format!("its answer broke off: {e}"),
        })?;
    let (head, body) = match ahead {
        ReadAhead::Complete(bytes) => (bytes.to_vec(), ProxyBody::full(bytes)),
        ReadAhead::Partial(chunks, rest) => (
            head_of(&chunks, LOGIN_PAGE_SCAN),
            ProxyBody::Prefixed(chunks, rest),
        ),
    };
    Ok((Response::from_parts(parts, body), head))
}

/// The header that carries the proxy's advice on an answer it passes on unchanged.
pub static HINT_HEADER: HeaderName = HeaderName::from_static("x-creatio-proxy-hint");

/// A 403 on a path without `/ssp`: when it is Creatio's "Access to non-SSP API is denied for
/// portal users" (reference, Addendum), the answer goes to the client unchanged, plus a hint
/// header and a log line that name the route and the fix.
async fn portal_hint(
    response: Response<ProxyBody>,
    shared: &Shared,
    identity: &Identity,
    decision: RouteDecision,
    path: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = response.into_parts();
    let (mut response, head) = match body {
        ProxyBody::Stream(peer) => {
            peek(Response::from_parts(parts, peer), shared.upstream_timeout).await?
        }
        other => return Ok(Response::from_parts(parts, other)),
    };
    if !is_non_ssp_refusal(&head) {
        return Ok(response);
    }
    let route = decision
        .route
        .and_then(|r| shared.route_prefixes.get(r).cloned());
    let hint = match &route {
        Some(prefix) => format!(
            "Creatio denies non-SSP APIs to portal users: set ssp = true on the route with prefix \"{prefix}\" (identity \"{}\")",
            identity.name()
        ),
        None => format!(
            "Creatio denies non-SSP APIs to portal users: add a [[routes]] entry for this path with ssp = true and identity = \"{}\"",
            identity.name()
        ),
    };
    tracing::warn!(
        identity = %identity.name(),
        path,
        route = route.as_deref().unwrap_or("-"),
        "a portal user called an API without /ssp and Creatio answered 403: {hint}"
    );
    if let Ok(value) = HeaderValue::from_str(&hint) {
        response.headers_mut().insert(HINT_HEADER.clone(), value);
    }
    Ok(response)
}

fn head_of(chunks: &VecDeque<Bytes>, n: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(n);
    for c in chunks {
        let take = (n - head.len()).min(c.len());
        head.extend_from_slice(&c[..take]);
        if head.len() == n {
            break;
        }
    }
    head
}

/// Absorbs cookies, removes what must not reach the client, records the outcome.
fn finish(
    mut response: Response<ProxyBody>,
    identity: &Identity,
    generation: u64,
    relogin: bool,
) -> Response<ProxyBody> {
    let upstream_status = response.status().as_u16();
    let headers = response.headers_mut();
    if headers.contains_key(header::SET_COOKIE) {
        identity.absorb(generation, headers);
        headers.remove(header::SET_COOKIE);
    }
    remove_hop_by_hop(headers);
    response.extensions_mut().insert(Outcome {
        upstream_status,
        relogin,
    });
    response
}

enum LocalAuth {
    Login,
    Logout,
}

fn answer_client_login(method: &Method, path: &str) -> Option<LocalAuth> {
    const LOGIN: &str = "/servicemodel/authservice.svc/login";
    const LOGOUT: &str = "/servicemodel/authservice.svc/logout";
    let ends = |suffix: &str| {
        let (p, suffix) = (path.as_bytes(), suffix.as_bytes());
        p.len() >= suffix.len() && p[p.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    if method == Method::POST && ends(LOGIN) {
        Some(LocalAuth::Login)
    } else if ends(LOGOUT) {
        Some(LocalAuth::Logout)
    } else {
        None
    }
}

fn json_response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn login_success_response() -> Response<ProxyBody> {
    let mut r = json_response(
        StatusCode::OK,
        r#"{"Code":0,"Message":"","Exception":null,"PasswordChangeUrl":null,"RedirectUrl":null}"#,
    );
    // Placeholders so clients that insist on seeing the cookies keep working; the proxy drops
    // them when they come back and sends the real session instead.
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        HeaderValue::from_static(".ASPXAUTH=creatio-proxy; path=/; HttpOnly"),
    );
    h.append(
        header::SET_COOKIE,
        HeaderValue::from_static("BPMCSRF=creatio-proxy; path=/"),
    );
    r
}

// === impl Gateway ===

/// The front service: request id, inbound access, path checks, routing, errors, access log.
/// Each request takes the state that is live when it arrives and keeps it to the end.
#[derive(Clone)]
pub struct Gateway {
    live: Arc<Live>,
}

/// The full stack over the live state.
pub fn stack(live: Arc<Live>) -> Gateway {
    Gateway { live }
}

impl Service<Request<Incoming>> for Gateway {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<ProxyBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Incoming>) -> Self::Future {
        let started = Instant::now();
        let request_id = request_id(req.headers());
        let shared = self.live.load_full();
        let decided = admit(&shared, &req);
        let ssp_route = decided.as_ref().is_ok_and(|d| d.ssp);
        let method = req.method().clone();
        let path: Arc<str> = match req.uri().path_and_query() {
            Some(pq) if shared.config.log.query => Arc::from(pq.as_str()),
            _ => Arc::from(req.uri().path()),
        };
        // Kept for a `Location` rewrite. Taken rather than copied: Creatio gets its own `Host`
        // (the forwarded request drops the client's anyway).
        let client_host = req.headers_mut().remove(header::HOST).or_else(|| {
            // HTTP/2 carries the host in the URI (`:authority`).
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let mut inner = AuthLayer::new(shared.clone()).layer(shared.client.clone());
        Box::pin(async move {
            let (result, identity, route, route_index) = match decided {
                Err(e) => (Err(e), None, None, None),
                Ok(decision) => {
                    req.extensions_mut().insert(decision);
                    let identity = shared
                        .identities
                        .get(decision.identity)
                        .map(|i| i.name().clone());
                    let route = decision
                        .route
                        .and_then(|r| shared.route_prefixes.get(r).cloned());
                    let result = match inner.ready().await {
                        Ok(svc) => svc.call(req).await,
                        Err(e) => Err(e),
                    };
                    (result, identity, route, decision.route)
                }
            };
            let mut response = match result {
                Ok(r) => r,
                Err(e) => {
                    log_error(&e, &request_id, &method, &path, identity.as_deref());
                    e.into_response(&request_id)
                }
            };
            if response.headers().contains_key(header::LOCATION) {
                rewrite_location(
                    response.headers_mut(),
                    &shared.creatio,
                    client_host.as_ref(),
                    ssp_route,
                );
            }
            let outcome = response.extensions().get::<Outcome>().copied();
            shared
                .route_metrics(route_index)
                .count(&method, response.status().as_u16());
            response
                .headers_mut()
                .insert(X_REQUEST_ID.clone(), request_id.clone());
            crate::telemetry::access(&crate::telemetry::Access {
                request_id: request_id.to_str().unwrap_or(""),
                method: method.as_str(),
                path: &path,
                route: route.as_deref().unwrap_or("-"),
                identity: identity.as_deref().unwrap_or("-"),
                status: response.status().as_u16(),
                upstream_status: outcome.map_or(0, |o| o.upstream_status),
                relogin: outcome.is_some_and(|o| o.relogin),
                latency_us: started.elapsed().as_micros() as u64,
            });
            Ok(response)
        })
    }
}

/// A `Location` that points into Creatio (`creatio.url`, any case) is pointed at the proxy
/// instead, as the client addressed it (its `Host`): a client that follows the `Location` of a
/// created record (`201`, OData) must come back through the proxy, which holds the session.
/// On an ssp route the `ssp` segment the proxy inserted is taken out again, so the followed
/// path meets the same route (and identity) and gets it back.
/// Other locations (relative ones, other hosts) pass unchanged. Bodies are never rewritten:
/// `@odata.context` and links inside JSON keep Creatio's address.
fn rewrite_location(
    headers: &mut HeaderMap,
    creatio: &CreatioUrl,
    host: Option<&HeaderValue>,
    ssp: bool,
) {
    let (Some(location), Some(host)) = (headers.get(header::LOCATION), host) else {
        return;
    };
    let (Ok(location), Ok(host)) = (location.to_str(), host.to_str()) else {
        return;
    };
    let root = format!(
        "{}://{}{}",
        creatio.scheme.as_str(),
        creatio.authority.as_str(),
        creatio.base_path
    );
    let Some(head) = location.get(..root.len()) else {
        return;
    };
    let rest = &location[root.len()..];
    if !head.eq_ignore_ascii_case(&root) || !(rest.is_empty() || rest.starts_with(['/', '?'])) {
        return;
    }
    let rest: Cow<'_, str> = match rest.find('?') {
        _ if !ssp || !rest.starts_with('/') => Cow::Borrowed(rest),
        Some(q) => Cow::Owned(format!("{}{}", remove_ssp(&rest[..q]), &rest[q..])),
        None => remove_ssp(rest),
    };
    if let Ok(value) = HeaderValue::from_str(&format!("http://{host}{rest}")) {
        headers.insert(header::LOCATION, value);
    }
}

fn admit(shared: &Shared, req: &Request<Incoming>) -> Result<RouteDecision, ProxyError> {
    if !shared.client_tokens.is_empty() && !client_authorized(&shared.client_tokens, req.headers())
    {
        return Err(ProxyError::Unauthorized);
    }
    let path = req.uri().path();
    if !path.starts_with('/') {
        return Err(ProxyError::BadRequestTarget);
    }
    if has_dot_segment(path) {
        return Err(ProxyError::DotSegment);
    }
    shared.routes.decide(path).ok_or(ProxyError::NoRoute)
}

fn client_authorized(tokens: &[Secret], headers: &HeaderMap) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .map(|_| v[7..].trim())
        });
    let api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    [bearer, api_key]
        .into_iter()
        .flatten()
        .any(|offered| tokens.iter().any(|t| t.ct_eq(offered.as_bytes())))
}

fn log_error(
    e: &ProxyError,
    rid: &HeaderValue,
    method: &Method,
    path: &str,
    identity: Option<&str>,
) {
    let rid = rid.to_str().unwrap_or("");
    let identity = identity.unwrap_or("-");
    if e.status().is_server_error() {
        tracing::error!(request_id = rid, %method, path, identity, error = e.code(), "{e}");
    } else {
        tracing::debug!(request_id = rid, %method, path, identity, error = e.code(), "{e}");
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The client's `x-request-id` when it is sane (visible ASCII, at most 128 bytes), else a new
/// id: a per-process random prefix and a counter.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID) {
        let b = v.as_bytes();
        if !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic()) {
            return v.clone();
        }
    }
    static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    });
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    // 8 hex digits of the per-process seed, then 16 of a scrambled counter: unique within the
    // process, unlikely to collide across restarts, cheap to make.
    let mut id = [0u8; 24];
    let hex = |v: u64, out: &mut [u8]| {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let len = out.len();
        for (i, b) in out.iter_mut().enumerate() {
            *b = DIGITS[((v >> (4 * (len - 1 - i))) & 0xf) as usize];
        }
    };
    hex(seed >> 32, &mut id[..8]);
    hex(
        seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        &mut id[8..],
    );
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_into_creatio_point_at_the_proxy() {
        // A literal config: `expect` fails only if this test's own input is wrong.
        let creatio = crate::config::Config::from_toml_str(
            "[creatio]\nurl = \"https://Acme.creatio.com/CreatioWebApp\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n",
        )
        .expect("config")
        .creatio;
        let host = HeaderValue::from_static("127.0.0.1:5080");
        for (from, to) in [
            (
                "https://acme.creatio.com/CreatioWebApp/0/odata/Contact(1)",
                "http://127.0.0.1:5080/0/odata/Contact(1)",
            ),
            (
                "HTTPS://ACME.CREATIO.COM/CreatioWebApp?x=1",
                "http://127.0.0.1:5080?x=1",
            ),
            // Another host, another virtual directory, a relative location: unchanged.
            ("https://other.example/0/x", "https://other.example/0/x"),
            (
                "https://acme.creatio.com/CreatioWebApp2/0/x",
                "https://acme.creatio.com/CreatioWebApp2/0/x",
            ),
            ("/Login/NuiLogin.aspx", "/Login/NuiLogin.aspx"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::LOCATION, HeaderValue::from_static(from));
            rewrite_location(&mut headers, &creatio, Some(&host), false);
            assert_eq!(headers[header::LOCATION], to, "{from}");
        }
        // On an ssp route, the inserted segment is taken out again.
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LOCATION,
            HeaderValue::from_static(
                "https://acme.creatio.com/CreatioWebApp/0/ssp/odata/Case(7)?a=/ssp",
            ),
        );
        rewrite_location(&mut headers, &creatio, Some(&host), true);
        assert_eq!(
            headers[header::LOCATION],
            "http://127.0.0.1:5080/0/odata/Case(7)?a=/ssp"
        );
    }

    #[test]
    fn client_login_and_logout_are_recognised() {
        assert!(matches!(
            answer_client_login(&Method::POST, "/ServiceModel/AuthService.svc/Login"),
            Some(LocalAuth::Login)
        ));
        assert!(matches!(
            answer_client_login(&Method::POST, "/0/servicemodel/authservice.svc/login"),
            Some(LocalAuth::Login)
        ));
        assert!(matches!(
            answer_client_login(&Method::GET, "/ServiceModel/AuthService.svc/Logout"),
            Some(LocalAuth::Logout)
        ));
        assert!(answer_client_login(&Method::GET, "/ServiceModel/AuthService.svc/Login").is_none());
        assert!(answer_client_login(&Method::POST, "/0/odata/Contact").is_none());
        assert!(
            answer_client_login(&Method::POST, "/éaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa").is_none()
        );
    }

    #[test]
    fn upstream_uri_joins_rewrites_and_keeps_the_query() {
        let url = |u: &str| {
            let c = crate::config::Config::from_toml_str(&format!(
                "[creatio]\nurl = \"{u}\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n"
            ))
            .expect("config");
            c.creatio
        };
        let root = url("https://crm.example.com");
        let vdir = url("http://crm.local:8080/CreatioWebApp");
        let cases = [
            (
                &root,
                "/0/odata/Contact?$top=1&$filter=Name%20eq%20'x'",
                false,
                "https://crm.example.com/0/odata/Contact?$top=1&$filter=Name%20eq%20'x'",
            ),
            (
                &root,
                "/0/rest/S/M?a=1",
                true,
                "https://crm.example.com/0/ssp/rest/S/M?a=1",
            ),
            (
                &vdir,
                "/0/odata/Contact?$top=1",
                false,
                "http://crm.local:8080/CreatioWebApp/0/odata/Contact?$top=1",
            ),
            (
                &vdir,
                "/0/rest/S/M",
                true,
                "http://crm.local:8080/CreatioWebApp/0/ssp/rest/S/M",
            ),
        ];
        for (creatio, client, ssp, want) in cases {
            let client: Uri = client.parse().expect("uri");
            let got = upstream_uri(creatio, &client, ssp).expect("joins");
            assert_eq!(got.to_string(), want);
        }
    }

    #[test]
    fn client_tokens_accept_bearer_or_api_key() {
        let tokens = vec![Secret::new("t0k3n")];
        let mut h = HeaderMap::new();
        assert!(!client_authorized(&tokens, &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0k3n"),
        );
        assert!(client_authorized(&tokens, &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer wrong"),
        );
        assert!(!client_authorized(&tokens, &h));
        h.insert("x-api-key", HeaderValue::from_static("t0k3n"));
        assert!(client_authorized(&tokens, &h));
    }

    #[test]
    fn request_ids_are_reused_when_sane_and_unique_otherwise() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        let a = request_id(&HeaderMap::new());
        let b = request_id(&HeaderMap::new());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
    }
}
