//! Configuration: one TOML file, overridden by `CREATIO_PROXY_` environment variables.
//!
//! Loading happens once, at start-up, in two steps:
//! 1. figment assembles, in ascending priority, the TOML file and the environment
//!    (`CREATIO_PROXY_` prefix, `__` between levels: `CREATIO_PROXY_AUTH__PASSWORD`) into a
//!    [`ConfigFile`] that rejects unknown keys;
//! 2. [`Config::from_file`] validates it into typed values. Every error names the key and says
//!    how to fix it. Secrets are read from the file, a `*_file`, or the environment, and are held
//!    as [`Secret`] from then on.

mod file;
mod secret;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use http::uri::{Authority, Scheme};
use http::Uri;

pub use file::{ConfigFile, IdentityFile, RouteFile};
pub use secret::Secret;

/// The error for a route prefix that has no canonical form.
fn prefix_error(key: &str, prefix: &str, e: crate::canonical::PathError) -> ConfigError {
    let message = match e {
        crate::canonical::PathError::DotSegment => {
            format!("\"{prefix}\" contains a '.' or '..' segment")
        }
        other => format!("\"{prefix}\" is not a usable path prefix: {other}"),
    };
    ConfigError::new(format!("{key}.prefix"), message)
}

/// Environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "CREATIO_PROXY_";

/// Name given to the `[auth]` identity in logs and errors.
pub const DEFAULT_IDENTITY: &str = "default";

/// A configuration problem: the key it concerns and what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    /// Dotted key path, e.g. `routes[1].identity`.
    pub key: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client-facing listener.
    pub listen: SocketAddr,
    /// Admin listener (`/healthz`, `/readyz`), if any.
    pub admin_listen: Option<SocketAddr>,
    /// Largest request body kept in memory so it can be replayed.
    pub replay_buffer: usize,
    /// Grace period for in-flight requests on shutdown.
    pub shutdown_grace: Duration,
    /// What happens to paths that no route matches.
    pub unmatched: Unmatched,
    /// Inbound tokens; empty = no token needed.
    pub client_tokens: Vec<Secret>,
    /// Inbound address blocks; empty = any address that can reach the listener.
    pub allowed_clients: Vec<IpBlock>,
    /// First back-off after a failed login.
    pub login_backoff: Duration,
    /// Longest back-off between login attempts.
    pub login_backoff_max: Duration,
    /// Longest wait for Creatio's response headers.
    pub upstream_timeout: Duration,
    /// Longest wait to connect to Creatio.
    pub connect_timeout: Duration,
    /// Where Creatio is.
    pub creatio: CreatioUrl,
    /// Extra CA certificates for Creatio's TLS.
    pub ca_file: Option<PathBuf>,
    /// The contents of `ca_file`, read with the config.
    pub ca_pem: Option<std::sync::Arc<Vec<u8>>>,
    /// TLS certificates of Creatio and the Identity Service are not checked (warned at start).
    pub insecure_skip_verify: bool,
    /// How connections to Creatio and the Identity Service leave this host.
    pub egress: EgressProxy,
    /// `creatio.no_proxy`: hosts that bypass the egress proxy; `None`: `NO_PROXY` decides.
    pub no_proxy: Option<String>,
    /// Identities: index 0 is `[auth]` when present; routes refer to identities by index.
    pub identities: Vec<IdentityConfig>,
    /// Index into `identities` of the `[auth]` identity, if configured.
    pub default_identity: Option<usize>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
    /// Logging.
    pub log: LogConfig,
    /// `run` may start as root (with a warning); false: it refuses (exit 64).
    pub allow_root: bool,
    /// `server.allow_unauthenticated_remote`.
    pub allow_unauthenticated_remote: bool,
}

impl Config {
    /// True when both configs reach Creatio the same way (URL, TLS, timeouts, login back-off):
    /// then a reload may keep the connection pool and the identities' sessions.
    pub fn same_upstream(&self, other: &Config) -> bool {
        self.creatio.display == other.creatio.display
            && self.ca_file == other.ca_file
            && self.ca_pem == other.ca_pem
            && self.insecure_skip_verify == other.insecure_skip_verify
            && self.egress == other.egress
            && self.no_proxy == other.no_proxy
            && self.connect_timeout == other.connect_timeout
            && self.upstream_timeout == other.upstream_timeout
            && self.login_backoff == other.login_backoff
            && self.login_backoff_max == other.login_backoff_max
    }
}

/// Anyone who reaches a non-loopback listener acts as the Creatio user: such a listener needs
/// client tokens, allowed clients or an explicit `allow_unauthenticated_remote`.
fn check_exposure(listen: SocketAddr, unguarded: bool) -> Result<(), ConfigError> {
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

impl Config {
    /// The listener rule of [`check_exposure`] for `listen`, the address actually bound: a
    /// reload cannot move the listener, so a new config must be safe on the old address.
    pub fn check_exposure_at(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        check_exposure(
            listen,
            self.client_tokens.is_empty()
                && self.allowed_clients.is_empty()
                && !self.allow_unauthenticated_remote,
        )
    }
}

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
fn parse_egress_proxy(url: &str) -> Result<Secret, ConfigError> {
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

/// What to do with a path that no `[[routes]]` prefix matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// Forward it with the `[auth]` identity.
    Forward,
    /// Answer 404 JSON.
    Deny,
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

/// One Creatio identity (a user whose session the proxy holds).
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// `default` for `[auth]`, else the table name.
    pub name: String,
    /// How it logs in.
    pub login: LoginConfig,
}

/// How an identity authenticates.
#[derive(Debug, Clone)]
pub enum LoginConfig {
    /// AuthService.svc/Login with a user name and password; cookie session.
    Forms {
        /// Creatio user name.
        username: String,
        /// Its password.
        password: Secret,
    },
    /// OAuth 2.0 client credentials from the Identity Service; bearer tokens.
    OAuth2(OAuth2Config),
}

impl LoginConfig {
    /// True when both describe the same login: same mode, user or client, secret and endpoint.
    pub fn same(&self, other: &LoginConfig) -> bool {
        match (self, other) {
            (
                LoginConfig::Forms { username, password },
                LoginConfig::Forms {
                    username: u,
                    password: p,
                },
            ) => username == u && password.ct_eq(p.expose().as_bytes()),
            (LoginConfig::OAuth2(a), LoginConfig::OAuth2(b)) => {
                a.token_url.display == b.token_url.display
                    && a.client_id == b.client_id
                    && a.client_auth == b.client_auth
                    && a.client_secret.ct_eq(b.client_secret.expose().as_bytes())
            }
            _ => false,
        }
    }
}

/// An `mode = "oauth2"` identity.
#[derive(Debug, Clone)]
pub struct OAuth2Config {
    /// The Identity Service's token endpoint.
    pub token_url: TokenUrl,
    /// The client id of the integrated application.
    pub client_id: String,
    /// Its secret.
    pub client_secret: Secret,
    /// How the client authenticates to the token endpoint.
    pub client_auth: ClientAuth,
}

/// How the client id and secret reach the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` form fields (default: what Creatio documents).
    Form,
    /// `Authorization: Basic`.
    Basic,
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

/// One validated route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Prefix as configured, without a trailing slash (except the root `/`).
    pub prefix: String,
    /// Apply the /ssp rule.
    pub ssp: bool,
    /// Index into `Config::identities`.
    pub identity: usize,
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

impl Config {
    /// Loads `path`, applies `CREATIO_PROXY_*` overrides, and validates.
    ///
    /// Priority, lowest first: built-in defaults, the TOML file, the environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::new(
                "--config",
                format!(
                    "cannot read {}: no such file (see config/creatio-proxy.toml for an example)",
                    path.display()
                ),
            ));
        }
        let figment = Figment::new().merge(Toml::file(path)).merge(env_provider());
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_figment(figment, &RealEnv, Some(base))
    }

    /// Validates a config given as TOML text (plus the real environment). Used by `demo`.
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        let figment = Figment::new()
            .merge(Toml::string(toml))
            .merge(env_provider());
        Self::from_figment(figment, &RealEnv, None)
    }

    /// `base`: the config file's folder; relative `*_file` paths are taken from there.
    fn from_figment(
        figment: Figment,
        env: &dyn SecretEnv,
        base: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        let mut file: ConfigFile = figment.extract().map_err(|e| {
            let key = if e.path.is_empty() {
                "config".to_string()
            } else {
                e.path.join(".")
            };
            ConfigError::new(key, without_source_excerpt(&e.kind.to_string()))
        })?;
        apply_secret_env(&mut file, env);
        if let Some(base) = base {
            resolve_paths(&mut file, base);
        }
        Config::from_file(file)
    }

    /// Validates a parsed file.
    pub fn from_file(file: ConfigFile) -> Result<Config, ConfigError> {
        let s = &file.server;
        let listen = parse_listen(
            "server.listen",
            s.listen.as_deref().unwrap_or("127.0.0.1:5080"),
        )?;
        let admin_listen = match file.admin.listen.as_deref() {
            None | Some("") => None,
            Some(v) => Some(parse_listen("admin.listen", v)?),
        };
        let replay_buffer = parse_size(
            "server.replay_buffer",
            s.replay_buffer.as_deref().unwrap_or("1MiB"),
        )?;
        let shutdown_grace = parse_duration(
            "server.shutdown_grace",
            s.shutdown_grace.as_deref().unwrap_or("30s"),
        )?;
        let login_backoff = parse_duration(
            "server.login_backoff",
            s.login_backoff.as_deref().unwrap_or("2s"),
        )?;
        let login_backoff_max = parse_duration(
            "server.login_backoff_max",
            s.login_backoff_max.as_deref().unwrap_or("60s"),
        )?;
        if login_backoff.is_zero() || login_backoff_max < login_backoff {
            return Err(ConfigError::new(
                "server.login_backoff",
                "must be above zero and not above server.login_backoff_max (a failed login must never be retried at once: it could lock the Creatio account)",
            ));
        }
        let upstream_timeout = parse_duration(
            "server.upstream_timeout",
            s.upstream_timeout.as_deref().unwrap_or("300s"),
        )?;
        let connect_timeout = parse_duration(
            "creatio.connect_timeout",
            file.creatio.connect_timeout.as_deref().unwrap_or("10s"),
        )?;
        let unmatched = match s.unmatched.as_deref().unwrap_or("forward") {
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
        let remote_ok = s.allow_unauthenticated_remote.unwrap_or(false);
        check_exposure(
            listen,
            client_tokens.is_empty() && allowed_clients.is_empty() && !remote_ok,
        )?;

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
            ca_pem = Some(std::sync::Arc::new(bytes));
        }

        let mut identities = Vec::new();
        let mut default_identity = None;
        if let Some(auth) = &file.auth {
            identities.push(parse_identity("auth", DEFAULT_IDENTITY, auth)?);
            default_identity = Some(0);
        }
        for (name, id) in &file.identities {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(ConfigError::new(
                    format!("identities.{name}"),
                    "identity names may hold only letters, digits, '_' and '-'",
                ));
            }
            if name == DEFAULT_IDENTITY {
                return Err(ConfigError::new(
                    format!("identities.{name}"),
                    "\"default\" is the name of [auth]; choose another name",
                ));
            }
            identities.push(parse_identity(&format!("identities.{name}"), name, id)?);
        }
        if default_identity.is_none() && unmatched == Unmatched::Forward {
            return Err(ConfigError::new(
                "auth",
                "missing: add an [auth] table (username and password of the Creatio integration user), \
                 or set server.unmatched = \"deny\" so only [[routes]] are served",
            ));
        }

        let mut routes: Vec<RouteConfig> = Vec::with_capacity(file.routes.len());
        for (i, r) in file.routes.iter().enumerate() {
            let key = format!("routes[{i}]");
            let prefix = r.prefix.as_deref().ok_or_else(|| {
                ConfigError::new(
                    format!("{key}.prefix"),
                    "missing: give the path prefix, e.g. \"/0/rest/UsrService\"",
                )
            })?;
            if !prefix.starts_with('/') || prefix.contains(['?', '#']) {
                return Err(ConfigError::new(
                    format!("{key}.prefix"),
                    format!(
                        "\"{prefix}\" must be a path starting with '/', without query or fragment"
                    ),
                ));
            }
            let canonical = crate::canonical::CanonicalPath::parse(prefix)
                .map_err(|e| prefix_error(&key, prefix, e))?;
            // Routes match on canonical paths, so the prefix is kept in canonical form
            // (`%53` decoded, `//` collapsed), without a trailing slash.
            let prefix = canonical.as_str();
            let prefix = if prefix.len() > 1 {
                prefix.trim_end_matches('/')
            } else {
                prefix
            };
            if routes.iter().any(|o| o.prefix.eq_ignore_ascii_case(prefix)) {
                return Err(ConfigError::new(
                    format!("{key}.prefix"),
                    format!("\"{prefix}\" is already the prefix of another route"),
                ));
            }
            let identity = match r.identity.as_deref() {
                None => default_identity.ok_or_else(|| {
                    ConfigError::new(
                        format!("{key}.identity"),
                        "missing: there is no [auth] table, so name one of [identities.NAME]",
                    )
                })?,
                Some(DEFAULT_IDENTITY) if default_identity.is_some() => 0,
                Some(name) => identities.iter().position(|id| id.name == name).ok_or_else(|| {
                    let known: Vec<&str> = identities.iter().map(|i| i.name.as_str()).collect();
                    ConfigError::new(
                        format!("{key}.identity"),
                        format!(
                            "no identity named \"{name}\"; add an [identities.{name}] table or use one of: {}",
                            known.join(", ")
                        ),
                    )
                })?,
            };
            routes.push(RouteConfig {
                prefix: prefix.to_string(),
                ssp: r.ssp,
                identity,
            });
        }

        let log = LogConfig {
            format: match file.log.format.as_deref().unwrap_or("text") {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::new(
                        "log.format",
                        format!("\"{other}\" is not one of \"text\", \"json\""),
                    ))
                }
            },
            level: file.log.level.clone().unwrap_or_else(|| "info".to_string()),
            query: file.log.query.unwrap_or(false),
        };

        Ok(Config {
            listen,
            admin_listen,
            replay_buffer,
            shutdown_grace,
            unmatched,
            client_tokens,
            allowed_clients,
            login_backoff,
            login_backoff_max,
            upstream_timeout,
            connect_timeout,
            creatio,
            ca_file: file.creatio.ca_file.clone(),
            ca_pem,
            insecure_skip_verify: file.creatio.insecure_skip_verify.unwrap_or(false),
            egress,
            no_proxy: file.creatio.no_proxy.clone(),
            identities,
            default_identity,
            routes,
            log,
            allow_root: s.allow_root.unwrap_or(true),
            allow_unauthenticated_remote: remote_ok,
        })
    }
}

/// A TOML syntax error quotes the offending source line, which may be a password line: keep
/// only the position (first line) and the reason (last line).
fn without_source_excerpt(message: &str) -> String {
    let mut lines = message.lines().filter(|l| !l.trim().is_empty());
    match (lines.next(), lines.next_back()) {
        (Some(first), Some(last)) => format!("{first}: {}", last.trim()),
        (Some(first), None) => first.to_string(),
        _ => message.to_string(),
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

/// Environment variables figment reads; secret keys are left out here and re-read raw by
/// [`apply_secret_env`], because figment would parse `0123` as the number 123.
fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX)
        .split("__")
        .filter(|key| !is_secret_key(key.as_str()))
}

/// Makes relative file paths relative to the config file's folder, not to wherever the
/// proxy happens to be started.
fn resolve_paths(file: &mut ConfigFile, base: &Path) {
    let fix = |p: &mut Option<PathBuf>| {
        if let Some(path) = p.as_mut() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    };
    fix(&mut file.creatio.ca_file);
    for id in file.auth.iter_mut().chain(file.identities.values_mut()) {
        fix(&mut id.password_file);
        fix(&mut id.client_secret_file);
    }
}

fn is_secret_key(key: &str) -> bool {
    key.ends_with(".password") || key.ends_with(".client_secret")
}

/// Where raw secret overrides come from (the process environment, or a map in tests).
trait SecretEnv {
    fn get(&self, name: &str) -> Option<String>;
}

struct RealEnv;

impl SecretEnv for RealEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

fn apply_secret_env(file: &mut ConfigFile, env: &dyn SecretEnv) {
    // Each variable applies only to the mode that uses it: an exported
    // CREATIO_PROXY_AUTH__PASSWORD must not break an [auth] that has moved to oauth2.
    let apply = |id: &mut IdentityFile, section: &str| {
        let base = format!("{ENV_PREFIX}{section}__");
        let oauth2 = id.mode.as_deref() == Some("oauth2");
        if let Some(v) = env.get(&format!("{base}PASSWORD")).filter(|_| !oauth2) {
            id.password = Some(Secret::new(v));
            id.password_file = None;
        }
        if let Some(v) = env.get(&format!("{base}CLIENT_SECRET")).filter(|_| oauth2) {
            id.client_secret = Some(Secret::new(v));
            id.client_secret_file = None;
        }
    };
    if file.auth.is_none()
        && (env.get(&format!("{ENV_PREFIX}AUTH__PASSWORD")).is_some()
            || env
                .get(&format!("{ENV_PREFIX}AUTH__CLIENT_SECRET"))
                .is_some())
    {
        file.auth = Some(IdentityFile::default());
    }
    if let Some(auth) = file.auth.as_mut() {
        apply(auth, "AUTH");
    }
    for (name, id) in file.identities.iter_mut() {
        apply(id, &format!("IDENTITIES__{}", name.to_ascii_uppercase()));
    }
}

fn parse_identity(key: &str, name: &str, f: &IdentityFile) -> Result<IdentityConfig, ConfigError> {
    let mode = f.mode.as_deref().unwrap_or("forms");
    let section = if key == "auth" {
        "AUTH".to_string()
    } else {
        format!("IDENTITIES__{}", name.to_ascii_uppercase())
    };
    let login = match mode {
        "forms" => parse_forms(key, &section, f)?,
        "oauth2" => LoginConfig::OAuth2(parse_oauth2(key, &section, f)?),
        other => {
            return Err(ConfigError::new(
                format!("{key}.mode"),
                format!("\"{other}\" is not one of \"forms\", \"oauth2\""),
            ))
        }
    };
    Ok(IdentityConfig {
        name: name.to_string(),
        login,
    })
}

/// Keys that belong to the other mode are refused: a half-converted identity is a mistake
/// worth naming rather than a setting silently ignored.
fn refuse_foreign_keys(key: &str, mode: &str, keys: &[(&str, bool)]) -> Result<(), ConfigError> {
    match keys.iter().find(|(_, present)| *present) {
        Some((name, _)) => Err(ConfigError::new(
            format!("{key}.{name}"),
            format!("is not used by mode = \"{mode}\"; remove it (or change the mode)"),
        )),
        None => Ok(()),
    }
}

fn parse_forms(key: &str, section: &str, f: &IdentityFile) -> Result<LoginConfig, ConfigError> {
    refuse_foreign_keys(
        key,
        "forms",
        &[
            ("token_url", f.token_url.is_some()),
            ("client_id", f.client_id.is_some()),
            ("client_secret", f.client_secret.is_some()),
            ("client_secret_file", f.client_secret_file.is_some()),
            ("client_auth", f.client_auth.is_some()),
        ],
    )?;
    let username = match f.username.as_deref() {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => {
            return Err(ConfigError::new(
                format!("{key}.username"),
                "missing: give the Creatio user name this identity logs in as",
            ))
        }
    };
    let password = read_secret(
        key,
        "password",
        &f.password,
        &f.password_file,
        &format!("{ENV_PREFIX}{section}__PASSWORD"),
    )?;
    Ok(LoginConfig::Forms { username, password })
}

fn parse_oauth2(key: &str, section: &str, f: &IdentityFile) -> Result<OAuth2Config, ConfigError> {
    refuse_foreign_keys(
        key,
        "oauth2",
        &[
            ("username", f.username.is_some()),
            ("password", f.password.is_some()),
            ("password_file", f.password_file.is_some()),
        ],
    )?;
    let token_url = parse_token_url(&format!("{key}.token_url"), f.token_url.as_deref())?;
    let client_id = match f.client_id.as_deref() {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => {
            return Err(ConfigError::new(
                format!("{key}.client_id"),
                "missing: give the client id of the OAuth integrated application (Creatio: System Designer → OAuth 2.0 integrated applications)",
            ))
        }
    };
    let client_secret = read_secret(
        key,
        "client_secret",
        &f.client_secret,
        &f.client_secret_file,
        &format!("{ENV_PREFIX}{section}__CLIENT_SECRET"),
    )?;
    let client_auth = match f.client_auth.as_deref().unwrap_or("form") {
        "form" => ClientAuth::Form,
        "basic" => ClientAuth::Basic,
        other => {
            return Err(ConfigError::new(
                format!("{key}.client_auth"),
                format!("\"{other}\" is not one of \"form\", \"basic\""),
            ))
        }
    };
    Ok(OAuth2Config {
        token_url,
        client_id,
        client_secret,
        client_auth,
    })
}

/// A secret from the value, its `*_file`, or (already applied) the environment.
fn read_secret(
    key: &str,
    name: &str,
    value: &Option<Secret>,
    file: &Option<PathBuf>,
    env_name: &str,
) -> Result<Secret, ConfigError> {
    let secret = match (value, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{key}.{name}"),
                format!("give either {name} or {name}_file, not both"),
            ))
        }
        (Some(p), None) => p.clone(),
        (None, Some(path)) => read_secret_file(&format!("{key}.{name}_file"), path)?,
        (None, None) => {
            return Err(ConfigError::new(
                format!("{key}.{name}"),
                format!("missing: set {name}, {name}_file, or the environment variable {env_name}"),
            ))
        }
    };
    if secret.is_empty() {
        return Err(ConfigError::new(format!("{key}.{name}"), "is empty"));
    }
    Ok(secret)
}

fn parse_token_url(key: &str, v: Option<&str>) -> Result<TokenUrl, ConfigError> {
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

fn read_secret_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    Ok(Secret::new(value))
}

fn parse_listen(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
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

fn parse_size(key: &str, v: &str) -> Result<usize, ConfigError> {
    let size: bytesize::ByteSize = v.parse().map_err(|_| {
        ConfigError::new(
            key,
            format!("\"{v}\" is not a size like \"1MiB\" or \"512KiB\""),
        )
    })?;
    usize::try_from(size.as_u64())
        .map_err(|_| ConfigError::new(key, format!("\"{v}\" is too large for this machine")))
}

fn parse_duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v).map_err(|_| {
        ConfigError::new(
            key,
            format!("\"{v}\" is not a duration like \"30s\" or \"2m\""),
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

fn parse_creatio_url(v: Option<&str>) -> Result<CreatioUrl, ConfigError> {
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
    match crate::canonical::CanonicalPath::parse(if base_path.is_empty() { "/" } else { &base_path }) {
        Err(crate::canonical::PathError::DotSegment) => {
            return Err(url.bad("contains a '.' or '..' segment"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct MapEnv(HashMap<String, String>);
    impl SecretEnv for MapEnv {
        fn get(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
    }

    fn load(toml: &str) -> Result<Config, ConfigError> {
        Config::from_figment(
            Figment::new().merge(Toml::string(toml)),
            &MapEnv(HashMap::new()),
            None,
        )
    }

    const MINIMAL: &str = r#"
        [creatio]
        url = "https://example.creatio.com"
        [auth]
        username = "Supervisor"
        password = "pw"
    "#;

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = load(MINIMAL).expect("minimal config loads");
        assert_eq!(
            c.listen,
            "127.0.0.1:5080".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(c.replay_buffer, 1024 * 1024);
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.login_backoff, Duration::from_secs(2));
        assert_eq!(c.login_backoff_max, Duration::from_secs(60));
        assert_eq!(c.unmatched, Unmatched::Forward);
        assert_eq!(
            c.creatio.join("/0/odata"),
            "https://example.creatio.com/0/odata"
        );
        assert!(c.admin_listen.is_none());
    }

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
    fn errors_name_the_key_and_the_fix() {
        struct Case {
            name: &'static str,
            toml: String,
            key: &'static str,
            says: &'static str,
        }
        let cases = [
            Case {
                name: "bad url",
                toml: MINIMAL.replace("https://example.creatio.com", "example.creatio.com"),
                key: "creatio.url",
                says: "http",
            },
            Case {
                name: "url with /0",
                toml: MINIMAL.replace(
                    "https://example.creatio.com",
                    "https://example.creatio.com/0",
                ),
                key: "creatio.url",
                says: "without /0",
            },
            Case {
                name: "bad listen",
                toml: format!("[server]\nlisten = \"nowhere\"\n{MINIMAL}"),
                key: "server.listen",
                says: "127.0.0.1:5080",
            },
            Case {
                name: "missing password",
                toml: MINIMAL.replace("password = \"pw\"", ""),
                key: "auth.password",
                says: "CREATIO_PROXY_AUTH__PASSWORD",
            },
            Case {
                name: "unknown key",
                toml: format!("{MINIMAL}\nsurprise = 1\n"),
                key: "auth.surprise",
                says: "surprise",
            },
            Case {
                name: "route to missing identity",
                toml: format!(
                    "{MINIMAL}\n[[routes]]\nprefix = \"/0/rest/X\"\nidentity = \"portal\"\n"
                ),
                key: "routes[0].identity",
                says: "[identities.portal]",
            },
            Case {
                name: "remote listen without protection",
                toml: format!("[server]\nlisten = \"0.0.0.0:5080\"\n{MINIMAL}"),
                key: "server.listen",
                says: "client_tokens",
            },
            Case {
                name: "bad size",
                toml: format!("[server]\nreplay_buffer = \"lots\"\n{MINIMAL}"),
                key: "server.replay_buffer",
                says: "1MiB",
            },
            Case {
                name: "no auth",
                toml: "[creatio]\nurl = \"https://x.example\"\n".to_string(),
                key: "auth",
                says: "[auth]",
            },
        ];
        for case in cases {
            let err = load(&case.toml).expect_err(case.name);
            assert_eq!(err.key, case.key, "{}: {err}", case.name);
            assert!(err.to_string().contains(case.says), "{}: {err}", case.name);
        }
    }

    #[test]
    fn password_comes_from_a_file_without_its_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").expect("write");
        let toml = MINIMAL.replace(
            "password = \"pw\"",
            &format!("password_file = {:?}", path.display().to_string()),
        );
        let c = load(&toml).expect("loads");
        let LoginConfig::Forms { password, .. } = &c.identities[0].login else {
            panic!("a forms identity")
        };
        assert_eq!(password.expose(), "s3cret");
    }

    const OAUTH: &str = r#"
        [creatio]
        url = "https://example.creatio.com"
        [auth]
        mode = "oauth2"
        token_url = "https://example-is.creatio.com/connect/token"
        client_id = "integration"
        client_secret = "s3cret"
    "#;

    #[test]
    fn oauth2_identities_parse_with_form_client_auth_by_default() {
        let c = load(OAUTH).expect("oauth2 config loads");
        let LoginConfig::OAuth2(o) = &c.identities[0].login else {
            panic!("an oauth2 identity")
        };
        assert_eq!(o.client_id, "integration");
        assert_eq!(o.client_secret.expose(), "s3cret");
        assert_eq!(o.client_auth, ClientAuth::Form);
        assert_eq!(o.token_url.path_and_query, "/connect/token");
        assert_eq!(o.token_url.host_port(), "example-is.creatio.com:443");
        assert!(!format!("{c:?}").contains("s3cret"));

        let basic = load(&format!("{OAUTH}client_auth = \"basic\"\n")).expect("basic loads");
        let LoginConfig::OAuth2(o) = &basic.identities[0].login else {
            panic!("an oauth2 identity")
        };
        assert_eq!(o.client_auth, ClientAuth::Basic);
    }

    #[test]
    fn oauth2_client_secret_comes_from_the_environment() {
        let toml = OAUTH.replace("client_secret = \"s3cret\"", "");
        let err = load(&toml).expect_err("no secret");
        assert_eq!(err.key, "auth.client_secret");
        assert!(
            err.message.contains("CREATIO_PROXY_AUTH__CLIENT_SECRET"),
            "{err}"
        );
        let env = MapEnv(HashMap::from([(
            "CREATIO_PROXY_AUTH__CLIENT_SECRET".to_string(),
            "007".to_string(),
        )]));
        let c = Config::from_figment(Figment::new().merge(Toml::string(&toml)), &env, None)
            .expect("loads");
        let LoginConfig::OAuth2(o) = &c.identities[0].login else {
            panic!("an oauth2 identity")
        };
        assert_eq!(o.client_secret.expose(), "007");
    }

    #[test]
    fn oauth2_mistakes_name_the_key() {
        let cases = [
            (
                OAUTH.replace(
                    "token_url = \"https://example-is.creatio.com/connect/token\"",
                    "",
                ),
                "auth.token_url",
                "Identity Service",
            ),
            (
                OAUTH.replace(
                    "https://example-is.creatio.com/connect/token",
                    "https://example-is.creatio.com",
                ),
                "auth.token_url",
                "/connect/token",
            ),
            (
                OAUTH.replace("client_id = \"integration\"", ""),
                "auth.client_id",
                "OAuth",
            ),
            (
                format!("{OAUTH}username = \"Supervisor\"\n"),
                "auth.username",
                "not used by mode = \"oauth2\"",
            ),
            (
                format!("{OAUTH}client_auth = \"header\"\n"),
                "auth.client_auth",
                "\"basic\"",
            ),
            (
                format!("{MINIMAL}client_id = \"x\"\n"),
                "auth.client_id",
                "not used by mode = \"forms\"",
            ),
        ];
        for (toml, key, says) in cases {
            let err = load(&toml).expect_err(key);
            assert_eq!(err.key, key, "{err}");
            assert!(err.message.contains(says), "{key}: {err}");
            assert!(!err.to_string().contains("s3cret"));
        }
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
    fn environment_secret_keeps_leading_zeros() {
        let env = MapEnv(HashMap::from([(
            "CREATIO_PROXY_AUTH__PASSWORD".to_string(),
            "0123".to_string(),
        )]));
        let c = Config::from_figment(Figment::new().merge(Toml::string(MINIMAL)), &env, None)
            .expect("loads");
        let LoginConfig::Forms { password, .. } = &c.identities[0].login else {
            panic!("a forms identity")
        };
        assert_eq!(password.expose(), "0123");
        assert!(
            !format!("{c:?}").contains("0123"),
            "Debug output must not show the password"
        );
    }

    #[test]
    fn config_errors_never_quote_a_secret() {
        let err = load(&MINIMAL.replace(
            "https://example.creatio.com",
            "https://u:pa55word@example.creatio.com",
        ))
        .expect_err("credentials in the URL are refused");
        assert!(!err.to_string().contains("pa55word"), "{err}");
        let err = load(&MINIMAL.replace("password = \"pw\"", "password = \"pa55word"))
            .expect_err("syntax error");
        assert!(!err.to_string().contains("pa55word"), "{err}");
        assert!(err.to_string().contains("line"), "{err}");
    }

    // Unit tests only: an `expect` here fails the test when its own set-up (a temp folder, a
    // fixture file, a literal config) is broken, never on anything a user sends.
    #[test]
    fn a_reload_must_be_safe_on_the_address_still_bound() {
        let c = Config::from_toml_str(
            "[creatio]\nurl = \"https://x.example\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n",
        )
        .expect("config");
        assert!(c
            .check_exposure_at(SocketAddr::from(([127, 0, 0, 1], 5080)))
            .is_ok());
        let e = c
            .check_exposure_at(SocketAddr::from(([0, 0, 0, 0], 5080)))
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("server.listen") && e.contains("0.0.0.0:5080"),
            "{e}"
        );
    }

    #[test]
    fn a_ca_file_renewed_in_place_is_a_different_upstream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.pem");
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
        let load = |pem: &str| {
            std::fs::copy(format!("{fixtures}/{pem}"), &ca).expect("copy");
            Config::from_toml_str(&format!(
                "[creatio]\nurl = \"https://x.example\"\nca_file = \"{}\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n",
                ca.display()
            ))
            .expect("config")
        };
        let (first, again, renewed) = (load("ca.pem"), load("ca.pem"), load("server.pem"));
        assert!(first.same_upstream(&again));
        assert!(!first.same_upstream(&renewed));
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
