//! Addresses and URLs: listeners, allowed client blocks, Creatio's application root, token
//! endpoints and the egress proxy.
//!
//! Rules every URL key follows ([`parse_http_url`]):
//! 1. `http://` or `https://`, a host, no fragment;
//! 2. no credentials in the URL (they belong in the identity's keys), and a URL is quoted in a
//!    message only with any user information replaced by `[redacted]`;
//! 3. `creatio.url` is the application root: `/0`, a login page or `ServiceModel/...` is refused
//!    with the URL that works.
//!
//! The egress proxy URL may hold a password, so it is never quoted at all.

use std::net::{IpAddr, SocketAddr};

use http::uri::{Authority, Scheme};
use http::Uri;

use super::error::ConfigError;
use super::secret::Secret;

/// `creatio.proxy`: how connections to Creatio and the Identity Service leave this host.
#[derive(Debug, Clone)]
pub enum EgressProxy {
    /// Key absent: `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` and `NO_PROXY` from the environment
    /// (loopback hosts always connect directly).
    FromEnv,
    /// `proxy = ""`: always connect directly, whatever the environment says.
    Direct,
    /// `proxy = "http://[user:password@]host:port"`: the URL may hold a password.
    Url(Secret),
}

impl PartialEq for EgressProxy {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (EgressProxy::FromEnv, EgressProxy::FromEnv) => true,
            (EgressProxy::Direct, EgressProxy::Direct) => true,
            (EgressProxy::Url(a), EgressProxy::Url(b)) => a.ct_eq(b.expose().as_bytes()),
            _ => false,
        }
    }
}

/// Checks an egress proxy URL: `http://host:port`, optionally with `user:password@`, or
/// `host:port`. The value is never quoted in the error (it may hold a password).
pub(crate) fn parse_egress_proxy(url: &str) -> Result<Secret, ConfigError> {
    let full = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let shape = "must look like http://host:port or http://user:password@host:port";
    let uri: Uri = full
        .parse()
        .map_err(|_| ConfigError::new("creatio.proxy", format!("is not a URL: it {shape}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(ConfigError::new(
                "creatio.proxy",
                format!(
                    "{other}:// proxies are not supported: the proxy is reached over plain HTTP and                      tunnels TLS to Creatio with CONNECT, so it {shape}"
                ),
            ))
        }
        None => return Err(ConfigError::new("creatio.proxy", shape)),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(ConfigError::new(
            "creatio.proxy",
            format!("has no host: it {shape}"),
        ));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(ConfigError::new(
            "creatio.proxy",
            format!("has a path, which a proxy URL cannot have: it {shape}"),
        ));
    }
    Ok(Secret::new(full))
}

/// Creatio's application root, split for cheap URI building.
#[derive(Debug, Clone)]
pub struct CreatioUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// host[:port].
    pub authority: Authority,
    /// Virtual directory without a trailing slash (`""` or `/CreatioWebApp`).
    pub base_path: String,
    /// The URL as configured (no credentials can be in it: they are refused).
    pub display: String,
}

impl CreatioUrl {
    /// The absolute URL of `path_and_query` (which starts with `/`) under the application root.
    pub fn join(&self, path_and_query: &str) -> String {
        let mut s = String::with_capacity(
            self.display.len() + self.base_path.len() + path_and_query.len() + 8,
        );
        s.push_str(self.scheme.as_str());
        s.push_str("://");
        s.push_str(self.authority.as_str());
        s.push_str(&self.base_path);
        s.push_str(path_and_query);
        s
    }

    /// Host and port, for messages (`mycompany.creatio.com:443`).
    pub fn host_port(&self) -> String {
        host_port(&self.scheme, &self.authority)
    }
}

fn host_port(scheme: &Scheme, authority: &Authority) -> String {
    let default = if *scheme == Scheme::HTTPS { 443 } else { 80 };
    format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(default)
    )
}

/// A token endpoint URL, split like [`CreatioUrl`].
#[derive(Debug, Clone)]
pub struct TokenUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// host[:port].
    pub authority: Authority,
    /// Path and query, e.g. `/connect/token`.
    pub path_and_query: String,
    /// The URL as configured.
    pub display: String,
}

impl TokenUrl {
    /// Host and port, for messages.
    pub fn host_port(&self) -> String {
        host_port(&self.scheme, &self.authority)
    }
}

/// An address block from `allowed_clients` (`10.0.0.0/8`, `192.0.2.7`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpBlock {
    /// Parses `ADDR` or `ADDR/LEN`.
    pub fn parse(s: &str) -> Option<IpBlock> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (
                a.trim().parse::<IpAddr>().ok()?,
                Some(l.trim().parse::<u8>().ok()?),
            ),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = len.unwrap_or(max);
        (prefix_len <= max).then_some(IpBlock { addr, prefix_len })
    }

    /// True when `ip` lies in this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `scheme://user:password@host/...` with the user information replaced, for messages.
fn without_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://[redacted]@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

pub(crate) fn parse_listen(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    let normalised = v
        .strip_prefix("localhost:")
        .map(|p| format!("127.0.0.1:{p}"));
    normalised
        .as_deref()
        .unwrap_or(v)
        .parse::<SocketAddr>()
        .map_err(|_| {
            ConfigError::new(
                key,
                format!("\"{v}\" is not an address with a port, like \"127.0.0.1:5080\""),
            )
        })
}

/// A URL value checked for what every URL key needs: http or https, a host, no credentials,
/// no fragment.
struct HttpUrl {
    key: String,
    uri: Uri,
    scheme: Scheme,
    authority: Authority,
    /// The URL as it may be quoted in messages.
    shown: String,
}

impl HttpUrl {
    /// An error for this key that quotes the URL.
    fn bad(&self, why: &str) -> ConfigError {
        ConfigError::new(&self.key, format!("\"{}\" {why}", self.shown))
    }
}

fn parse_http_url(
    key: &str,
    v: Option<&str>,
    what: &str,
    example: &str,
) -> Result<HttpUrl, ConfigError> {
    let v = v.filter(|v| !v.is_empty()).ok_or_else(|| {
        ConfigError::new(key, format!("missing: give {what}, e.g. \"{example}\""))
    })?;
    let shown = without_userinfo(v);
    let bad = |why: &str| ConfigError::new(key, format!("\"{shown}\" {why}"));
    let uri: Uri = v
        .parse()
        .map_err(|_| bad(&format!("is not a URL like \"{example}\"")))?;
    let scheme = uri
        .scheme()
        .cloned()
        .filter(|s| *s == Scheme::HTTP || *s == Scheme::HTTPS)
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let authority = uri.authority().cloned().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad(
            "must not carry credentials; give them in the identity's keys",
        ));
    }
    if authority.host().is_empty() {
        return Err(bad("has no host"));
    }
    if v.contains('#') {
        return Err(bad("must not have a fragment"));
    }
    Ok(HttpUrl {
        key: key.to_string(),
        uri,
        scheme,
        authority,
        shown,
    })
}

pub(crate) fn parse_creatio_url(v: Option<&str>) -> Result<CreatioUrl, ConfigError> {
    let url = parse_http_url(
        "creatio.url",
        v,
        "the Creatio application root",
        "https://mycompany.creatio.com",
    )?;
    let (uri, scheme, authority) = (&url.uri, &url.scheme, &url.authority);
    if uri.query().is_some() {
        return Err(url.bad("must not have a query"));
    }
    let base_path = uri.path().trim_end_matches('/').to_string();
    let lower = base_path.to_ascii_lowercase();
    // The two classic mistakes: the app URL with /0, and a login page or the login service
    // itself. Both are named with the URL that works.
    let origin = format!("{}://{}", scheme.as_str(), authority.as_str());
    if lower == "/0" || lower.ends_with("/0") {
        // Cannot panic: the path ends with the two ASCII bytes "/0".
        let root = &base_path[..base_path.len() - 2];
        return Err(url.bad(&format!(
            "ends with /0: set creatio.url = \"{origin}{root}\", the application root without /0 (the proxy logs in at the root's ServiceModel/AuthService.svc/Login, and clients send /0/... paths themselves)"
        )));
    }
    let cut = ["/login/", "/servicemodel/"]
        .iter()
        .filter_map(|m| format!("{lower}/").find(m))
        .min();
    if let Some(at) = cut {
        // Cannot panic: `lower` has the same bytes as `base_path` but for ASCII case, and `at`
        // is the position of an ASCII '/'.
        return Err(url.bad(&format!(
            "points at a login page or service, not the application root: set creatio.url = \"{origin}{}\"",
            &base_path[..at]
        )));
    }
    let path = if base_path.is_empty() {
        "/"
    } else {
        &base_path
    };
    match crate::canonical::CanonicalPath::parse(path) {
        Err(crate::canonical::PathError::DotSegment) => {
            return Err(url.bad("contains a '.' or '..' segment"));
        }
        Err(e) => return Err(url.bad(&format!("has a path with no single meaning: {e}"))),
        Ok(_) => {}
    }
    Ok(CreatioUrl {
        scheme: scheme.clone(),
        authority: authority.clone(),
        display: format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority().map(|a| a.as_str()).unwrap_or(""),
            base_path
        ),
        base_path,
    })
}

pub(crate) fn parse_token_url(key: &str, v: Option<&str>) -> Result<TokenUrl, ConfigError> {
    let url = parse_http_url(
        key,
        v,
        "the Identity Service's token endpoint",
        "https://mycompany-is.creatio.com/connect/token",
    )?;
    let path_and_query = match url.uri.path_and_query().map(|p| p.as_str()) {
        None | Some("") | Some("/") => {
            return Err(url.bad(
                "has no path: the token endpoint is usually {identity service}/connect/token",
            ))
        }
        Some(p) => p.to_string(),
    };
    Ok(TokenUrl {
        scheme: url.scheme,
        authority: url.authority,
        path_and_query,
        display: url.shown,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::{load, MINIMAL};
    use super::*;

    #[test]
    fn virtual_directory_is_kept_in_the_base_path() {
        let c = load(&MINIMAL.replace(
            "https://example.creatio.com",
            "http://host:81/CreatioWebApp/",
        ))
        .expect("loads");
        assert_eq!(
            c.creatio.join("/0/odata/Contact?$top=1"),
            "http://host:81/CreatioWebApp/0/odata/Contact?$top=1"
        );
        assert_eq!(c.creatio.host_port(), "host:81");
    }

    #[test]
    fn creatio_url_mistakes_suggest_the_application_root() {
        let cases = [
            (
                "https://example.creatio.com/0",
                "\"https://example.creatio.com\"",
            ),
            (
                "https://host/CreatioWebApp/0/",
                "\"https://host/CreatioWebApp\"",
            ),
            (
                "https://example.creatio.com/Login/NuiLogin.aspx",
                "\"https://example.creatio.com\"",
            ),
            (
                "http://host:81/App/ServiceModel/AuthService.svc/Login",
                "\"http://host:81/App\"",
            ),
        ];
        for (url, suggestion) in cases {
            let err = load(&MINIMAL.replace("https://example.creatio.com", url)).expect_err(url);
            assert_eq!(err.key, "creatio.url");
            assert!(
                err.message
                    .contains(&format!("set creatio.url = {suggestion}")),
                "{err}"
            );
        }
    }

    #[test]
    fn ip_blocks_match_addresses() {
        let b = IpBlock::parse("10.0.0.0/8").expect("block");
        assert!(b.contains("10.1.2.3".parse().expect("ip")));
        assert!(b.contains("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!b.contains("11.0.0.1".parse().expect("ip")));
        assert!(IpBlock::parse("0.0.0.0/0")
            .expect("all")
            .contains("8.8.8.8".parse().expect("ip")));
        assert!(IpBlock::parse("10.0.0.0/33").is_none());
    }
}
