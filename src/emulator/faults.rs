//! Fault switches: ways to make the fake Creatio misbehave on purpose, for fault tests and the
//! fault soak (`bench/soak.rs`). Each is off until a test turns it on.
//!
//! 1. **Login hold** ([`super::Emulator::hold_logins`]): a login POST is counted on arrival
//!    ([`super::Emulator::login_requests`]), its body is read, and then it waits unanswered
//!    until [`super::Emulator::release_logins`] (or shutdown), as a Creatio whose login page
//!    hangs does. Released, it is handled as usual. A login whose client gives up while it
//!    waits is never carried out: it makes no session and is not in `logins` or
//!    `login_attempts`, only in `login_requests`.
//!
//! 2. **Login latency** ([`super::Emulator::set_login_latency`]): every login POST waits this
//!    long before it is handled, as real Creatio takes hundreds of milliseconds to check a
//!    password and build a session (the cold-start measurement, `bench/cold.rs`).
//!
//! Network faults (connections refused, answers cut mid-way by a reset, answers stalled) are
//! not switches here. A TCP relay in front of the emulator makes them at the socket level,
//! where a real network or load balancer makes them, with no change to how the emulator
//! answers; the soak has one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// The switches and what they counted.
pub(super) struct Faults {
    /// True while login POSTs are held unanswered.
    login_hold: watch::Sender<bool>,
    /// Login POSTs received, whatever became of them.
    login_requests: AtomicU64,
    /// How long a login POST waits before it is handled, in microseconds.
    login_latency: AtomicU64,
}

impl Faults {
    /// Every switch off.
    pub(super) fn new() -> Faults {
        Faults {
            login_hold: watch::channel(false).0,
            login_requests: AtomicU64::new(0),
            login_latency: AtomicU64::new(0),
        }
    }

    pub(super) fn set_login_latency(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.login_latency.store(micros, Ordering::Relaxed);
    }

    pub(super) fn hold_logins(&self, hold: bool) {
        self.login_hold.send_replace(hold);
    }

    pub(super) fn count_login_request(&self) {
        self.login_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn login_requests(&self) -> u64 {
        self.login_requests.load(Ordering::Relaxed)
    }

    /// Resolves once logins are not held and the login latency has passed, or at shutdown,
    /// so a held login cannot keep a connection, and the graceful shutdown, waiting for ever.
    pub(super) async fn logins_released(&self, mut shutdown: watch::Receiver<bool>) {
        let mut hold = self.login_hold.subscribe();
        let latency = Duration::from_micros(self.login_latency.load(Ordering::Relaxed));
        tokio::select! {
            _ = async {
                let _ = hold.wait_for(|held| !*held).await;
                if !latency.is_zero() {
                    // The latency being imitated, not a wait for another task.
                    tokio::time::sleep(latency).await;
                }
            } => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }
}
