//! Layer 8: a `Location` into Creatio is pointed back at the proxy.
//!
//! A client that follows the `Location` of a created record (`201`, OData) must come back
//! through the proxy, which holds the session. Rules:
//! 1. A `Location` under `creatio.url` (scheme, host and virtual directory compared ignoring
//!    ASCII case) is rewritten to `<scheme>://<authority><rest>`, where scheme and authority
//!    are `server.public_url`'s when it is set (a proxy behind a TLS terminator); else the
//!    scheme is the listener's (`http`) and the authority the client's `Host` (or h2
//!    `:authority`) when it is a plain `host[:port]`, or else the address of the listener
//!    the request came in on. A `Host` such as `evil.example/x?a=` never reaches a header.
//! 2. On an ssp route the `ssp` segment the proxy inserted is taken out again, so the followed
//!    path meets the same route (and identity) and gets it back.
//! 3. Other locations (relative ones, other hosts, another virtual directory) pass unchanged.
//!    Bodies are never rewritten: `@odata.context` and links inside JSON keep Creatio's
//!    address.
//!
//! This layer sits outside the expiry layer, so expiry detection sees Creatio's own
//! `Location` (a 302 to its login page), and only the answer that goes to the client is
//! rewritten.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::request::{Listening, Routed};
use crate::body::ProxyBody;
use crate::config::{CreatioUrl, PublicUrl};
use crate::error::ProxyError;
use crate::routes::remove_ssp;

/// Points Creatio's `Location`s at the proxy (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct LocationLayer {
    /// `scheme://authority/base`, as `creatio.url` names the application root.
    root: Arc<str>,
    /// `server.public_url` as `scheme://authority`.
    public: Option<Arc<str>>,
}

impl LocationLayer {
    /// Rewrites locations under `creatio`, to `public` when set.
    pub(crate) fn new(creatio: &CreatioUrl, public: Option<&PublicUrl>) -> Self {
        LocationLayer {
            root: Arc::from(format!(
                "{}://{}{}",
                creatio.scheme.as_str(),
                creatio.authority.as_str(),
                creatio.base_path
            )),
            public: public.map(|p| Arc::from(format!("{}://{}", p.scheme, p.authority))),
        }
    }
}

impl<S> Layer<S> for LocationLayer {
    type Service = Location<S>;
    fn layer(&self, inner: S) -> Location<S> {
        Location {
            inner,
            root: self.root.clone(),
            public: self.public.clone(),
        }
    }
}

/// The service of [`LocationLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Location<S> {
    inner: S,
    root: Arc<str>,
    public: Option<Arc<str>>,
}

impl<S, B> Service<Request<B>> for Location<S>
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
        // What the base is made of; it is built only for an answer with a `Location`.
        let back = req.extensions().get::<Routed>().map(|r| Back {
            root: self.root.clone(),
            public: self.public.clone(),
            host: r.client_host.clone(),
            listening: req.extensions().get::<Listening>().copied(),
            ssp: r.ssp,
        });
        ResponseFuture {
            future: self.inner.call(req),
            back,
        }
    }
}

/// Where a location leads back to: the parts of the proxy's `scheme://authority` (rule 1).
#[derive(Debug)]
struct Back {
    root: Arc<str>,
    public: Option<Arc<str>>,
    host: Option<HeaderValue>,
    listening: Option<Listening>,
    ssp: bool,
}

/// Rule 1: the proxy's `scheme://authority` for this request, if one is known.
fn proxy_base(
    public: Option<&str>,
    host: Option<&HeaderValue>,
    listening: Option<Listening>,
) -> Option<Cow<'static, str>> {
    if let Some(public) = public {
        return Some(Cow::Owned(public.to_string()));
    }
    if let Some(host) = host
        .and_then(|h| h.to_str().ok())
        .filter(|h| plain_authority(h))
    {
        return Some(Cow::Owned(format!("http://{host}")));
    }
    listening.map(|Listening(addr)| Cow::Owned(format!("http://{addr}")))
}

/// True for `host[:port]` and nothing else: a DNS name or IPv4 address, or a bracketed IPv6
/// address, then an optional decimal port.
pub(crate) fn plain_authority(s: &str) -> bool {
    if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        return addr.parse::<std::net::Ipv6Addr>().is_ok()
            && (after.is_empty() || after.strip_prefix(':').is_some_and(valid_port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    let name = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    name && port.is_none_or(valid_port)
}

fn valid_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u16>().is_ok()
}

pin_project! {
    /// Rewrites the answer's `Location`.
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        future: F,
        back: Option<Back>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>>,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.future.poll(cx))?;
        if let Some(back) = this.back.take() {
            if response.headers().contains_key(header::LOCATION) {
                if let Some(base) =
                    proxy_base(back.public.as_deref(), back.host.as_ref(), back.listening)
                {
                    rewrite_location(response.headers_mut(), &back.root, &base, back.ssp);
                }
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// Rules 1 to 3 on one set of answer headers; `base` is the proxy's `scheme://authority`.
pub(crate) fn rewrite_location(headers: &mut HeaderMap, root: &str, base: &str, ssp: bool) {
    let Some(location) = headers.get(header::LOCATION) else {
        return;
    };
    let Ok(location) = location.to_str() else {
        return;
    };
    let Some(head) = location.get(..root.len()) else {
        return;
    };
    let rest = &location[root.len()..];
    if !head.eq_ignore_ascii_case(root) || !(rest.is_empty() || rest.starts_with(['/', '?'])) {
        return;
    }
    let rest: Cow<'_, str> = match rest.find('?') {
        _ if !ssp || !rest.starts_with('/') => Cow::Borrowed(rest),
        Some(q) => Cow::Owned(format!("{}{}", remove_ssp(&rest[..q]), &rest[q..])),
        None => remove_ssp(rest),
    };
    if let Ok(value) = HeaderValue::from_str(&format!("{base}{rest}")) {
        headers.insert(header::LOCATION, value);
    }
}

#[cfg(test)]
mod tests {
    // Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
    // whose failure is this test failing; none of it is on a request path.
    use super::*;
    use crate::canonical::CanonicalPath;
    use crate::stack::request::RouteFacts;
    use tower::ServiceExt;

    fn creatio() -> CreatioUrl {
        crate::config::Config::from_toml_str(
            "[creatio]\nurl = \"https://Acme.creatio.com/CreatioWebApp\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n",
        )
        .expect("config")
        .creatio
    }

    /// Answers 201 with the location it is given.
    fn created(
        location: &'static str,
    ) -> impl Service<
        Request<()>,
        Response = Response<ProxyBody>,
        Error = ProxyError,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_req: Request<()>| async move {
            let mut r = Response::new(ProxyBody::Empty);
            r.headers_mut()
                .insert(header::LOCATION, HeaderValue::from_static(location));
            Ok(r)
        })
    }

    #[tokio::test]
    async fn locations_into_creatio_point_back_at_the_proxy() {
        let cases: &[(&str, bool, Option<&str>, &str)] = &[
            (
                "https://acme.creatio.com/CreatioWebApp/0/odata/Contact(1)",
                false,
                Some("127.0.0.1:5080"),
                "http://127.0.0.1:5080/0/odata/Contact(1)",
            ),
            (
                "HTTPS://ACME.CREATIO.COM/CreatioWebApp?x=1",
                false,
                Some("127.0.0.1:5080"),
                "http://127.0.0.1:5080?x=1",
            ),
            (
                "https://other.example/0/x",
                false,
                Some("p:1"),
                "https://other.example/0/x",
            ),
            (
                "https://acme.creatio.com/CreatioWebApp2/0/x",
                false,
                Some("p:1"),
                "https://acme.creatio.com/CreatioWebApp2/0/x",
            ),
            (
                "/Login/NuiLogin.aspx",
                false,
                Some("p:1"),
                "/Login/NuiLogin.aspx",
            ),
            (
                "https://acme.creatio.com/CreatioWebApp/0/ssp/odata/Case(7)?a=/ssp",
                true,
                Some("127.0.0.1:5080"),
                "http://127.0.0.1:5080/0/odata/Case(7)?a=/ssp",
            ),
            // No Host, or one that is not a plain host[:port]: the listener's address.
            (
                "https://acme.creatio.com/CreatioWebApp/0/odata/Contact(1)",
                false,
                None,
                "http://127.0.0.1:5999/0/odata/Contact(1)",
            ),
            (
                "https://acme.creatio.com/CreatioWebApp/0/odata/Contact(1)",
                false,
                Some("evil.example/x?a="),
                "http://127.0.0.1:5999/0/odata/Contact(1)",
            ),
            (
                "https://acme.creatio.com/CreatioWebApp/0/odata/Contact(1)",
                false,
                Some("user@evil.example"),
                "http://127.0.0.1:5999/0/odata/Contact(1)",
            ),
            (
                "https://acme.creatio.com/CreatioWebApp/0/odata/Contact(1)",
                false,
                Some("[::1]:5080"),
                "http://[::1]:5080/0/odata/Contact(1)",
            ),
        ];
        let layer = LocationLayer::new(&creatio(), None);
        for (from, ssp, host, to) in cases {
            let mut req = Request::new(());
            req.extensions_mut()
                .insert(Listening("127.0.0.1:5999".parse().expect("addr")));
            req.extensions_mut().insert(Routed {
                facts: RouteFacts {
                    route: None,
                    identity: 0,
                },
                ssp: *ssp,
                path: CanonicalPath::parse("/0/x").expect("path"),
                client_host: host.map(HeaderValue::from_static),
            });
            let r = layer
                .layer(created(from))
                .oneshot(req)
                .await
                .expect("answer");
            assert_eq!(r.headers()[header::LOCATION], *to, "{from} {host:?}");
        }
    }

    #[test]
    fn only_plain_authorities_are_used() {
        for ok in [
            "localhost",
            "127.0.0.1:5080",
            "proxy.svc.cluster.local:80",
            "my_service:5080",
            "[::1]",
            "[2001:db8::1]:443",
        ] {
            assert!(plain_authority(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example/x?a=",
            "a@b",
            "host:",
            "host:99999",
            "host:80:80",
            "[::1",
            "[zz]:80",
            "[::1]x",
            "a..b",
            "host name",
            "evil.example#",
            "evil.example\\x",
        ] {
            assert!(!plain_authority(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_public_url_wins_over_any_host() {
        let public = PublicUrl {
            scheme: "https".into(),
            authority: "gw.example.com".into(),
        };
        let layer = LocationLayer::new(&creatio(), Some(&public));
        let mut req = Request::new(());
        req.extensions_mut().insert(Routed {
            facts: RouteFacts {
                route: None,
                identity: 0,
            },
            ssp: false,
            path: CanonicalPath::parse("/0/x").expect("path"),
            client_host: Some(HeaderValue::from_static("127.0.0.1:5080")),
        });
        let r = layer
            .layer(created(
                "https://acme.creatio.com/CreatioWebApp/0/odata/Contact(1)",
            ))
            .oneshot(req)
            .await
            .expect("answer");
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://gw.example.com/0/odata/Contact(1)"
        );
    }
}
