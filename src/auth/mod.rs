//! Creatio sessions, one per identity: login, sharing, renewal, back-off.
//!
//! The life of a session:
//! 1. The first request for an identity finds no session and logs in
//!    (`POST {url}/ServiceModel/AuthService.svc/Login`). Logins are single flight: one async
//!    gate per identity; whoever waits on it finds the session the first one made.
//! 2. Each session has a generation number. Requests read the current [`Session`] without a
//!    lock (an `ArcSwap` snapshot holding the precomputed `Cookie` and `BPMCSRF` header values).
//! 3. `Set-Cookie` on any Creatio answer is merged into the identity's jar, and the snapshot is
//!    replaced — but only when the answer belongs to the current generation, so a late answer
//!    from an expired session can never overwrite a fresh one.
//! 4. A request that meets an expired session asks for a renewal *of the generation it used*:
//!    if another request already renewed it, it takes that session instead of logging in again.
//! 5. A failed login starts a back-off (2 s doubling to 60 s by default); until it ends every
//!    request for that identity fails fast with the same error, so a wrong password never
//!    turns into a storm of logins that locks the Creatio account.
//! 6. A failure that says the account cannot log in until someone acts — `user_locked` or
//!    `password_expired` ([`Diagnosis::stops_logins`]) — stops logins for the identity: no
//!    request, `/readyz` probe or token keeper tries again until the lock window Creatio named
//!    has passed (when its message names one) or the config is reloaded (any successful
//!    reload: SIGHUP, `POST /reload`, a changed identity). Requests get the same error at once;
//!    `/readyz` says so. Each attempt on a locked account may extend the lock, and a probe
//!    every few seconds would keep it locked for ever.
//! 7. Re-logins after an expired answer pause per endpoint when a fresh session does not help
//!    that endpoint ([`relogin`]).
//!
//! An oauth2 identity lives the same life with a bearer token instead of a cookie jar: the
//! token request is single flight, a 401 renews it once, and failures back off. A token also
//! carries its own schedule ([`token_schedule`]): the first request after the renewal time
//! starts one renewal in the background and goes on with the current token, and once the
//! token is near its expiry it is never sent again (requests then wait for the new one).

pub(crate) mod expiry;
pub(crate) mod jar;
pub(crate) mod login;
pub(crate) mod relogin;
mod shared;

pub(crate) use login::LoginContext;
pub(crate) mod token;

pub(crate) use token::token_schedule;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use crate::config::{IdentityConfig, LoginConfig};
use crate::error::ProxyError;
use crate::metrics::IdentityMetrics;
use crate::pool::Upstream;

pub(crate) use crate::diagnosis::{Diagnosis, LoginFailure, Server};
pub(crate) use jar::Jar;

/// One logged-in session (forms) or token (oauth2), as requests see it.
pub(crate) struct Session {
    /// Increases with every successful login of the identity.
    pub generation: u64,
    /// The `Cookie` line for Creatio (forms).
    pub cookie: Option<HeaderValue>,
    /// The `BPMCSRF` header for Creatio (forms).
    pub csrf: Option<HeaderValue>,
    /// The `Authorization: Bearer` header for Creatio (oauth2).
    pub authorization: Option<HeaderValue>,
    /// When the login happened.
    pub obtained: Instant,
    /// oauth2: from then on, a request starts a renewal in the background.
    pub refresh_at: Option<Instant>,
    /// oauth2: from then on, the token is never sent.
    pub expires_at: Option<Instant>,
    /// Its generation in the session store (`[session_store]`); 0: this replica's own.
    pub shared: u64,
}

impl Session {
    /// Seconds the token has left, if it expires.
    pub(crate) fn expires_in(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    fn with_refresh_at(&self, refresh_at: Instant) -> Session {
        Session {
            generation: self.generation,
            cookie: self.cookie.clone(),
            csrf: self.csrf.clone(),
            authorization: self.authorization.clone(),
            obtained: self.obtained,
            refresh_at: Some(refresh_at),
            expires_at: self.expires_at,
            shared: self.shared,
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The header values are credentials.
        f.debug_struct("Session")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// The jar and the generation it belongs to; locked only briefly, never across an await.
struct JarState {
    generation: u64,
    jar: Jar,
}

/// State behind the login gate.
#[derive(Default)]
struct Gate {
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<LoginFailure>,
}

/// Logins stopped after a failure that [stops logins](Diagnosis::stops_logins) (rule 6).
struct Stop {
    /// The failure that stopped them, answered to every request meanwhile.
    failure: LoginFailure,
    /// When logins may resume by themselves: the end of the lock window Creatio named. `None`:
    /// only a config reload resumes them.
    until: Option<Instant>,
}

/// What a successful login or token request gives.
enum Fresh {
    Jar(Jar),
    Token(token::Token, Instant),
}

/// An identity and its session.
pub(crate) struct Identity {
    name: Arc<str>,
    login: LoginConfig,
    /// oauth2: the pool to the Identity Service.
    token_client: Option<Upstream>,
    current: ArcSwapOption<Session>,
    jar: Mutex<JarState>,
    gate: tokio::sync::Mutex<Gate>,
    generation: AtomicU64,
    logins: AtomicU64,
    relogin: relogin::ReloginGuard,
    /// Logins stopped (rule 6); never locked across an await.
    stop: Mutex<Option<Stop>>,
    /// A background token renewal is under way.
    refreshing: AtomicBool,
    /// Requests waiting for a login or renewal of this identity.
    waiting: AtomicUsize,
    /// Woken whenever a session is published (or its renewal time moves).
    published: Arc<tokio::sync::Notify>,
    /// A keeper task runs (see [`Identity::keep_fresh`]).
    kept: AtomicBool,
    metrics: IdentityMetrics,
    /// Where the session is shared with other replicas ([`shared`]), if it is.
    slot: Option<crate::store::Slot>,
    /// The highest store generation found expired here: a stored session must be newer.
    stale_shared: AtomicU64,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("logins", &self.logins.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Exponential back-off after `failures` consecutive failed logins.
pub(crate) fn backoff_after(failures: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

impl Identity {
    /// A new identity without a session. `client` is the pool to Creatio; an oauth2 identity
    /// gets its own pool to the Identity Service next to it.
    pub(crate) fn new(
        config: &IdentityConfig,
        client: &Upstream,
        metrics: IdentityMetrics,
    ) -> Self {
        let token_client = match &config.login {
            LoginConfig::Forms { .. } => None,
            LoginConfig::OAuth2(o) => token::origin(o).map(|origin| client.sibling(origin)),
        };
        Identity {
            name: Arc::from(config.name.as_str()),
            login: config.login.clone(),
            token_client,
            current: ArcSwapOption::empty(),
            jar: Mutex::new(JarState {
                generation: 0,
                jar: Jar::default(),
            }),
            gate: tokio::sync::Mutex::new(Gate::default()),
            generation: AtomicU64::new(0),
            logins: AtomicU64::new(0),
            relogin: relogin::ReloginGuard::default(),
            stop: Mutex::new(None),
            refreshing: AtomicBool::new(false),
            waiting: AtomicUsize::new(0),
            published: Arc::new(tokio::sync::Notify::new()),
            kept: AtomicBool::new(false),
            metrics,
            slot: None,
            stale_shared: AtomicU64::new(0),
        }
    }

    /// The identity's metric handles.
    pub(crate) fn metrics(&self) -> &IdentityMetrics {
        &self.metrics
    }

    /// True when `config` describes this identity exactly (same name, mode, user or client,
    /// and secret): a reloaded config keeps such an identity and its session.
    pub(crate) fn same_config(&self, config: &IdentityConfig) -> bool {
        *self.name == *config.name && self.login.same(&config.login)
    }

    /// The last login failure and the time until the next attempt is allowed, while a
    /// back-off runs. `None` also while a login is under way (the answer is not known yet).
    pub(crate) fn backoff(&self) -> Option<(LoginFailure, Duration)> {
        let gate = self.gate.try_lock().ok()?;
        let at = gate.retry_at?;
        let left = at.checked_duration_since(Instant::now())?;
        gate.last_error.clone().map(|e| (e, left))
    }

    /// The identity's name (`default` for `[auth]`).
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Who it acts as, for messages: `user NAME` or `client ID`.
    pub(crate) fn principal(&self) -> String {
        match &self.login {
            LoginConfig::Forms { username, .. } => format!("user {username}"),
            LoginConfig::OAuth2(o) => format!("client {}", o.client_id),
        }
    }

    /// True for `mode = "oauth2"`.
    pub(crate) fn is_oauth2(&self) -> bool {
        matches!(self.login, LoginConfig::OAuth2(_))
    }

    /// Successful logins (or token requests) so far.
    pub(crate) fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }

    /// The current session, if any; never waits.
    pub(crate) fn current(&self) -> Option<Arc<Session>> {
        self.current.load_full()
    }

    /// The current session, logging in first when there is none (or the token has expired).
    /// A token near its end is renewed in the background while it is still being used.
    pub(crate) async fn session(
        self: &Arc<Self>,
        ctx: &LoginContext,
    ) -> Result<Arc<Session>, ProxyError> {
        let Some(s) = self.current.load_full() else {
            return self.renew(ctx, None).await;
        };
        let Some(expires_at) = s.expires_at else {
            return Ok(s);
        };
        let now = Instant::now();
        if now >= expires_at {
            return self.renew(ctx, Some(s.generation)).await;
        }
        if s.refresh_at.is_some_and(|at| now >= at) {
            self.refresh_in_background(ctx, s.generation);
        }
        Ok(s)
    }

    /// A session newer than `stale` (the generation a request found expired), logging in
    /// only when nobody has done so since. `None` means "any session".
    ///
    /// The renewal runs in its own task: a client that hangs up while a login is under way
    /// cancels only its wait, never the login, so every attempt is counted and the back-off
    /// always applies.
    pub(crate) async fn renew(
        self: &Arc<Self>,
        ctx: &LoginContext,
        stale: Option<u64>,
    ) -> Result<Arc<Session>, ProxyError> {
        // Requests that wait for one login all need a connection to Creatio afterwards: each
        // one after the first has one made now, while the login is in flight, when the pool
        // has fewer idle than there are waiters (the first gets the login's own connection).
        let ahead = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = login::Waiting(&self.waiting);
        if ahead > 0 {
            let _ = ctx.client.connect_ahead(ahead);
        }
        let me = self.clone();
        let ctx = ctx.clone();
        match tokio::spawn(async move { me.renew_now(&ctx, stale).await }).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::LoginFailed {
                identity: self.name.to_string(),
                failure: LoginFailure::new(
                    Diagnosis::LoginRefused,
                    self.server(),
                    "the login task stopped unexpectedly",
                ),
                retry_after: None,
            }),
        }
    }

    fn server(&self) -> Server {
        match self.login {
            LoginConfig::Forms { .. } => Server::Creatio,
            LoginConfig::OAuth2(_) => Server::IdentityService,
        }
    }

    async fn renew_now(
        &self,
        ctx: &LoginContext,
        stale: Option<u64>,
    ) -> Result<Arc<Session>, ProxyError> {
        let mut gate = self.gate.lock().await;
        if let Some(s) = self.current.load_full() {
            if stale.is_none_or(|g| s.generation > g) {
                return Ok(s);
            }
            // The session in hand is the stale one: a stored session must be newer.
            self.stale_shared.fetch_max(s.shared, Ordering::AcqRel);
        }
        if let Some((failure, left)) = self.logins_stopped() {
            return Err(self.login_error(&failure, left));
        }
        // During a back-off the session in hand stays: a token whose background renewal failed
        // is still good until it expires, whatever one odd answer said.
        let now = Instant::now();
        if let (Some(at), Some(err)) = (gate.retry_at, &gate.last_error) {
            if now < at {
                return Err(self.login_error(err, Some(at - now)));
            }
        }
        // The session in hand is the stale one (or there is none): it must not be used again,
        // and late answers to it must not re-publish it. Both happen under the jar lock, which
        // `absorb` holds while it publishes, and generation 0 matches no answer.
        if let Ok(mut state) = self.jar.lock() {
            state.generation = 0;
            self.current.store(None);
        }
        if stale.is_some() {
            self.metrics.relogin();
        }
        let above = self.stale_shared.load(Ordering::Acquire);
        self.login_shared(ctx, &mut gate, above).await
    }

    /// Starts one background renewal of the token of `generation`, unless one is running.
    fn refresh_in_background(self: &Arc<Self>, ctx: &LoginContext, generation: u64) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        /// Clears the flag however the renewal ends (a panic included).
        struct Done(Arc<Identity>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.refreshing.store(false, Ordering::Release);
            }
        }
        let done = Done(self.clone());
        let ctx = ctx.clone();
        tokio::spawn(async move {
            done.0.refresh(&ctx, generation).await;
            drop(done);
        });
    }

    /// Keeps an oauth2 identity's token fresh while no request comes: a task that starts each
    /// renewal at the token's renewal time, so an idle proxy never lets its token lapse (and
    /// `/readyz` stays true). With no token left after failures, it tries again after the
    /// longest back-off (not while logins are stopped, rule 6). Forms sessions slide with use
    /// and need no keeper.
    ///
    /// The task holds the identity only weakly and ends as soon as the identity is dropped (a
    /// reload that removes or replaces it): dropping wakes it ([`Drop`] below), whatever it
    /// was waiting for, so it never keeps the login context (and its connection pool) alive.
    /// Returns the task, or `None` when there is nothing to keep (forms, or already kept).
    pub(crate) fn keep_fresh(
        self: &Arc<Self>,
        ctx: &LoginContext,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !self.is_oauth2() || self.kept.swap(true, Ordering::AcqRel) {
            return None;
        }
        let weak = Arc::downgrade(self);
        let published = self.published.clone();
        let name = self.name.clone();
        let ctx = ctx.clone();
        Some(tokio::spawn(async move {
            keeper(weak, &published, &ctx).await;
            tracing::info!(identity = %name, "the identity left the config: its token keeper stopped");
        }))
    }

    /// Renews the token of `generation` while requests go on using it. A failure leaves the
    /// token in use until it expires, and the next try waits for the login back-off.
    async fn refresh(&self, ctx: &LoginContext, generation: u64) {
        let mut gate = self.gate.lock().await;
        let still_current = self.current.load().as_ref().map(|s| s.generation) == Some(generation);
        if !still_current {
            return;
        }
        let stopped = self.logins_stopped().map(|(_, left)| {
            // Until a reload: check again after the longest back-off (it costs no attempt).
            Instant::now() + left.unwrap_or(ctx.backoff_max)
        });
        let blocked = stopped.or(gate.retry_at.filter(|at| Instant::now() < *at));
        let above = self.current.load().as_ref().map_or(0, |s| s.shared);
        let retry_at = match blocked {
            Some(at) => at,
            None => match self.login_shared(ctx, &mut gate, above).await {
                Ok(_) => return,
                Err(_) => gate
                    .retry_at
                    .unwrap_or_else(|| Instant::now() + ctx.backoff),
            },
        };
        if let Ok(_state) = self.jar.lock() {
            let current = self.current.load_full();
            if let Some(s) = current.filter(|s| s.generation == generation) {
                self.current
                    .store(Some(Arc::new(s.with_refresh_at(retry_at))));
            }
        }
        self.published.notify_waiters();
    }

    /// One login or token request, with its bookkeeping: publish the session, or count the
    /// failure and set the back-off. The caller holds the gate.
    async fn attempt(
        &self,
        ctx: &LoginContext,
        gate: &mut Gate,
        shared: u64,
    ) -> Result<(Arc<Session>, crate::store::Stored), ProxyError> {
        let attempt = tokio::time::timeout(ctx.timeout, self.obtain(ctx)).await;
        let attempt = attempt.unwrap_or_else(|_| {
            let (what, target) = match &self.login {
                LoginConfig::Forms { .. } => ("the login at", ctx.creatio.host_port()),
                LoginConfig::OAuth2(o) => ("the token request to", o.token_url.host_port()),
            };
            Err(LoginFailure::new(
                Diagnosis::Unreachable,
                self.server(),
                format!("{what} {target} did not complete within {:?}: check that it is reachable from here and not overloaded", ctx.timeout),
            ))
        });
        match attempt {
            Ok(fresh) => {
                gate.failures = 0;
                gate.retry_at = None;
                gate.last_error = None;
                let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                let stored = fresh.stored();
                let (session, jar) = match fresh {
                    Fresh::Jar(jar) => (
                        Session {
                            generation,
                            cookie: jar.cookie_header(),
                            csrf: jar.csrf_header(),
                            authorization: None,
                            obtained: Instant::now(),
                            refresh_at: None,
                            expires_at: None,
                            shared,
                        },
                        jar,
                    ),
                    Fresh::Token(token, started) => {
                        let (refresh_at, expires_at) = token_schedule(started, token.lifetime);
                        let session = Session {
                            generation,
                            cookie: None,
                            csrf: None,
                            authorization: Some(token.authorization),
                            obtained: started,
                            refresh_at: Some(refresh_at),
                            expires_at: Some(expires_at),
                            shared,
                        };
                        (session, Jar::default())
                    }
                };
                let session = self.install(session, jar);
                self.logins.fetch_add(1, Ordering::Relaxed);
                self.metrics.login(None);
                match session.expires_in() {
                    None => {
                        tracing::info!(identity = %self.name, principal = %self.principal(), generation, "logged in to Creatio")
                    }
                    Some(left) => {
                        tracing::info!(identity = %self.name, principal = %self.principal(), generation, usable_for_s = left.as_secs(), "obtained an OAuth 2.0 token")
                    }
                }
                Ok((session, stored))
            }
            Err(failure) => {
                self.metrics.login(Some(failure.diagnosis.code()));
                gate.failures = gate.failures.saturating_add(1);
                let wait = backoff_after(gate.failures, ctx.backoff, ctx.backoff_max);
                if failure.diagnosis.stops_logins() {
                    // Rule 6: the stop replaces the back-off; a reload resumes at once.
                    gate.retry_at = None;
                    gate.last_error = None;
                    return Err(self.stop_logins(failure, wait));
                }
                gate.retry_at = Some(Instant::now() + wait);
                tracing::warn!(
                    identity = %self.name,
                    principal = %self.principal(),
                    error = failure.error_code(),
                    diagnosis = failure.diagnosis.code(),
                    failures = gate.failures,
                    retry_in_ms = wait.as_millis() as u64,
                    "{}: {}",
                    if self.is_oauth2() { "OAuth 2.0 token request failed" } else { "Creatio login failed" },
                    failure.message
                );
                let err = self.login_error(&failure, Some(wait));
                gate.last_error = Some(failure);
                Err(err)
            }
        }
    }

    /// Makes `session` (with its `jar`) the current one and wakes whoever waits for one.
    fn install(&self, session: Session, jar: Jar) -> Arc<Session> {
        let session = Arc::new(session);
        if let Ok(mut state) = self.jar.lock() {
            state.generation = session.generation;
            state.jar = jar;
            self.current.store(Some(session.clone()));
        }
        self.published.notify_waiters();
        session
    }

    async fn obtain(&self, ctx: &LoginContext) -> Result<Fresh, LoginFailure> {
        match &self.login {
            LoginConfig::Forms { username, password } => {
                login::login(ctx, username, password).await.map(Fresh::Jar)
            }
            LoginConfig::OAuth2(config) => {
                let Some(client) = &self.token_client else {
                    return Err(LoginFailure::new(
                        Diagnosis::TokenResponseInvalid,
                        Server::IdentityService,
                        "token_url has no usable origin",
                    ));
                };
                let started = Instant::now();
                token::fetch(client, config, &ctx.creatio, ctx.timeout)
                    .await
                    .map(|t| Fresh::Token(t, started))
            }
        }
    }

    /// How long expiry-driven re-logins for `endpoint` (the request's canonical path) stay
    /// paused, if they are ([`relogin`]).
    pub(crate) fn relogin_paused(&self, endpoint: &str, ctx: &LoginContext) -> Option<Duration> {
        self.relogin.paused(endpoint, ctx.backoff_max)
    }

    /// Records that a replay on `endpoint` after a fresh login was refused again.
    pub(crate) fn replay_refused(&self, endpoint: &str, ctx: &LoginContext) {
        let wait = self
            .relogin
            .refused(endpoint, |n| backoff_after(n, ctx.backoff, ctx.backoff_max));
        tracing::warn!(
            identity = %self.name,
            endpoint,
            pause_ms = wait.as_millis() as u64,
            "Creatio refused a request again right after a fresh login; re-logins for expired answers of this endpoint are paused"
        );
    }

    /// Records that a replay on `endpoint` after a fresh login worked.
    pub(crate) fn replay_worked(&self, endpoint: &str) {
        self.relogin.worked(endpoint);
    }

    /// Rule 6: the failure that stopped logins and the time until they resume by themselves
    /// (`None`: only a reload resumes them), while they are stopped. A lock window that has
    /// passed ends the stop here.
    pub(crate) fn logins_stopped(&self) -> Option<(LoginFailure, Option<Duration>)> {
        let mut stop = self.stop.lock().ok()?;
        let now = Instant::now();
        match stop.as_ref()? {
            Stop {
                until: None,
                failure,
            } => Some((failure.clone(), None)),
            Stop {
                until: Some(at),
                failure,
            } if now < *at => Some((failure.clone(), Some(*at - now))),
            Stop { .. } => {
                *stop = None;
                None
            }
        }
    }

    /// Rule 6: a reload lets logins resume (one attempt finds out whether the account is
    /// usable again). True when they had been stopped.
    pub(crate) fn resume_logins(&self) -> bool {
        let resumed = self.stop.lock().ok().and_then(|mut s| s.take()).is_some();
        if resumed {
            tracing::info!(identity = %self.name, principal = %self.principal(), "config reloaded: logins resume");
            // The keeper of an oauth2 identity waits for news.
            self.published.notify_waiters();
        }
        resumed
    }

    /// Stops logins after `failure` (rule 6): until its lock window ends (at least `backoff`
    /// from now), or until a reload. The error for the request that found out.
    fn stop_logins(&self, failure: LoginFailure, backoff: Duration) -> ProxyError {
        let left = failure.lock_window.map(|w| w.max(backoff));
        match left {
            Some(left) => tracing::warn!(
                identity = %self.name,
                principal = %self.principal(),
                error = failure.error_code(),
                diagnosis = failure.diagnosis.code(),
                retry_in_s = left.as_secs(),
                "Creatio login failed, logins stopped: {}",
                failure.message
            ),
            None => tracing::warn!(
                identity = %self.name,
                principal = %self.principal(),
                error = failure.error_code(),
                diagnosis = failure.diagnosis.code(),
                "Creatio login failed, logins stopped until a reload: {}",
                failure.message
            ),
        }
        let err = self.login_error(&failure, left);
        if let Ok(mut stop) = self.stop.lock() {
            *stop = Some(Stop {
                failure,
                until: left.map(|l| Instant::now() + l),
            });
        }
        err
    }

    fn login_error(&self, failure: &LoginFailure, retry_after: Option<Duration>) -> ProxyError {
        ProxyError::LoginFailed {
            identity: self.name.to_string(),
            failure: failure.clone(),
            retry_after,
        }
    }

    /// Merges the `Set-Cookie` lines of an answer to a request sent with session
    /// `generation`. Ignored when the session has been replaced since, and for oauth2
    /// identities, whose requests never carry cookies. Refused whole when the lines would make
    /// the session another user's ([`Jar::changes_user`]). The session layer decides which
    /// answers get here at all ([`crate::stack::session`]).
    pub(crate) fn absorb(&self, generation: u64, headers: &HeaderMap) -> Absorbed {
        if self.is_oauth2() {
            return Absorbed::Unchanged;
        }
        let Ok(mut state) = self.jar.lock() else {
            return Absorbed::Unchanged;
        };
        if state.generation != generation {
            return Absorbed::Unchanged;
        }
        let lines = headers.get_all(http::header::SET_COOKIE);
        if state.jar.changes_user(lines.iter()) {
            return Absorbed::RefusedOtherUser;
        }
        let mut changed = false;
        for value in lines {
            changed |= state.jar.apply_forwarded(value);
        }
        if !changed {
            return Absorbed::Unchanged;
        }
        let (obtained, shared) = self
            .current
            .load()
            .as_ref()
            .map_or_else(|| (Instant::now(), 0), |s| (s.obtained, s.shared));
        self.current.store(Some(Arc::new(Session {
            generation,
            cookie: state.jar.cookie_header(),
            csrf: state.jar.csrf_header(),
            authorization: None,
            obtained,
            refresh_at: None,
            expires_at: None,
            shared,
        })));
        // A sliding renewal is written back, so that a replica that starts later gets it.
        self.write_back(shared, &state.jar);
        Absorbed::Changed
    }
}

/// The loop of [`Identity::keep_fresh`]; returns when the identity is gone. Every wait also
/// ends on `published`, which the identity notifies when it is dropped.
async fn keeper(
    weak: std::sync::Weak<Identity>,
    published: &tokio::sync::Notify,
    ctx: &LoginContext,
) {
    loop {
        let notified = published.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(me) = weak.upgrade() else { return };
        let due = me
            .current()
            .and_then(|s| s.refresh_at.map(|at| (at, s.generation)));
        match due {
            Some((at, generation)) if Instant::now() >= at => {
                me.refresh_in_background(ctx, generation);
                drop(me);
                notified.await;
            }
            Some((at, _)) => {
                drop(me);
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = &mut notified => {}
                }
            }
            None if me.logins() > 0 => {
                // The token is gone and the last renewal failed: try again after the longest
                // back-off (a request may well do it sooner).
                drop(me);
                tokio::select! {
                    _ = tokio::time::sleep(ctx.backoff_max) => {}
                    _ = &mut notified => continue,
                }
                let Some(me) = weak.upgrade() else { return };
                if me.current().is_none() && me.logins_stopped().is_none() {
                    let _ = me.renew(ctx, None).await;
                }
            }
            None => {
                drop(me);
                notified.await;
            }
        }
    }
}

impl Drop for Identity {
    /// Wakes the keeper task, which then finds the identity gone and ends.
    fn drop(&mut self) {
        self.published.notify_waiters();
    }
}

/// What [`Identity::absorb`] did with an answer's cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Absorbed {
    /// Nothing changed (same values, a stale generation, or an oauth2 identity).
    Unchanged,
    /// The jar took the new values.
    Changed,
    /// The cookies would have made the session another user's: nothing was taken.
    RefusedOtherUser,
}

#[cfg(test)]
mod tests;
