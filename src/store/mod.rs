//! Sessions shared between replicas through Redis or Valkey (`[session_store]`).
//!
//! Every replica with the same store, `key_prefix`, Creatio URL and user (or OAuth client)
//! uses one session. Per identity the store holds two keys, named by an HMAC of that identity
//! (nothing in a name says who it is):
//! - `{prefix}:session:{name}`, a hash: `gen`, the session's generation across all replicas
//!   (plain, so a script can compare it), and `data`, the session sealed with AES-256-GCM
//!   ([`seal`]) and bound to the key and the generation;
//! - `{prefix}:lock:{name}`, held while one replica logs in: `SET NX PX` with a random token
//!   and a lease a little longer than a login may take, deleted only by its holder.
//!
//! A replica that needs a session ([`Slot::claim`]) takes a stored one newer than the one it
//! found expired; otherwise it takes the lock and logs in, and the others wait on the
//! identity's channel (`{prefix}:published:{name}`, where the holder's write and its release
//! publish) or for the lock's lease to end, then look again: they take the new session, or the
//! lock if it went away without one. Writes never
//! replace a newer generation (a script compares). Sliding renewals of the same generation are
//! written back when the jar changes, not per request.
//!
//! The store never stops traffic: each operation is bounded by `session_store.timeout`; a
//! failure marks the store down, and until a `PING` finds it answering again, requests do not
//! touch it and every replica goes on with a session of its own. The `PING` is sent by every
//! `/readyz` probe and by the first login that needs the store after [`RECHECK`], so a store
//! that is down costs a request at most one timeout a second, and no timer runs. A value that
//! does not open (another key, corruption) is logged and overwritten by the next login.

pub(crate) mod seal;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{CreatioUrl, LoginConfig, SessionStoreConfig};
use crate::metrics::Metrics;

/// How often logins ask a store that is down whether it is back.
const RECHECK: Duration = Duration::from_secs(1);
/// How long a stored forms session is kept after its last write: Creatio ends idle sessions
/// long before (its default is 60 minutes), and an expired one only costs one answer.
const JAR_TTL: Duration = Duration::from_secs(24 * 3600);

/// Writes `ARGV[2]` as generation `ARGV[1]` unless the hash holds a newer one; `ARGV[3]` is
/// the time to live in milliseconds. Also stamps the prefix with the writer's key check
/// (`KEYS[2]` = `ARGV[4]`, kept a day) and tells the waiting replicas (`KEYS[3]`, a channel).
/// 1: written, 0: a newer generation is stored.
const WRITE: &str = r"
local g = redis.call('HGET', KEYS[1], 'gen')
if g and tonumber(g) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'data', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'PX', 86400000)
redis.call('PUBLISH', KEYS[3], 'stored')
return 1
";

/// Deletes the lock only if `ARGV[1]` (the holder's token) still holds it, and tells the
/// waiting replicas (`KEYS[2]`, a channel).
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', KEYS[2], 'released')
  return 1
end
return 0
";

/// A session as stored (inside the seal).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Stored {
    /// A forms session: the cookies as `Set-Cookie` lines.
    Jar { cookies: Vec<String> },
    /// An OAuth 2.0 token: the `Authorization` value, when it was asked for (Unix ms) and
    /// how long it lives.
    Token {
        authorization: String,
        obtained_ms: u64,
        lifetime_ms: u64,
    },
}

/// A stored session and its generation.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) generation: u64,
    pub(crate) stored: Stored,
}

/// Why a store operation failed, as counted in the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No connection (refused, reset, name not found).
    Unreachable,
    /// No answer within `session_store.timeout`.
    Timeout,
    /// An error answer (authentication, a read-only replica, a wrong type).
    Refused,
    /// A value that does not open with this replica's key.
    Undecryptable,
    /// A value that opens but is not a stored session.
    Invalid,
    /// The prefix was last written by a replica with another key: sessions are not shared
    /// with it (its keys have other names).
    OtherKey,
}

impl Failure {
    fn kind(self) -> &'static str {
        match self {
            Failure::Unreachable => "unreachable",
            Failure::Timeout => "timeout",
            Failure::Refused => "refused",
            Failure::Undecryptable => "undecryptable",
            Failure::Invalid => "invalid",
            Failure::OtherKey => "other_key",
        }
    }
}

/// The connection to the store, shared by every identity of a config.
pub(crate) struct Store {
    /// For the subscriptions of replicas waiting for another one's login.
    client: redis::Client,
    conn: ConnectionManager,
    prefix: String,
    sealer: seal::Sealer,
    timeout: Duration,
    display: String,
    up: AtomicBool,
    /// While down: when a login may next ask the store whether it is back.
    next_recheck: Mutex<Instant>,
    metrics: Arc<Metrics>,
    /// `{prefix}:keycheck`, and this replica's value for it (an HMAC of a constant).
    check_key: String,
    check: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("url", &self.display)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store for `config`; connects lazily. `None` when the URL is unusable (the config
    /// check makes that rare; it is logged).
    pub(crate) fn start(config: &SessionStoreConfig, metrics: Arc<Metrics>) -> Option<Arc<Store>> {
        let client = match redis::Client::open(config.url.expose()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(store = %config.display, "session store unusable, sessions are not shared: {e}");
                return None;
            }
        };
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(config.timeout);
        let conn = match ConnectionManager::new_lazy_with_config(client.clone(), manager) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(store = %config.display, "session store unusable, sessions are not shared: {e}");
                return None;
            }
        };
        let sealer = seal::Sealer::new(&config.key.0);
        let store = Arc::new(Store {
            client,
            conn,
            prefix: config.key_prefix.clone(),
            check_key: format!("{}:keycheck", config.key_prefix),
            check: sealer.name(&["key check"]),
            sealer,
            timeout: config.timeout,
            display: config.display.clone(),
            up: AtomicBool::new(true),
            next_recheck: Mutex::new(Instant::now()),
            metrics,
        });
        store.metrics.session_store_up(&store.display, true);
        Some(store)
    }

    /// Connects to the store at `config` once and asks for a `PING` (for `check`); the error
    /// says why it failed, without the URL's password.
    pub(crate) async fn ping(config: &SessionStoreConfig) -> Result<(), String> {
        let client = redis::Client::open(config.url.expose()).map_err(|e| e.to_string())?;
        let ping = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        };
        match tokio::time::timeout(config.timeout.max(Duration::from_secs(2)), ping).await {
            Err(_) => Err("no answer within 2 s".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// The store's URL without a password.
    pub(crate) fn display(&self) -> &str {
        &self.display
    }

    /// True unless the last operation failed to reach the store.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// A store marked down is sent a `PING` (within the timeout) and is up again if it
    /// answers. Returns whether it is up. The first `PING` may meet the client's dead
    /// connection from before (the client then starts a new one), so a second one is sent
    /// through the new connection before the store is called down.
    pub(crate) async fn recheck(&self) -> bool {
        if self.is_up() {
            return true;
        }
        for _ in 0..2 {
            if self.run::<String>(&redis::cmd("PING")).await.is_ok() {
                self.mark(true);
                return true;
            }
        }
        false
    }

    /// For a login: true when the store is up, or is down but answers a recheck; a login asks
    /// a store that is down at most once per [`RECHECK`].
    async fn usable(&self) -> bool {
        if self.is_up() {
            return true;
        }
        {
            let Ok(mut next) = self.next_recheck.lock() else {
                return false;
            };
            let now = Instant::now();
            if now < *next {
                return false;
            }
            *next = now + RECHECK;
        }
        self.recheck().await
    }

    /// The slot of one identity, named from `parts` (Creatio URL, mode, user or client).
    pub(crate) fn slot(self: &Arc<Self>, parts: &[&str]) -> Slot {
        let name = self.sealer.name(parts);
        Slot {
            store: self.clone(),
            key: format!("{}:session:{name}", self.prefix),
            lock: format!("{}:lock:{name}", self.prefix),
            channel: format!("{}:published:{name}", self.prefix),
        }
    }

    fn mark(&self, up: bool) {
        if self.up.swap(up, Ordering::AcqRel) != up {
            self.metrics.session_store_up(&self.display, up);
            if up {
                tracing::info!(store = %self.display, "session store reachable again: sessions are shared");
            }
        }
    }

    fn failed(&self, failure: Failure, what: &str) {
        self.metrics.session_store_error(failure.kind());
        match failure {
            Failure::Unreachable | Failure::Timeout => {
                if self.up.swap(false, Ordering::AcqRel) {
                    if let Ok(mut next) = self.next_recheck.lock() {
                        *next = Instant::now() + RECHECK;
                    }
                    self.metrics.session_store_up(&self.display, false);
                    tracing::warn!(store = %self.display, error = failure.kind(), "session store unreachable ({what}): each replica goes on with a session of its own until it answers again");
                }
            }
            Failure::Refused => {
                tracing::warn!(store = %self.display, error = failure.kind(), "session store refused {what}: going on without it for this login")
            }
            Failure::Undecryptable => {
                tracing::error!(store = %self.display, error = failure.kind(), "the session store holds a session this replica cannot open (another encryption_key_file, or corruption): logging in, and the new session replaces it")
            }
            Failure::Invalid => {
                tracing::error!(store = %self.display, error = failure.kind(), "the session store holds a value that is not a session: logging in, and the new session replaces it")
            }
            Failure::OtherKey => {
                tracing::error!(store = %self.display, key_prefix = %self.prefix, error = failure.kind(), "the session store was last written under this key_prefix by a replica with another encryption_key_file: sessions are not shared with it; give every replica the same key file (or each group its own key_prefix)")
            }
        }
    }

    /// Runs one command within the timeout.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Failure> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(e)) => Err(classify(&e)),
            Ok(Ok(v)) => Ok(v),
        }
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<T, Failure> {
        let mut conn = self.conn.clone();
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        match tokio::time::timeout(self.timeout, invocation.invoke_async::<T>(&mut conn)).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(e)) => Err(classify(&e)),
            Ok(Ok(v)) => Ok(v),
        }
    }
}

fn classify(e: &redis::RedisError) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
    {
        Failure::Unreachable
    } else {
        Failure::Refused
    }
}

/// What [`Slot::claim`] found.
#[derive(Debug)]
pub(crate) enum Claim {
    /// A usable session newer than the one asked about: use it, no login.
    Adopt(Record),
    /// This replica holds the lock: log in, [`Slot::publish`] the session as `generation`,
    /// then [`Slot::release`].
    Login { lock: Lock, generation: u64 },
    /// The store cannot help now (down, or the wait took too long): log in and store nothing.
    Alone,
}

/// A held login lock.
#[derive(Debug)]
pub(crate) struct Lock(String);

/// One identity's keys in the store.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    store: Arc<Store>,
    key: String,
    lock: String,
    /// Where the lock's holder says it is done (a stored session, or the lock released).
    channel: String,
}

impl Slot {
    /// The store this slot is in.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Finds a session newer than generation `above` that `usable` accepts, or the right to
    /// log in. While another replica holds the lock, waits for its news on the channel or for
    /// its lease to end, up to `lease` (and takes the lock itself if it is released or its
    /// lease ends without a session).
    pub(crate) async fn claim(
        &self,
        above: u64,
        lease: Duration,
        usable: impl Fn(&Record) -> bool,
    ) -> Claim {
        let store = &self.store;
        if !store.usable().await {
            return Claim::Alone;
        }
        let deadline = Instant::now() + lease + store.timeout;
        let mut waited = false;
        let mut waiter: Option<redis::aio::PubSubStream> = None;
        loop {
            let seen = match self.read().await {
                Ok(Some(r)) if r.generation > above && usable(&r) => {
                    if waited {
                        tracing::debug!(
                            generation = r.generation,
                            "another replica's login arrived in the session store"
                        );
                    }
                    return Claim::Adopt(r);
                }
                Ok(Some(r)) => r.generation,
                Ok(None) => {
                    if !waited {
                        self.check_key().await;
                    }
                    0
                }
                Err((failure, generation)) => {
                    store.failed(failure, "a read");
                    if matches!(
                        failure,
                        Failure::Unreachable | Failure::Timeout | Failure::Refused
                    ) {
                        return Claim::Alone;
                    }
                    generation
                }
            };
            match self.try_lock(lease).await {
                Ok(Some(lock)) => {
                    // A login may have been stored between the read and the lock.
                    if let Ok(Some(r)) = self.read().await {
                        if r.generation > above && usable(&r) {
                            self.release(lock).await;
                            return Claim::Adopt(r);
                        }
                    }
                    return Claim::Login {
                        lock,
                        generation: seen.max(above) + 1,
                    };
                }
                Ok(None) => {}
                Err(failure) => {
                    store.failed(failure, "the login lock");
                    return Claim::Alone;
                }
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(store = %store.display, "waited {:?} for another replica's login without a session appearing: logging in here", lease);
                return Claim::Alone;
            }
            // Another replica holds the lock. Its news comes on the identity's channel (a
            // stored session, or the lock released without one); a holder that died sends
            // none, so the wait also ends with its lease.
            let Some(news) = waiter.as_mut() else {
                match self.subscribe().await {
                    // News may have come before the subscription: look again first.
                    Ok(stream) => waiter = Some(stream),
                    Err(failure) => {
                        store.failed(failure, "the login channel");
                        return Claim::Alone;
                    }
                }
                continue;
            };
            let wait = self.lease_left().await.unwrap_or(lease).min(deadline - now);
            let _ = tokio::time::timeout(wait, news.next()).await;
            waited = true;
        }
    }

    /// A subscription to the identity's channel, where a login's holder says it is done.
    async fn subscribe(&self) -> Result<redis::aio::PubSubStream, Failure> {
        let subscribe = async {
            let mut pubsub = self.store.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(pubsub.into_on_message())
        };
        match tokio::time::timeout(self.store.timeout, subscribe).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(e)) => Err(classify(&e)),
            Ok(Ok(stream)) => Ok(stream),
        }
    }

    /// How long the login lock has left (a little more, so that it is gone), or `None` when
    /// that is unknown.
    async fn lease_left(&self) -> Option<Duration> {
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(&self.lock);
        match self.store.run::<i64>(&cmd).await {
            // -2: no lock any more; look again at once.
            Ok(-2) => Some(Duration::ZERO),
            Ok(ms) if ms >= 0 => Some(Duration::from_millis(ms as u64 + 5)),
            _ => None,
        }
    }

    /// The stored session. An error carries the stored generation when it is known (a value
    /// that does not open).
    pub(crate) async fn read(&self) -> Result<Option<Record>, (Failure, u64)> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&self.key).arg("gen").arg("data");
        let (generation, data): (Option<u64>, Option<Vec<u8>>) =
            self.store.run(&cmd).await.map_err(|f| (f, 0))?;
        self.store.mark(true);
        let (Some(generation), Some(data)) = (generation, data) else {
            return Ok(None);
        };
        let plain = self
            .store
            .sealer
            .open(&self.key, generation, &data)
            .map_err(|_| (Failure::Undecryptable, generation))?;
        let stored: Stored =
            serde_json::from_slice(&plain).map_err(|_| (Failure::Invalid, generation))?;
        Ok(Some(Record { generation, stored }))
    }

    /// Nothing stored under this identity's name: says so when the prefix was last written
    /// with another key (whose names differ, so nothing is shared with it).
    async fn check_key(&self) {
        let mut cmd = redis::cmd("GET");
        cmd.arg(&self.store.check_key);
        if let Ok(Some(check)) = self.store.run::<Option<String>>(&cmd).await {
            if check != self.store.check {
                self.store.failed(Failure::OtherKey, "the key check");
            }
        }
    }

    async fn try_lock(&self, lease: Duration) -> Result<Option<Lock>, Failure> {
        let token = random_token().ok_or(Failure::Refused)?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(&self.lock)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(lease.as_millis() as u64);
        let set: Option<String> = self.store.run(&cmd).await?;
        Ok(set.map(|_| Lock(token)))
    }

    /// Releases a lock this replica holds (a lock whose lease ended is left to its new holder).
    pub(crate) async fn release(&self, lock: Lock) {
        let script = redis::Script::new(UNLOCK);
        if let Err(f) = self
            .store
            .script::<i64>(&script, &[&self.lock, &self.channel], &[lock.0.as_bytes()])
            .await
        {
            // The lease ends it anyway.
            self.store.failed(f, "releasing the login lock");
        }
    }

    /// Stores `stored` as `generation`, unless a newer one is stored. `ttl`: how long the
    /// store keeps it. True when written.
    pub(crate) async fn publish(
        &self,
        generation: u64,
        stored: &Stored,
        ttl: Option<Duration>,
    ) -> bool {
        let Ok(plain) = serde_json::to_vec(stored) else {
            return false;
        };
        let Some(sealed) = self.store.sealer.seal(&self.key, generation, &plain) else {
            tracing::error!("the system's random source failed: the session is not stored");
            return false;
        };
        let ttl = ttl.unwrap_or(JAR_TTL).max(Duration::from_secs(1));
        let script = redis::Script::new(WRITE);
        let generation = generation.to_string();
        let ttl = (ttl.as_millis() as u64).to_string();
        match self
            .store
            .script::<i64>(
                &script,
                &[&self.key, &self.store.check_key, &self.channel],
                &[
                    generation.as_bytes(),
                    &sealed,
                    ttl.as_bytes(),
                    self.store.check.as_bytes(),
                ],
            )
            .await
        {
            Ok(written) => written == 1,
            Err(f) => {
                self.store.failed(f, "a write");
                false
            }
        }
    }
}

/// What names an identity's session in the store: replicas share a session only when all of
/// these are equal (the password is not part of it: a new password does not end a session).
pub(crate) fn slot_parts<'a>(creatio: &'a CreatioUrl, login: &'a LoginConfig) -> Vec<&'a str> {
    match login {
        LoginConfig::Forms { username, .. } => vec![&creatio.display, "forms", username],
        LoginConfig::OAuth2(o) => vec![
            &creatio.display,
            "oauth2",
            &o.token_url.display,
            &o.client_id,
        ],
    }
}

/// 16 random bytes in hex: a lock holder's token.
fn random_token() -> Option<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
