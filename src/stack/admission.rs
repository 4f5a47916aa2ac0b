//! Layer 5: inbound admission. Who may use the proxy (and so the identities' Creatio rights).
//!
//! Rules:
//! 1. With `server.client_tokens` set, a request must carry one of them, as
//!    `Authorization: Bearer <t>` or `X-Api-Key: <t>`; otherwise 401 JSON with
//!    `WWW-Authenticate: Bearer`. Tokens are compared in constant time.
//! 2. Without tokens every request is admitted here. `server.allowed_clients` is checked by the
//!    listener when a connection is accepted ([`crate::server`]), before any byte is read: a
//!    refused address never reaches the HTTP layer.
//! 3. The token headers are removed before the request reaches Creatio by the session layer,
//!    with the client's other credentials.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap};
use http::{Request, Response};
use tower::{Layer, Service};

use super::future::Decided;
use crate::body::ProxyBody;
use crate::config::Secret;
use crate::error::ProxyError;

/// Checks client tokens (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct AdmissionLayer {
    tokens: Arc<[Secret]>,
}

impl AdmissionLayer {
    /// Admits requests carrying one of `tokens` (all requests when empty).
    pub(crate) fn new(tokens: Vec<Secret>) -> Self {
        AdmissionLayer {
            tokens: tokens.into(),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            tokens: self.tokens.clone(),
        }
    }
}

/// The service of [`AdmissionLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Admission<S> {
    inner: S,
    tokens: Arc<[Secret]>,
}

impl<S, B> Service<Request<B>> for Admission<S>
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
        if admitted(&self.tokens, req.headers()) {
            Decided::inner(self.inner.call(req))
        } else {
            Decided::ready(Err(ProxyError::Unauthorized))
        }
    }
}

/// Rule 1: true when no token is required or the request carries one.
pub(crate) fn admitted(tokens: &[Secret], headers: &HeaderMap) -> bool {
    if tokens.is_empty() {
        return true;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use tower::ServiceExt;

    fn ok() -> impl Service<
        Request<()>,
        Response = Response<ProxyBody>,
        Error = ProxyError,
        Future = impl Send,
    > + Clone {
        tower::service_fn(|_req: Request<()>| async { Ok(Response::new(ProxyBody::Empty)) })
    }

    #[tokio::test]
    async fn only_requests_with_a_token_are_admitted_when_tokens_are_set() {
        /// (name, configured tokens, headers sent, admitted)
        type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)], bool);
        let cases: &[Case<'_>] = &[
            ("no tokens configured: all admitted", &[], &[], true),
            ("token required, none sent", &["t0k3n"], &[], false),
            (
                "bearer token",
                &["t0k3n"],
                &[("authorization", "Bearer t0k3n")],
                true,
            ),
            (
                "bearer, any case, spaces",
                &["t0k3n"],
                &[("authorization", "bEaReR  t0k3n ")],
                true,
            ),
            (
                "wrong bearer",
                &["t0k3n"],
                &[("authorization", "Bearer wrong")],
                false,
            ),
            (
                "basic is not a token",
                &["t0k3n"],
                &[("authorization", "Basic t0k3n")],
                false,
            ),
            ("api key", &["t0k3n"], &[("x-api-key", "t0k3n")], true),
            (
                "second of two tokens",
                &["a", "t0k3n"],
                &[("x-api-key", "t0k3n")],
                true,
            ),
            (
                "prefix of a token",
                &["t0k3n"],
                &[("x-api-key", "t0k3")],
                false,
            ),
        ];
        for (name, tokens, headers, want) in cases {
            let layer = AdmissionLayer::new(tokens.iter().map(|t| Secret::new(*t)).collect());
            let mut req = Request::new(());
            for (k, v) in *headers {
                req.headers_mut().insert(
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                );
            }
            let got = layer.layer(ok()).oneshot(req).await;
            match (want, got) {
                (true, Ok(r)) => assert_eq!(r.status(), StatusCode::OK, "{name}"),
                (false, Err(ProxyError::Unauthorized)) => {}
                (_, other) => panic!("{name}: {:?}", other.map(|r| r.status())),
            }
        }
    }
}
