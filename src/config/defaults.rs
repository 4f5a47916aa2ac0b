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
};
