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
//! Network faults (connections refused, answers cut mid-way by a reset, answers stalled) are
//! not switches here. A TCP relay in front of the emulator makes them at the socket level,
//! where a real network or load balancer makes them, with no change to how the emulator
//! answers; the soak has one.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// The switches and what they counted.
pub(super) struct Faults {
    /// True while login POSTs are held unanswered.
    login_hold: watch::Sender<bool>,
    /// Login POSTs received, whatever became of them.
    login_requests: AtomicU64,
}

impl Faults {
    /// Every switch off.
    pub(super) fn new() -> Faults {
        Faults {
            login_hold: watch::channel(false).0,
            login_requests: AtomicU64::new(0),
        }
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

    /// Resolves once logins are not held, or at shutdown, so a held login cannot keep a
    /// connection, and the graceful shutdown, waiting for ever.
    pub(super) async fn logins_released(&self, mut shutdown: watch::Receiver<bool>) {
        let mut hold = self.login_hold.subscribe();
        tokio::select! {
            _ = hold.wait_for(|held| !*held) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }
}
