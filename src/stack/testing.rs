//! Test support for the layers that need real sessions: the emulator on 127.0.0.1, the
//! identities of a config pointing at it, and a stand-in for Creatio's answers.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use super::request::{RouteFacts, Routed};
use crate::auth::{Identity, LoginContext};
use crate::body::ProxyBody;
use crate::canonical::CanonicalPath;
use crate::config::Config;
use crate::emulator::{Emulator, EmulatorOptions};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::pool::Upstream;
use crate::upstream::build_upstream;

/// The emulator and what a proxy in front of it holds.
pub(crate) struct Fixture {
    pub(crate) emulator: Emulator,
    pub(crate) config: Config,
    pub(crate) client: Upstream,
    pub(crate) identities: Arc<[Arc<Identity>]>,
    pub(crate) login: LoginContext,
}

/// Supervisor as the default identity (0) and `portal.user` as `portal` (1), plus `extra`.
pub(crate) async fn fixture(extra: &str) -> Fixture {
    let emulator = Emulator::start(
        EmulatorOptions::default(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .expect("emulator starts");
    let config = Config::from_toml_str(&format!(
        "[creatio]\nurl = \"{}\"\n[auth]\nusername = \"Supervisor\"\npassword = \"Supervisor\"\n\
         [identities.portal]\nusername = \"portal.user\"\npassword = \"portal-pass\"\n{extra}",
        emulator.url()
    ))
    .expect("config");
    let client = build_upstream(&config).expect("pool");
    let metrics = Metrics::new();
    let identities: Arc<[Arc<Identity>]> = config
        .identities
        .iter()
        .map(|i| Arc::new(Identity::new(i, &client, metrics.identity(&i.name, false))))
        .collect();
    let login = LoginContext::new(&config, client.clone());
    Fixture {
        emulator,
        config,
        client,
        identities,
        login,
    }
}

/// A request for `path` as the route layer leaves it for identity `identity`.
pub(crate) fn routed(
    method: Method,
    path: &str,
    identity: usize,
    body: ProxyBody,
) -> Request<ProxyBody> {
    let mut req = Request::new(body);
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().expect("uri");
    req.extensions_mut().insert(Routed {
        facts: RouteFacts {
            route: None,
            identity,
        },
        ssp: false,
        path: CanonicalPath::parse(path).expect("canonical"),
        client_host: None,
    });
    req
}

/// What a stand-in Creatio received.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub(crate) headers: HeaderMap,
    pub(crate) body: bytes::Bytes,
}

/// One scripted answer: status, headers, body.
pub(crate) type Answer = (StatusCode, Vec<(&'static str, &'static str)>, &'static str);

/// A stand-in for Creatio: answers the `n`th request with `answers[n]` (the last one from
/// then on) and records what it received.
#[derive(Clone)]
pub(crate) struct Scripted {
    answers: Arc<Vec<Answer>>,
    pub(crate) received: Arc<Mutex<Vec<Received>>>,
}

impl Scripted {
    /// Answers in this order: (status, headers, body).
    pub(crate) fn new(answers: Vec<Answer>) -> Self {
        Scripted {
            answers: Arc::new(answers),
            received: Arc::default(),
        }
    }

    /// What it received so far.
    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl tower::Service<Request<ProxyBody>> for Scripted {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = super::future::BoxFuture;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), ProxyError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.expect("body").to_bytes();
            let n = {
                let mut received = this.received.lock().expect("lock");
                received.push(Received {
                    headers: parts.headers,
                    body,
                });
                received.len() - 1
            };
            let (status, headers, body) = this
                .answers
                .get(n)
                .or(this.answers.last())
                .cloned()
                .expect("an answer");
            let mut r = Response::new(ProxyBody::full(body));
            *r.status_mut() = status;
            for (k, v) in headers {
                r.headers_mut().append(
                    http::HeaderName::from_static(k),
                    http::HeaderValue::from_static(v),
                );
            }
            Ok(r)
        })
    }
}
