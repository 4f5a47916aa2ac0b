//! Step 1b of the validation: the limits every client connection and request is held to
//! (`[server]` keys of ../shared/contract.md "Limits", plus `send_timeout`, `allowed_methods`
//! and `public_url`).
//!
//! Each limit exists because a client could otherwise hold the proxy's resources, or the
//! integration user's rights, in a way no real client needs:
//! - `header_read_timeout`: a connection must complete its first request head this soon after
//!   it is accepted (silent sockets, half an h2 preface, slowloris);
//! - `idle_timeout`: a keep-alive connection with nothing in flight is closed after this;
//! - `send_timeout`: a client that stops reading its answer is cut after this, and its
//!   Creatio connection freed;
//! - `body_read_timeout`: a request body that sends nothing for this long: 408, and the
//!   request to Creatio aborted;
//! - `max_connections`: client connections held at once (idle ones are closed first);
//! - `max_header_bytes` (431), `max_uri_bytes` (414), `max_body` (413; per route too);
//! - `allowed_methods`: other methods are answered 405 and never forwarded; TRACE and
//!   CONNECT cannot be allowed (an upstream that reflects TRACE would echo the session);
//! - `public_url`: the scheme and authority a rewritten `Location` points at, for setups
//!   behind a TLS terminator; without it, the client's `Host` when it is a plain
//!   `host[:port]`, else the listener's address.

use std::time::Duration;

use http::Method;

use super::defaults::DEFAULTS;
use super::error::ConfigError;
use super::file::ConfigFile;
use super::validate::{body_limit, parse_duration, parse_size};

/// The validated limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// `server.max_connections`.
    pub max_connections: usize,
    /// `server.header_read_timeout`.
    pub header_read_timeout: Duration,
    /// `server.idle_timeout`.
    pub idle_timeout: Duration,
    /// `server.send_timeout`.
    pub send_timeout: Duration,
    /// `server.body_read_timeout`.
    pub body_read_timeout: Duration,
    /// `server.max_header_bytes`: the request line and every header line.
    pub max_header_bytes: usize,
    /// `server.max_uri_bytes`.
    pub max_uri_bytes: usize,
    /// `server.max_body`; `None` = no limit (the file says `"0"`).
    pub max_body: Option<u64>,
    /// `server.allowed_methods`, upper case.
    pub allowed_methods: Vec<Method>,
    /// `server.public_url`: scheme and authority (no path), e.g. `https://gw.example.com`.
    pub public_url: Option<PublicUrl>,
}

/// Where clients reach the proxy, as `server.public_url` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
}

/// Methods no allow-list may contain.
const NEVER_ALLOWED: [&str; 2] = ["TRACE", "CONNECT"];

/// Step 1b.
pub(crate) fn limits(file: &ConfigFile) -> Result<Limits, ConfigError> {
    let s = &file.server;
    let duration = |key: &str, v: &Option<String>, default: &str| {
        let d = parse_duration(key, v.as_deref().unwrap_or(default))?;
        if d.is_zero() {
            return Err(ConfigError::new(
                key,
                "must be above zero (a connection or body with no time limit can be held forever)",
            ));
        }
        Ok(d)
    };
    let header_read_timeout = duration(
        "server.header_read_timeout",
        &s.header_read_timeout,
        DEFAULTS.header_read_timeout,
    )?;
    let idle_timeout = duration(
        "server.idle_timeout",
        &s.idle_timeout,
        DEFAULTS.idle_timeout,
    )?;
    let send_timeout = duration(
        "server.send_timeout",
        &s.send_timeout,
        DEFAULTS.send_timeout,
    )?;
    let body_read_timeout = duration(
        "server.body_read_timeout",
        &s.body_read_timeout,
        DEFAULTS.body_read_timeout,
    )?;
    let max_connections = s.max_connections.unwrap_or(DEFAULTS.max_connections);
    if max_connections == 0 {
        return Err(ConfigError::new(
            "server.max_connections",
            "must be at least 1",
        ));
    }
    let max_header_bytes = parse_size(
        "server.max_header_bytes",
        s.max_header_bytes
            .as_deref()
            .unwrap_or(DEFAULTS.max_header_bytes),
    )?;
    // hyper cannot read a head into less than 8 KiB; 1 MiB is far above any real client.
    if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&max_header_bytes) {
        return Err(ConfigError::new(
            "server.max_header_bytes",
            "must be between 8KiB and 1MiB",
        ));
    }
    let max_uri_bytes = parse_size(
        "server.max_uri_bytes",
        s.max_uri_bytes.as_deref().unwrap_or(DEFAULTS.max_uri_bytes),
    )?;
    if max_uri_bytes < 256 || max_uri_bytes > max_header_bytes {
        return Err(ConfigError::new(
            "server.max_uri_bytes",
            "must be at least 256B and not above server.max_header_bytes (the URI is part of the head)",
        ));
    }
    let max_body = body_limit(
        "server.max_body",
        s.max_body.as_deref().unwrap_or(DEFAULTS.max_body),
    )?;
    let allowed_methods = match &s.allowed_methods {
        None => DEFAULTS
            .allowed_methods
            .iter()
            .map(|m| methods("server.allowed_methods", m))
            .collect::<Result<Vec<_>, _>>()?,
        Some(list) => {
            if list.is_empty() {
                return Err(ConfigError::new(
                    "server.allowed_methods",
                    "an empty list would refuse every request; remove the key for the default",
                ));
            }
            list.iter()
                .enumerate()
                .map(|(i, m)| methods(&format!("server.allowed_methods[{i}]"), m))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let public_url = match s.public_url.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(url) => Some(public_url(url)?),
    };
    Ok(Limits {
        max_connections,
        header_read_timeout,
        idle_timeout,
        send_timeout,
        body_read_timeout,
        max_header_bytes,
        max_uri_bytes,
        max_body,
        allowed_methods,
        public_url,
    })
}

/// Smallest `max_header_bytes` (hyper's smallest read buffer).
const MIN_HEADER_BYTES: usize = 8 * 1024;
/// Largest `max_header_bytes`.
const MAX_HEADER_BYTES: usize = 1024 * 1024;

fn methods(key: &str, m: &str) -> Result<Method, ConfigError> {
    let upper = m.trim().to_ascii_uppercase();
    if NEVER_ALLOWED.contains(&upper.as_str()) {
        return Err(ConfigError::new(
            key,
            format!("{upper} is never forwarded: TRACE echoes the session's cookies back, CONNECT would open a tunnel with them"),
        ));
    }
    let valid = !upper.is_empty() && upper.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-');
    match Method::from_bytes(upper.as_bytes()) {
        Ok(method) if valid => Ok(method),
        _ => Err(ConfigError::new(
            key,
            format!("\"{m}\" is not an HTTP method like \"GET\" or \"MERGE\""),
        )),
    }
}

fn public_url(url: &str) -> Result<PublicUrl, ConfigError> {
    let key = "server.public_url";
    let bad = |why: &str| {
        ConfigError::new(
            key,
            format!("\"{url}\" {why}; write the scheme and host clients use, like \"https://crm-gateway.example.com\""),
        )
    };
    let uri: http::Uri = url.parse().map_err(|_| bad("is not a URL"))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {
            s.to_ascii_lowercase()
        }
        _ => return Err(bad("must start with http:// or https://")),
    };
    let authority = uri.authority().ok_or_else(|| bad("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("must not hold a user name or password"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("must not have a path or query"));
    }
    Ok(PublicUrl {
        scheme,
        authority: authority.as_str().to_ascii_lowercase(),
    })
}

#[cfg(test)]
mod tests {
    // Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
    // whose failure is this test failing; none of it is on a request path.
    use super::super::testing::{load, MINIMAL};

    #[test]
    fn defaults_are_those_of_the_contract() {
        let c = load(MINIMAL).expect("minimal config");
        let l = &c.limits;
        assert_eq!(l.max_connections, 10_000);
        assert_eq!(l.header_read_timeout.as_secs(), 10);
        assert_eq!(l.idle_timeout.as_secs(), 60);
        assert_eq!(l.send_timeout.as_secs(), 30);
        assert_eq!(l.body_read_timeout.as_secs(), 30);
        assert_eq!(l.max_header_bytes, 32 * 1024);
        assert_eq!(l.max_uri_bytes, 8 * 1024);
        assert_eq!(l.max_body, None);
        let methods: Vec<&str> = l.allowed_methods.iter().map(|m| m.as_str()).collect();
        assert_eq!(
            methods,
            ["GET", "HEAD", "POST", "PUT", "PATCH", "MERGE", "DELETE", "OPTIONS"]
        );
        assert_eq!(l.public_url, None);
    }

    #[test]
    fn refusals_name_the_key() {
        for (server, key) in [
            (
                "allowed_methods = [\"GET\", \"trace\"]",
                "server.allowed_methods[1]",
            ),
            (
                "allowed_methods = [\"CONNECT\"]",
                "server.allowed_methods[0]",
            ),
            ("allowed_methods = []", "server.allowed_methods"),
            ("allowed_methods = [\"GE T\"]", "server.allowed_methods[0]"),
            ("max_connections = 0", "server.max_connections"),
            ("idle_timeout = \"0s\"", "server.idle_timeout"),
            ("max_header_bytes = \"1KiB\"", "server.max_header_bytes"),
            ("max_uri_bytes = \"64KiB\"", "server.max_uri_bytes"),
            ("max_body = \"lots\"", "server.max_body"),
            ("public_url = \"ftp://x\"", "server.public_url"),
            ("public_url = \"https://x/base\"", "server.public_url"),
            ("public_url = \"https://u:p@x\"", "server.public_url"),
        ] {
            let err = load(&format!("[server]\n{server}\n{MINIMAL}"))
                .expect_err(server)
                .to_string();
            assert!(err.starts_with(&format!("{key}:")), "{server}: {err}");
        }
    }

    #[test]
    fn a_public_url_gives_scheme_and_authority() {
        let c = load(&format!(
            "[server]\npublic_url = \"HTTPS://Gw.Example.com:8443/\"\nmax_body = \"10MiB\"\n{MINIMAL}"
        ))
        .expect("config");
        let p = c.limits.public_url.expect("public_url");
        assert_eq!(
            (p.scheme.as_str(), p.authority.as_str()),
            ("https", "gw.example.com:8443")
        );
        assert_eq!(c.limits.max_body, Some(10 * 1024 * 1024));
    }
}
