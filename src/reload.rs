//! Reloading the config while serving: SIGHUP, `POST /reload` on the admin listener, and
//! `creatio-proxy reload`.
//!
//! A valid new config builds new shared state (and a new request stack) that new requests
//! use; requests under way finish with the state they started with, and open connections stay
//! open. Identities whose settings did not change keep their sessions, unless the way to
//! Creatio changed. An invalid config is refused with a log line, and the running one stays.
//!
//! Every applied reload also lets identities whose logins were stopped (a locked account, an
//! expired password: `crate::auth`, rule 6) try once more. Identities the new config drops
//! (or replaces) go with the old state: their oauth2 token keepers end and their connection
//! pools are freed once the requests still using the old state finish.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::state::{ServerState, Shared};
use crate::upstream::build_upstream;

/// Applies a new config to a running server (SIGHUP).
#[derive(Clone)]
pub struct Reloader {
    pub(crate) state: Arc<ServerState>,
}

impl Reloader {
    /// Reads `path` and applies it; on any error the running config stays and the error is
    /// logged and returned.
    pub fn reload_file(&self, path: &Path) -> Result<(), String> {
        let result = Config::load(path)
            .map_err(|e| format!("invalid config {}: {e}", path.display()))
            .and_then(|config| self.apply(&config));
        match &result {
            Ok(()) => self.state.metrics.reload(true),
            Err(e) => {
                self.state.metrics.reload(false);
                tracing::error!("config reload refused, the running config stays: {e}");
            }
        }
        result
    }

    /// Applies `config` to new requests. Requests under way finish with the config they
    /// started with; open connections stay open. Identities whose settings did not change
    /// keep their sessions, unless the way to Creatio changed (`[creatio]`, timeouts,
    /// back-off), which starts every identity afresh over a new connection pool.
    pub fn apply(&self, config: &Config) -> Result<(), String> {
        let old = self.state.live.load_full();
        // The listener stays where it was bound: the new access rules must be safe there.
        config.check_exposure_at(old.config.listen).map_err(|e| {
            format!(
                "{e} (the proxy still listens on {}: a listen change needs a restart)",
                old.config.listen
            )
        })?;
        let same_upstream = old.config.same_upstream(config);
        let client = if same_upstream {
            if config.insecure_skip_verify {
                tracing::warn!(
                    "creatio.insecure_skip_verify = true: the TLS certificates of Creatio and the \
                     Identity Service are NOT checked; give the server's CA with creatio.ca_file instead"
                );
            }
            old.client.clone()
        } else {
            build_upstream(config).map_err(|e| e.to_string())?
        };
        let keep: &[Arc<crate::auth::Identity>] = if same_upstream { &old.identities } else { &[] };
        let store = if same_upstream {
            old.store.clone()
        } else {
            None
        };
        let shared = Shared::build(config, client, self.state.metrics.clone(), keep, store);
        for identity in shared.identities.iter() {
            // A reload is how an operator says "try again" after unlocking an account
            // (`crate::auth`, rule 6).
            identity.resume_logins();
            // The task ends by itself when a later reload drops the identity.
            drop(identity.keep_fresh(&shared.login));
        }
        let kept = shared
            .identities
            .iter()
            .filter(|i| old.identities.iter().any(|o| Arc::ptr_eq(o, i)))
            .count();
        for (what, changed) in [
            ("server.listen", old.config.listen != config.listen),
            (
                "admin.listen",
                old.config.admin_listen != config.admin_listen,
            ),
            (
                "log.format and log.level",
                old.config.log.format != config.log.format
                    || old.config.log.level != config.log.level,
            ),
            (
                "the connection limits (server.max_connections, header_read_timeout, idle_timeout, send_timeout, and max_header_bytes for the parser's buffer)",
                {
                    let (a, b) = (&old.config.limits, &config.limits);
                    a.max_connections != b.max_connections
                        || a.header_read_timeout != b.header_read_timeout
                        || a.idle_timeout != b.idle_timeout
                        || a.send_timeout != b.send_timeout
                        || a.max_header_bytes != b.max_header_bytes
                },
            ),
        ] {
            if changed {
                tracing::warn!(
                    "config reload: {what} changed; that takes effect at the next restart"
                );
            }
        }
        tracing::info!(
            identities = shared.identities.len(),
            kept_sessions = kept,
            routes = config.routes.len(),
            "config reloaded; new requests use it"
        );
        self.state.live.store(shared);
        Ok(())
    }
}

/// SIGHUP, caught from now on. Call it as early as possible: until a handler is installed,
/// SIGHUP's default action ends the process (a `systemctl reload` right after `start`).
/// Needs a Tokio runtime context.
pub(crate) fn catch_sighup() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(hup) => Some(hup),
        Err(e) => {
            eprintln!("creatio-proxy: cannot catch SIGHUP ({e}); config reloads need a restart");
            None
        }
    }
}

/// Reloads the config file on every SIGHUP (caught by [`catch_sighup`]), until the process
/// ends. A SIGHUP that arrived before this runs is handled at once.
pub(crate) async fn reload_on_sighup(
    reloader: Reloader,
    path: PathBuf,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
        let _ = reloader.reload_file(&path);
    }
}
