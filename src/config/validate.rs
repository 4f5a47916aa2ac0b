//! The validation steps of [`Config::from_file`](super::Config::from_file), each a function of
//! its own, run in this order (the order decides which error a file with several mistakes
//! reports first, so it is kept):
//! 1. [`server`]: listeners, the replay buffer, grace period, back-off and timeouts;
//! 2. [`access`]: `unmatched`, client tokens, allowed clients, and the rule that a listener off
//!    loopback needs one of them ([`check_exposure`]);
//! 3. [`upstream`]: Creatio's URL, the egress proxy, TLS (`ca_file`, `insecure_skip_verify`);
//! 4. [`super::identity::identities`];
//! 5. [`routes`]: prefixes (unique, ASCII case-insensitively) and the identity each names;
//! 6. [`log`].
//!
//! An omitted key takes its value from [`DEFAULTS`], parsed like a configured one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::canonical::{route_key, CanonicalPath, PathError};

use super::defaults::DEFAULTS;
use super::error::ConfigError;
use super::file::{ConfigFile, RouteFile};
use super::identity::Identities;
use super::identity::DEFAULT_IDENTITY;
use super::net::{
    parse_creatio_url, parse_egress_proxy, parse_listen, CreatioUrl, EgressProxy, IpBlock,
};
use super::secret::Secret;

/// Step 1's result.
pub(crate) struct Server {
    pub(crate) listen: SocketAddr,
    pub(crate) admin_listen: Option<SocketAddr>,
    pub(crate) replay_buffer: usize,
    pub(crate) shutdown_grace: Duration,
    pub(crate) login_backoff: Duration,
    pub(crate) login_backoff_max: Duration,
    pub(crate) upstream_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) allow_root: bool,
}

/// Step 1: listeners, sizes and timeouts. `creatio.connect_timeout` is read here, with the other
/// timeouts, as it always was.
pub(crate) fn server(file: &ConfigFile) -> Result<Server, ConfigError> {
    let s = &file.server;
    let listen = parse_listen(
        "server.listen",
        s.listen.as_deref().unwrap_or(DEFAULTS.listen),
    )?;
    let admin_listen = match file.admin.listen.as_deref() {
        None | Some("") => None,
        Some(v) => Some(parse_listen("admin.listen", v)?),
    };
    let replay_buffer = parse_size(
        "server.replay_buffer",
        s.replay_buffer.as_deref().unwrap_or(DEFAULTS.replay_buffer),
    )?;
    let shutdown_grace = parse_duration(
        "server.shutdown_grace",
        s.shutdown_grace
            .as_deref()
            .unwrap_or(DEFAULTS.shutdown_grace),
    )?;
    let login_backoff = parse_duration(
        "server.login_backoff",
        s.login_backoff.as_deref().unwrap_or(DEFAULTS.login_backoff),
    )?;
    let login_backoff_max = parse_duration(
        "server.login_backoff_max",
        s.login_backoff_max
            .as_deref()
            .unwrap_or(DEFAULTS.login_backoff_max),
    )?;
    if login_backoff.is_zero() || login_backoff_max < login_backoff {
        return Err(ConfigError::new(
            "server.login_backoff",
            "must be above zero and not above server.login_backoff_max (a failed login must never be retried at once: it could lock the Creatio account)",
        ));
    }
    let upstream_timeout = parse_duration(
        "server.upstream_timeout",
        s.upstream_timeout
            .as_deref()
            .unwrap_or(DEFAULTS.upstream_timeout),
    )?;
    let connect_timeout = parse_duration(
        "creatio.connect_timeout",
        file.creatio
            .connect_timeout
            .as_deref()
            .unwrap_or(DEFAULTS.connect_timeout),
    )?;
    Ok(Server {
        listen,
        admin_listen,
        replay_buffer,
        shutdown_grace,
        login_backoff,
        login_backoff_max,
        upstream_timeout,
        connect_timeout,
        allow_root: s.allow_root.unwrap_or(DEFAULTS.allow_root),
    })
}

/// Step 2's result.
pub(crate) struct Access {
    pub(crate) unmatched: Unmatched,
    pub(crate) client_tokens: Vec<Secret>,
    pub(crate) allowed_clients: Vec<IpBlock>,
    pub(crate) allow_unauthenticated_remote: bool,
}

/// Step 2: who may use the listener at `listen`, and what unrouted paths do.
pub(crate) fn access(file: &ConfigFile, listen: SocketAddr) -> Result<Access, ConfigError> {
    let s = &file.server;
    let unmatched = match s.unmatched.as_deref().unwrap_or(DEFAULTS.unmatched) {
        "forward" => Unmatched::Forward,
        "deny" => Unmatched::Deny,
        other => {
            return Err(ConfigError::new(
                "server.unmatched",
                format!("\"{other}\" is not one of \"forward\", \"deny\""),
            ))
        }
    };
    let client_tokens = s.client_tokens.clone();
    if client_tokens.iter().any(Secret::is_empty) {
        return Err(ConfigError::new(
            "server.client_tokens",
            "an empty token would let anyone in; remove it",
        ));
    }
    let mut allowed_clients = Vec::with_capacity(s.allowed_clients.len());
    for (i, c) in s.allowed_clients.iter().enumerate() {
        allowed_clients.push(IpBlock::parse(c).ok_or_else(|| {
            ConfigError::new(
                format!("server.allowed_clients[{i}]"),
                format!("\"{c}\" is not an address or CIDR block like 10.0.0.0/8"),
            )
        })?);
    }
    let remote_ok = s
        .allow_unauthenticated_remote
        .unwrap_or(DEFAULTS.allow_unauthenticated_remote);
    check_exposure(
        listen,
        client_tokens.is_empty() && allowed_clients.is_empty() && !remote_ok,
    )?;
    Ok(Access {
        unmatched,
        client_tokens,
        allowed_clients,
        allow_unauthenticated_remote: remote_ok,
    })
}

/// Step 3's result.
pub(crate) struct Upstream {
    pub(crate) creatio: CreatioUrl,
    pub(crate) egress: EgressProxy,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) ca_pem: Option<Arc<Vec<u8>>>,
    pub(crate) insecure_skip_verify: bool,
    pub(crate) no_proxy: Option<String>,
}

/// Step 3: how Creatio is reached.
pub(crate) fn upstream(file: &ConfigFile) -> Result<Upstream, ConfigError> {
    let creatio = parse_creatio_url(file.creatio.url.as_deref())?;
    let egress = match file.creatio.proxy.as_deref().map(str::trim) {
        None => EgressProxy::FromEnv,
        Some("") => EgressProxy::Direct,
        Some(url) => EgressProxy::Url(parse_egress_proxy(url)?),
    };
    let mut ca_pem = None;
    if let Some(ca) = &file.creatio.ca_file {
        if !ca.is_file() {
            return Err(ConfigError::new(
                "creatio.ca_file",
                format!("cannot read {}: no such file", ca.display()),
            ));
        }
        // Read now, so that a reload notices a CA file renewed in place.
        let bytes = std::fs::read(ca).map_err(|e| {
            ConfigError::new(
                "creatio.ca_file",
                format!("cannot read {}: {e}", ca.display()),
            )
        })?;
        ca_pem = Some(Arc::new(bytes));
    }
    Ok(Upstream {
        creatio,
        egress,
        ca_file: file.creatio.ca_file.clone(),
        ca_pem,
        insecure_skip_verify: file
            .creatio
            .insecure_skip_verify
            .unwrap_or(DEFAULTS.insecure_skip_verify),
        no_proxy: file.creatio.no_proxy.clone(),
    })
}

/// Step 5: `[[routes]]` in file order.
pub(crate) fn routes(
    routes: &[RouteFile],
    identities: &Identities,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let mut out: Vec<RouteConfig> = Vec::with_capacity(routes.len());
    for (i, r) in routes.iter().enumerate() {
        let route = route(&format!("routes[{i}]"), r, &out, identities)?;
        out.push(route);
    }
    Ok(out)
}

/// One `[[routes]]` entry, `earlier` being the routes before it.
fn route(
    key: &str,
    r: &RouteFile,
    earlier: &[RouteConfig],
    identities: &Identities,
) -> Result<RouteConfig, ConfigError> {
    let prefix = r.prefix.as_deref().ok_or_else(|| {
        ConfigError::new(
            format!("{key}.prefix"),
            "missing: give the path prefix, e.g. \"/0/rest/UsrService\"",
        )
    })?;
    if !prefix.starts_with('/') || prefix.contains(['?', '#']) {
        return Err(ConfigError::new(
            format!("{key}.prefix"),
            format!("\"{prefix}\" must be a path starting with '/', without query or fragment"),
        ));
    }
    // Routes match on canonical paths (see crate::canonical), so a prefix is kept in its
    // canonical form (`%53` decoded, `//` collapsed), without a trailing slash; a prefix with
    // no canonical form could never match.
    let canonical = CanonicalPath::parse(prefix).map_err(|e| {
        let message = match e {
            PathError::DotSegment => format!("\"{prefix}\" contains a '.' or '..' segment"),
            other => format!("\"{prefix}\" is not a usable path prefix: {other}"),
        };
        ConfigError::new(format!("{key}.prefix"), message)
    })?;
    let prefix = canonical.as_str();
    let prefix = if prefix.len() > 1 {
        prefix.trim_end_matches('/')
    } else {
        prefix
    };
    // Equal ignoring case, or spellings of one another (`/0/rest/X`, `/rest/X`,
    // `/0/ssp/rest/X`): either way a path would match both.
    if earlier
        .iter()
        .any(|o| route_key(&o.prefix).eq_ignore_ascii_case(route_key(prefix)))
    {
        return Err(ConfigError::new(
            format!("{key}.prefix"),
            format!("\"{prefix}\" is already the prefix of another route"),
        ));
    }
    let list = &identities.list;
    let identity = match r.identity.as_deref() {
        None => identities.default.ok_or_else(|| {
            ConfigError::new(
                format!("{key}.identity"),
                "missing: there is no [auth] table, so name one of [identities.NAME]",
            )
        })?,
        Some(DEFAULT_IDENTITY) if identities.default.is_some() => 0,
        Some(name) => list.iter().position(|id| id.name == name).ok_or_else(|| {
            let known: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
            ConfigError::new(
                format!("{key}.identity"),
                format!(
                    "no identity named \"{name}\"; add an [identities.{name}] table or use one of: {}",
                    known.join(", ")
                ),
            )
        })?,
    };
    let max_body = match r.max_body.as_deref() {
        None => None,
        Some(v) => Some(body_limit(&format!("{key}.max_body"), v)?),
    };
    Ok(RouteConfig {
        prefix: prefix.to_string(),
        ssp: r.ssp,
        identity,
        max_body,
    })
}

/// Step 6: `[log]`.
pub(crate) fn log(file: &ConfigFile) -> Result<LogConfig, ConfigError> {
    Ok(LogConfig {
        format: match file.log.format.as_deref().unwrap_or(DEFAULTS.log_format) {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(ConfigError::new(
                    "log.format",
                    format!("\"{other}\" is not one of \"text\", \"json\""),
                ))
            }
        },
        level: file
            .log
            .level
            .clone()
            .unwrap_or_else(|| DEFAULTS.log_level.to_string()),
        query: file.log.query.unwrap_or(DEFAULTS.log_query),
    })
}

/// Anyone who reaches a non-loopback listener acts as the Creatio user: such a listener needs
/// client tokens, allowed clients or an explicit `allow_unauthenticated_remote`.
pub(crate) fn check_exposure(listen: SocketAddr, unguarded: bool) -> Result<(), ConfigError> {
    if listen.ip().is_loopback() || !unguarded {
        return Ok(());
    }
    Err(ConfigError::new(
        "server.listen",
        format!(
            "{listen} is reachable from other hosts, and anyone who reaches it acts as the Creatio user; \
             set server.client_tokens or server.allowed_clients, or server.allow_unauthenticated_remote = true \
             if the network is trusted (a Kubernetes pod: listen on 127.0.0.1 instead)"
        ),
    ))
}

/// What to do with a path that no `[[routes]]` prefix matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// Forward it with the `[auth]` identity.
    Forward,
    /// Answer 404 JSON.
    Deny,
}

/// One validated route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Prefix as configured, without a trailing slash (except the root `/`).
    pub prefix: String,
    /// Apply the /ssp rule.
    pub ssp: bool,
    /// Index into `Config::identities`.
    pub identity: usize,
    /// `max_body` of the route: `None` = `server.max_body`; `Some(None)` = no limit.
    pub max_body: Option<Option<u64>>,
}

/// Log settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// tracing filter directive.
    pub level: String,
    /// The access line shows the query string too (a reload changes it at once).
    pub query: bool,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

pub(crate) fn parse_size(key: &str, v: &str) -> Result<usize, ConfigError> {
    let size: bytesize::ByteSize = v.parse().map_err(|_| {
        ConfigError::new(
            key,
            format!("\"{v}\" is not a size like \"1MiB\" or \"512KiB\""),
        )
    })?;
    usize::try_from(size.as_u64())
        .map_err(|_| ConfigError::new(key, format!("\"{v}\" is too large for this machine")))
}

/// A body size limit: `"0"` means none.
pub(crate) fn body_limit(key: &str, v: &str) -> Result<Option<u64>, ConfigError> {
    let n = parse_size(key, v)?;
    Ok((n > 0).then_some(n as u64))
}

pub(crate) fn parse_duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v).map_err(|_| {
        ConfigError::new(
            key,
            format!("\"{v}\" is not a duration like \"30s\" or \"2m\""),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::load_env;

    #[test]
    fn a_ca_file_renewed_in_place_is_a_different_upstream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
        let load = |pem: &str| {
            std::fs::copy(format!("{fixtures}/{pem}"), &ca).expect("copy");
            load_env(
                &format!(
                "[creatio]\nurl = \"https://x.example\"\nca_file = \"{}\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n",
                    ca.display()
                ),
                &[],
            )
            .expect("config")
        };
        let (first, again, renewed) = (load("ca.pem"), load("ca.pem"), load("server.pem"));
        assert!(first.same_upstream(&again));
        assert!(!first.same_upstream(&renewed));
    }
}
