//! `ConfigFile`: the serde mirror of the TOML file.
//!
//! Every struct rejects unknown keys, so a typo is an error that names the key instead of a
//! setting silently ignored. Values stay as the user wrote them (strings for addresses, sizes
//! and durations); `super::Config::try_from` turns them into typed, validated values.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::secret::Secret;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// `[server]`: the client-facing listener and request handling.
    pub server: ServerFile,
    /// `[admin]`: health endpoints.
    pub admin: AdminFile,
    /// `[creatio]`: where Creatio is.
    pub creatio: CreatioFile,
    /// `[auth]`: the default identity, used by every path no route sends elsewhere.
    pub auth: Option<IdentityFile>,
    /// `[[routes]]`: per-prefix rules (identity, /ssp).
    pub routes: Vec<RouteFile>,
    /// `[identities.NAME]`: further identities, each with its own Creatio session.
    pub identities: BTreeMap<String, IdentityFile>,
    /// `[log]`: log format and level.
    pub log: LogFile,
    /// `[session_store]`: sessions shared between replicas (Redis or Valkey); off unless set.
    pub session_store: Option<SessionStoreFile>,
}

/// `[session_store]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionStoreFile {
    /// `redis://[:password@]host:port/db` or `rediss://...` (TLS).
    pub url: Option<Secret>,
    /// A file holding the URL (it may hold a password).
    pub url_file: Option<PathBuf>,
    /// Prefix of every key written; default `creatio-proxy`.
    pub key_prefix: Option<String>,
    /// 32 random bytes, raw or base64, that seal the stored sessions.
    pub encryption_key_file: Option<PathBuf>,
    /// Longest wait for one store operation; default `200ms`.
    pub timeout: Option<String>,
}

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerFile {
    /// Where clients connect; default `127.0.0.1:5080`.
    pub listen: Option<String>,
    /// Bodies up to this size are buffered so they can be replayed after a re-login; default `1MiB`.
    pub replay_buffer: Option<String>,
    /// How long in-flight requests may take to finish after SIGTERM; default `30s`.
    pub shutdown_grace: Option<String>,
    /// `"forward"` (default) or `"deny"`: what to do with paths no route matches.
    pub unmatched: Option<String>,
    /// Inbound tokens: `Authorization: Bearer <t>` or `X-Api-Key: <t>`.
    pub client_tokens: Vec<Secret>,
    /// Inbound client addresses or CIDR blocks allowed to connect.
    pub allowed_clients: Vec<String>,
    /// Must be true to listen off loopback without `client_tokens` or `allowed_clients`.
    pub allow_unauthenticated_remote: Option<bool>,
    /// First wait after a failed login; doubles per failure; default `2s`.
    pub login_backoff: Option<String>,
    /// Longest wait between login attempts; default `60s`.
    pub login_backoff_max: Option<String>,
    /// Longest wait for Creatio's response headers; default `300s`.
    pub upstream_timeout: Option<String>,
    /// Let `run` start as root (uid 0), with a warning; default true. The image sets false.
    pub allow_root: Option<bool>,
    /// Client connections held at once; default 10000.
    pub max_connections: Option<usize>,
    /// A connection's first request head must arrive within this; default `10s`.
    pub header_read_timeout: Option<String>,
    /// A keep-alive connection with nothing in flight is closed after this; default `60s`.
    pub idle_timeout: Option<String>,
    /// A client that stops reading its answer is cut after this; default `30s`.
    pub send_timeout: Option<String>,
    /// A request body that sends nothing for this long: 408; default `30s`.
    pub body_read_timeout: Option<String>,
    /// The whole request head; larger: 431; default `32KiB`.
    pub max_header_bytes: Option<String>,
    /// The request target; longer: 414; default `8KiB`.
    pub max_uri_bytes: Option<String>,
    /// Request bodies; larger: 413; `"0"` (default) = no limit.
    pub max_body: Option<String>,
    /// Methods forwarded; others: 405. Default: the ones Creatio's APIs use.
    pub allowed_methods: Option<Vec<String>>,
    /// Scheme and host clients use to reach the proxy (behind a TLS terminator), for
    /// rewritten `Location` headers.
    pub public_url: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminFile {
    /// Where `/healthz` and `/readyz` are served; off unless set.
    pub listen: Option<String>,
}

/// `[creatio]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreatioFile {
    /// The application root, e.g. `https://mycompany.creatio.com` or `https://host/CreatioWebApp`.
    pub url: Option<String>,
    /// Extra CA certificates (PEM) trusted for Creatio's TLS certificate.
    pub ca_file: Option<PathBuf>,
    /// Turns TLS certificate verification off (a warning at start); default false.
    pub insecure_skip_verify: Option<bool>,
    /// Egress HTTP proxy, `http://[user:password@]host:port`; `""` = never one. Absent: the
    /// `HTTPS_PROXY` family of environment variables.
    pub proxy: Option<String>,
    /// Hosts that bypass the egress proxy (the `NO_PROXY` syntax); absent: `NO_PROXY`.
    pub no_proxy: Option<String>,
    /// Longest wait for a TCP (and TLS) connection to Creatio; default `10s`.
    pub connect_timeout: Option<String>,
}

/// `[auth]` and `[identities.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityFile {
    /// `"forms"` (default) or `"oauth2"`.
    pub mode: Option<String>,
    /// Creatio user name (forms).
    pub username: Option<String>,
    /// Creatio password (forms).
    pub password: Option<Secret>,
    /// A file holding the password (a trailing newline is ignored).
    pub password_file: Option<PathBuf>,
    /// Identity Service token URL (oauth2).
    pub token_url: Option<String>,
    /// OAuth 2.0 client id (oauth2).
    pub client_id: Option<String>,
    /// OAuth 2.0 client secret (oauth2).
    pub client_secret: Option<Secret>,
    /// A file holding the client secret (oauth2).
    pub client_secret_file: Option<PathBuf>,
    /// `"form"` (default: client_id and client_secret as form fields) or `"basic"`
    /// (HTTP Basic) for the token request (oauth2).
    pub client_auth: Option<String>,
}

/// One `[[routes]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteFile {
    /// Path prefix, matched segment by segment, ASCII case-insensitively (as IIS does).
    pub prefix: Option<String>,
    /// Apply the /ssp rule (portal users).
    pub ssp: bool,
    /// Name of an `[identities.NAME]` table; default: `[auth]`.
    pub identity: Option<String>,
    /// Request bodies on this route; larger: 413. Default: `server.max_body`; `"0"`: none.
    pub max_body: Option<String>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogFile {
    /// `"text"` (default) or `"json"`.
    pub format: Option<String>,
    /// A tracing filter such as `info` or `creatio_proxy=debug`; `RUST_LOG` wins when set.
    pub level: Option<String>,
    /// Include the query string in the access line's path; default false (it may hold data).
    pub query: Option<bool>,
}
