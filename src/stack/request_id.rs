//! Layer 1: the request id. Every request gets one, and every answer carries it back in
//! `x-request-id`.
//!
//! Rules:
//! 1. A client's `x-request-id` is kept when it is sane: 1 to 128 visible ASCII characters.
//!    Anything else is replaced: the id is written into every log line and JSON error body.
//! 2. A new id is 24 hex digits: 8 of a per-process random seed, 16 of a scrambled counter
//!    (unique within the process, unlikely to repeat across restarts, no lock, no syscall).
//! 3. The id goes into the request's extensions ([`RequestInfo`]) for the layers below, and
//!    onto the answer, whatever the answer is.
//!
//! Hand-written rather than tower-http's `SetRequestId` + `PropagateRequestId`: those keep any
//! id the client sends (rule 1), and take two layers and two header writes for one header.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::request::RequestInfo;

/// The request id header, read from clients and set on every answer.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives every request an id (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;
    fn layer(&self, inner: S) -> RequestId<S> {
        RequestId { inner }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub(crate) struct RequestId<S> {
    inner: S,
}

impl<S, B, R> Service<Request<B>> for RequestId<S>
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let id = request_id(req.headers());
        req.extensions_mut().insert(RequestInfo::new(id.clone()));
        ResponseFuture {
            future: self.inner.call(req),
            id: Some(id),
        }
    }
}

pin_project! {
    /// Puts the id on the answer.
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        future: F,
        id: Option<HeaderValue>,
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.future.poll(cx))?;
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        Poll::Ready(Ok(response))
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// The client's `x-request-id` when it is sane, else a new id (rules 1 and 2).
pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
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
    use tower::ServiceExt;

    /// Echoes the id the layer put in the extensions as the answer's body.
    fn echo_id(
    ) -> impl Service<Request<()>, Response = Response<String>, Error = std::convert::Infallible>
    {
        tower::service_fn(|req: Request<()>| async move {
            let id = req
                .extensions()
                .get::<std::sync::Arc<RequestInfo>>()
                .map(|info| String::from_utf8_lossy(info.id.as_bytes()).into_owned())
                .unwrap_or_default();
            Ok::<_, std::convert::Infallible>(Response::new(id))
        })
    }

    #[tokio::test]
    async fn ids_are_kept_when_sane_and_replaced_otherwise() {
        let long = "x".repeat(129);
        let cases: &[(&str, Option<&str>, bool)] = &[
            ("no id: a new one", None, false),
            ("a sane id is kept", Some("abc-123"), true),
            ("128 characters are kept", Some(&long[..128]), true),
            ("129 characters are replaced", Some(&long), false),
            ("a space is replaced", Some("a b"), false),
            ("an empty id is replaced", Some(""), false),
        ];
        for (name, sent, kept) in cases {
            let mut req = Request::new(());
            if let Some(v) = sent {
                req.headers_mut()
                    .insert(&X_REQUEST_ID, HeaderValue::from_str(v).expect("header"));
            }
            let response = RequestIdLayer
                .layer(echo_id())
                .oneshot(req)
                .await
                .expect("answer");
            let header = response.headers()[&X_REQUEST_ID].to_str().expect("ascii");
            assert_eq!(
                header,
                response.body(),
                "{name}: header and extension agree"
            );
            if *kept {
                assert_eq!(Some(header), *sent, "{name}");
            } else {
                assert_eq!(header.len(), 24, "{name}");
                assert!(header.bytes().all(|b| b.is_ascii_hexdigit()), "{name}");
            }
        }
    }

    #[test]
    fn new_ids_are_unique() {
        let a = request_id(&HeaderMap::new());
        let b = request_id(&HeaderMap::new());
        assert_ne!(a, b);
    }
}
