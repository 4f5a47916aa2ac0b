//! How connections to Creatio and the Identity Service leave this host: directly, or through
//! a corporate egress HTTP proxy (`creatio.proxy`, or `HTTPS_PROXY` / `HTTP_PROXY` /
//! `ALL_PROXY` and `NO_PROXY` from the environment).
//!
//! - An `https` origin is reached through the proxy with `CONNECT host:port`; TLS then runs
//!   end to end inside the tunnel, so the proxy never sees the session cookies.
//! - An `http` origin is reached the way HTTP proxies expect plain HTTP: the connection goes
//!   to the proxy and each request carries the absolute URL (see [`crate::pool`]).
//! - `creatio.no_proxy` (or, without it, `NO_PROXY`) is honoured in both cases; the key lets a
//!   config be independent of the environment. With proxies taken from the environment, loopback
//!   hosts (`localhost`, 127.0.0.0/8, ::1) always connect directly, as Go and most CLI tools
//!   do: a proxy set for the whole host must not capture a Creatio (or emulator) on loopback.
//! - Proxy credentials (`http://user:password@host:port`) become a `Proxy-Authorization:
//!   Basic` header and are never logged: [`EgressRules::describe`] shows host and port only.
//!
//! hyper-util provides the parsing of the proxy URLs and lists ([`Matcher`]) and the CONNECT handshake
//! ([`Tunnel`]); this module chooses per origin and labels the errors.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Uri};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower::{Service, ServiceExt};

use crate::config::EgressProxy;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which proxy (if any) serves which origin.
pub(crate) struct EgressRules {
    matcher: Option<Matcher>,
    /// Loopback hosts bypass the proxy (true for proxies from the environment).
    loopback_direct: bool,
    /// Where the setting came from, for the start-up log line.
    source: &'static str,
}

/// How one origin is reached.
#[derive(Clone)]
pub(crate) enum Route {
    /// A TCP connection to the origin itself.
    Direct,
    /// Through the proxy at `proxy`: CONNECT for https, absolute-form requests for http.
    Proxy {
        /// The proxy's `http://host:port`.
        proxy: Uri,
        /// `Proxy-Authorization` value, when the proxy URL held credentials.
        auth: Option<HeaderValue>,
    },
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Direct => f.write_str("Direct"),
            Route::Proxy { proxy, .. } => write!(f, "Proxy({})", proxy_label(proxy)),
        }
    }
}

impl EgressRules {
    /// The rules for `setting` and `no_proxy` (`creatio.no_proxy`; `None`: the `NO_PROXY`
    /// variable). The environment is read now (at start and at each reload).
    pub(crate) fn new(setting: &EgressProxy, no_proxy: Option<&str>) -> Self {
        let no_proxy = match no_proxy {
            Some(list) => list.to_string(),
            None => env_first(&["NO_PROXY", "no_proxy"]),
        };
        Self::with_no_proxy(setting, no_proxy)
    }

    /// The rules for `setting`, with `no_proxy` (the `NO_PROXY` list).
    fn with_no_proxy(setting: &EgressProxy, no_proxy: String) -> Self {
        match setting {
            EgressProxy::Direct => EgressRules {
                matcher: None,
                loopback_direct: true,
                source: "creatio.proxy = \"\"",
            },
            EgressProxy::Url(url) => EgressRules {
                matcher: Some(
                    Matcher::builder()
                        .all(url.expose().to_string())
                        .no(no_proxy)
                        .build(),
                ),
                loopback_direct: false,
                source: "creatio.proxy",
            },
            EgressProxy::FromEnv => EgressRules {
                matcher: Some(
                    Matcher::builder()
                        .all(env_first(&["ALL_PROXY", "all_proxy"]))
                        .http(env_first(&["HTTP_PROXY", "http_proxy"]))
                        .https(env_first(&["HTTPS_PROXY", "https_proxy"]))
                        .no(no_proxy)
                        .build(),
                ),
                loopback_direct: true,
                source: "environment",
            },
        }
    }

    /// How `origin` is reached.
    pub(crate) fn route(&self, origin: &Uri) -> Route {
        let Some(matcher) = &self.matcher else {
            return Route::Direct;
        };
        if self.loopback_direct && origin.host().is_some_and(is_loopback) {
            return Route::Direct;
        }
        match matcher.intercept(origin) {
            // Only plain-HTTP proxies: a socks or https proxy from the environment is not ours
            // to speak, and connecting straight is what the user had before setting it.
            Some(i) if i.uri().scheme_str() == Some("http") => Route::Proxy {
                proxy: i.uri().clone(),
                auth: i.basic_auth().cloned().map(|mut v| {
                    v.set_sensitive(true);
                    v
                }),
            },
            _ => Route::Direct,
        }
    }

    /// `direct` or `http://host:port (from ...)` for `origin`, without credentials.
    pub(crate) fn describe(&self, origin: &Uri) -> String {
        match self.route(origin) {
            Route::Direct => "direct".to_string(),
            Route::Proxy { proxy, .. } => {
                format!("{} (from {})", proxy_label(&proxy), self.source)
            }
        }
    }
}

/// The first of `names` set in the environment, or "" (curl's order: upper case first).
fn env_first(names: &[&str]) -> String {
    names
        .iter()
        .find_map(|k| std::env::var(k).ok())
        .unwrap_or_default()
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `http://host:port` of a proxy URI, without any user information.
fn proxy_label(proxy: &Uri) -> String {
    let host = proxy.host().unwrap_or("?");
    let port = proxy.port_u16().unwrap_or(80);
    format!("http://{host}:{port}")
}

/// A failure on the way through the egress proxy (connecting to it, or its CONNECT answer).
#[derive(Debug, thiserror::Error)]
#[error("through the egress proxy {proxy}: {source}")]
pub(crate) struct EgressError {
    proxy: String,
    #[source]
    source: BoxError,
}

/// The TCP connector under TLS: direct or through the egress proxy, per origin.
#[derive(Clone)]
pub(crate) struct Connector {
    http: HttpConnector,
    rules: Arc<EgressRules>,
    /// Bounds the whole connection set-up through a proxy (TCP + CONNECT answer).
    timeout: Duration,
}

impl Connector {
    /// A connector that makes TCP connections with `http` and follows `rules`.
    pub(crate) fn new(http: HttpConnector, rules: Arc<EgressRules>, timeout: Duration) -> Self {
        Connector {
            http,
            rules,
            timeout,
        }
    }
}

impl Service<Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let http = self.http.clone();
        let route = self.rules.route(&dst);
        let timeout = self.timeout;
        Box::pin(async move {
            let Route::Proxy { proxy, auth } = route else {
                return http.oneshot(dst).await.map_err(Into::into);
            };
            let label = proxy_label(&proxy);
            let https = dst.scheme_str() == Some("https");
            let connecting = async move {
                if https {
                    let mut tunnel = Tunnel::new(proxy, http);
                    if let Some(auth) = auth {
                        tunnel = tunnel.with_auth(auth);
                    }
                    tunnel.oneshot(dst).await.map_err(BoxError::from)
                } else {
                    http.oneshot(proxy).await.map_err(BoxError::from)
                }
            };
            match tokio::time::timeout(timeout, connecting).await {
                Ok(Ok(io)) => Ok(io),
                Ok(Err(source)) => Err(Box::new(EgressError {
                    proxy: label,
                    source,
                }) as BoxError),
                Err(_) => Err(Box::new(EgressError {
                    proxy: label,
                    source: Box::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no tunnel within creatio.connect_timeout",
                    )),
                }) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn rules(url: &str) -> EgressRules {
        EgressRules::new(&EgressProxy::Url(Secret::new(url)), Some(""))
    }

    #[test]
    fn a_configured_proxy_serves_every_origin_and_its_credentials_are_not_shown() {
        let r = rules("http://user:p4ss@egress.corp:3128");
        for origin in ["https://acme.creatio.com/", "http://127.0.0.1:5081/"] {
            let origin = Uri::from_static(origin);
            match r.route(&origin) {
                Route::Proxy { proxy, auth } => {
                    assert_eq!(proxy.host(), Some("egress.corp"));
                    assert!(auth.is_some_and(|a| a.is_sensitive()));
                }
                Route::Direct => panic!("{origin} should go through the proxy"),
            }
            let shown = r.describe(&origin);
            assert_eq!(shown, "http://egress.corp:3128 (from creatio.proxy)");
        }
        assert!(!format!("{:?}", r.route(&Uri::from_static("https://x/"))).contains("p4ss"));
    }

    #[test]
    fn no_proxy_hosts_and_subdomains_connect_directly() {
        let r = EgressRules::new(
            &EgressProxy::Url(Secret::new("http://egress.corp:3128")),
            Some("crm.corp.local, .intra, 10.0.0.0/8"),
        );
        for direct in [
            "https://crm.corp.local/",
            "https://a.intra/",
            "http://10.1.2.3:81/",
        ] {
            let uri = Uri::from_static(direct);
            assert!(matches!(r.route(&uri), Route::Direct), "{direct}");
        }
        let uri = Uri::from_static("https://acme.creatio.com/");
        assert!(matches!(r.route(&uri), Route::Proxy { .. }));
    }

    #[test]
    fn an_empty_proxy_means_direct() {
        let r = EgressRules::new(&EgressProxy::Direct, None);
        assert!(matches!(
            r.route(&Uri::from_static("https://acme.creatio.com/")),
            Route::Direct
        ));
    }

    #[test]
    fn loopback_is_recognised() {
        for host in ["localhost", "127.0.0.1", "127.9.9.9", "[::1]"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["acme.creatio.com", "10.0.0.1", "localhost.example"] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
