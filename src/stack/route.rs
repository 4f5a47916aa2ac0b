//! Layer 6: the canonical form and the route. From here on, nothing looks at the raw path.
//!
//! Rules:
//! 1. The path is parsed into its [`CanonicalPath`] (see [`crate::canonical`]); a path with no
//!    single meaning is refused with 400 JSON and never reaches Creatio.
//! 2. The route table ([`crate::routes`]) decides on the canonical path: which identity serves
//!    the request and whether the /ssp rule applies. No route and `unmatched = "deny"`: 404.
//! 3. The request's URI becomes Creatio's: `creatio.url`'s scheme, authority and path, then the
//!    canonical path re-encoded (with `ssp` inserted when the route asks), then the client's
//!    query string unchanged. So what Creatio executes is exactly what was routed.
//! 4. The client's `Host` is taken off the request (Creatio gets its own) and kept with the
//!    decision ([`Routed`]) for the Location layer.
//! 5. The body is held to the route's `max_body` (else `server.max_body`): a `Content-Length`
//!    over it is refused with 413 before a byte is read or forwarded; a body without one is
//!    cut when it passes the limit (413 if Creatio has not answered yet, and Creatio's request
//!    aborted either way).

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use tower::{Layer, Service};

use super::future::Decided;
use super::request::{RequestInfo, RouteFacts, Routed};
use crate::body::{Limit, ProxyBody};
use crate::canonical::CanonicalPath;
use crate::config::CreatioUrl;
use crate::error::ProxyError;
use crate::routes::{apply_ssp, RouteTable};

/// What the route layer decides with.
#[derive(Debug)]
struct Settings {
    table: RouteTable,
    creatio: CreatioUrl,
}

/// Canonical form, route and Creatio's URI (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct RouteLayer {
    settings: Arc<Settings>,
}

impl RouteLayer {
    /// Routes with `table` to the Creatio at `creatio`.
    pub(crate) fn new(table: RouteTable, creatio: CreatioUrl) -> Self {
        RouteLayer {
            settings: Arc::new(Settings { table, creatio }),
        }
    }
}

impl<S> Layer<S> for RouteLayer {
    type Service = Route<S>;
    fn layer(&self, inner: S) -> Route<S> {
        Route {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// The service of [`RouteLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Route<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S, B> Service<Request<B>> for Route<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = ProxyError>,
    B: Limit,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = Decided<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let routed = match decide(&self.settings, &mut req) {
            Ok(routed) => routed,
            Err(e) => return Decided::ready(Err(e)),
        };
        if let Some(info) = req.extensions().get::<Arc<RequestInfo>>() {
            let _ = info.route.set(routed.facts);
        }
        req.extensions_mut().insert(routed);
        Decided::inner(self.inner.call(req))
    }
}

/// Rules 1 to 5 for one request: the decision, with the request's URI set to Creatio's.
fn decide<B: Limit>(settings: &Settings, req: &mut Request<B>) -> Result<Routed, ProxyError> {
    let path = CanonicalPath::of_request(req.uri()).map_err(ProxyError::Path)?;
    let decision = settings.table.decide(&path).ok_or(ProxyError::NoRoute)?;
    if let Some(max) = decision.max_body {
        let announced = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if announced.is_some_and(|n| n > max) {
            return Err(ProxyError::BodyTooLarge {
                max,
                announced: true,
            });
        }
        req.body_mut().limit(Some(max));
    }
    let uri = upstream_uri(&settings.creatio, &path, req.uri(), decision.ssp)?;
    let client_host = req.headers_mut().remove(header::HOST).or_else(|| {
        // HTTP/2 carries the host in the URI (`:authority`).
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    *req.uri_mut() = uri;
    Ok(Routed {
        facts: RouteFacts {
            route: decision.route,
            identity: decision.identity,
        },
        ssp: decision.ssp,
        path,
        client_host,
    })
}

/// Creatio's URI for a request (rule 3). When nothing changes (no virtual directory, no /ssp,
/// the client spelled the path canonically), the client's path-and-query bytes are reused.
pub(crate) fn upstream_uri(
    creatio: &CreatioUrl,
    path: &CanonicalPath,
    client: &Uri,
    ssp: bool,
) -> Result<Uri, ProxyError> {
    let encoded = path.encoded();
    let target: Cow<'_, str> = if ssp {
        apply_ssp(&encoded)
    } else {
        encoded.clone()
    };
    let unchanged = !ssp && creatio.base_path.is_empty() && path.is_spelled(client.path());
    let path_and_query = match client.path_and_query() {
        Some(pq) if unchanged => pq.clone(),
        _ => {
            let query = client.query();
            let mut s = String::with_capacity(
                creatio.base_path.len() + target.len() + query.map_or(0, |q| q.len() + 1),
            );
            s.push_str(&creatio.base_path);
            s.push_str(&target);
            if let Some(q) = query {
                s.push('?');
                s.push_str(q);
            }
            PathAndQuery::from_maybe_shared(Bytes::from(s))
                .map_err(|_| ProxyError::BadRequestTarget)?
        }
    };
    Uri::builder()
        .scheme(creatio.scheme.clone())
        .authority(creatio.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::BadRequestTarget)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use tower::ServiceExt;

    const CONFIG: &str = "[creatio]\nurl = \"http://crm.local:8080/CreatioWebApp\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n\
        [[routes]]\nprefix = \"/0/rest/UsrPortalService\"\nssp = true\nidentity = \"portal\"\n\
        [identities.portal]\nusername = \"portal.user\"\npassword = \"p\"\n";

    /// Answers with what it was given: Creatio's URI in a header, the decision in the body.
    fn record() -> impl Service<
        Request<()>,
        Response = Response<ProxyBody>,
        Error = ProxyError,
        Future = impl Send,
    > + Clone {
        tower::service_fn(|req: Request<()>| async move {
            let routed = req.extensions().get::<Routed>().cloned();
            let mut r = Response::new(ProxyBody::full(format!(
                "{:?}",
                routed.map(|r| (r.facts.identity, r.ssp, r.path.to_string()))
            )));
            r.headers_mut().insert(
                "x-uri",
                HeaderValue::from_str(&req.uri().to_string()).expect("uri"),
            );
            Ok(r)
        })
    }

    fn layer(config: &str) -> RouteLayer {
        let config = Config::from_toml_str(config).expect("config");
        RouteLayer::new(RouteTable::new(&config), config.creatio.clone())
    }

    #[tokio::test]
    async fn every_spelling_is_routed_and_forwarded_as_its_canonical_form() {
        let base = "http://crm.local:8080/CreatioWebApp";
        let portal = "Some((1, true, \"/0/rest/UsrPortalService/GetCases\"))";
        /// (client path, Ok((Creatio's path, decision)) or Err(error code))
        type Case<'a> = (&'a str, Result<(&'a str, &'a str), &'a str>);
        let cases: &[Case<'_>] = &[
            (
                "/0/rest/UsrPortalService/GetCases?a=%2F&b",
                Ok(("/0/ssp/rest/UsrPortalService/GetCases?a=%2F&b", portal)),
            ),
            (
                "/0/rest/UsrPortal%53ervice/GetCases?a=%2F&b",
                Ok(("/0/ssp/rest/UsrPortalService/GetCases?a=%2F&b", portal)),
            ),
            (
                "/0/rest//UsrPortalService/GetCases?a=%2F&b",
                Ok(("/0/ssp/rest/UsrPortalService/GetCases?a=%2F&b", portal)),
            ),
            (
                "/0/odata/Contact%28guid%27x%27%29?$top=1",
                Ok((
                    "/0/odata/Contact(guid'x')?$top=1",
                    "Some((0, false, \"/0/odata/Contact(guid'x')\"))",
                )),
            ),
            (
                "/0/odata/Name%20x",
                Ok(("/0/odata/Name%20x", "Some((0, false, \"/0/odata/Name x\"))")),
            ),
            ("/0/rest/UsrPortalService;a/GetCases", Err("ambiguous_path")),
            ("/0/rest/UsrPortalService%2FGetCases", Err("ambiguous_path")),
            ("/0/rest/%2e%2e/odata/Contact", Err("dot_segment_in_path")),
        ];
        for (path, want) in cases {
            let req = Request::get(*path).body(()).expect("request");
            let got = layer(CONFIG).layer(record()).oneshot(req).await;
            match (want, got) {
                (Ok((uri, decision)), Ok(r)) => {
                    assert_eq!(
                        r.headers()["x-uri"],
                        format!("{base}{uri}").as_str(),
                        "{path}"
                    );
                    let body = http_body_util::BodyExt::collect(r.into_body())
                        .await
                        .expect("body")
                        .to_bytes();
                    assert_eq!(body, decision.as_bytes(), "{path}");
                }
                (Err(code), Err(e)) => assert_eq!(e.code(), *code, "{path}"),
                (_, other) => panic!("{path}: {:?}", other.map(|r| r.status())),
            }
        }
    }

    #[tokio::test]
    async fn unmatched_paths_are_refused_when_denied() {
        let deny = format!("{CONFIG}[server]\nunmatched = \"deny\"\n");
        let req = Request::get("/0/odata/Contact").body(()).expect("request");
        let got = layer(&deny).layer(record()).oneshot(req).await;
        assert!(matches!(got, Err(ProxyError::NoRoute)));
        let req = Request::get("/0/rest/usrportal%73ervice/x")
            .body(())
            .expect("request");
        let got = layer(&deny).layer(record()).oneshot(req).await;
        assert!(
            got.is_ok(),
            "a spelling of the route's prefix is served by the route"
        );
    }
}
