//! The future of a layer that decides at once: reject with an error, answer itself, or pass
//! the request on. No allocation.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::ProxyBody;
use crate::error::ProxyError;

pin_project! {
    /// Either the inner service's future or an answer decided without it.
    #[project = DecidedProj]
    pub(crate) enum Decided<F> {
        /// Passed on.
        Inner { #[pin] future: F },
        /// Answered here (taken on first poll). Boxed: a refusal is rare, and an answer held
        /// inline would make every request's future (this one nests in it) larger to move.
        Ready { outcome: Option<Box<Result<Response<ProxyBody>, ProxyError>>> },
        /// Answered here, after some waiting (rare paths only: one allocation).
        Boxed { future: BoxFuture },
    }
}

/// A boxed answer.
pub(crate) type BoxFuture =
    Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send>>;

impl<F> Decided<F> {
    /// Passes the request on.
    pub(crate) fn inner(future: F) -> Self {
        Decided::Inner { future }
    }

    /// Answers with what `future` gives.
    pub(crate) fn boxed(
        future: impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + 'static,
    ) -> Self {
        Decided::Boxed {
            future: Box::pin(future),
        }
    }

    /// Answers with `outcome`.
    pub(crate) fn ready(outcome: Result<Response<ProxyBody>, ProxyError>) -> Self {
        Decided::Ready {
            outcome: Some(Box::new(outcome)),
        }
    }
}

impl<F> Future for Decided<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DecidedProj::Inner { future } => future.poll(cx),
            DecidedProj::Boxed { future } => future.as_mut().poll(cx),
            // Polled again after completion: a bug in the caller; answer with an error
            // rather than panic.
            DecidedProj::Ready { outcome } => Poll::Ready(match outcome.take() {
                Some(outcome) => *outcome,
                None => Err(ProxyError::Internal("a finished answer was polled again")),
            }),
        }
    }
}

/// The inner service that `poll_ready` said is ready, for a future that calls it later; a clone
/// stays behind for the next request (tower's advice: a clone is not necessarily ready).
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}
