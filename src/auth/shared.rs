//! An identity's session shared with other replicas through the session store
//! ([`crate::store`]).
//!
//! Where a login would happen (the gate held, as in rules 1, 4 and the token renewal), an
//! identity with a store first asks it ([`Slot::claim`]): a stored session newer than the one
//! found expired here is taken as it is (no login); otherwise this replica takes the store's
//! login lock, logs in, and stores the new session for the others, or waits while another
//! replica does. A session taken from the store gets a new local generation like any other, and
//! keeps its store generation in [`Session::shared`]. Without a store, or while it is down,
//! nothing changes: the identity logs in on its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use super::{token_schedule, Fresh, Gate, Identity, Jar, LoginContext, Session};
use crate::error::ProxyError;
use crate::store::{unix_ms, Claim, Record, Slot, Stored};

/// The lock lease beyond the login timeout: a holder that died frees it this long after its
/// login could have ended.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

impl Fresh {
    /// How the session store keeps it ([`crate::store`]).
    pub(super) fn stored(&self) -> crate::store::Stored {
        match self {
            Fresh::Jar(jar) => Stored::Jar {
                cookies: jar.set_cookie_lines(),
            },
            Fresh::Token(token, started) => Stored::Token {
                authorization: token.authorization.to_str().unwrap_or_default().to_string(),
                obtained_ms: unix_ms().saturating_sub(started.elapsed().as_millis() as u64),
                lifetime_ms: token.lifetime.as_millis() as u64,
            },
        }
    }
}

impl Identity {
    /// Shares this identity's session through `slot` (`None`: not shared).
    pub(crate) fn sharing(mut self, slot: Option<Slot>) -> Self {
        self.slot = slot;
        self
    }

    /// A session newer than store generation `above`: from the store, from this replica's
    /// login under the store's lock, or (no store, or the store cannot help) from a login of
    /// its own. The caller holds the gate.
    pub(super) async fn login_shared(
        &self,
        ctx: &LoginContext,
        gate: &mut Gate,
        above: u64,
    ) -> Result<Arc<Session>, ProxyError> {
        let Some(slot) = &self.slot else {
            return self.attempt(ctx, gate, 0).await.map(|(s, _)| s);
        };
        let oauth2 = self.is_oauth2();
        let usable = |r: &Record| match &r.stored {
            Stored::Jar { cookies } => !oauth2 && !cookies.is_empty(),
            Stored::Token { .. } => oauth2 && token_times(&r.stored).is_some(),
        };
        match slot.claim(above, ctx.timeout + LEASE_MARGIN, usable).await {
            Claim::Adopt(record) => match self.adopt(&record) {
                Some(session) => Ok(session),
                None => self.attempt(ctx, gate, 0).await.map(|(s, _)| s),
            },
            Claim::Login { lock, generation } => {
                let result = self.attempt(ctx, gate, generation).await;
                if let Ok((_, stored)) = &result {
                    let ttl = match stored {
                        Stored::Token { .. } => token_times(stored).map(|(_, _, left)| left),
                        Stored::Jar { .. } => None,
                    };
                    if slot.publish(generation, stored, ttl).await {
                        tracing::debug!(identity = %self.name, generation, "session stored for the other replicas");
                    }
                }
                slot.release(lock).await;
                result.map(|(s, _)| s)
            }
            Claim::Alone => self.attempt(ctx, gate, 0).await.map(|(s, _)| s),
        }
    }

    /// Makes a stored session the current one. `None` when it cannot be used (it names no
    /// cookie, or the token is past its usable time).
    fn adopt(&self, record: &Record) -> Option<Arc<Session>> {
        let (session, jar) = match &record.stored {
            Stored::Jar { cookies } => {
                let mut jar = Jar::default();
                for line in cookies {
                    if let Ok(value) = HeaderValue::from_str(line) {
                        jar.apply(&value);
                    }
                }
                let cookie = jar.cookie_header()?;
                let session = Session {
                    generation: 0,
                    cookie: Some(cookie),
                    csrf: jar.csrf_header(),
                    authorization: None,
                    obtained: Instant::now(),
                    refresh_at: None,
                    expires_at: None,
                    shared: record.generation,
                };
                (session, jar)
            }
            Stored::Token { authorization, .. } => {
                let (refresh_at, expires_at, _) = token_times(&record.stored)?;
                let session = Session {
                    generation: 0,
                    cookie: None,
                    csrf: None,
                    authorization: Some(HeaderValue::from_str(authorization).ok()?),
                    obtained: Instant::now(),
                    refresh_at: Some(refresh_at),
                    expires_at: Some(expires_at),
                    shared: record.generation,
                };
                (session, Jar::default())
            }
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut session = session;
        session.generation = generation;
        if let Some(auth) = session.authorization.as_mut() {
            auth.set_sensitive(true);
        }
        let session = self.install(session, jar);
        self.metrics.adopted();
        tracing::info!(
            identity = %self.name,
            principal = %self.principal(),
            generation,
            shared = record.generation,
            "took the session another replica logged in from the session store"
        );
        Some(session)
    }

    /// Writes a jar that changed (a sliding renewal) back to the store under its generation,
    /// in the background. The store keeps a newer generation if there is one.
    pub(super) fn write_back(&self, shared: u64, jar: &Jar) {
        let Some(slot) = &self.slot else { return };
        if shared == 0 || !slot.store().is_up() {
            return;
        }
        let stored = Stored::Jar {
            cookies: jar.set_cookie_lines(),
        };
        let slot = slot.clone();
        tokio::spawn(async move {
            slot.publish(shared, &stored, None).await;
        });
    }
}

/// A stored token's renewal time, end of use (as this process's instants) and time left;
/// `None` once it is past its usable time.
fn token_times(stored: &Stored) -> Option<(Instant, Instant, Duration)> {
    let Stored::Token {
        obtained_ms,
        lifetime_ms,
        ..
    } = stored
    else {
        return None;
    };
    let age = Duration::from_millis(unix_ms().saturating_sub(*obtained_ms));
    let now = Instant::now();
    let started = now.checked_sub(age).unwrap_or(now);
    let (refresh_at, expires_at) = token_schedule(started, Duration::from_millis(*lifetime_ms));
    let left = expires_at.checked_duration_since(now)?;
    (!left.is_zero()).then_some((refresh_at, expires_at, left))
}
