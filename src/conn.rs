//! The life of a client connection, on both listeners: how long it may stay silent, idle or
//! unread, how many may be open, and what happens when accepting fails.
//!
//! Rules (the keys are `[server]`'s, see [`crate::config::Limits`]):
//! 1. A connection must deliver its first complete request head within
//!    `header_read_timeout` of being accepted, whatever it sends meanwhile (nothing, `P`,
//!    half an h2 preface, a head one byte at a time): else it is closed. The clock starts at
//!    accept, before hyper sniffs HTTP/1 from h2.
//! 2. A connection with no request in flight and nothing written for `idle_timeout` is
//!    closed gracefully (HTTP/1: at once; h2: GOAWAY, then closed); one that still has not
//!    closed a few seconds later is dropped. HTTP/1's next request head must be complete
//!    within the longer of `idle_timeout` and `header_read_timeout` from the end of the
//!    previous answer (hyper's own head timer).
//! 3. A client that stops reading its answer (a write to it pending for `send_timeout`) is
//!    cut; dropping the connection drops the answer's body, which closes (or returns) its
//!    connection to Creatio.
//! 4. At most `max_connections` are open. When a new one finds no room, idle connections are
//!    asked to close; if none frees a place within [`SHED_WAIT`], the new one is answered 503
//!    JSON and closed. Connections past the limit are never read.
//! 5. An accept that fails for the whole listener (out of file descriptors) backs off, from
//!    10 ms doubling to 1 s, asks idle connections to close, and is logged once per
//!    [`ACCEPT_LOG_EVERY`] with the number of failures since.
//!
//! The checks run in a small watchdog beside each connection (in the connection's own task),
//! woken at `header_read_timeout` and then every quarter of the shorter of `idle_timeout` and
//! `send_timeout`: a timeout fires within a quarter of its value after it passed. The I/O
//! path only bumps counters ([`Watch`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Limits;
use crate::metrics::Metrics;

/// How long a new connection waits for room at `max_connections` once idle ones were asked
/// to close.
pub(crate) const SHED_WAIT: Duration = Duration::from_millis(250);

/// Refused connections answered at once, each for a second at most.
const LINGERING: usize = 64;

/// Accept failures (and refusals) are logged at most this often.
pub(crate) const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long a connection asked to close gracefully may take before it is dropped, when
/// nothing is in flight on it.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What a listener's connections are held to, and what they share.
pub(crate) struct Listener {
    /// hyper's settings for this listener's connections.
    builder: auto::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    send_timeout: Duration,
    /// One permit per open connection.
    permits: Arc<Semaphore>,
    max: u32,
    /// Idle connections close when woken here (room is needed).
    shed: Notify,
    /// The server is shutting down: connections finish what is in flight and close.
    closing: AtomicBool,
    shutdown: Notify,
    metrics: Arc<Metrics>,
    /// Refused connections still being answered (see [`Listener::refuse`]).
    lingering: Arc<Semaphore>,
    refused: AtomicU64,
    refusal_logged: std::sync::Mutex<Option<Instant>>,
    /// What the log and metrics call this listener.
    pub(crate) name: &'static str,
}

impl Listener {
    /// A listener's connection settings from `limits`.
    pub(crate) fn new(name: &'static str, limits: &Limits, metrics: Arc<Metrics>) -> Arc<Self> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Rule 2: hyper starts this timer when it waits for a head, idle time included.
            .header_read_timeout(limits.header_read_timeout.max(limits.idle_timeout))
            // Room for a head somewhat over max_header_bytes, so that the stack answers it
            // with 431 JSON (stack::limits); far over it, hyper answers 431 itself.
            .max_buf_size(limits.max_header_bytes.saturating_add(8 * 1024))
            // half_close stays off (hyper's default): a client that shuts down its sending
            // side is treated as gone, as nginx does. With it on, hyper stops watching the
            // socket during a request and cannot notice a client that hung up, so abandoned
            // requests would hold their Creatio connection until upstream_timeout.
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
        let max = u32::try_from(limits.max_connections)
            .unwrap_or(u32::MAX)
            .min(MAX_PERMITS);
        Arc::new(Listener {
            builder,
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            send_timeout: limits.send_timeout,
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
            shed: Notify::new(),
            closing: AtomicBool::new(false),
            shutdown: Notify::new(),
            metrics,
            lingering: Arc::new(Semaphore::new(LINGERING)),
            refused: AtomicU64::new(0),
            refusal_logged: std::sync::Mutex::new(None),
            name,
        })
    }

    /// A place for a new connection (rule 4): at once if there is room, else after asking
    /// idle connections to close; `None` when none freed one in time.
    pub(crate) async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        self.shed.notify_waiters();
        tokio::time::timeout(SHED_WAIT, self.permits.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Answers a connection that found no room: 503 JSON, then closed. At most
    /// [`LINGERING`] refusals at a time wait (a second at most) to read what the client sent,
    /// so that closing does not reset the answer away; past that, the answer is written only
    /// if the socket takes it at once. Logged at most once per [`ACCEPT_LOG_EVERY`].
    pub(crate) fn refuse(&self, stream: TcpStream) {
        self.metrics.connection_closed("refused");
        let refused = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if let Ok(mut last) = self.refusal_logged.try_lock() {
            let now = Instant::now();
            if last.is_none_or(|at| now.saturating_duration_since(at) >= ACCEPT_LOG_EVERY) {
                *last = Some(now);
                tracing::warn!(
                    listener = self.name,
                    max_connections = self.max,
                    refused_so_far = refused,
                    "connection refused: server.max_connections connections are open and none is idle"
                );
            }
        }
        let Ok(permit) = self.lingering.clone().try_acquire_owned() else {
            let _ = stream.try_write(REFUSAL.as_bytes());
            return;
        };
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _permit = permit;
            let mut stream = stream;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                stream.write_all(REFUSAL.as_bytes()).await?;
                stream.shutdown().await?;
                let mut sink = [0u8; 4096];
                let mut read = 0usize;
                while read < 64 * 1024 {
                    match stream.read(&mut sink).await? {
                        0 => break,
                        n => read += n,
                    }
                }
                Ok::<_, io::Error>(())
            })
            .await;
        });
    }

    /// Asks every idle connection to close (out of file descriptors).
    pub(crate) fn shed_idle(&self) {
        self.shed.notify_waiters();
    }

    /// Serves one accepted connection with `service` until it ends or is closed by a rule
    /// above. `permit` is its place under `max_connections`.
    pub(crate) async fn serve<S>(
        self: Arc<Self>,
        stream: TcpStream,
        service: S,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<crate::body::ProxyBody>>
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let _permit = permit;
        let watch = Arc::new(Watch::default());
        let io = TokioIo::new(Watched {
            io: stream,
            watch: watch.clone(),
        });
        let conn = self
            .builder
            .serve_connection(
                io,
                Tracked {
                    inner: service,
                    watch: watch.clone(),
                },
            )
            .into_owned();
        tokio::pin!(conn);
        let start = Instant::now();
        let tick = (self.idle_timeout.min(self.send_timeout) / 4)
            .clamp(Duration::from_millis(20), Duration::from_secs(5));
        let mut seen = Seen::new(start);
        let mut next = (start + self.header_read_timeout).min(start + tick);
        let mut asked_to_close = false;
        loop {
            if !asked_to_close && self.closing.load(Ordering::Acquire) {
                conn.as_mut().graceful_shutdown();
                asked_to_close = true;
            }
            let verdict = tokio::select! {
                done = conn.as_mut() => return done,
                () = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    next = now + tick;
                    if watch.heads.load(Ordering::Relaxed) == 0 {
                        next = next.min(start + self.header_read_timeout);
                    }
                    seen.check(&watch, now, &self.timeouts(), asked_to_close)
                }
                () = self.shed.notified(), if !asked_to_close => {
                    if seen.idle_now(&watch) { Verdict::Shed } else { Verdict::Keep }
                }
                () = self.shutdown.notified(), if !asked_to_close => Verdict::Keep,
            };
            match verdict {
                Verdict::Keep => {}
                Verdict::Close(_) | Verdict::Graceful(_) if asked_to_close => {
                    // Asked once already (and counted then), still open with nothing in
                    // flight: drop it.
                    return Ok(());
                }
                Verdict::Graceful(reason) => {
                    self.metrics.connection_closed(reason);
                    conn.as_mut().graceful_shutdown();
                    asked_to_close = true;
                    next = Instant::now() + CLOSE_GRACE.min(self.idle_timeout);
                }
                Verdict::Shed => {
                    self.metrics.connection_closed("shed");
                    conn.as_mut().graceful_shutdown();
                    asked_to_close = true;
                    next = Instant::now() + CLOSE_GRACE.min(self.idle_timeout);
                }
                Verdict::Close(reason) => {
                    self.metrics.connection_closed(reason);
                    tracing::debug!(listener = self.name, reason, "connection closed");
                    return Ok(());
                }
            }
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            header_read: self.header_read_timeout,
            idle: self.idle_timeout,
            send: self.send_timeout,
        }
    }

    /// Stops taking requests: every connection finishes what is in flight and closes. Returns
    /// when all are closed.
    pub(crate) async fn drain(&self) {
        self.closing.store(true, Ordering::Release);
        self.shutdown.notify_waiters();
        let _all = self.permits.acquire_many(self.max).await;
    }
}

/// Largest `max_connections` the listener takes (a semaphore's limit, and far above what a
/// sidecar's file descriptors allow).
const MAX_PERMITS: u32 = 1 << 24;

/// The answer to a connection past `max_connections`.
static REFUSAL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let body = r#"{"error":"too_many_connections","message":"the proxy holds server.max_connections client connections and none is idle; retry shortly, or reuse your connections (keep-alive)"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
});

/// The timeouts of rules 1 to 3.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    header_read: Duration,
    idle: Duration,
    send: Duration,
}

/// What the I/O and the service report about a connection.
#[derive(Debug, Default)]
pub(crate) struct Watch {
    /// Request heads received (the service was called).
    heads: AtomicU64,
    /// Requests whose answer head is not out yet.
    busy: AtomicU32,
    /// Writes that made progress.
    writes: AtomicU64,
    /// A write is waiting for the client to read: since when (milliseconds after
    /// [`Watch::origin`], plus one; 0: none).
    blocked: AtomicU64,
    origin: std::sync::OnceLock<Instant>,
}

impl Watch {
    fn millis(&self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_init(|| now);
        u64::try_from(now.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX)
    }

    fn blocked_since(&self) -> Option<Instant> {
        let at = self.blocked.load(Ordering::Relaxed);
        let origin = self.origin.get()?;
        (at != 0).then(|| *origin + Duration::from_millis(at - 1))
    }
}

/// What the watchdog decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Close gracefully (idle), counted under this reason.
    Graceful(&'static str),
    /// Close gracefully to make room.
    Shed,
    /// Drop now.
    Close(&'static str),
}

/// The watchdog's memory: the counters at the last check, and since when they stand still.
#[derive(Debug)]
struct Seen {
    start: Instant,
    heads: u64,
    writes: u64,
    quiet_since: Instant,
}

impl Seen {
    fn new(start: Instant) -> Self {
        Seen {
            start,
            heads: 0,
            writes: 0,
            quiet_since: start,
        }
    }

    /// Rules 1 to 3 at `now`.
    fn check(&mut self, watch: &Watch, now: Instant, t: &Timeouts, asked: bool) -> Verdict {
        let heads = watch.heads.load(Ordering::Relaxed);
        if heads == 0 && now >= self.start + t.header_read {
            return Verdict::Close("header_timeout");
        }
        if watch
            .blocked_since()
            .is_some_and(|since| now >= since + t.send)
        {
            return Verdict::Close("send_timeout");
        }
        let writes = watch.writes.load(Ordering::Relaxed);
        let busy = watch.busy.load(Ordering::Relaxed) > 0;
        if heads != self.heads || writes != self.writes || busy {
            self.heads = heads;
            self.writes = writes;
            self.quiet_since = now;
            return Verdict::Keep;
        }
        if heads == 0 {
            // Still within header_read_timeout: rule 1 decides.
            return Verdict::Keep;
        }
        let quiet = now.saturating_duration_since(self.quiet_since);
        if quiet >= t.idle || (asked && quiet >= CLOSE_GRACE.min(t.idle)) {
            return Verdict::Graceful("idle");
        }
        Verdict::Keep
    }

    /// True when the connection may be closed to make room: it has served a request and
    /// none waits for its answer. Closing is graceful, so an answer still streaming is
    /// finished first (HTTP/1 closes after it, h2 after GOAWAY).
    fn idle_now(&self, watch: &Watch) -> bool {
        watch.heads.load(Ordering::Relaxed) > 0 && watch.busy.load(Ordering::Relaxed) == 0
    }
}

pin_project! {
    /// A connection's socket, counting writes and noting when one has to wait.
    struct Watched {
        #[pin]
        io: TcpStream,
        watch: Arc<Watch>,
    }
}

impl Watched {
    fn wrote<T>(watch: &Watch, polled: &Poll<io::Result<T>>) {
        match polled {
            Poll::Ready(Ok(_)) => {
                watch.writes.fetch_add(1, Ordering::Relaxed);
                if watch.blocked.load(Ordering::Relaxed) != 0 {
                    watch.blocked.store(0, Ordering::Relaxed);
                }
            }
            Poll::Pending => {
                if watch.blocked.load(Ordering::Relaxed) == 0 {
                    let at = watch.millis(Instant::now()).saturating_add(1);
                    watch.blocked.store(at, Ordering::Relaxed);
                }
            }
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl AsyncRead for Watched {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write(cx, buf);
        Watched::wrote(this.watch, &polled);
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.io.poll_write_vectored(cx, bufs);
        Watched::wrote(this.watch, &polled);
        polled
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// The connection's service, counting request heads and the requests in flight.
struct Tracked<S> {
    inner: S,
    watch: Arc<Watch>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = InFlight<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.watch.heads.fetch_add(1, Ordering::Relaxed);
        self.watch.busy.fetch_add(1, Ordering::Relaxed);
        InFlight {
            future: self.inner.call(req),
            done: Done(Some(self.watch.clone())),
        }
    }
}

/// Takes a request off the in-flight count once, when its answer head is out or it is
/// dropped.
struct Done(Option<Arc<Watch>>);

impl Done {
    fn finish(&mut self) {
        if let Some(w) = self.0.take() {
            w.busy.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.finish();
    }
}

pin_project! {
    /// A request's answer, in flight.
    struct InFlight<F> {
        #[pin]
        future: F,
        done: Done,
    }
}

impl<F: Future> Future for InFlight<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.future.poll(cx));
        this.done.finish();
        Poll::Ready(out)
    }
}

/// Rule 5: the pause after an accept that failed for the whole listener.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    failures: u32,
    since_log: u64,
    logged: Option<Instant>,
}

impl AcceptBackoff {
    /// Records a failure; returns how long to pause, logging now and then.
    pub(crate) fn failed(&mut self, listener: &str, e: &io::Error) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.since_log += 1;
        let now = Instant::now();
        if self
            .logged
            .is_none_or(|at| now.saturating_duration_since(at) >= ACCEPT_LOG_EVERY)
        {
            tracing::error!(
                listener,
                failures = self.since_log,
                "accept failed: {e}; pausing new connections (idle ones are asked to close)"
            );
            self.logged = Some(now);
            self.since_log = 0;
        }
        let exp = self.failures.saturating_sub(1).min(7);
        (Duration::from_millis(10) * (1 << exp)).min(Duration::from_secs(1))
    }

    /// An accept worked.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    // Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
    // whose failure is this test failing; none of it is on a request path.
    use super::*;

    const T: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        send: Duration::from_secs(30),
    };

    #[test]
    fn a_connection_without_a_first_head_is_closed_at_the_header_timeout() {
        let start = Instant::now();
        let watch = Watch::default();
        let mut seen = Seen::new(start);
        // Bytes may have arrived (half a preface): only a complete head counts.
        assert_eq!(
            seen.check(&watch, start + Duration::from_secs(9), &T, false),
            Verdict::Keep
        );
        assert_eq!(
            seen.check(&watch, start + Duration::from_secs(10), &T, false),
            Verdict::Close("header_timeout")
        );
        watch.heads.fetch_add(1, Ordering::Relaxed);
        let mut seen = Seen::new(start);
        assert_eq!(
            seen.check(&watch, start + Duration::from_secs(10), &T, false),
            Verdict::Keep
        );
    }

    #[test]
    fn idle_means_nothing_in_flight_and_nothing_written() {
        let start = Instant::now();
        let at = |s| start + Duration::from_secs(s);
        let watch = Watch::default();
        watch.heads.store(1, Ordering::Relaxed);
        let mut seen = Seen::new(start);
        assert_eq!(seen.check(&watch, at(1), &T, false), Verdict::Keep);
        // A request waiting for Creatio is not idle, however long.
        watch.busy.store(1, Ordering::Relaxed);
        assert_eq!(seen.check(&watch, at(100), &T, false), Verdict::Keep);
        watch.busy.store(0, Ordering::Relaxed);
        assert_eq!(seen.check(&watch, at(159), &T, false), Verdict::Keep);
        assert_eq!(
            seen.check(&watch, at(160), &T, false),
            Verdict::Graceful("idle")
        );
        // An answer still streaming is not idle either.
        watch.writes.fetch_add(1, Ordering::Relaxed);
        assert_eq!(seen.check(&watch, at(161), &T, false), Verdict::Keep);
        // Room is made from connections with nothing waiting for an answer.
        assert!(seen.idle_now(&watch));
        watch.busy.store(1, Ordering::Relaxed);
        assert!(!seen.idle_now(&watch));
    }

    #[test]
    fn a_write_pending_past_the_send_timeout_closes_the_connection() {
        let start = Instant::now();
        let watch = Watch::default();
        watch.heads.store(1, Ordering::Relaxed);
        let mut seen = Seen::new(start);
        Watched::wrote::<usize>(&watch, &Poll::Pending);
        let since = watch.blocked_since().expect("blocked");
        assert_eq!(
            seen.check(&watch, since + Duration::from_secs(29), &T, false),
            Verdict::Keep
        );
        assert_eq!(
            seen.check(&watch, since + Duration::from_secs(30), &T, false),
            Verdict::Close("send_timeout")
        );
        Watched::wrote::<usize>(&watch, &Poll::Ready(Ok(1)));
        assert_eq!(watch.blocked_since(), None);
    }

    #[test]
    fn accept_failures_back_off_to_a_second() {
        let mut b = AcceptBackoff::default();
        let e = io::Error::other("too many open files");
        let waits: Vec<u64> = (0..10)
            .map(|_| b.failed("main", &e).as_millis() as u64)
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        b.reset();
        assert_eq!(b.failed("main", &e), Duration::from_millis(10));
    }
}
