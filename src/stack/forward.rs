//! Layer 12, the innermost: the request goes to Creatio through the connection pool.
//!
//! Rules:
//! 1. Hop-by-hop headers (and every header `Connection` names) are removed from Creatio's
//!    answer; the request goes out as HTTP/1.1 (the session layer has already taken the
//!    client's hop-by-hop headers off it, before attaching the session).
//! 2. Creatio's answer head must arrive within `server.upstream_timeout`: else 504. A failure
//!    to connect or exchange is 502, with the diagnosis of [`crate::diagnosis`] and the
//!    underlying error kept as the source.
//! 3. The wait for the head is observed per route (`creatio_proxy_upstream_duration_seconds`), and the
//!    answer's body bytes are counted as they stream to the client.
//! 4. An exchange cut off because the client's body stalled (`server.body_read_timeout`) or
//!    passed `max_body` while it streamed is the client's error: 408 or 413.
//!
//! The timeout is written here rather than with tower-http's `TimeoutLayer`, which answers 408
//! (the client was too slow); a slow Creatio is the contract's 504 JSON, with its own code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response, Version};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;
use tower::Service;

use super::request::Routed;
use crate::body::{BodyError, PeerBody, ProxyBody};
use crate::diagnosis::network_failure;
use crate::error::ProxyError;
use crate::pool::UpstreamError;
use crate::upstream::remove_hop_by_hop;

/// What the forwarder observes and how long it waits.
#[derive(Debug)]
pub(crate) struct ForwardSettings {
    /// Longest wait for Creatio's answer head.
    pub(crate) timeout: Duration,
    /// Creatio's host:port, for messages.
    pub(crate) target: Arc<str>,
    /// Upstream latency per route in config order, then one for unmatched paths.
    pub(crate) latency: Vec<Histogram>,
    /// Answer body bytes.
    pub(crate) bytes_out: Counter,
}

/// Sends requests through `pool` (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct Forward<P> {
    pool: P,
    settings: Arc<ForwardSettings>,
}

impl<P> Forward<P> {
    /// A forwarder over `pool`.
    pub(crate) fn new(pool: P, settings: ForwardSettings) -> Self {
        Forward {
            pool,
            settings: Arc::new(settings),
        }
    }
}

impl<P> Service<Request<ProxyBody>> for Forward<P>
where
    P: Service<Request<ProxyBody>, Response = Response<PeerBody>, Error = UpstreamError>,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ResponseFuture<P::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        let settings = &self.settings;
        self.pool
            .poll_ready(cx)
            .map_err(|e| unreachable(&settings.target, e))
    }

    fn call(&mut self, mut req: Request<ProxyBody>) -> Self::Future {
        *req.version_mut() = Version::HTTP_11;
        let route = req.extensions().get::<Routed>().and_then(|r| r.facts.route);
        let last = self.settings.latency.len().saturating_sub(1);
        ResponseFuture {
            future: tokio::time::timeout(self.settings.timeout, self.pool.call(req)),
            started: Instant::now(),
            latency: route.unwrap_or(last).min(last),
            settings: self.settings.clone(),
        }
    }
}

fn unreachable(target: &str, e: UpstreamError) -> ProxyError {
    let cause = network_failure(&e, target, "creatio.url").1;
    ProxyError::Unreachable {
        target: target.to_string(),
        cause,
        source: Arc::new(e),
    }
}

/// Rule 4: an exchange that failed because the client's body stalled or passed its limit
/// while it streamed is the client's error (408, 413), not Creatio's; the request to Creatio
/// was cut off before its end, so Creatio never completes it.
fn client_body_failure(e: &UpstreamError) -> Option<ProxyError> {
    match BodyError::behind(e)? {
        BodyError::Stalled(d) => Some(ProxyError::ClientBodyTimeout(*d)),
        BodyError::TooLarge(max) => Some(ProxyError::BodyTooLarge {
            max: *max,
            announced: false,
        }),
        BodyError::Peer(_) => None,
    }
}

pin_project! {
    /// Waits for Creatio's answer head.
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        future: tokio::time::Timeout<F>,
        started: Instant,
        latency: usize,
        settings: Arc<ForwardSettings>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<PeerBody>, UpstreamError>>,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let settings = &**this.settings;
        Poll::Ready(match std::task::ready!(this.future.poll(cx)) {
            Err(_) => Err(ProxyError::UpstreamTimeout(settings.timeout)),
            Ok(Err(e)) => {
                Err(client_body_failure(&e).unwrap_or_else(|| unreachable(&settings.target, e)))
            }
            Ok(Ok(response)) => {
                if let Some(h) = settings.latency.get(*this.latency) {
                    h.observe(this.started.elapsed().as_secs_f64());
                }
                let mut response =
                    response.map(|b| ProxyBody::Stream(b.counted(&settings.bytes_out)));
                remove_hop_by_hop(response.headers_mut());
                Ok(response)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::testing::{fixture, routed};
    use http::{Method, StatusCode};
    use tower::ServiceExt;

    fn settings(timeout: Duration) -> ForwardSettings {
        ForwardSettings {
            timeout,
            target: Arc::from("creatio:443"),
            latency: vec![Histogram::new([0.1].into_iter())],
            bytes_out: Counter::default(),
        }
    }

    #[tokio::test]
    async fn answers_stream_back_with_their_bytes_counted() {
        let f = fixture("").await;
        let forward = Forward::new(f.client.clone(), settings(Duration::from_secs(5)));
        let counter = forward.settings.bytes_out.clone();
        let mut req = routed(Method::GET, "/api/HealthCheck/Ping", 0, ProxyBody::Empty);
        *req.uri_mut() = format!("{}/api/HealthCheck/Ping", f.emulator.url())
            .parse()
            .expect("uri");
        *req.version_mut() = http::Version::HTTP_2;
        let r = forward.oneshot(req).await.expect("answer");
        assert_eq!(r.status(), StatusCode::OK);
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"true");
        assert_eq!(counter.get(), body.len() as u64);
        assert_eq!(f.emulator.seen().len(), 1);
    }

    #[tokio::test]
    async fn a_silent_or_absent_creatio_is_a_timeout_or_unreachable() {
        // A listener that accepts and never answers, and a port nobody listens on.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let silent_addr = silent.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                open.push(s);
            }
        });
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        for (addr, status, code) in [
            (silent_addr, StatusCode::GATEWAY_TIMEOUT, "creatio_timeout"),
            (closed, StatusCode::BAD_GATEWAY, "creatio_unreachable"),
        ] {
            let config = crate::config::Config::from_toml_str(&format!(
                "[creatio]\nurl = \"http://{addr}\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n"
            ))
            .expect("config");
            let pool = crate::upstream::build_upstream(&config).expect("pool");
            let forward = Forward::new(pool, settings(Duration::from_millis(300)));
            let mut req = routed(Method::GET, "/0/odata/Contact", 0, ProxyBody::Empty);
            *req.uri_mut() = format!("http://{addr}/0/odata/Contact")
                .parse()
                .expect("uri");
            let e = forward.oneshot(req).await.expect_err("no answer");
            assert_eq!((e.status(), e.code()), (status, code), "{addr}");
            if code == "creatio_unreachable" {
                assert!(
                    std::error::Error::source(&e).is_some(),
                    "the pool's error is kept"
                );
            }
        }
        held.abort();
    }
}
