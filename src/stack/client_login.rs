//! Layer 7: the local answer to a client's own login and logout.
//!
//! Legacy clients log in themselves (the WSO2 connector does it for every message). The proxy
//! answers them, so a client's credentials never reach Creatio through it and can never change
//! which user an identity's shared session is.
//!
//! Rules (on the canonical path, so every spelling counts: `Logi%6E`, `//`, any case, a
//! trailing `/`, and any prefix such as `/0`):
//! 1. `POST .../ServiceModel/AuthService.svc/Login` is answered with Creatio's success body and
//!    placeholder cookies, after making sure the route's identity has a session (a login, if
//!    it has none: single flight, with the back-off). The body the client sent is not read.
//! 2. Any other method on that path gets 405 JSON with `Allow: POST`, as Creatio answers.
//! 3. `.../ServiceModel/AuthService.svc/Logout` (any method) is acknowledged with `{}`; the
//!    shared session is not ended.
//! 4. Every other request to Creatio's authentication endpoints is refused with 403 JSON
//!    (`auth_endpoint_refused`), never forwarded: any other path with a segment
//!    `AuthService.svc` (`SsoLogin`, ...), and anything under the login pages (`/Login/...`,
//!    `/0/Login/...`). Forwarded, they would carry the identity's session next to the client's
//!    own credentials, and a login or logout there acts on Creatio's side of that session.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use tower::{Layer, Service};

use super::future::Decided;
use super::request::Routed;
use crate::auth::{Identity, LoginContext};
use crate::body::ProxyBody;
use crate::canonical::CanonicalPath;
use crate::error::ProxyError;

/// What a client's request to the authentication service gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalAuth {
    /// Rule 1.
    Login,
    /// Rule 2.
    LoginMethodNotAllowed,
    /// Rule 3.
    Logout,
    /// Rule 4.
    Refused,
}

/// Rules 1 to 3: `None` for every other request.
pub(crate) fn local_auth(method: &Method, path: &CanonicalPath) -> Option<LocalAuth> {
    const LOGIN: &str = "/servicemodel/authservice.svc/login";
    const LOGOUT: &str = "/servicemodel/authservice.svc/logout";
    let path = path.as_str();
    let path = path.strip_suffix('/').unwrap_or(path).as_bytes();
    let ends = |suffix: &str| {
        let suffix = suffix.as_bytes();
        path.len() >= suffix.len() && path[path.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
    };
    if ends(LOGIN) {
        return Some(if method == Method::POST {
            LocalAuth::Login
        } else {
            LocalAuth::LoginMethodNotAllowed
        });
    }
    if ends(LOGOUT) {
        return Some(LocalAuth::Logout);
    }
    // Cheap on the common path: byte slices, a length check before each comparison.
    let mut segments = path
        .split(|b| *b == b'/')
        .filter(|s| !s.is_empty())
        .peekable();
    if segments.peek().is_some_and(|s| *s == b"0") {
        segments.next();
    }
    let login_pages = segments
        .peek()
        .is_some_and(|s| s.eq_ignore_ascii_case(b"login"));
    let auth_service = path
        .split(|b| *b == b'/')
        .any(|s| s.len() == 15 && s.eq_ignore_ascii_case(b"authservice.svc"));
    (login_pages || auth_service).then_some(LocalAuth::Refused)
}

#[derive(Debug)]
struct Settings {
    identities: Arc<[Arc<Identity>]>,
    login: LoginContext,
}

/// Answers clients' logins and logouts (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct ClientLoginLayer {
    settings: Arc<Settings>,
}

impl ClientLoginLayer {
    /// A layer that makes sure `identities` have sessions with `login`.
    pub(crate) fn new(identities: Arc<[Arc<Identity>]>, login: LoginContext) -> Self {
        ClientLoginLayer {
            settings: Arc::new(Settings { identities, login }),
        }
    }
}

impl<S> Layer<S> for ClientLoginLayer {
    type Service = ClientLogin<S>;
    fn layer(&self, inner: S) -> ClientLogin<S> {
        ClientLogin {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// The service of [`ClientLoginLayer`].
#[derive(Clone, Debug)]
pub(crate) struct ClientLogin<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S, B> Service<Request<B>> for ClientLogin<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = Decided<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(routed) = req.extensions().get::<Routed>() else {
            return Decided::ready(Err(ProxyError::Internal("no route decision")));
        };
        match local_auth(req.method(), &routed.path) {
            None => Decided::inner(self.inner.call(req)),
            Some(LocalAuth::Logout) => Decided::ready(Ok(json(StatusCode::OK, "{}"))),
            Some(LocalAuth::Refused) => Decided::ready(Err(ProxyError::AuthEndpoint)),
            Some(LocalAuth::LoginMethodNotAllowed) => {
                let mut r = json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    r#"{"Message":"Method not allowed."}"#,
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                Decided::ready(Ok(r))
            }
            Some(LocalAuth::Login) => {
                let identity = self.settings.identities.get(routed.facts.identity).cloned();
                let settings = self.settings.clone();
                Decided::boxed(async move {
                    let identity = identity.ok_or(ProxyError::Internal("no such identity"))?;
                    identity.session(&settings.login).await?;
                    Ok(login_success())
                })
            }
        }
    }
}

fn json(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn login_success() -> Response<ProxyBody> {
    let mut r = json(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_login_and_logout_is_answered_locally() {
        let p = |s: &str| CanonicalPath::parse(s).expect(s);
        let cases: &[(Method, &str, Option<LocalAuth>)] = &[
            (
                Method::POST,
                "/ServiceModel/AuthService.svc/Login",
                Some(LocalAuth::Login),
            ),
            (
                Method::POST,
                "/ServiceModel/AuthService.svc/Logi%6E",
                Some(LocalAuth::Login),
            ),
            (
                Method::POST,
                "/ServiceModel/AuthService%2Esvc/Login",
                Some(LocalAuth::Login),
            ),
            (
                Method::POST,
                "/servicemodel/authservice.svc/login/",
                Some(LocalAuth::Login),
            ),
            (
                Method::POST,
                "//ServiceModel//AuthService.svc/Login",
                Some(LocalAuth::Login),
            ),
            (
                Method::POST,
                "/0/ServiceModel/AuthService.svc/Login",
                Some(LocalAuth::Login),
            ),
            (
                Method::POST,
                "/%53erviceModel/AuthService.svc/LOGIN",
                Some(LocalAuth::Login),
            ),
            (
                Method::GET,
                "/ServiceModel/AuthService.svc/Login",
                Some(LocalAuth::LoginMethodNotAllowed),
            ),
            (
                Method::PUT,
                "/ServiceModel/AuthService.svc/Login",
                Some(LocalAuth::LoginMethodNotAllowed),
            ),
            (
                Method::GET,
                "/ServiceModel/AuthService.svc/Logout",
                Some(LocalAuth::Logout),
            ),
            (
                Method::POST,
                "/ServiceModel/AuthService.svc/Logou%74",
                Some(LocalAuth::Logout),
            ),
            (Method::POST, "/0/odata/Contact", None),
            (
                Method::POST,
                "/ServiceModel/AuthService.svc/LoginX",
                Some(LocalAuth::Refused),
            ),
            (Method::POST, "/ServiceModel/XAuthService.svc/Login", None),
            (
                Method::POST,
                "/ServiceModel/AuthService.svc/SsoLogin",
                Some(LocalAuth::Refused),
            ),
            (
                Method::GET,
                "/0/ServiceModel/authservice.svc",
                Some(LocalAuth::Refused),
            ),
            (
                Method::POST,
                "/Login/NuiLogin.aspx",
                Some(LocalAuth::Refused),
            ),
            (Method::GET, "/0/login/Login.html", Some(LocalAuth::Refused)),
            (Method::GET, "/0/rest/UsrService/Login", None),
            (Method::GET, "/0/odata/Login", None),
            (
                Method::POST,
                "/éaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                None,
            ),
        ];
        for (method, path, want) in cases {
            assert_eq!(local_auth(method, &p(path)), *want, "{method} {path}");
        }
    }

    #[tokio::test]
    async fn a_clients_login_is_answered_here_and_other_requests_pass() {
        use crate::stack::testing::{fixture, routed, Scripted};
        use tower::ServiceExt;
        let f = fixture("").await;
        let creatio = Scripted::new(vec![(StatusCode::OK, vec![], "creatio")]);
        let layer = ClientLoginLayer::new(f.identities.clone(), f.login.clone());
        // (method, path, identity, status, body starts with, reached Creatio)
        let cases = [
            (
                Method::POST,
                "/ServiceModel/AuthService.svc/Logi%6E",
                1,
                200,
                "{\"Code\":0",
                false,
            ),
            (
                Method::GET,
                "/ServiceModel/AuthService.svc/Login",
                1,
                405,
                "{\"Message\"",
                false,
            ),
            (
                Method::GET,
                "/ServiceModel/AuthService.svc/Logout",
                0,
                200,
                "{}",
                false,
            ),
            (Method::GET, "/0/odata/Contact", 0, 200, "creatio", true),
        ];
        for (method, path, identity, status, body, reached) in cases {
            let before = creatio.received().len();
            let r = layer
                .layer(creatio.clone())
                .oneshot(routed(method.clone(), path, identity, ProxyBody::full("x")))
                .await
                .expect("answer");
            assert_eq!(r.status().as_u16(), status, "{method} {path}");
            let got = http_body_util::BodyExt::collect(r.into_body())
                .await
                .expect("body")
                .to_bytes();
            assert!(got.starts_with(body.as_bytes()), "{method} {path}: {got:?}");
            assert_eq!(
                creatio.received().len() > before,
                reached,
                "{method} {path}"
            );
        }
        // The local login made sure the portal identity has a session: one login, by the proxy.
        assert_eq!(f.emulator.logins("portal.user"), 1);
        assert!(f.identities[1].current().is_some());
    }
}
