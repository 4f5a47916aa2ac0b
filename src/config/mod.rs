//! Configuration: one TOML file, overridden by `CREATIO_PROXY_` environment variables.
//!
//! Loading happens once, at start-up (and again on SIGHUP), in two steps:
//! 1. figment assembles, in ascending priority, the TOML file and the environment
//!    (`CREATIO_PROXY_` prefix, `__` between levels: `CREATIO_PROXY_AUTH__PASSWORD`) into a
//!    [`ConfigFile`] that rejects unknown keys;
//! 2. [`Config::from_file`] validates it into typed values, in the named steps of
//!    `validate` and `identity`. Every error names the key and says how to fix it. Secrets
//!    are read from the file, a `*_file`, or the environment, and are held as [`Secret`] from
//!    then on. Omitted keys take the values in `defaults`.
//!
//! Modules: `file` (the serde mirror), `defaults`, `env` (overrides and raw secrets), `net`
//! (addresses and URLs), `identity`, `validate` (the other steps), `secret`.

mod defaults;
mod env;
mod error;
mod file;
mod identity;
mod limits;
mod net;
mod secret;
mod store;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::Figment;

use env::{apply_secret_env, resolve_paths, Environment};

pub use env::ENV_PREFIX;
pub use error::ConfigError;
pub use file::{ConfigFile, IdentityFile, RouteFile};
pub use identity::DEFAULT_IDENTITY;
pub use identity::{ClientAuth, IdentityConfig, LoginConfig, OAuth2Config};
pub use limits::{Limits, PublicUrl};
pub use net::{CreatioUrl, EgressProxy, IpBlock, TokenUrl};
pub use secret::Secret;
pub use store::{SealKey, SessionStoreConfig};
pub use validate::{LogConfig, LogFormat, RouteConfig, Unmatched};

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
    /// What each connection and request is held to (timeouts, sizes, methods).
    pub limits: Limits,
    /// `[session_store]`: where replicas share sessions, if they do.
    pub session_store: Option<SessionStoreConfig>,
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
            && self.session_store == other.session_store
    }
}

impl Config {
    /// The listener rule of `validate::check_exposure` for `listen`, the address actually
    /// bound: a reload cannot move the listener, so a new config must be safe on the old
    /// address.
    pub fn check_exposure_at(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        validate::check_exposure(
            listen,
            self.client_tokens.is_empty()
                && self.allowed_clients.is_empty()
                && !self.allow_unauthenticated_remote,
        )
    }
}

impl Config {
    /// Loads `path`, applies `CREATIO_PROXY_*` overrides, and validates.
    ///
    /// Priority, lowest first: built-in defaults, the TOML file, the environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_in(path, &Environment::Process)
    }

    /// [`Config::load`] with exactly the environment variables in `vars` (name, value) instead
    /// of the process environment: for tests, so that a developer's own exported
    /// `CREATIO_PROXY_*` variables cannot change their outcome. A later pair wins over an
    /// earlier one with the same name.
    #[doc(hidden)]
    pub fn load_with_env(path: &Path, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Self::load_in(path, &Environment::explicit(vars))
    }

    fn load_in(path: &Path, env: &Environment) -> Result<Config, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::new(
                "--config",
                format!(
                    "cannot read {}: no such file (see config/creatio-proxy.toml for an example)",
                    path.display()
                ),
            ));
        }
        let figment = Figment::new()
            .merge(Toml::file(path))
            .merge(env.overrides());
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_figment(figment, env, Some(base))
    }

    /// Validates a config given as TOML text alone: the process environment is not read, so
    /// `demo` (which builds its own config) and the tests give the same result whatever
    /// `CREATIO_PROXY_*` variables a developer has exported. `run` and `check` use
    /// [`Config::load`], which applies them.
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        Self::from_toml_str_in(toml, &Environment::explicit(&[]))
    }

    fn from_toml_str_in(toml: &str, env: &Environment) -> Result<Config, ConfigError> {
        let figment = Figment::new()
            .merge(Toml::string(toml))
            .merge(env.overrides());
        Self::from_figment(figment, env, None)
    }

    /// `base`: the config file's folder; relative `*_file` paths are taken from there.
    fn from_figment(
        figment: Figment,
        env: &Environment,
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

    /// Validates a parsed file: the steps of `validate` and `identity`, in order.
    pub fn from_file(file: ConfigFile) -> Result<Config, ConfigError> {
        let server = validate::server(&file)?;
        let limits = limits::limits(&file)?;
        let access = validate::access(&file, server.listen)?;
        let upstream = validate::upstream(&file)?;
        let identities = identity::identities(&file, access.unmatched == Unmatched::Forward)?;
        let routes = validate::routes(&file.routes, &identities)?;
        // Found by the `config` fuzz target: a config that serves no path at all.
        if access.unmatched == Unmatched::Deny && routes.is_empty() {
            return Err(ConfigError::new(
                "server.unmatched",
                "\"deny\" serves only [[routes]], and there are none, so every request would be \
                 refused: add a [[routes]] table, or remove unmatched = \"deny\" (with an [auth] table)",
            ));
        }
        let log = validate::log(&file)?;
        let session_store = store::session_store(&file)?;
        Ok(Config {
            listen: server.listen,
            admin_listen: server.admin_listen,
            replay_buffer: server.replay_buffer,
            shutdown_grace: server.shutdown_grace,
            unmatched: access.unmatched,
            client_tokens: access.client_tokens,
            allowed_clients: access.allowed_clients,
            login_backoff: server.login_backoff,
            login_backoff_max: server.login_backoff_max,
            upstream_timeout: server.upstream_timeout,
            connect_timeout: server.connect_timeout,
            creatio: upstream.creatio,
            ca_file: upstream.ca_file,
            ca_pem: upstream.ca_pem,
            insecure_skip_verify: upstream.insecure_skip_verify,
            egress: upstream.egress,
            no_proxy: upstream.no_proxy,
            identities: identities.list,
            default_identity: identities.default,
            routes,
            log,
            allow_root: server.allow_root,
            allow_unauthenticated_remote: access.allow_unauthenticated_remote,
            limits,
            session_store,
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

/// Loading helpers for the unit tests of every config module: no test here reads the process
/// environment.
#[cfg(test)]
mod testing {
    use super::env::Environment;
    use super::{Config, ConfigError};

    /// Validates `toml` with an empty environment.
    pub(super) fn load(toml: &str) -> Result<Config, ConfigError> {
        load_env(toml, &[])
    }

    /// Validates `toml` with exactly the environment variables `vars`.
    pub(super) fn load_env(toml: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_str_in(toml, &Environment::explicit(vars))
    }

    pub(super) const MINIMAL: &str = r#"
        [creatio]
        url = "https://example.creatio.com"
        [auth]
        username = "Supervisor"
        password = "pw"
    "#;

    pub(super) const OAUTH: &str = r#"
        [creatio]
        url = "https://example.creatio.com"
        [auth]
        mode = "oauth2"
        token_url = "https://example-is.creatio.com/connect/token"
        client_id = "integration"
        client_secret = "s3cret"
    "#;
}

#[cfg(test)]
mod tests {
    use super::testing::{load, MINIMAL};
    use super::*;

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
        let c = load(
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
}
