//! Layer 11: the identity's session. The only layer that puts credentials on a request, and
//! the only one that writes an identity's cookie jar.
//!
//! On the way in, for the identity the route chose:
//! 1. the current session is taken (a login first when there is none: single flight, with the
//!    back-off; see [`crate::auth`]);
//! 2. the client's hop-by-hop headers (and every header its `Connection` names) and its own
//!    credentials are removed (`Cookie`, `BPMCSRF`, `Authorization`, `X-Api-Key`, and
//!    `Set-Cookie` lines some ESBs send back as request headers), in that order, before the
//!    session goes on: no client header can take the session off the request;
//! 3. the session is attached: the `Cookie` line and a `BPMCSRF` header equal to the BPMCSRF
//!    cookie (forms), or `Authorization: Bearer` (oauth2); and `ForceUseSession: true` unless
//!    the client sent its own (Creatio documents it on OData 3/4 requests, not only on login).
//!
//! On the way out:
//! 4. the answer is marked with the session generation it was sent with ([`SentWith`]), so
//!    the expiry layer can renew exactly that session;
//! 5. `Set-Cookie` never reaches the client.
//!
//! Which answers may change the jar, and why:
//! - The answer to the proxy's own login creates it ([`crate::auth`]).
//! - Answers to forwarded requests may refresh it (sliding renewal of `.ASPXAUTH`, a new
//!   `BPMCSRF`), because Creatio renews the session on any request, and a forwarded request is
//!   sent with the identity's session, on its behalf. Only in place: a cookie takes a new value
//!   only where the jar already holds it, on the same path; nothing is added and nothing is
//!   removed ([`crate::auth::Jar::apply_forwarded`]). And never from:
//!   - answers to requests on anything that may be an authentication endpoint: a canonical
//!     path with a segment containing one of [`AUTH_WORDS`] (`auth`, `login`, `signin`, `sso`,
//!     `token`, `password`, `session`, ...), in any case. There a client could log in as
//!     another user, and the answer would swap the shared session under every other client.
//!     Creatio's own authentication endpoints never get here: the client-login layer answers
//!     or refuses them;
//!   - answers whose cookies name another user (`UserName`, [`crate::auth::Jar::changes_user`]):
//!     refused whole and logged, wherever they come from;
//!   - answers that say, or may say, the session expired (including an HTML 200, which may be
//!     the login page): the session is about to be replaced;
//!   - answers to a session that has been replaced since (a late answer): ignored by
//!     generation.
//!
//! What this cannot tell apart: a custom service whose path has none of those words and that
//! logs a client in as another user by credentials would renew `.ASPXAUTH` in place with
//! another user's ticket (the ticket is opaque; `UserName`, when Creatio sends it, catches
//! it). No Creatio endpoint does this; a deployment with such a service should route it with
//! `unmatched = "deny"` or a route of its own. Taking renewals only from requests the proxy
//! makes itself would close it.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use tower::{Layer, Service};

use super::future::{take_ready, BoxFuture};
use super::request::{Routed, SentWith};
use crate::auth::expiry::{classify, Verdict};
use crate::auth::{Absorbed, Identity, LoginContext, Session};
use crate::body::ProxyBody;
use crate::canonical::CanonicalPath;
use crate::error::ProxyError;
use crate::upstream::{remove_hop_by_hop, strip_client_credentials, BPMCSRF_HEADER};

/// Creatio's header that asks it to use the session the request carries.
pub(crate) static FORCE_USE_SESSION: HeaderName = HeaderName::from_static("forceusesession");

#[derive(Debug)]
struct Settings {
    identities: Arc<[Arc<Identity>]>,
    login: LoginContext,
}

/// Attaches the identity's session (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct SessionLayer {
    settings: Arc<Settings>,
}

impl SessionLayer {
    /// Sessions of `identities`, logged in with `login`.
    pub(crate) fn new(identities: Arc<[Arc<Identity>]>, login: LoginContext) -> Self {
        SessionLayer {
            settings: Arc::new(Settings { identities, login }),
        }
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;
    fn layer(&self, inner: S) -> SessionService<S> {
        SessionService {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// The service of [`SessionLayer`].
#[derive(Clone, Debug)]
pub(crate) struct SessionService<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S> Service<Request<ProxyBody>> for SessionService<S>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    // Boxed: it may await a login; one allocation next to a network round trip.
    type Future = BoxFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ProxyBody>) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let settings = self.settings.clone();
        let routed = req.extensions().get::<Routed>();
        let identity = routed.and_then(|r| settings.identities.get(r.facts.identity).cloned());
        // Only needed when the answer carries Set-Cookie (rare): a cheap copy of the path.
        let path = routed.map(|r| r.path.clone());
        Box::pin(async move {
            let identity = identity.ok_or(ProxyError::Internal("no route decision"))?;
            let session = identity.session(&settings.login).await?;
            attach(req.headers_mut(), &session);
            let mut response = inner.call(req).await?;
            response.extensions_mut().insert(SentWith {
                generation: session.generation,
            });
            if response.headers().contains_key(header::SET_COOKIE) {
                absorb(&identity, session.generation, path.as_ref(), &mut response);
            }
            Ok(response)
        })
    }
}

/// Rules 4 and 5 for an answer that carries `Set-Cookie`: the jar may take it (see the module
/// docs), the client never sees it.
fn absorb(
    identity: &Identity,
    generation: u64,
    path: Option<&CanonicalPath>,
    response: &mut Response<ProxyBody>,
) {
    // An HTML 200 may be the login page, a 401 or a redirect to it ends the session: none of
    // these changes the jar.
    let plain = classify(response.status(), response.headers()) == Verdict::Pass;
    if plain && path.is_some_and(may_change_jar) {
        let outcome = identity.absorb(generation, response.headers());
        if outcome == Absorbed::RefusedOtherUser {
            tracing::warn!(
                identity = %identity.name(),
                "Creatio answered with the cookies of another user; the identity's session was not changed"
            );
        }
    }
    response.headers_mut().remove(header::SET_COOKIE);
}

/// Rules 2 and 3: the client's hop-by-hop headers and credentials out, the session in.
///
/// Hop-by-hop headers go first: a client's `Connection: cookie, bpmcsrf` names headers to drop
/// on the next hop, and dropping them after the session is attached would send Creatio an
/// unauthenticated request (a re-login, then a pause of re-logins, for every client).
pub(crate) fn attach(headers: &mut HeaderMap, session: &Session) {
    remove_hop_by_hop(headers);
    strip_client_credentials(headers);
    if let Some(cookie) = &session.cookie {
        headers.insert(header::COOKIE, cookie.clone());
    }
    if let Some(csrf) = &session.csrf {
        headers.insert(BPMCSRF_HEADER.clone(), csrf.clone());
    }
    if let Some(authorization) = &session.authorization {
        headers.insert(header::AUTHORIZATION, authorization.clone());
    }
    if !headers.contains_key(&FORCE_USE_SESSION) {
        headers.insert(FORCE_USE_SESSION.clone(), HeaderValue::from_static("true"));
    }
}

/// Words that mark a path segment as part of an authentication endpoint.
const AUTH_WORDS: [&str; 15] = [
    "auth",
    "login",
    "logon",
    "logout",
    "signin",
    "signon",
    "sso",
    "saml",
    "oauth",
    "openid",
    "token",
    "password",
    "credential",
    "impersonat",
    "session",
];

/// False for anything that may be an authentication endpoint (see the module docs): a path
/// with a segment that contains one of [`AUTH_WORDS`], in any case. Broad on purpose: an
/// answer not taken costs at most a sliding renewal, which the next answer brings again.
pub(crate) fn may_change_jar(path: &CanonicalPath) -> bool {
    !path.as_str().split('/').any(|segment| {
        let lower = segment.to_ascii_lowercase();
        AUTH_WORDS.iter().any(|w| lower.contains(w))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_from_authentication_endpoints_never_change_the_jar() {
        let cases = [
            ("/0/odata/Contact", true),
            ("/0/rest/UsrService/GetCases", true),
            ("/0/rest/UsrService/Loginx", false),
            ("/0/rest/UsrOAuthCallback/Done", false),
            ("/0/ServiceModel/PasswordRecovery.svc/Reset", false),
            ("/ServiceModel/AuthService.svc/SsoLogin", false),
            ("/0/ServiceModel/AUTHSERVICE.SVC/Anything", false),
            ("/Login/NuiLogin.aspx", false),
            ("/0/login/x", false),
            ("/0/rest/UsrService/Login", false),
        ];
        for (path, want) in cases {
            let p = CanonicalPath::parse(path).expect(path);
            assert_eq!(may_change_jar(&p), want, "{path}");
        }
    }

    #[test]
    fn the_session_replaces_the_clients_credentials() {
        let session = Session {
            generation: 1,
            cookie: Some(HeaderValue::from_static(".ASPXAUTH=t; BPMCSRF=c")),
            csrf: Some(HeaderValue::from_static("c")),
            authorization: None,
            obtained: tokio::time::Instant::now(),
            refresh_at: None,
            expires_at: None,
            shared: 0,
        };
        /// (headers the client sent, headers Creatio gets)
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Headers<'_>, Headers<'_>)] = &[
            (
                &[],
                &[
                    ("cookie", ".ASPXAUTH=t; BPMCSRF=c"),
                    ("bpmcsrf", "c"),
                    ("forceusesession", "true"),
                ],
            ),
            (
                &[
                    ("cookie", "mine=1"),
                    ("bpmcsrf", "x"),
                    ("set-cookie", ".ASPXAUTH=stolen"),
                    ("authorization", "Basic eA=="),
                    ("x-api-key", "k"),
                    ("accept", "*/*"),
                ],
                &[
                    ("accept", "*/*"),
                    ("cookie", ".ASPXAUTH=t; BPMCSRF=c"),
                    ("bpmcsrf", "c"),
                    ("forceusesession", "true"),
                ],
            ),
            (
                &[
                    (
                        "connection",
                        "cookie, bpmcsrf, authorization, forceusesession",
                    ),
                    ("te", "trailers"),
                ],
                &[
                    ("cookie", ".ASPXAUTH=t; BPMCSRF=c"),
                    ("bpmcsrf", "c"),
                    ("forceusesession", "true"),
                ],
            ),
            (
                &[("forceusesession", "false")],
                &[
                    ("forceusesession", "false"),
                    ("cookie", ".ASPXAUTH=t; BPMCSRF=c"),
                    ("bpmcsrf", "c"),
                ],
            ),
        ];
        for (sent, want) in cases {
            let mut h = HeaderMap::new();
            for (k, v) in *sent {
                h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            attach(&mut h, &session);
            let mut got: Vec<(String, String)> = h
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let mut want: Vec<(String, String)> = want
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{sent:?}");
        }
    }

    mod service {
        use super::super::*;
        use crate::stack::testing::{fixture, routed, Scripted};
        use http::{Method, StatusCode};
        use tower::ServiceExt;

        /// One answer from Creatio, and whether the identity's jar should take its cookies.
        struct Case {
            name: &'static str,
            path: &'static str,
            status: StatusCode,
            set_cookie: Vec<(&'static str, &'static str)>,
            absorbed: bool,
        }

        #[tokio::test]
        async fn the_session_goes_out_and_only_safe_answers_change_the_jar() {
            let cases = [
                Case {
                    name: "a sliding renewal is taken",
                    path: "/0/odata/Contact",
                    status: StatusCode::OK,
                    set_cookie: vec![("set-cookie", ".ASPXAUTH=renewed; path=/")],
                    absorbed: true,
                },
                Case {
                    name: "another user's cookies are refused",
                    path: "/0/odata/Contact",
                    status: StatusCode::OK,
                    set_cookie: vec![
                        ("set-cookie", ".ASPXAUTH=renewed; path=/"),
                        ("set-cookie", "UserName=80|111; path=/"),
                    ],
                    absorbed: false,
                },
                Case {
                    name: "an authentication endpoint's answer is refused",
                    path: "/ServiceModel/AuthService.svc/SsoLogin",
                    status: StatusCode::OK,
                    set_cookie: vec![("set-cookie", ".ASPXAUTH=renewed; path=/")],
                    absorbed: false,
                },
                Case {
                    name: "an expired answer's cookies are not taken",
                    path: "/0/odata/Contact",
                    status: StatusCode::UNAUTHORIZED,
                    set_cookie: vec![("set-cookie", ".ASPXAUTH=renewed; path=/")],
                    absorbed: false,
                },
            ];
            for case in cases {
                let f = fixture("").await;
                let creatio = Scripted::new(vec![(case.status, case.set_cookie, "{}")]);
                let layer = SessionLayer::new(f.identities.clone(), f.login.clone());
                let mut req = routed(Method::GET, case.path, 0, ProxyBody::Empty);
                req.headers_mut()
                    .insert(header::COOKIE, HeaderValue::from_static("client=1"));
                let r = layer
                    .layer(creatio.clone())
                    .oneshot(req)
                    .await
                    .expect(case.name);
                assert_eq!(r.status(), case.status, "{}", case.name);
                assert!(
                    r.headers().get(header::SET_COOKIE).is_none(),
                    "{}",
                    case.name
                );
                let sent_with = r.extensions().get::<SentWith>().map(|s| s.generation);
                assert_eq!(sent_with, Some(1), "{}", case.name);
                // What Creatio got: the session, not the client's cookie.
                let received = creatio.received();
                let cookie = received[0].headers[header::COOKIE].to_str().expect("ascii");
                assert!(
                    cookie.contains(".ASPXAUTH=") && !cookie.contains("client=1"),
                    "{}",
                    case.name
                );
                let csrf = received[0].headers[&BPMCSRF_HEADER]
                    .to_str()
                    .expect("ascii");
                assert!(cookie.contains(&format!("BPMCSRF={csrf}")), "{}", case.name);
                assert_eq!(
                    received[0].headers[&FORCE_USE_SESSION], "true",
                    "{}",
                    case.name
                );
                // What the jar holds now.
                let now = f.identities[0].current().expect("session");
                let renewed = now
                    .cookie
                    .as_ref()
                    .and_then(|c| c.to_str().ok())
                    .is_some_and(|c| c.contains(".ASPXAUTH=renewed"));
                assert_eq!(renewed, case.absorbed, "{}", case.name);
                assert_eq!(f.emulator.logins("Supervisor"), 1, "{}", case.name);
            }
        }
    }
}
