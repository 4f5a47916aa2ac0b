//! Built-in Creatio emulator: an in-process fake Creatio HTTP server.
//!
//! The `demo` command and the integration tests both run this, so what users see in the
//! demo and what the tests check come from the same code. It is **not Creatio**. It copies
//! only what an authenticating proxy can see on the wire, following the project's Creatio HTTP
//! reference (`creatio-http.md`; section numbers below refer to it).
//!
//! Rules of the Creatio app, with paths relative to [`EmulatorOptions::base_path`]:
//! 1. `POST /ServiceModel/AuthService.svc/Login` with `{"UserName","UserPassword"}` logs in.
//!    It always answers HTTP 200, with `Code` 0 plus four cookies or `Code` 1 plus a reason
//!    (§1). Login needs no `BPMCSRF` header.
//! 2. The app lives under `/0` in both flavours. Every `/0/...` request needs either an
//!    `Authorization: Bearer` token from the Identity Service, or a `.ASPXAUTH` ticket in a
//!    `Cookie` header *and* a `BPMCSRF` header equal to the session's token (§3, §8). A bearer
//!    header wins over cookies. A `Set-Cookie` *request* header counts for nothing.
//! 3. A missing, unknown or expired ticket gets 401 JSON on `.svc` paths. Other paths get
//!    [`ExpiredResponse`]: a 302 to the login page, the login page itself, or a bare 401 (§4).
//!    A valid ticket with a wrong or missing `BPMCSRF` header gets 401 JSON. An unknown,
//!    expired or revoked bearer token gets 401 JSON on every path (§8).
//! 4. Forms tickets slide (§2). Once more than half of a ticket's lifetime has passed, the
//!    response renews `.ASPXAUTH`, and the old ticket stays valid until it expires. Bearer
//!    tokens never slide, and forms-session controls such as [`Emulator::invalidate_sessions`]
//!    leave them alone.
//! 5. With [`EmulatorOptions::one_session_per_user`] on (Creatio's "AllowOnlyOneSessionPerUser";
//!    switched at run time by [`Emulator::set_one_session_per_user`]), a successful login ends
//!    every other forms session of that user: their tickets, renewed ones included, get the
//!    answers of rule 3 from then on, while the new session works. Other users' sessions and
//!    bearer tokens are left alone. Assumption: the reference (§5) names only the flag
//!    (`Feature-AllowOnlyOneSessionPerUser`); that a new login ends the older sessions, rather
//!    than being refused, is the setting's stated purpose, not an answer seen on the wire.
//! 6. Portal users may only use `/0/ssp/...`, and employees may not use it (§7). Breaking
//!    this gets an IIS-style 403 page, whether the user came by cookie or by token.
//! 7. Served: OData collections and records, streamed `Data` uploads, a streamed download,
//!    echoing `/rest` and `.svc` services, and the anonymous `/api/HealthCheck/Ping`.
//! 8. A token request sent to the app by mistake (`/connect/token`, any method) gets 200 and
//!    the login page, with `ReturnUrl=%2fconnect%2ftoken` on the site root (§8, addendum).
//! 9. With [`EmulatorOptions::front_redirect`] set, every request gets a 302 to that location
//!    instead, as from a load balancer or SSO front.
//!
//! The Identity Service (§8) listens on a second, ephemeral port on the same IP; see
//! [`Emulator::identity_url`]. It serves `POST /connect/token` (client credentials grant, client
//! authentication by form fields or HTTP Basic) and `GET /.well-known/openid-configuration`.
//! Tests can make it hold requests unanswered or leave `access_token` out of its answer.
//!
//! Fault switches (`faults.rs`) make the app misbehave on purpose: [`Emulator::hold_logins`]
//! makes the login endpoint hang. Network faults are left to a relay in front of it.
//!
//! Caveats: the emulator keeps everything in memory and has no `$filter`. Tokens are opaque
//! reference tokens, not JWTs, and scopes are never checked. Requests to the Identity Service
//! are counted by [`Emulator::token_requests`] and are not in [`Emulator::seen`]. The emulator
//! logs nothing above `debug`. It runs until [`Emulator::shutdown`] is called or the tokio
//! runtime ends. Dropping the handle does not stop it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

mod faults;
mod handlers;
mod identity;
mod model;
mod pages;
mod server;
mod state;
#[cfg(test)]
mod tests;
mod wire;

pub use model::{
    download_byte, fnv1a64, EmulatorOptions, ExpiredResponse, Flavour, OAuthClient, SeenRequest,
    TokenFault, Upload, User, FNV_OFFSET,
};
use state::Shared;

/// A running emulator. Cloning is cheap, and every clone controls the same server.
#[derive(Clone)]
pub struct Emulator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("url", &self.url())
            .field("identity_url", &self.identity_url())
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Binds `listen` for the app and an ephemeral port on the same IP for the Identity
    /// Service, starts both accept loops on the current tokio runtime and returns at once.
    ///
    /// Tests pass `127.0.0.1:0` and read the port from [`Emulator::addr`]. A `base_path` that
    /// cannot appear in a URL path fails with [`std::io::ErrorKind::InvalidInput`].
    pub async fn start(options: EmulatorOptions, listen: SocketAddr) -> std::io::Result<Emulator> {
        let base_path = normalise_base_path(&options.base_path)?;
        // A backlog of 1024 rather than the usual 128, so that a burst of new connections
        // (a cold proxy's first 1,000 requests) is not dropped and retried a second later.
        let app = {
            let socket = match listen {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.bind(listen)?;
            socket.listen(1024)?
        };
        let identity = tokio::net::TcpListener::bind(SocketAddr::new(listen.ip(), 0)).await?;
        let addrs = (app.local_addr()?, identity.local_addr()?);
        let shared = Arc::new(Shared::new(options, base_path, addrs));
        tokio::spawn(server::accept_loop(app, shared.clone(), handlers::handle));
        tokio::spawn(server::accept_loop(
            identity,
            shared.clone(),
            identity::handle,
        ));
        Ok(Emulator { shared })
    }

    /// The address the emulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://HOST:PORT` plus the base path, with no trailing slash.
    pub fn url(&self) -> String {
        format!("{}{}", self.shared.origin, self.shared.base_path)
    }

    /// `http://HOST:PORT` of the Identity Service, with no base path and no trailing slash.
    /// The token endpoint is this plus `/connect/token`.
    pub fn identity_url(&self) -> String {
        self.shared.identity_origin.clone()
    }

    /// Stops accepting on both listeners, closes idle connections, and closes busy ones after
    /// their current request. Token requests being held are answered at once.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }

    /// Invalidates every ticket and session now, as an IIS app-pool recycle does.
    pub fn invalidate_sessions(&self) {
        self.shared.invalidate_sessions();
    }

    /// Invalidates every session when the `n`-th further authenticated request arrives. That
    /// request is itself refused as expired. `n == 0` invalidates at once.
    ///
    /// A request counts as authenticated when its ticket and `BPMCSRF` header are both valid.
    pub fn invalidate_sessions_after(&self, n: u64) {
        self.shared.invalidate_sessions_after(n);
    }

    /// Moves the emulator's clock forward. The clock is real time plus every offset added here,
    /// and it drives ticket expiry and renewal and token expiry.
    pub fn advance_clock(&self, d: Duration) {
        self.shared.advance_clock(d);
    }

    /// Changes what a non-`.svc` path answers without a valid session.
    pub fn set_expired_response(&self, e: ExpiredResponse) {
        self.shared.set_expired_response(e);
    }

    /// Turns Creatio's "AllowOnlyOneSessionPerUser" on or off from the next login on (see
    /// [`EmulatorOptions::one_session_per_user`]). Turning it on ends no session by itself.
    pub fn set_one_session_per_user(&self, on: bool) {
        self.shared.set_one_session_per_user(on);
    }

    /// Changes a user's password. Existing sessions stay valid. Unknown users are ignored.
    pub fn set_password(&self, user: &str, password: &str) {
        self.shared.set_password(user, password);
    }

    /// Unlocks a user and resets their count of failed logins.
    pub fn unlock(&self, user: &str) {
        self.shared.unlock(user);
    }

    /// Locks a user now, as too many failed logins would. Unknown users are ignored.
    pub fn lock_user(&self, user: &str) {
        self.shared.lock_user(user);
    }

    /// POSTs to /connect/token on the IS listener, whatever their outcome (counted on arrival,
    /// before any hold).
    pub fn token_requests(&self) -> u64 {
        self.shared.token_requests()
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.tokens_issued()
    }

    /// How the client authenticated for each issued token, oldest first: `"form"`
    /// (`client_id`/`client_secret` fields) or `"basic"` (HTTP Basic).
    pub fn token_auth(&self) -> Vec<&'static str> {
        self.shared.token_auth()
    }

    /// Resolves once a request that `matches` is in [`Emulator::seen`] (at once if one is):
    /// for tests that wait for Creatio to have seen something, without polling the clock.
    pub async fn wait_seen(&self, matches: impl Fn(&SeenRequest) -> bool) {
        self.shared.wait_seen(matches).await;
    }

    /// Resolves once [`Emulator::token_requests`] is at least `n`.
    pub async fn wait_token_requests(&self, n: u64) {
        self.shared.wait_token_requests(n).await;
    }

    /// Every token issued so far becomes unknown (401 on use).
    pub fn revoke_tokens(&self) {
        self.shared.revoke_tokens();
    }

    /// Lifetime of tokens issued from now on.
    pub fn set_token_lifetime(&self, d: Duration) {
        self.shared.set_token_lifetime(d);
    }

    /// Makes the Identity Service produce `fault` from now on, or behave again with `None`.
    pub fn set_token_fault(&self, fault: Option<TokenFault>) {
        self.shared.set_token_fault(fault);
    }

    /// While held, token requests wait unanswered; [`Emulator::release_tokens`] answers every
    /// waiting one (and later ones at once).
    pub fn hold_tokens(&self) {
        self.shared.hold_tokens(true);
    }

    /// Answers every held token request and stops holding.
    pub fn release_tokens(&self) {
        self.shared.hold_tokens(false);
    }

    /// While held, login POSTs wait unanswered, as when Creatio's login page hangs;
    /// [`Emulator::release_logins`] answers every waiting one (and later ones at once). A
    /// login whose client gives up meanwhile is never carried out.
    pub fn hold_logins(&self) {
        self.shared.faults.hold_logins(true);
    }

    /// Every login POST from now on waits `latency` before it is handled, as real Creatio's
    /// login takes hundreds of milliseconds. Zero (the default) answers at once.
    pub fn set_login_latency(&self, latency: Duration) {
        self.shared.faults.set_login_latency(latency);
    }

    /// Answers every held login POST and stops holding.
    pub fn release_logins(&self) {
        self.shared.faults.hold_logins(false);
    }

    /// Login POSTs received (at any user, whatever their outcome), counted on arrival, before
    /// any hold: also those whose client gave up while they were held.
    pub fn login_requests(&self) -> u64 {
        self.shared.faults.login_requests()
    }

    /// Number of successful logins by `user`.
    pub fn logins(&self, user: &str) -> u64 {
        self.shared.logins(user)
    }

    /// Number of login POSTs naming `user`, whatever their outcome.
    pub fn login_attempts(&self, user: &str) -> u64 {
        self.shared.login_attempts(user)
    }

    /// Number of requests received for exactly `path`: no query, base path included.
    pub fn requests(&self, path: &str) -> u64 {
        self.shared.requests(path)
    }

    /// Number of records created by `POST /0/odata/<entity>`.
    pub fn records_created(&self, entity: &str) -> u64 {
        self.shared.records_created(entity)
    }

    /// The current records of `entity`, oldest first.
    pub fn records(&self, entity: &str) -> Vec<serde_json::Value> {
        self.shared.records(entity)
    }

    /// The last 10 000 requests, oldest first. A request is added when its response head is
    /// ready.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.shared.seen()
    }

    /// The last completed `Data` upload for `(entity, id)`.
    pub fn upload(&self, entity: &str, id: &str) -> Option<Upload> {
        self.shared.upload(entity, id)
    }
}

/// Turns `"CreatioWebApp/"` into `"/CreatioWebApp"` and `"/"` into `""`, and rejects characters
/// that would need escaping in a URL path or a header.
fn normalise_base_path(raw: &str) -> std::io::Result<String> {
    let trimmed = raw.trim_matches('/');
    let valid = trimmed.bytes().all(|b| {
        b.is_ascii_graphic()
            && !matches!(b, b'?' | b'#' | b'%' | b'"' | b'\'' | b'\\' | b'<' | b'>')
    });
    if !valid {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("emulator base_path {raw:?} must be plain printable ASCII"),
        ));
    }
    if trimmed.is_empty() {
        Ok(String::new())
    } else {
        Ok(format!("/{trimmed}"))
    }
}
