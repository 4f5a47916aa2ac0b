//! Layer 10: expiry detection, re-login and replay.
//!
//! Rules:
//! 1. A request body up to `server.replay_buffer` is read into memory before the request goes
//!    out, so it can be sent again; a larger one streams through once. A client that announces
//!    a body and stops sending gets 400 after `server.upstream_timeout`.
//! 2. Creatio's answer is classified ([`crate::auth::expiry`]): a redirect (301, 302, 303, 307,
//!    308) to a `/Login/` page, a 401, or (reading at most its first 4 KB) a 200 that is the login page means the
//!    session expired; for a request that changes data (not GET, HEAD or OPTIONS) the page must
//!    show two of the login page's markers, so a custom page that mentions the login URL never
//!    makes a write run twice. Every other answer goes to the client as it came.
//! 3. On expiry, the session the request was sent with (its generation, [`SentWith`]) is
//!    renewed: one login for every request that met the same expiry. The request is then
//!    replayed once, through the session layer, which attaches the new session.
//! 4. A body too large to replay: 503 that says it is safe to send again (the session has been
//!    renewed). A replay that meets an expired answer again: 502, and re-logins for expired
//!    answers of this *endpoint* (the canonical path without query, per identity) pause on the
//!    login back-off: the endpoint itself refuses, and logging in again per request would open
//!    a Creatio session per request. Other endpoints of the identity still re-login, so a real
//!    expiry elsewhere recovers ([`crate::auth::relogin`] has the key, the bound on remembered
//!    endpoints and the storm rule).
//!
//! It sits outside the session layer so that a replay goes through the session layer again:
//! only that layer attaches credentials.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body as _;
use tower::{Layer, Service, ServiceExt};

use super::future::{take_ready, BoxFuture};
use super::inspect::peek;
use super::request::{Outcome, Routed, SentWith};
use crate::auth::expiry::{classify, login_page_markers, Verdict, LOGIN_PAGE_SCAN};
use crate::auth::{Identity, LoginContext};
use crate::body::{read_ahead, ProxyBody, ReadAhead};
use crate::canonical::CanonicalPath;
use crate::error::ProxyError;
use crate::metrics::Replay;

/// What the expiry layer works with.
#[derive(Debug)]
pub(crate) struct RecoverSettings {
    /// The identities, in config order.
    pub(crate) identities: Arc<[Arc<Identity>]>,
    /// Settings every login shares.
    pub(crate) login: LoginContext,
    /// Largest body kept for a replay.
    pub(crate) replay_limit: usize,
    /// Longest wait for a client's body, and for the start of Creatio's.
    pub(crate) timeout: Duration,
}

/// Re-logs in and replays on expiry (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct RecoverLayer {
    settings: Arc<RecoverSettings>,
}

impl RecoverLayer {
    /// A layer with `settings`.
    pub(crate) fn new(settings: RecoverSettings) -> Self {
        RecoverLayer {
            settings: Arc::new(settings),
        }
    }
}

impl<S> Layer<S> for RecoverLayer {
    type Service = Recover<S>;
    fn layer(&self, inner: S) -> Recover<S> {
        Recover {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// The service of [`RecoverLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Recover<S> {
    inner: S,
    settings: Arc<RecoverSettings>,
}

impl<S> Service<Request<ProxyBody>> for Recover<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    // Boxed: it awaits the body, the answer, and maybe a login and a replay.
    type Future = BoxFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        let inner = take_ready(&mut self.inner);
        let settings = self.settings.clone();
        Box::pin(forward(inner, settings, req))
    }
}

/// A request body, ready to send (and maybe to send again).
enum Prepared {
    /// Held in memory: can be replayed.
    Replayable(Bytes),
    /// Too large to hold: streams once.
    Streaming(ProxyBody),
}

/// Rule 1.
async fn prepare(
    body: ProxyBody,
    limit: usize,
    deadline: Duration,
) -> Result<Prepared, ProxyError> {
    if body.is_end_stream() {
        return Ok(Prepared::Replayable(Bytes::new()));
    }
    if body.size_hint().exact().is_some_and(|n| n > limit as u64) {
        return Ok(Prepared::Streaming(body));
    }
    let peer = match body {
        ProxyBody::Stream(peer) => peer,
        ProxyBody::Full(Some(bytes)) => return Ok(Prepared::Replayable(bytes)),
        other => return Ok(Prepared::Streaming(other)),
    };
    // A client that announces a body and then stalls must not hold the request forever.
    match tokio::time::timeout(deadline, read_ahead(peer, limit)).await {
        Err(_) => Err(ProxyError::ClientBodyTimeout(deadline)),
        Ok(Ok(ReadAhead::Complete(bytes))) => Ok(Prepared::Replayable(bytes)),
        Ok(Ok(ReadAhead::Partial(prefix, rest))) => {
            Ok(Prepared::Streaming(ProxyBody::Prefixed(prefix, rest)))
        }
        Ok(Err(e)) => Err(ProxyError::from_client_body(e)),
    }
}

/// Rule 2: `None` when the session expired, else the answer (whole again). An HTML 200 to a
/// request that changes data must hold two of the login page's markers, not one: replaying a
/// write after a page that only mentions the login URL would run it twice.
async fn inspect(
    response: Response<ProxyBody>,
    method: &Method,
    timeout: Duration,
) -> Result<Option<Response<ProxyBody>>, ProxyError> {
    match classify(response.status(), response.headers()) {
        Verdict::Pass => Ok(Some(response)),
        Verdict::Expired => Ok(None),
        Verdict::Inspect => {
            let (response, head) = peek(response, LOGIN_PAGE_SCAN, timeout).await?;
            let needed = if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
                1
            } else {
                2
            };
            Ok((login_page_markers(&head) < needed).then_some(response))
        }
    }
}

/// What a replay needs of the first request: its head and the route decision (the other
/// extensions are for the layers above, which see the request once).
struct Spare {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    routed: Option<Routed>,
}

impl Spare {
    fn of(parts: &Parts) -> Self {
        Spare {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            routed: parts.extensions.get::<Routed>().cloned(),
        }
    }

    fn request(self, body: ProxyBody) -> Request<ProxyBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        if let Some(routed) = self.routed {
            req.extensions_mut().insert(routed);
        }
        req
    }
}

fn with_outcome(mut response: Response<ProxyBody>, relogin: bool) -> Response<ProxyBody> {
    let upstream_status = response.status().as_u16();
    response.extensions_mut().insert(Outcome {
        upstream_status,
        relogin,
    });
    response
}

async fn forward<S>(
    mut inner: S,
    settings: Arc<RecoverSettings>,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
{
    let identity = req
        .extensions()
        .get::<Routed>()
        .and_then(|r| settings.identities.get(r.facts.identity).cloned())
        .ok_or(ProxyError::Internal("no route decision"))?;
    let (parts, body) = req.into_parts();
    let method = parts.method.clone();
    // The endpoint (rule 4) travels in the spare head; a streamed body keeps only the path.
    let (first, replay, streamed) =
        match prepare(body, settings.replay_limit, settings.timeout).await? {
            Prepared::Replayable(bytes) => (
                ProxyBody::full(bytes.clone()),
                Some((Spare::of(&parts), bytes)),
                None,
            ),
            Prepared::Streaming(body) => (
                body,
                None,
                parts.extensions.get::<Routed>().map(|r| r.path.clone()),
            ),
        };
    let response = inner.call(Request::from_parts(parts, first)).await?;
    let sent_with = response
        .extensions()
        .get::<SentWith>()
        .map(|s| s.generation);
    match inspect(response, &method, settings.timeout).await? {
        Some(response) => Ok(with_outcome(response, false)),
        // The rare path is boxed so the common path's future stays small.
        None => {
            Box::pin(recover(
                inner, settings, identity, sent_with, replay, streamed,
            ))
            .await
        }
    }
}

/// Rules 3 and 4.
async fn recover<S>(
    mut inner: S,
    settings: Arc<RecoverSettings>,
    identity: Arc<Identity>,
    stale: Option<u64>,
    replay: Option<(Spare, Bytes)>,
    streamed: Option<CanonicalPath>,
) -> Result<Response<ProxyBody>, ProxyError>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
{
    let endpoint = replay
        .as_ref()
        .and_then(|(spare, _)| spare.routed.as_ref())
        .map(|r| r.path.clone())
        .or(streamed)
        .ok_or(ProxyError::Internal("no route decision"))?;
    let endpoint = endpoint.as_str();
    if let Some(wait) = identity.relogin_paused(endpoint, &settings.login) {
        return Err(ProxyError::ReloginPaused {
            identity: identity.name().to_string(),
            retry_after: wait,
        });
    }
    // Generation 0 is never a session's: "renew whatever is current" when the answer did not
    // say which session it was sent with.
    identity
        .renew(&settings.login, Some(stale.unwrap_or(0)))
        .await?;
    let Some((spare, bytes)) = replay else {
        identity.metrics().replay(Replay::NotReplayable);
        return Err(ProxyError::ExpiredDuringUpload);
    };
    let method = spare.method.clone();
    let svc = inner.ready().await?;
    let response = svc.call(spare.request(ProxyBody::full(bytes))).await?;
    match inspect(response, &method, settings.timeout).await? {
        Some(response) => {
            identity.replay_worked(endpoint);
            identity.metrics().replay(Replay::Ok);
            Ok(with_outcome(response, true))
        }
        None => {
            identity.metrics().replay(Replay::ExpiredAgain);
            identity.replay_refused(endpoint, &settings.login);
            Err(ProxyError::ExpiredAgain {
                identity: identity.name().to_string(),
                oauth2: identity.is_oauth2(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::session::SessionLayer;
    use crate::stack::testing::{fixture, routed, Answer, Scripted};
    use http::{Method, StatusCode};
    use tower::ServiceExt;

    fn ok() -> Answer {
        (
            StatusCode::OK,
            vec![("content-type", "application/json")],
            "{\"ok\":1}",
        )
    }
    fn unauthorized() -> Answer {
        (StatusCode::UNAUTHORIZED, vec![], "")
    }
    fn to_login() -> Answer {
        (
            StatusCode::FOUND,
            vec![("location", "/Login/NuiLogin.aspx?ReturnUrl=%2f0%2fodata")],
            "",
        )
    }
    fn login_page() -> Answer {
        (
            StatusCode::OK,
            vec![("content-type", "text/html; charset=utf-8")],
            "<html><form name=\"IndexForm\" action=\"./NuiLogin.aspx\"></form><script>Terrasoft.loginUrl = '/ServiceModel/AuthService.svc/Login';</script>",
        )
    }
    fn mentions_login() -> Answer {
        (
            StatusCode::OK,
            vec![("content-type", "text/html; charset=utf-8")],
            "<html><p>Sign in at /ServiceModel/AuthService.svc/Login</p></html>",
        )
    }

    /// Creatio's answers, the body size, and what the client gets.
    struct Case {
        name: &'static str,
        answers: Vec<Answer>,
        body: usize,
        status: StatusCode,
        /// Logins of Supervisor in all, and requests Creatio saw.
        logins: u64,
        sent: usize,
    }

    #[tokio::test]
    async fn an_expired_session_is_renewed_once_and_the_request_replayed_once() {
        let cases = [
            Case {
                name: "a normal answer passes",
                answers: vec![ok()],
                body: 10,
                status: StatusCode::OK,
                logins: 1,
                sent: 1,
            },
            Case {
                name: "401, then a replay that works",
                answers: vec![unauthorized(), ok()],
                body: 10,
                status: StatusCode::OK,
                logins: 2,
                sent: 2,
            },
            Case {
                name: "302 to the login page, then a replay",
                answers: vec![to_login(), ok()],
                body: 0,
                status: StatusCode::OK,
                logins: 2,
                sent: 2,
            },
            Case {
                name: "the login page served with 200",
                answers: vec![login_page(), ok()],
                body: 0,
                status: StatusCode::OK,
                logins: 2,
                sent: 2,
            },
            Case {
                name: "a page that only mentions the login URL is an answer to a write",
                answers: vec![mentions_login(), ok()],
                body: 10,
                status: StatusCode::OK,
                logins: 1,
                sent: 1,
            },
            Case {
                name: "expired again after a fresh login",
                answers: vec![unauthorized()],
                body: 10,
                status: StatusCode::BAD_GATEWAY,
                logins: 2,
                sent: 2,
            },
            Case {
                name: "a body too large to replay",
                answers: vec![unauthorized(), ok()],
                body: 2048,
                status: StatusCode::SERVICE_UNAVAILABLE,
                logins: 2,
                sent: 1,
            },
        ];
        for case in cases {
            let f = fixture("[server]\nreplay_buffer = \"1KiB\"\n").await;
            let creatio = Scripted::new(case.answers);
            let stack = RecoverLayer::new(RecoverSettings {
                identities: f.identities.clone(),
                login: f.login.clone(),
                replay_limit: f.config.replay_buffer,
                timeout: Duration::from_secs(5),
            })
            .layer(SessionLayer::new(f.identities.clone(), f.login.clone()).layer(creatio.clone()));
            let body = vec![b'x'; case.body];
            let req = routed(
                Method::POST,
                "/0/odata/Contact",
                0,
                ProxyBody::full(body.clone()),
            );
            let status = match stack.oneshot(req).await {
                Ok(r) => {
                    assert_eq!(
                        r.extensions().get::<Outcome>().map(|o| o.relogin),
                        Some(case.sent == 2),
                        "{}",
                        case.name
                    );
                    r.status()
                }
                Err(e) => e.status(),
            };
            assert_eq!(status, case.status, "{}", case.name);
            assert_eq!(
                f.emulator.logins("Supervisor"),
                case.logins,
                "{}",
                case.name
            );
            let received = creatio.received();
            assert_eq!(received.len(), case.sent, "{}", case.name);
            for r in &received {
                assert_eq!(r.body, body, "the same body every time: {}", case.name);
            }
            if case.sent == 2 {
                assert_ne!(
                    received[0].headers[http::header::COOKIE],
                    received[1].headers[http::header::COOKIE],
                    "the replay carries the new session: {}",
                    case.name
                );
            }
        }
    }
}
