//! The guard against re-login storms: which endpoints have shown that a fresh session does not
//! help them.
//!
//! A re-login whose replay is refused as "expired" again means the answer came from the
//! endpoint (a service that answers 401 by itself), not from an expired session. Logging in
//! again for every such request would open a Creatio session per request, so the proxy pauses
//! re-logins for that endpoint. The rules:
//!
//! 1. **Keyed by endpoint, not by identity.** One endpoint that always answers 401 must not
//!    turn a real expiry met on another endpoint into a refusal: that one still logs in again
//!    and replays. The key is the canonical path ([`crate::canonical`]) without its query, with
//!    the `/0` and `ssp` segments Creatio serves one service under folded away
//!    ([`route_key`]), in ASCII lower case as IIS compares paths: `/0/rest/S/M`, `/rest/S/M`
//!    and `/0/REST/s/m` are one endpoint, `/0/rest/S/N` is another. The query is left out,
//!    so a client cannot make a new endpoint per request by changing it. Guards are per
//!    identity, so the key is really (identity, endpoint).
//! 2. Each refusal pauses that endpoint on the login back-off schedule (`login_backoff`
//!    doubling up to `login_backoff_max`); its expired answers are then 502 `relogin_paused`
//!    until the pause ends. A replay that works on the endpoint forgets its pauses.
//! 3. **Bounded.** At most [`MAX_ENDPOINTS`] endpoints are remembered per identity; a new one
//!    evicts the one whose pause ended (or ends) first.
//! 4. **Many endpoints at once is a storm, not a coincidence.** A client can spell any number
//!    of paths, and each could cost one wasted login. When [`STORM_ENDPOINTS`] different
//!    endpoints were refused again within `login_backoff_max`, every expiry-driven re-login of
//!    the identity pauses until fewer were (the old identity-wide behaviour, now only under a
//!    storm). A few broken endpoints never trip it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::canonical::route_key;

/// Endpoints remembered per identity.
pub(crate) const MAX_ENDPOINTS: usize = 256;

/// Different endpoints refused again within `login_backoff_max` that pause every re-login of
/// the identity.
pub(crate) const STORM_ENDPOINTS: usize = 8;

/// One endpoint's record.
#[derive(Debug, Clone, Copy)]
struct Pause {
    /// Refusals in a row (the back-off step).
    refusals: u32,
    /// The last refusal.
    refused_at: Instant,
    /// Re-logins for this endpoint resume then.
    until: Instant,
}

/// The pauses of one identity (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct ReloginGuard {
    endpoints: Mutex<HashMap<Box<str>, Pause>>,
}

/// The key of a canonical path (rule 1).
pub(crate) fn endpoint_key(canonical_path: &str) -> Box<str> {
    route_key(canonical_path).to_ascii_lowercase().into()
}

impl ReloginGuard {
    /// How long re-logins for `endpoint` (a canonical path) stay paused, if they are: its own
    /// pause, or a storm's (rule 4). `window` is `login_backoff_max`.
    pub(crate) fn paused(&self, endpoint: &str, window: Duration) -> Option<Duration> {
        let map = self.endpoints.lock().ok()?;
        let now = Instant::now();
        let own = map
            .get(&*endpoint_key(endpoint))
            .and_then(|p| p.until.checked_duration_since(now))
            .filter(|left| !left.is_zero());
        own.or_else(|| storm(&map, now, window))
    }

    /// Records that a replay on `endpoint` after a fresh login was refused again; the pause it
    /// starts: `schedule(n)` after the `n`th refusal in a row (the login back-off).
    pub(crate) fn refused(&self, endpoint: &str, schedule: impl Fn(u32) -> Duration) -> Duration {
        let Ok(mut map) = self.endpoints.lock() else {
            return schedule(1);
        };
        let now = Instant::now();
        let key = endpoint_key(endpoint);
        if !map.contains_key(&key) && map.len() >= MAX_ENDPOINTS {
            // Rule 3: the pause that ended (or ends) first goes.
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, p)| p.until)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        let pause = map.entry(key).or_insert(Pause {
            refusals: 0,
            refused_at: now,
            until: now,
        });
        pause.refusals = pause.refusals.saturating_add(1);
        let wait = schedule(pause.refusals);
        pause.refused_at = now;
        pause.until = now + wait;
        wait
    }

    /// Records that a replay on `endpoint` after a fresh login worked: its pauses are
    /// forgotten.
    pub(crate) fn worked(&self, endpoint: &str) {
        if let Ok(mut map) = self.endpoints.lock() {
            if !map.is_empty() {
                map.remove(&*endpoint_key(endpoint));
            }
        }
    }

    /// Endpoints remembered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.endpoints.lock().map(|m| m.len()).unwrap_or_default()
    }
}

/// Rule 4: while [`STORM_ENDPOINTS`] endpoints were refused within `window`, the time until
/// the oldest of the most recent ones leaves it.
fn storm(map: &HashMap<Box<str>, Pause>, now: Instant, window: Duration) -> Option<Duration> {
    if map.len() < STORM_ENDPOINTS {
        return None;
    }
    let mut recent: Vec<Instant> = map
        .values()
        .map(|p| p.refused_at + window)
        .filter(|leaves| *leaves > now)
        .collect();
    if recent.len() < STORM_ENDPOINTS {
        return None;
    }
    // Ends when the STORM_ENDPOINTS-th latest refusal leaves the window.
    recent.sort_unstable_by(|a, b| b.cmp(a));
    recent.get(STORM_ENDPOINTS - 1).map(|leaves| *leaves - now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(2);
    const MAX: Duration = Duration::from_secs(60);

    /// 2 s doubling up to 60 s, as the default login back-off.
    fn doubling(n: u32) -> Duration {
        (BASE * 2u32.pow(n.min(6) - 1)).min(MAX)
    }

    #[test]
    fn spellings_of_one_endpoint_share_a_key_and_the_query_is_not_part_of_it() {
        let cases = [
            ("/0/rest/UsrDenyService/Check", "/rest/usrdenyservice/check"),
            ("/rest/UsrDenyService/Check", "/rest/usrdenyservice/check"),
            (
                "/0/ssp/rest/UsrDenyService/Check",
                "/rest/usrdenyservice/check",
            ),
            ("/0/REST/usrdenyservice/CHECK", "/rest/usrdenyservice/check"),
            ("/0/odata/Contact", "/odata/contact"),
        ];
        for (path, key) in cases {
            assert_eq!(&*endpoint_key(path), key, "{path}");
        }
        assert_ne!(
            endpoint_key("/0/rest/S/Check"),
            endpoint_key("/0/rest/S/Other")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_endpoint_pauses_alone_on_the_back_off_schedule() {
        let guard = ReloginGuard::default();
        assert_eq!(guard.paused("/0/rest/Deny/M", MAX), None);
        assert_eq!(guard.refused("/0/rest/Deny/M", doubling), BASE);
        assert_eq!(guard.paused("/0/rest/Deny/M", MAX), Some(BASE));
        assert_eq!(
            guard.paused("/0/REST/deny/m", MAX),
            Some(BASE),
            "a spelling"
        );
        assert_eq!(guard.paused("/0/odata/Contact", MAX), None, "another");
        tokio::time::advance(BASE).await;
        assert_eq!(guard.paused("/0/rest/Deny/M", MAX), None, "the pause ended");
        assert_eq!(guard.refused("/0/rest/Deny/M", doubling), BASE * 2);
        guard.worked("/0/rest/Deny/M");
        assert_eq!(guard.paused("/0/rest/Deny/M", MAX), None, "a replay worked");
        assert_eq!(
            guard.refused("/0/rest/Deny/M", doubling),
            BASE,
            "from the start"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn many_endpoints_refused_at_once_pause_every_endpoint_until_the_window_passes() {
        let guard = ReloginGuard::default();
        for n in 0..STORM_ENDPOINTS - 1 {
            guard.refused(&format!("/0/rest/Deny/M{n}"), doubling);
        }
        assert_eq!(guard.paused("/0/odata/Contact", MAX), None, "not yet");
        tokio::time::advance(Duration::from_secs(10)).await;
        guard.refused("/0/rest/Deny/Last", doubling);
        assert_eq!(
            guard.paused("/0/odata/Contact", MAX),
            Some(MAX - Duration::from_secs(10)),
            "a storm: until the first refusal leaves the window"
        );
        tokio::time::advance(MAX - Duration::from_secs(10)).await;
        assert_eq!(guard.paused("/0/odata/Contact", MAX), None, "it passed");
    }

    #[tokio::test(start_paused = true)]
    async fn the_map_is_bounded_and_evicts_the_pause_that_ends_first() {
        let guard = ReloginGuard::default();
        guard.refused("/0/rest/First/M", doubling);
        tokio::time::advance(Duration::from_millis(1)).await;
        for n in 0..MAX_ENDPOINTS * 2 {
            guard.refused(&format!("/0/rest/Deny/M{n}"), doubling);
        }
        assert_eq!(guard.len(), MAX_ENDPOINTS);
        assert_eq!(
            guard
                .endpoints
                .lock()
                .map(|m| m.contains_key("/rest/first/m"))
                .ok(),
            Some(false)
        );
    }
}
