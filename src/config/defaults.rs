//! The built-in defaults, in one place.
//!
//! Every key the file may omit has its default here, written the way a user would write it in
//! the TOML (`"1MiB"`, `"30s"`, `"127.0.0.1:5080"`). A default therefore goes through the same
//! parser, and the same error message, as a configured value; the validation steps in
//! [`super::validate`] and [`super::identity`] read nothing else. `config/creatio-proxy.toml`
//! spells these values out for users; `shipped_example_states_the_defaults` in
//! `tests/config_files.rs` keeps the two in step.

/// Default values of the optional keys, as TOML text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defaults {
    /// `server.listen`: loopback only, so nothing is exposed by accident.
    pub(crate) listen: &'static str,
    /// `server.replay_buffer`.
    pub(crate) replay_buffer: &'static str,
    /// `server.shutdown_grace`.
    pub(crate) shutdown_grace: &'static str,
    /// `server.login_backoff`: never zero (a failed login retried at once could lock the
    /// Creatio account).
    pub(crate) login_backoff: &'static str,
    /// `server.login_backoff_max`.
    pub(crate) login_backoff_max: &'static str,
    /// `server.upstream_timeout`: Creatio's own long operations (imports, reports) take minutes.
    pub(crate) upstream_timeout: &'static str,
    /// `server.unmatched`.
    pub(crate) unmatched: &'static str,
    /// `server.allow_unauthenticated_remote`.
    pub(crate) allow_unauthenticated_remote: bool,
    /// `server.allow_root` (the container image sets false).
    pub(crate) allow_root: bool,
    /// `creatio.connect_timeout`.
    pub(crate) connect_timeout: &'static str,
    /// `creatio.insecure_skip_verify`: certificates are always checked unless asked otherwise.
    pub(crate) insecure_skip_verify: bool,
    /// `mode` of `[auth]` and `[identities.NAME]`.
    pub(crate) identity_mode: &'static str,
    /// `client_auth` of an oauth2 identity: what Creatio documents.
    pub(crate) client_auth: &'static str,
    /// `log.format`.
    pub(crate) log_format: &'static str,
    /// `log.level`.
    pub(crate) log_level: &'static str,
    /// `log.query`: off, the query string may hold data.
    pub(crate) log_query: bool,
    /// `server.max_connections`: far above a sidecar's clients, far below what the memory of
    /// a small pod holds (a few KiB each while idle).
    pub(crate) max_connections: usize,
    /// `server.header_read_timeout`.
    pub(crate) header_read_timeout: &'static str,
    /// `server.idle_timeout`: above the keep-alive timeouts of common HTTP clients, so they
    /// close first.
    pub(crate) idle_timeout: &'static str,
    /// `server.send_timeout`.
    pub(crate) send_timeout: &'static str,
    /// `server.body_read_timeout`.
    pub(crate) body_read_timeout: &'static str,
    /// `server.max_header_bytes`: Creatio's own IIS default is 16 KiB per header line.
    pub(crate) max_header_bytes: &'static str,
    /// `server.max_uri_bytes`: OData filters can be long; IIS refuses above 4 KiB of path
    /// by default but allows longer query strings.
    pub(crate) max_uri_bytes: &'static str,
    /// `server.max_body`: no limit, as Creatio's file uploads set their own.
    pub(crate) max_body: &'static str,
    /// `server.allowed_methods`: what Creatio's OData, DataService and REST services use.
    pub(crate) allowed_methods: &'static [&'static str],
    /// `session_store.key_prefix`.
    pub(crate) session_store_key_prefix: &'static str,
    /// `session_store.timeout`: a request never waits longer on the store (it falls back to a
    /// session of its own), well under a login's round trip.
    pub(crate) session_store_timeout: &'static str,
}

/// The defaults every validation step reads.
pub(crate) const DEFAULTS: Defaults = Defaults {
    listen: "127.0.0.1:5080",
    replay_buffer: "1MiB",
    shutdown_grace: "30s",
    login_backoff: "2s",
    login_backoff_max: "60s",
    upstream_timeout: "300s",
    unmatched: "forward",
    allow_unauthenticated_remote: false,
    allow_root: true,
    connect_timeout: "10s",
    insecure_skip_verify: false,
    identity_mode: "forms",
    client_auth: "form",
    log_format: "text",
    log_level: "info",
    log_query: false,
    max_connections: 10_000,
    header_read_timeout: "10s",
    idle_timeout: "60s",
    send_timeout: "30s",
    body_read_timeout: "30s",
    max_header_bytes: "32KiB",
    max_uri_bytes: "8KiB",
    max_body: "0",
    allowed_methods: &[
        "GET", "HEAD", "POST", "PUT", "PATCH", "MERGE", "DELETE", "OPTIONS",
    ],
    session_store_key_prefix: "creatio-proxy",
    session_store_timeout: "200ms",
};
