//! Layer 2: the access log line and the request metrics, one of each per request, written
//! when the answer's head is ready.
//!
//! Rules:
//! 1. The line carries the request id, method, path (the raw path the client sent, without the
//!    query unless `log.query = true`), route, identity, status, Creatio's status, whether the
//!    request was replayed after a re-login, and the latency. Never a header value.
//! 2. A proxy-made error (the error layer puts it on the answer) is also logged on its own line:
//!    at `error` for 5xx (an operator must act), at `debug` for the client's mistakes.
//! 3. The route and identity are decided further in; the route layer writes them into the
//!    request's [`RequestInfo`], which this layer keeps.
//! 4. A client that hangs up before the answer's head is ready still gets its line and its
//!    count, with status 499 (nginx's "client closed request"): an operator sees the requests
//!    that Creatio was too slow for.
//!
//! Hand-written: tower-http's `TraceLayer` logs through the general tracing formatter, which
//! cost several per cent of a small request's CPU (see [`crate::telemetry::access`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::PathAndQuery;
use http::{Method, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use super::request::{Outcome, RequestInfo, RouteFacts};
use crate::error::ProxyError;
use crate::metrics::RouteMetrics;

/// What the access log needs to name routes and identities.
#[derive(Debug)]
pub(crate) struct AccessSettings {
    /// Route prefixes, in config order.
    pub(crate) route_prefixes: Vec<Arc<str>>,
    /// Identity names, in config order.
    pub(crate) identities: Vec<Arc<str>>,
    /// Per route in config order, then one for requests no route matched.
    pub(crate) route_metrics: Vec<RouteMetrics>,
    /// Log the query string too.
    pub(crate) log_query: bool,
}

impl AccessSettings {
    fn route_metrics(&self, index: Option<usize>) -> Option<&RouteMetrics> {
        let last = self.route_metrics.len().checked_sub(1)?;
        self.route_metrics.get(index.unwrap_or(last).min(last))
    }
}

/// Writes the access line and counts the request (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct AccessLogLayer {
    settings: Arc<AccessSettings>,
}

impl AccessLogLayer {
    /// A layer with `settings`.
    pub(crate) fn new(settings: AccessSettings) -> Self {
        AccessLogLayer {
            settings: Arc::new(settings),
        }
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;
    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// The service of [`AccessLogLayer`].
#[derive(Clone, Debug)]
pub(crate) struct AccessLog<S> {
    inner: S,
    settings: Arc<AccessSettings>,
}

impl<S, B, R> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let record = Record {
            started: Instant::now(),
            info: req.extensions().get::<Arc<RequestInfo>>().cloned(),
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            settings: self.settings.clone(),
        };
        ResponseFuture {
            future: self.inner.call(req),
            record: Some(record),
        }
    }
}

/// What the line needs from the request.
#[derive(Debug)]
struct Record {
    started: Instant,
    info: Option<Arc<RequestInfo>>,
    method: Method,
    path: Option<PathAndQuery>,
    settings: Arc<AccessSettings>,
}

/// The status logged for a request whose client left before the answer (rule 4).
const CLIENT_CLOSED: u16 = 499;

pin_project! {
    /// Writes the line when the answer's head is ready.
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        future: F,
        record: Option<Record>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(record) = this.project().record.take() {
                record.write(CLIENT_CLOSED, None);
            }
        }
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.future.poll(cx));
        if let (Some(record), Ok(response)) = (this.record.take(), &result) {
            record.write(response.status().as_u16(), Some(response.extensions()));
        }
        Poll::Ready(result)
    }
}

impl Record {
    fn write(self, status: u16, extensions: Option<&http::Extensions>) {
        let settings = &self.settings;
        let facts: Option<RouteFacts> = self.info.as_ref().and_then(|i| i.route.get().copied());
        let route = facts
            .and_then(|f| f.route)
            .and_then(|r| settings.route_prefixes.get(r));
        let identity = facts.and_then(|f| settings.identities.get(f.identity));
        if let Some(metrics) = settings.route_metrics(facts.and_then(|f| f.route)) {
            metrics.count(&self.method, status);
        }
        let id = self
            .info
            .as_ref()
            .and_then(|i| i.id.to_str().ok())
            .unwrap_or("");
        let path = match &self.path {
            Some(pq) if settings.log_query => pq.as_str(),
            Some(pq) => pq.path(),
            None => "/",
        };
        if let Some(e) = extensions.and_then(|x| x.get::<Arc<ProxyError>>()) {
            log_error(e, id, &self.method, path, identity.map_or("-", |i| i));
        }
        let outcome = extensions.and_then(|x| x.get::<Outcome>()).copied();
        crate::telemetry::access(&crate::telemetry::Access {
            request_id: id,
            method: self.method.as_str(),
            path,
            route: route.map_or("-", |r| r),
            identity: identity.map_or("-", |i| i),
            status,
            upstream_status: outcome.map_or(0, |o| o.upstream_status),
            relogin: outcome.is_some_and(|o| o.relogin),
            latency_us: self.started.elapsed().as_micros() as u64,
        });
    }
}

/// Rule 2. The error's whole source chain goes into the line.
fn log_error(e: &ProxyError, rid: &str, method: &Method, path: &str, identity: &str) {
    let chain = crate::error::chain(e);
    if e.status().is_server_error() {
        tracing::error!(request_id = rid, %method, path, identity, error = e.code(), "{chain}");
    } else {
        tracing::debug!(request_id = rid, %method, path, identity, error = e.code(), "{chain}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use tower::ServiceExt;

    /// Writes route facts the way the route layer does, then answers `status`.
    fn routed(
        facts: Option<RouteFacts>,
        status: u16,
    ) -> impl Service<Request<()>, Response = Response<()>, Error = std::convert::Infallible> + Clone
    {
        tower::service_fn(move |req: Request<()>| async move {
            if let (Some(f), Some(info)) = (facts, req.extensions().get::<Arc<RequestInfo>>()) {
                let _ = info.route.set(f);
            }
            let mut r = Response::new(());
            *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
            Ok::<_, std::convert::Infallible>(r)
        })
    }

    /// A request as the request-id layer leaves it.
    fn with_info(mut req: Request<()>) -> Request<()> {
        req.extensions_mut()
            .insert(RequestInfo::new(http::HeaderValue::from_static("rid")));
        req
    }

    /// The value of `requests_total` for `route` and status class `status`, if any.
    fn line_in(text: &str, route: &str, status: &str) -> Option<String> {
        text.lines()
            .find(|l| {
                l.starts_with("creatio_proxy_requests_total")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("status=\"{status}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
    }

    #[tokio::test]
    async fn each_answer_is_counted_under_the_route_that_served_it() {
        let metrics = Metrics::new();
        let settings = AccessSettings {
            route_prefixes: vec![Arc::from("/0/rest/UsrPortalService")],
            identities: vec![Arc::from("default"), Arc::from("portal")],
            route_metrics: vec![
                metrics.route(Some("/0/rest/UsrPortalService")),
                metrics.route(None),
            ],
            log_query: false,
        };
        let layer = AccessLogLayer::new(settings);
        let portal = Some(RouteFacts {
            route: Some(0),
            identity: 1,
        });
        let default = Some(RouteFacts {
            route: None,
            identity: 0,
        });
        for (facts, status) in [(portal, 200), (portal, 502), (default, 200), (None, 401)] {
            let r = layer
                .layer(routed(facts, status))
                .oneshot(with_info(Request::new(())))
                .await
                .expect("answer");
            assert_eq!(r.status().as_u16(), status);
        }
        let text = metrics.render(&[]);
        let line = |route: &str, status: &str| line_in(&text, route, status);
        assert_eq!(
            line("/0/rest/UsrPortalService", "2xx").as_deref(),
            Some("1")
        );
        assert_eq!(
            line("/0/rest/UsrPortalService", "5xx").as_deref(),
            Some("1")
        );
        assert_eq!(line("-", "2xx").as_deref(), Some("1"), "{text}");
        assert_eq!(line("-", "4xx").as_deref(), Some("1"), "{text}");

        // A client that leaves before the answer: counted as a 4xx (499) under its route.
        let never = tower::service_fn(|req: Request<()>| async move {
            if let Some(info) = req.extensions().get::<Arc<RequestInfo>>() {
                let _ = info.route.set(RouteFacts {
                    route: Some(0),
                    identity: 1,
                });
            }
            std::future::pending::<Result<Response<()>, std::convert::Infallible>>().await
        });
        let mut service = layer.layer(never);
        let mut future = Box::pin(service.call(with_info(Request::new(()))));
        let waker = std::task::Waker::noop();
        assert!(future
            .as_mut()
            .poll(&mut Context::from_waker(waker))
            .is_pending());
        drop(future);
        let text = metrics.render(&[]);
        assert_eq!(
            line_in(&text, "/0/rest/UsrPortalService", "4xx").as_deref(),
            Some("1"),
            "{text}"
        );
    }
}
