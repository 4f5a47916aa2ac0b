//! The emulator's memory: accounts, sessions and forms tickets, OAuth clients and bearer
//! tokens, OData records, uploads, and the request log.
//!
//! Everything is in one `std::sync::Mutex`. Guards are short, are never held across an
//! `.await`, and a poisoned lock is recovered, because one bad test must not break the
//! emulator for everyone else. The two values tests wait on (the count of token requests and
//! the token hold) are `watch` channels instead, so waiting needs no polling.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use cookie::Cookie;
use http::header::{AUTHORIZATION, COOKIE};
use http::HeaderMap;
use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::faults::Faults;
use super::model::{
    EmulatorOptions, ExpiredResponse, Flavour, OAuthClient, SeenRequest, TokenFault, Upload,
};

/// How many requests [`Shared::seen`] keeps.
const SEEN_CAPACITY: usize = 10_000;

/// Characters of an ASP.NET session id (the `BPMLOADER` value): 24 of `a-z0-5`.
const LOADER_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz012345";

/// Characters of a `BPMCSRF` token.
const CSRF_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// State shared by the handle, the accept loop and every request.
pub(super) struct Shared {
    pub(super) flavour: Flavour,
    /// `""` or `/Dir`, already checked by `normalise_base_path`.
    pub(super) base_path: String,
    pub(super) addr: SocketAddr,
    /// `http://HOST:PORT`, used for `Location` and `@odata.context`.
    pub(super) origin: String,
    /// `http://HOST:PORT` of the Identity Service listener.
    pub(super) identity_origin: String,
    /// Answer every app request with a 302 here (`EmulatorOptions::front_redirect`).
    pub(super) front_redirect: Option<String>,
    /// Keyed by client id. Fixed at start, so read without the lock.
    clients: HashMap<String, OAuthClient>,
    session_timeout: Duration,
    lockout_after: Option<u32>,
    shutdown: watch::Sender<bool>,
    /// POSTs to the token endpoint so far.
    token_requests: watch::Sender<u64>,
    /// Requests recorded in the log so far (waiters watch it).
    seen_count: watch::Sender<u64>,
    /// True while token requests are held unanswered.
    token_hold: watch::Sender<bool>,
    /// Fault switches (`faults.rs`).
    pub(super) faults: Faults,
    state: Mutex<State>,
}

struct State {
    /// Keyed by the lower-cased name, because Creatio logins ignore case.
    accounts: HashMap<String, Account>,
    /// Also keyed by the lower-cased name, and also counts names that are not accounts.
    attempts: HashMap<String, u64>,
    sessions: HashMap<u64, Session>,
    /// `.ASPXAUTH` value → ticket. A renewal adds a ticket for the same session.
    tickets: HashMap<String, Ticket>,
    next_session: u64,
    invalidate_countdown: Option<u64>,
    /// Access token → what it grants. Independent of sessions and tickets.
    tokens: HashMap<String, Token>,
    tokens_issued: u64,
    /// How each issued token's client authenticated: `"form"` or `"basic"`.
    token_auth: Vec<&'static str>,
    token_lifetime: Duration,
    token_fault: Option<TokenFault>,
    clock_offset: Duration,
    expired_response: ExpiredResponse,
    /// "AllowOnlyOneSessionPerUser": a login ends the user's other forms sessions.
    one_session_per_user: bool,
    requests: HashMap<String, u64>,
    records: HashMap<String, Vec<Value>>,
    created: HashMap<String, u64>,
    uploads: HashMap<(String, String), Upload>,
    seen: VecDeque<SeenRequest>,
    rng: Rng,
}

struct Account {
    user: super::model::User,
    logins: u64,
    failures: u32,
    locked: bool,
}

/// The server side of a login. `BPMLOADER` is handed out but not stored: forms
/// authentication only reads `.ASPXAUTH`, and clients that send just `.ASPXAUTH` and `BPMCSRF`
/// work against real Creatio.
struct Session {
    account: String,
    csrf: String,
}

/// An ASP.NET forms ticket. Each ticket carries its own expiry, so a renewed ticket does not
/// cut the old one short.
#[derive(Clone, Copy)]
struct Ticket {
    session: u64,
    issued_at: Instant,
    expires_at: Instant,
}

/// A bearer token. It lives until it expires or is revoked; using it never renews it.
struct Token {
    /// Lower-cased account name, looked up on every use so the portal flag is current.
    account: String,
    expires_at: Instant,
}

/// The Identity Service's answer to a valid token request.
pub(super) struct Grant {
    /// The new token, or `None` under [`TokenFault::NoAccessToken`].
    pub(super) token: Option<String>,
    pub(super) lifetime: Duration,
}

/// What a login POST achieved.
pub(super) enum LoginOutcome {
    Success(NewSession),
    WrongCredentials,
    Locked,
    PasswordExpired,
}

/// Cookie values of a new session.
pub(super) struct NewSession {
    pub(super) user: String,
    pub(super) portal: bool,
    pub(super) loader: String,
    pub(super) ticket: String,
    pub(super) csrf: String,
}

/// Result of the session check on a `/0/...` request.
pub(super) enum Auth {
    /// No ticket, or an unknown, expired or invalidated one.
    Missing,
    /// The ticket is valid, but the `BPMCSRF` header is missing or wrong.
    BadCsrf,
    /// A bearer token was presented, and it is unknown, expired or revoked.
    BearerDenied,
    Valid {
        user: String,
        portal: bool,
        /// A new `.ASPXAUTH` value when the ticket was past half its lifetime.
        renewed: Option<String>,
    },
}

impl Shared {
    /// `addrs` are the bound addresses of the app and Identity Service listeners.
    pub(super) fn new(
        options: EmulatorOptions,
        base_path: String,
        addrs: (SocketAddr, SocketAddr),
    ) -> Shared {
        let (addr, identity_addr) = addrs;
        let accounts = options
            .users
            .into_iter()
            .map(|user| {
                let account = Account {
                    user,
                    logins: 0,
                    failures: 0,
                    locked: false,
                };
                (account.user.name.to_lowercase(), account)
            })
            .collect();
        let clients = options
            .oauth_clients
            .into_iter()
            .map(|client| (client.client_id.clone(), client))
            .collect();
        Shared {
            flavour: options.flavour,
            base_path,
            addr,
            origin: origin(addr),
            identity_origin: origin(identity_addr),
            front_redirect: options.front_redirect,
            clients,
            session_timeout: options.session_timeout,
            lockout_after: options.lockout_after,
            shutdown: watch::channel(false).0,
            token_requests: watch::channel(0).0,
            seen_count: watch::channel(0).0,
            token_hold: watch::channel(false).0,
            faults: Faults::new(),
            state: Mutex::new(State {
                accounts,
                attempts: HashMap::new(),
                sessions: HashMap::new(),
                tickets: HashMap::new(),
                next_session: 1,
                invalidate_countdown: None,
                tokens: HashMap::new(),
                tokens_issued: 0,
                token_auth: Vec::new(),
                token_lifetime: options.token_lifetime,
                token_fault: None,
                clock_offset: Duration::ZERO,
                expired_response: options.expired_response,
                one_session_per_user: options.one_session_per_user,
                requests: HashMap::new(),
                records: HashMap::new(),
                created: HashMap::new(),
                uploads: HashMap::new(),
                seen: VecDeque::new(),
                rng: Rng::seeded(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // === lifecycle ===

    pub(super) fn subscribe_shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(super) fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    // === clock, used by the cookie expiry date ===

    /// Wall-clock time as the emulator sees it (real time plus [`Shared::advance_clock`]).
    pub(super) fn wall_clock(&self) -> SystemTime {
        SystemTime::now() + self.lock().clock_offset
    }

    // === login and sessions ===

    /// Handles one login POST. `name` is `None` when the body named no user.
    pub(super) fn login(&self, name: Option<&str>, password: Option<&str>) -> LoginOutcome {
        let Some(name) = name else {
            return LoginOutcome::WrongCredentials;
        };
        let key = name.to_lowercase();
        let mut guard = self.lock();
        let st = &mut *guard;
        *st.attempts.entry(key.clone()).or_default() += 1;
        let Some(account) = st.accounts.get_mut(&key) else {
            return LoginOutcome::WrongCredentials;
        };
        // A locked account refuses even the right password. Creatio says "locked" and not
        // "wrong password", so clients can tell the two apart.
        if account.locked {
            return LoginOutcome::Locked;
        }
        if password != Some(account.user.password.as_str()) {
            account.failures = account.failures.saturating_add(1);
            if self.lockout_after.is_some_and(|n| account.failures >= n) {
                account.locked = true;
            }
            return LoginOutcome::WrongCredentials;
        }
        account.failures = 0;
        if account.user.password_expired {
            return LoginOutcome::PasswordExpired;
        }
        account.logins += 1;
        let user = account.user.name.clone();
        let portal = account.user.portal;

        let now = st.now();
        st.tickets.retain(|_, t| t.expires_at >= now);
        if st.one_session_per_user {
            st.end_sessions_of(&key);
        }
        let id = st.next_session;
        st.next_session += 1;
        let session = NewSession {
            user,
            portal,
            loader: st.rng.token(24, LOADER_ALPHABET),
            ticket: st.rng.hex(300),
            csrf: st.rng.token(22, CSRF_ALPHABET),
        };
        st.sessions.insert(
            id,
            Session {
                account: key,
                csrf: session.csrf.clone(),
            },
        );
        st.tickets.insert(
            session.ticket.clone(),
            Ticket {
                session: id,
                issued_at: now,
                expires_at: now + self.session_timeout,
            },
        );
        LoginOutcome::Success(session)
    }

    /// The session check on every `/0/...` request: a bearer token if one is presented,
    /// otherwise the forms ticket and `BPMCSRF`, with sliding renewal.
    pub(super) fn authenticate(&self, headers: &HeaderMap) -> Auth {
        if let Some(token) = bearer(headers) {
            return self.authenticate_bearer(token);
        }
        let Some(presented) = aspxauth(headers) else {
            return Auth::Missing;
        };
        let csrf = headers.get("BPMCSRF").and_then(|v| v.to_str().ok());
        let mut guard = self.lock();
        let st = &mut *guard;
        let now = st.now();
        let Some(ticket) = st.tickets.get(&presented).copied() else {
            return Auth::Missing;
        };
        if now > ticket.expires_at {
            return Auth::Missing;
        }
        let Some(session) = st.sessions.get(&ticket.session) else {
            return Auth::Missing;
        };
        // Assumption: the reference (§3) has no primary evidence for a missing or wrong
        // BPMCSRF. It suggests 401, and 401 is what clients already re-login on.
        if csrf != Some(session.csrf.as_str()) {
            return Auth::BadCsrf;
        }
        let Some(account) = st.accounts.get(&session.account) else {
            return Auth::Missing;
        };
        let (user, portal) = (account.user.name.clone(), account.user.portal);
        if let Some(left) = st.invalidate_countdown.as_mut() {
            *left = left.saturating_sub(1);
            if *left == 0 {
                st.invalidate_all();
                return Auth::Missing;
            }
        }
        // ASP.NET slidingExpiration: once more than half the lifetime has passed, a new ticket
        // is sent. The old ticket is self-contained, so it keeps working until it expires.
        let lifetime = ticket.expires_at.duration_since(ticket.issued_at);
        let renewed = (now.duration_since(ticket.issued_at) > lifetime / 2).then(|| {
            let value = st.rng.hex(300);
            st.tickets.insert(
                value.clone(),
                Ticket {
                    session: ticket.session,
                    issued_at: now,
                    expires_at: now + self.session_timeout,
                },
            );
            value
        });
        Auth::Valid {
            user,
            portal,
            renewed,
        }
    }

    /// A token stands on its own (§8): no cookie, no `BPMCSRF`, no renewal, and it does not
    /// count towards `invalidate_sessions_after`.
    fn authenticate_bearer(&self, token: &str) -> Auth {
        let st = self.lock();
        let now = st.now();
        let account = st
            .tokens
            .get(token)
            .filter(|t| now <= t.expires_at)
            .and_then(|t| st.accounts.get(&t.account));
        match account {
            Some(account) => Auth::Valid {
                user: account.user.name.clone(),
                portal: account.user.portal,
                renewed: None,
            },
            None => Auth::BearerDenied,
        }
    }

    pub(super) fn invalidate_sessions(&self) {
        self.lock().invalidate_all();
    }

    pub(super) fn invalidate_sessions_after(&self, n: u64) {
        let mut st = self.lock();
        if n == 0 {
            st.invalidate_all();
        } else {
            st.invalidate_countdown = Some(n);
        }
    }

    pub(super) fn advance_clock(&self, d: Duration) {
        let mut st = self.lock();
        st.clock_offset = st.clock_offset.saturating_add(d);
    }

    pub(super) fn expired_response(&self) -> ExpiredResponse {
        self.lock().expired_response
    }

    pub(super) fn set_expired_response(&self, e: ExpiredResponse) {
        self.lock().expired_response = e;
    }

    pub(super) fn set_one_session_per_user(&self, on: bool) {
        self.lock().one_session_per_user = on;
    }

    pub(super) fn set_password(&self, user: &str, password: &str) {
        if let Some(account) = self.lock().accounts.get_mut(&user.to_lowercase()) {
            account.user.password = password.to_owned();
        }
    }

    pub(super) fn unlock(&self, user: &str) {
        if let Some(account) = self.lock().accounts.get_mut(&user.to_lowercase()) {
            account.locked = false;
            account.failures = 0;
        }
    }

    pub(super) fn lock_user(&self, user: &str) {
        if let Some(account) = self.lock().accounts.get_mut(&user.to_lowercase()) {
            account.locked = true;
        }
    }

    pub(super) fn logins(&self, user: &str) -> u64 {
        let st = self.lock();
        st.accounts
            .get(&user.to_lowercase())
            .map_or(0, |a| a.logins)
    }

    pub(super) fn login_attempts(&self, user: &str) -> u64 {
        let st = self.lock();
        st.attempts.get(&user.to_lowercase()).copied().unwrap_or(0)
    }

    // === Identity Service ===

    pub(super) fn client(&self, client_id: &str) -> Option<&OAuthClient> {
        self.clients.get(client_id)
    }

    /// Issues a token acting as `user`, valid for the current lifetime on the emulator clock.
    pub(super) fn grant_token(&self, user: &str, method: &'static str) -> Grant {
        let mut guard = self.lock();
        let st = &mut *guard;
        let lifetime = st.token_lifetime;
        if st.token_fault == Some(TokenFault::NoAccessToken) {
            return Grant {
                token: None,
                lifetime,
            };
        }
        let now = st.now();
        st.tokens.retain(|_, t| t.expires_at >= now);
        // IdentityServer's reference-token handles are 64 upper-case hex digits.
        let token = st.rng.hex(64);
        let entry = Token {
            account: user.to_lowercase(),
            expires_at: now + lifetime,
        };
        st.tokens.insert(token.clone(), entry);
        st.tokens_issued += 1;
        st.token_auth.push(method);
        Grant {
            token: Some(token),
            lifetime,
        }
    }

    pub(super) fn count_token_request(&self) {
        self.token_requests.send_modify(|n| *n += 1);
    }

    pub(super) fn token_requests(&self) -> u64 {
        *self.token_requests.borrow()
    }

    pub(super) async fn wait_token_requests(&self, n: u64) {
        // The sender lives in `self`, so this only ends when the count is reached.
        let _ = self
            .token_requests
            .subscribe()
            .wait_for(|&seen| seen >= n)
            .await;
    }

    pub(super) fn tokens_issued(&self) -> u64 {
        self.lock().tokens_issued
    }

    pub(super) fn token_auth(&self) -> Vec<&'static str> {
        self.lock().token_auth.clone()
    }

    pub(super) fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    pub(super) fn set_token_lifetime(&self, d: Duration) {
        self.lock().token_lifetime = d;
    }

    pub(super) fn set_token_fault(&self, fault: Option<TokenFault>) {
        self.lock().token_fault = fault;
    }

    pub(super) fn hold_tokens(&self, hold: bool) {
        self.token_hold.send_replace(hold);
    }

    /// Resolves once token requests are not held. Shutdown releases them too, so a held
    /// request cannot keep a connection, and the graceful shutdown, waiting for ever.
    pub(super) async fn tokens_released(&self) {
        let mut hold = self.token_hold.subscribe();
        let mut shutdown = self.subscribe_shutdown();
        tokio::select! {
            _ = hold.wait_for(|held| !*held) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }

    // === request log ===

    pub(super) fn count_request(&self, path: &str) {
        *self.lock().requests.entry(path.to_owned()).or_default() += 1;
    }

    pub(super) fn requests(&self, path: &str) -> u64 {
        self.lock().requests.get(path).copied().unwrap_or(0)
    }

    pub(super) fn record_seen(&self, request: SeenRequest) {
        let mut st = self.lock();
        if st.seen.len() >= SEEN_CAPACITY {
            st.seen.pop_front();
        }
        st.seen.push_back(request);
        drop(st);
        self.seen_count.send_modify(|n| *n += 1);
    }

    /// Resolves once a request that `matches` is in the log (it may already be).
    pub(super) async fn wait_seen(&self, matches: impl Fn(&SeenRequest) -> bool) {
        // Subscribed before looking, so a request logged in between wakes the wait.
        let mut logged = self.seen_count.subscribe();
        loop {
            if self.lock().seen.iter().any(&matches) {
                return;
            }
            // The sender lives in `self`: this only fails if the emulator is gone.
            if logged.changed().await.is_err() {
                return;
            }
        }
    }

    pub(super) fn seen(&self) -> Vec<SeenRequest> {
        self.lock().seen.iter().cloned().collect()
    }

    // === OData records and uploads ===

    /// Stores a record. A client-supplied string `Id` is kept, as Creatio allows; otherwise the
    /// record gets a new one.
    pub(super) fn create_record(&self, entity: &str, mut fields: Map<String, Value>) -> Value {
        let mut st = self.lock();
        let id = match fields.get("Id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => st.rng.uuid(),
        };
        fields.insert("Id".to_owned(), Value::String(id));
        let record = Value::Object(fields);
        st.records
            .entry(entity.to_owned())
            .or_default()
            .push(record.clone());
        *st.created.entry(entity.to_owned()).or_default() += 1;
        record
    }

    pub(super) fn record(&self, entity: &str, id: &str) -> Option<Value> {
        let st = self.lock();
        let records = st.records.get(entity)?;
        records.iter().find(|r| has_id(r, id)).cloned()
    }

    /// Merges `fields` into the record, leaving its `Id` alone. Returns false if there is no
    /// such record.
    pub(super) fn patch_record(&self, entity: &str, id: &str, fields: Map<String, Value>) -> bool {
        let mut st = self.lock();
        let record = st
            .records
            .get_mut(entity)
            .and_then(|records| records.iter_mut().find(|r| has_id(r, id)));
        let Some(Value::Object(record)) = record else {
            return false;
        };
        for (name, value) in fields {
            if name != "Id" {
                record.insert(name, value);
            }
        }
        true
    }

    pub(super) fn delete_record(&self, entity: &str, id: &str) -> bool {
        let mut st = self.lock();
        let Some(records) = st.records.get_mut(entity) else {
            return false;
        };
        let before = records.len();
        records.retain(|r| !has_id(r, id));
        records.len() != before
    }

    pub(super) fn records(&self, entity: &str) -> Vec<Value> {
        self.lock().records.get(entity).cloned().unwrap_or_default()
    }

    pub(super) fn records_created(&self, entity: &str) -> u64 {
        self.lock().created.get(entity).copied().unwrap_or(0)
    }

    pub(super) fn store_upload(&self, entity: &str, id: &str, upload: Upload) {
        let key = (entity.to_owned(), id.to_owned());
        self.lock().uploads.insert(key, upload);
    }

    pub(super) fn upload(&self, entity: &str, id: &str) -> Option<Upload> {
        let key = (entity.to_owned(), id.to_owned());
        self.lock().uploads.get(&key).copied()
    }
}

impl State {
    /// The emulator clock: real (tokio) time plus the accumulated offset.
    fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    fn invalidate_all(&mut self) {
        self.sessions.clear();
        self.tickets.clear();
        self.invalidate_countdown = None;
    }

    /// Ends every forms session of `account` (lower-cased) and drops their tickets, renewed
    /// ones included, as "AllowOnlyOneSessionPerUser" does when the user logs in again. Other
    /// users' sessions and every bearer token stay.
    fn end_sessions_of(&mut self, account: &str) {
        self.sessions.retain(|_, s| s.account != account);
        let sessions = &self.sessions;
        self.tickets
            .retain(|_, t| sessions.contains_key(&t.session));
    }
}

/// GUIDs compare case-insensitively in Creatio.
fn has_id(record: &Value, id: &str) -> bool {
    record
        .get("Id")
        .and_then(Value::as_str)
        .is_some_and(|v| v.eq_ignore_ascii_case(id))
}

/// The first `.ASPXAUTH` in the `Cookie` header lines, as ASP.NET takes the first cookie of a
/// name. `Set-Cookie` request headers are ignored on purpose: the WSO2 bug sends cookies that
/// way, and Creatio ignores them.
fn aspxauth(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == ".ASPXAUTH")
        .map(|c| c.value().to_owned())
}

/// The token of the first `Authorization` header if its scheme is `Bearer` (any case).
/// `Bearer` with nothing after it yields `""`, which no token matches.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    scheme
        .eq_ignore_ascii_case("Bearer")
        .then_some(token.trim())
}

/// `http://HOST:PORT` for a bound address. A wildcard bind is reachable at the loopback
/// address, which is what clients need.
fn origin(addr: SocketAddr) -> String {
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => {
            SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        ip if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    };
    format!("http://{host}")
}

/// SplitMix64 seeded from the process's random hasher keys and the time. Cookie values only
/// need to look random and not repeat; nothing here is meant to be secure.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let mut hasher = RandomState::new().build_hasher();
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hasher.write_u128(nanos);
        Rng(hasher.finish())
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn token(&mut self, len: usize, alphabet: &[u8]) -> String {
        (0..len)
            .map(|_| {
                let i = (self.next() % alphabet.len() as u64) as usize;
                char::from(alphabet[i])
            })
            .collect()
    }

    fn hex(&mut self, len: usize) -> String {
        self.token(len, b"0123456789ABCDEF")
    }

    /// A version-4-shaped GUID in Creatio's lower-case form.
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0x0fff,
            ((b >> 48) & 0x3fff) | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }
}
