//! Layer 9: advice on Creatio's "Access to non-SSP API is denied for portal users".
//!
//! Rules:
//! 1. A 403 to a request that went out without `/ssp` (the route has no `ssp = true` and the
//!    client's canonical path does not carry the segment) has the start of its body read.
//! 2. When it is Creatio's non-SSP refusal (reference, addendum), the answer goes to the client
//!    unchanged plus an `x-creatio-proxy-hint` header, and a warning is logged; both name the
//!    route (or say to add one) and the identity, with the fix: `ssp = true`.
//! 3. Every other answer passes untouched and unread.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::future::BoxFuture;
use super::inspect::peek;
use super::request::Routed;
use crate::auth::expiry::{is_non_ssp_refusal, LOGIN_PAGE_SCAN};
use crate::body::ProxyBody;
use crate::canonical::CanonicalPath;
use crate::error::ProxyError;
use crate::routes::has_ssp;

/// The header that carries the proxy's advice on an answer it passes on unchanged.
pub(crate) static HINT_HEADER: HeaderName = HeaderName::from_static("x-creatio-proxy-hint");

/// Names for the advice.
#[derive(Debug)]
pub(crate) struct HintSettings {
    /// Route prefixes, in config order.
    pub(crate) route_prefixes: Vec<Arc<str>>,
    /// Identity names, in config order.
    pub(crate) identities: Vec<Arc<str>>,
    /// How long reading the start of the body may take.
    pub(crate) timeout: Duration,
}

/// Adds the portal hint (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct PortalHintLayer {
    settings: Arc<HintSettings>,
}

impl PortalHintLayer {
    /// A layer with `settings`.
    pub(crate) fn new(settings: HintSettings) -> Self {
        PortalHintLayer {
            settings: Arc::new(settings),
        }
    }
}

impl<S> Layer<S> for PortalHintLayer {
    type Service = PortalHint<S>;
    fn layer(&self, inner: S) -> PortalHint<S> {
        PortalHint {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// The service of [`PortalHintLayer`].
#[derive(Clone, Debug)]
pub(crate) struct PortalHint<S> {
    inner: S,
    settings: Arc<HintSettings>,
}

impl<S, B> Service<Request<B>> for PortalHint<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let watch = req
            .extensions()
            .get::<Routed>()
            .filter(|r| !r.ssp && !has_ssp(r.path.as_str()))
            .map(|r| Watch {
                settings: self.settings.clone(),
                route: r.facts.route,
                identity: r.facts.identity,
                path: r.path.clone(),
            });
        ResponseFuture::Waiting {
            future: self.inner.call(req),
            watch,
        }
    }
}

/// What the advice needs to know about the request.
#[derive(Debug)]
struct Watch {
    settings: Arc<HintSettings>,
    route: Option<usize>,
    identity: usize,
    path: CanonicalPath,
}

pin_project! {
    /// Waits for the answer; reads a 403's body when rule 1 applies.
    #[project = HintProj]
    pub(crate) enum ResponseFuture<F> {
        /// Waiting for Creatio's answer.
        Waiting { #[pin] future: F, watch: Option<Watch> },
        /// Reading a 403 (rare: boxed).
        Reading { future: BoxFuture },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                HintProj::Waiting { future, watch } => {
                    let response = std::task::ready!(future.poll(cx))?;
                    match watch.take() {
                        Some(watch) if response.status() == StatusCode::FORBIDDEN => {
                            self.set(ResponseFuture::Reading {
                                future: Box::pin(advise(response, watch)),
                            });
                        }
                        _ => return Poll::Ready(Ok(response)),
                    }
                }
                HintProj::Reading { future } => return future.as_mut().poll(cx),
            }
        }
    }
}

/// Rule 2.
async fn advise(
    response: Response<ProxyBody>,
    watch: Watch,
) -> Result<Response<ProxyBody>, ProxyError> {
    let settings = &watch.settings;
    let (mut response, head) = peek(response, LOGIN_PAGE_SCAN, settings.timeout).await?;
    if !is_non_ssp_refusal(&head) {
        return Ok(response);
    }
    let identity = settings
        .identities
        .get(watch.identity)
        .map_or("?", |i| &**i);
    let route = watch.route.and_then(|r| settings.route_prefixes.get(r));
    let hint = hint(route.map(|r| &**r), identity);
    tracing::warn!(
        identity,
        path = %watch.path,
        route = route.map_or("-", |r| &**r),
        "a portal user called an API without /ssp and Creatio answered 403: {hint}"
    );
    if let Ok(value) = HeaderValue::from_str(&hint) {
        response.headers_mut().insert(HINT_HEADER.clone(), value);
    }
    Ok(response)
}

/// The advice for a route (or none) and an identity.
pub(crate) fn hint(route: Option<&str>, identity: &str) -> String {
    match route {
        Some(prefix) => format!(
            "Creatio denies non-SSP APIs to portal users: set ssp = true on the route with prefix \"{prefix}\" (identity \"{identity}\")"
        ),
        None => format!(
            "Creatio denies non-SSP APIs to portal users: add a [[routes]] entry for this path with ssp = true and identity = \"{identity}\""
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::request::RouteFacts;
    use tower::ServiceExt;

    const REFUSAL: &str = "<html><body>HTTP Error 403.0 - Access to non-SSP API is denied for portal users</body></html>";

    fn answering(
        status: u16,
        body: &'static str,
    ) -> impl Service<
        Request<()>,
        Response = Response<ProxyBody>,
        Error = ProxyError,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_req: Request<()>| async move {
            let mut r = Response::new(ProxyBody::full(body));
            *r.status_mut() = StatusCode::from_u16(status).expect("status");
            Ok(r)
        })
    }

    #[tokio::test]
    async fn only_creatios_non_ssp_refusal_gets_the_hint() {
        let layer = PortalHintLayer::new(HintSettings {
            route_prefixes: vec![Arc::from("/0/rest/UsrPortalService")],
            identities: vec![Arc::from("default"), Arc::from("portal")],
            timeout: Duration::from_secs(5),
        });
        /// (status, body, route, ssp route, path, hint expected)
        type Case = (
            u16,
            &'static str,
            Option<usize>,
            bool,
            &'static str,
            Option<&'static str>,
        );
        let cases: &[Case] = &[
            (403, REFUSAL, Some(0), false, "/0/rest/UsrPortalService/Get", Some("set ssp = true on the route with prefix \"/0/rest/UsrPortalService\" (identity \"portal\")")),
            (403, REFUSAL, None, false, "/0/odata/Case", Some("add a [[routes]] entry for this path with ssp = true and identity = \"portal\"")),
            (403, "{\"Message\":\"denied\"}", Some(0), false, "/0/rest/UsrPortalService/Get", None),
            (200, REFUSAL, Some(0), false, "/0/rest/UsrPortalService/Get", None),
            (403, REFUSAL, Some(0), true, "/0/rest/UsrPortalService/Get", None),
            (403, REFUSAL, None, false, "/0/ssp/odata/Case", None),
        ];
        for (status, body, route, ssp, path, want) in cases {
            let mut req = Request::new(());
            req.extensions_mut().insert(Routed {
                facts: RouteFacts {
                    route: *route,
                    identity: 1,
                },
                ssp: *ssp,
                path: CanonicalPath::parse(path).expect("path"),
                client_host: None,
            });
            let r = layer
                .layer(answering(*status, body))
                .oneshot(req)
                .await
                .expect("answer");
            assert_eq!(r.status().as_u16(), *status, "{path}");
            let got = r.headers().get(&HINT_HEADER).and_then(|v| v.to_str().ok());
            match want {
                Some(want) => assert!(got.is_some_and(|g| g.ends_with(want)), "{path}: {got:?}"),
                None => assert_eq!(got, None, "{path}"),
            }
            let bytes = http_body_util::BodyExt::collect(r.into_body())
                .await
                .expect("body")
                .to_bytes();
            assert_eq!(bytes, body.as_bytes(), "the body is passed whole: {path}");
        }
    }
}
