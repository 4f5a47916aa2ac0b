//! Layer 4, right inside the error boundary: what every request is held to before anything
//! else looks at it (the body's own limits travel with the body, see below).
//!
//! Rules:
//! 1. The method must be in `server.allowed_methods` (default: the ones Creatio's APIs use);
//!    otherwise 405 JSON with `Allow`. TRACE and CONNECT can never be allowed (the config
//!    refuses them): an upstream that reflects TRACE would echo the session's cookies.
//! 2. The request target may be at most `server.max_uri_bytes` long: else 414 JSON.
//! 3. The request head (request line and header lines, counted as HTTP/1.1 spells them) may be
//!    at most `server.max_header_bytes`: else 431 JSON. hyper reads heads into a buffer a
//!    little larger than that (see [`crate::conn`]), so a head just over the limit gets this
//!    JSON answer; one far over it is cut by hyper with a bare 431 and the connection closed.
//! 4. `Expect: 100-continue` is answered by the proxy itself (hyper sends `100 Continue` when
//!    the body is first read) and never forwarded: Creatio would otherwise be asked to
//!    continue a body the proxy already holds. Any other expectation: 417 JSON.
//!
//! Bodies: `server.body_read_timeout` is armed on the client's body where the request enters
//! ([`crate::server`]), and `max_body` (the route's or the server's) where the route is known
//! ([`super::route`]): an announced `Content-Length` over it is refused before a byte is
//! read, a chunked body is cut when it passes it.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderMap, Method, Request, Response, Uri};
use tower::{Layer, Service};

use super::future::Decided;
use crate::body::ProxyBody;
use crate::config::Limits;
use crate::error::ProxyError;

/// What requests are held to.
#[derive(Debug)]
struct Settings {
    methods: Vec<Method>,
    /// The allow-list as the `Allow` header and message say it.
    allowed: Arc<str>,
    max_uri: usize,
    max_head: usize,
}

/// Checks methods and head sizes (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct LimitsLayer {
    settings: Arc<Settings>,
}

impl LimitsLayer {
    /// Holds requests to `limits`.
    pub(crate) fn new(limits: &Limits) -> Self {
        let names: Vec<&str> = limits.allowed_methods.iter().map(Method::as_str).collect();
        LimitsLayer {
            settings: Arc::new(Settings {
                methods: limits.allowed_methods.clone(),
                allowed: Arc::from(names.join(", ")),
                max_uri: limits.max_uri_bytes,
                max_head: limits.max_header_bytes,
            }),
        }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = RequestLimits<S>;
    fn layer(&self, inner: S) -> RequestLimits<S> {
        RequestLimits {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// The service of [`LimitsLayer`].
#[derive(Clone, Debug)]
pub(crate) struct RequestLimits<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S, B> Service<Request<B>> for RequestLimits<S>
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

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match check(&self.settings, &mut req) {
            Ok(()) => Decided::inner(self.inner.call(req)),
            Err(e) => Decided::ready(Err(e)),
        }
    }
}

/// Rules 1 to 4.
fn check<B>(settings: &Settings, req: &mut Request<B>) -> Result<(), ProxyError> {
    if !settings.methods.contains(req.method()) {
        return Err(ProxyError::MethodNotAllowed {
            method: req.method().clone(),
            allowed: settings.allowed.clone(),
        });
    }
    let uri = target_len(req.uri());
    if uri > settings.max_uri {
        return Err(ProxyError::UriTooLong {
            len: uri,
            max: settings.max_uri,
        });
    }
    let head = head_len(req.method(), uri, req.headers());
    if head > settings.max_head {
        return Err(ProxyError::HeadTooLarge {
            len: head,
            max: settings.max_head,
        });
    }
    if let Some(expect) = req.headers_mut().remove(header::EXPECT) {
        if !expect.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            return Err(ProxyError::ExpectationFailed);
        }
    }
    Ok(())
}

/// The request target's length as the client sent it (origin or absolute form).
fn target_len(uri: &Uri) -> usize {
    let path = uri.path_and_query().map_or(0, |p| p.as_str().len());
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) => scheme.len() + 3 + authority.as_str().len() + path,
        _ => path,
    }
}

/// The head's size as HTTP/1.1 spells it: `METHOD SP target SP HTTP/1.1 CRLF`, then
/// `name: value CRLF` per header, then `CRLF`.
fn head_len(method: &Method, target: usize, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + 1 + target + 1 + 8 + 2;
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + fields + 2
}

#[cfg(test)]
mod tests {
    // Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
    // whose failure is this test failing; none of it is on a request path.
    use super::*;
    use crate::config::Config;
    use http::StatusCode;
    use tower::ServiceExt;

    /// Answers 200 with the `Expect` header it received, if any.
    fn ok() -> impl Service<
        Request<()>,
        Response = Response<ProxyBody>,
        Error = ProxyError,
        Future = impl Send,
    > + Clone {
        tower::service_fn(|req: Request<()>| async move {
            let expect = req.headers().get(header::EXPECT).is_some();
            Ok(Response::new(ProxyBody::full(format!("expect={expect}"))))
        })
    }

    fn layer(server: &str) -> LimitsLayer {
        let config = Config::from_toml_str(&format!(
            "[server]\n{server}\n[creatio]\nurl = \"http://crm.local\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n"
        ))
        .expect("config");
        LimitsLayer::new(&config.limits)
    }

    async fn status(
        layer: &LimitsLayer,
        req: Request<()>,
    ) -> Result<String, (StatusCode, &'static str)> {
        match layer.layer(ok()).oneshot(req).await {
            Ok(r) => {
                let body = http_body_util::BodyExt::collect(r.into_body())
                    .await
                    .map_err(|_| (StatusCode::OK, "body"))?
                    .to_bytes();
                Ok(String::from_utf8_lossy(&body).into_owned())
            }
            Err(e) => Err((e.status(), e.code())),
        }
    }

    fn request(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).expect("request")
    }

    #[tokio::test]
    async fn methods_outside_the_list_are_refused_with_allow() {
        let l = layer("");
        for m in [
            "GET", "HEAD", "POST", "PUT", "PATCH", "MERGE", "DELETE", "OPTIONS",
        ] {
            assert!(
                status(&l, request(m, "/0/odata/Contact", &[]))
                    .await
                    .is_ok(),
                "{m}"
            );
        }
        for m in ["TRACE", "CONNECT", "PROPFIND", "FOO", "get"] {
            assert_eq!(
                status(&l, request(m, "/0/odata/Contact", &[])).await,
                Err((StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")),
                "{m}"
            );
        }
        let e = ProxyError::MethodNotAllowed {
            method: Method::TRACE,
            allowed: l.settings.allowed.clone(),
        }
        .to_response("r1");
        assert_eq!(
            e.headers().get(header::ALLOW).and_then(|v| v.to_str().ok()),
            Some("GET, HEAD, POST, PUT, PATCH, MERGE, DELETE, OPTIONS")
        );
        let narrow = layer("allowed_methods = [\"get\", \"post\"]");
        assert!(status(&narrow, request("POST", "/x", &[])).await.is_ok());
        assert_eq!(
            status(&narrow, request("DELETE", "/x", &[])).await,
            Err((StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"))
        );
    }

    #[tokio::test]
    async fn long_targets_and_large_heads_are_refused() {
        let l = layer("max_uri_bytes = \"1KiB\"\nmax_header_bytes = \"8KiB\"");
        let path = |n: usize| format!("/0/odata/Contact?q={}", "a".repeat(n - 19));
        assert_eq!(path(1024).len(), 1024);
        assert!(status(&l, request("GET", &path(1024), &[])).await.is_ok());
        assert_eq!(
            status(&l, request("GET", &path(1025), &[])).await,
            Err((StatusCode::URI_TOO_LONG, "uri_too_long"))
        );
        let big = "v".repeat(4000);
        let two = [("x-a", big.as_str()), ("x-b", big.as_str())];
        assert!(status(&l, request("GET", "/x", &two)).await.is_ok());
        let three = [
            ("x-a", big.as_str()),
            ("x-b", big.as_str()),
            ("x-c", big.as_str()),
        ];
        assert_eq!(
            status(&l, request("GET", "/x", &three)).await,
            Err((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "header_too_large"
            ))
        );
    }

    #[tokio::test]
    async fn expect_100_continue_is_handled_here_and_others_refused() {
        let l = layer("");
        let continued = request("POST", "/x", &[("expect", "100-Continue")]);
        assert_eq!(status(&l, continued).await, Ok("expect=false".into()));
        assert_eq!(
            status(&l, request("POST", "/x", &[("expect", "something-else")])).await,
            Err((StatusCode::EXPECTATION_FAILED, "expectation_failed"))
        );
    }
}
