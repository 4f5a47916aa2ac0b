//! Layer 3: the error boundary. Every [`ProxyError`] raised further in becomes the JSON answer
//! the contract describes, here and nowhere else.
//!
//! Rules:
//! 1. The body is `{"error": "<code>", "message": "...", "request_id": "..."}` (login failures
//!    add `identity`, `diagnosis` and `retry_after_seconds`), built by
//!    [`ProxyError::to_response`]; the status comes from the error's exhaustive mapping.
//! 2. The error itself, with its source chain, is put on the answer (`Arc<ProxyError>` in the
//!    extensions), so the access-log layer logs it once; this layer logs nothing.
//! 3. Inner layers never build error answers themselves: they return the error.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::request::RequestInfo;
use crate::body::ProxyBody;
use crate::error::ProxyError;

/// Turns errors into JSON answers (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ErrorLayer;

impl<S> Layer<S> for ErrorLayer {
    type Service = Errors<S>;
    fn layer(&self, inner: S) -> Errors<S> {
        Errors {
            inner,
            unready: None,
        }
    }
}

/// The service of [`ErrorLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Errors<S> {
    inner: S,
    /// The inner service said it cannot take a request: the next call is answered with this
    /// (the error type here is `Infallible`, so readiness cannot fail).
    unready: Option<ProxyError>,
}

impl<S, B> Service<Request<B>> for Errors<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                self.unready = Some(e);
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let id = req
            .extensions()
            .get::<Arc<RequestInfo>>()
            .map(|info| info.id.clone());
        let state = match self.unready.take() {
            // Not ready: the inner service must not be called; the request gets the error.
            Some(e) => State::Failed {
                error: Some(Box::new(e)),
            },
            None => State::Called {
                future: self.inner.call(req),
            },
        };
        ResponseFuture { state, id }
    }
}

pin_project! {
    /// Maps an error to its answer.
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
        id: Option<HeaderValue>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Called { #[pin] future: F },
        Failed { error: Option<Box<ProxyError>> },
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = match this.state.project() {
            StateProj::Called { future } => std::task::ready!(future.poll(cx)),
            StateProj::Failed { error } => Err(error.take().map_or(
                ProxyError::Internal("a finished answer was polled again"),
                |e| *e,
            )),
        };
        Poll::Ready(Ok(match result {
            Ok(response) => response,
            Err(e) => answer(e, this.id.as_ref()),
        }))
    }
}

/// Rule 1 and 2.
fn answer(e: ProxyError, id: Option<&HeaderValue>) -> Response<ProxyBody> {
    let id = id.and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut response = e.to_response(id);
    response.extensions_mut().insert(Arc::new(e));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn errors_become_json_answers_that_carry_the_error() {
        let cases = [
            (ProxyError::NoRoute, StatusCode::NOT_FOUND, "no_route"),
            (
                ProxyError::Unauthorized,
                StatusCode::UNAUTHORIZED,
                "client_unauthorized",
            ),
            (
                ProxyError::UpstreamTimeout(std::time::Duration::from_secs(3)),
                StatusCode::GATEWAY_TIMEOUT,
                "creatio_timeout",
            ),
        ];
        for (error, status, code) in cases {
            let failing = tower::service_fn(move |_req: Request<()>| {
                let e = error.clone();
                async move { Err::<Response<ProxyBody>, _>(e) }
            });
            let mut req = Request::new(());
            req.extensions_mut()
                .insert(RequestInfo::new(HeaderValue::from_static("rid-1")));
            let r = ErrorLayer
                .layer(failing)
                .oneshot(req)
                .await
                .expect("infallible");
            assert_eq!(r.status(), status, "{code}");
            assert_eq!(
                r.extensions().get::<Arc<ProxyError>>().map(|e| e.code()),
                Some(code)
            );
            let body = r.into_body().collect().await.expect("body").to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(json["error"], code);
            assert_eq!(json["request_id"], "rid-1");
            assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
}
