//! The state one config builds, and the state the listeners share across reloads.
//!
//! [`Shared`] is built from a config: the identities (with their sessions), the connection
//! pool, and the request stack ([`crate::stack`]), built once here. A reload builds a new one
//! and swaps it into [`Live`]; requests under way finish with the one they started with.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::{Identity, LoginContext};
use crate::config::{Config, LoginConfig};
use crate::metrics::Metrics;
use crate::pool::Upstream;
use crate::stack::{self, Stack};
use crate::store::Store;

/// State shared by every request, built from one config.
pub(crate) struct Shared {
    /// Identities, indexed as in the config.
    pub(crate) identities: Arc<[Arc<Identity>]>,
    /// The settings logins use.
    pub(crate) login: LoginContext,
    /// The connection pool to Creatio.
    pub(crate) client: Upstream,
    /// The metrics this state counts into.
    pub(crate) metrics: Arc<Metrics>,
    /// The config this state was built from.
    pub(crate) config: Config,
    /// The request path, built once for this config.
    pub(crate) stack: Stack,
    /// Where sessions are shared with other replicas, if they are.
    pub(crate) store: Option<Arc<Store>>,
}

impl Shared {
    /// Builds the shared state with metrics of its own and no session store (for `check`,
    /// which must log in itself to test the credentials).
    pub(crate) fn new(config: &Config, client: Upstream) -> Arc<Shared> {
        let mut alone = config.clone();
        alone.session_store = None;
        Shared::build(&alone, client, Arc::new(Metrics::new()), &[], None)
    }

    /// Builds the shared state. An identity in `keep` whose config is unchanged is kept,
    /// session and all; the others start without a session. `store`: the session store of
    /// the config being replaced, kept when `[session_store]` is unchanged.
    pub(crate) fn build(
        config: &Config,
        client: Upstream,
        metrics: Arc<Metrics>,
        keep: &[Arc<Identity>],
        store: Option<Arc<Store>>,
    ) -> Arc<Shared> {
        let store = match (&config.session_store, store) {
            (None, _) => None,
            (Some(_), Some(kept)) => Some(kept),
            (Some(c), None) => Store::start(c, metrics.clone()),
        };
        let identities: Arc<[Arc<Identity>]> = config
            .identities
            .iter()
            .map(|i| {
                keep.iter()
                    .find(|old| old.same_config(i))
                    .cloned()
                    .unwrap_or_else(|| {
                        let oauth2 = matches!(i.login, LoginConfig::OAuth2(_));
                        let slot = store
                            .as_ref()
                            .map(|s| s.slot(&crate::store::slot_parts(&config.creatio, &i.login)));
                        Arc::new(
                            Identity::new(i, &client, metrics.identity(&i.name, oauth2))
                                .sharing(slot),
                        )
                    })
            })
            .collect();
        let login = LoginContext::new(config, client.clone());
        let stack = stack::build(&stack::Parts {
            config,
            identities: &identities,
            login: &login,
            client: &client,
            metrics: &metrics,
        });
        Arc::new(Shared {
            identities,
            login,
            client,
            metrics,
            config: config.clone(),
            stack,
            store,
        })
    }
}

/// The state requests use now; a reload swaps it.
pub(crate) type Live = ArcSwap<Shared>;

/// What the listeners, the admin endpoints and reloads share.
pub(crate) struct ServerState {
    /// The state requests use now.
    pub(crate) live: Arc<Live>,
    /// Metrics that outlive reloads.
    pub(crate) metrics: Arc<Metrics>,
    /// SIGTERM arrived: `/readyz` answers 503 while in-flight requests finish.
    pub(crate) draining: AtomicBool,
    /// The config file that SIGHUP and `POST /reload` read (set by `run`).
    pub(crate) config_path: std::sync::OnceLock<PathBuf>,
}
