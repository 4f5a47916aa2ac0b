//! The fault soak: the real `creatio-proxy` binary in front of the built-in emulator, on
//! 127.0.0.1 only, under mixed traffic and a schedule of faults, for a bounded time. It stops by
//! itself, prints a report and one JSON line, and exits non-zero when an invariant fails.
//!
//! Run it with `bench/soak.sh [BINARY] [SECONDS]` (see docs/testing.md, "Fault soak"). It is a
//! cargo example so that `cargo test` compiles it and it cannot rot; CI does not run it.
//!
//! The set-up, from the client's side:
//!
//! ```text
//! clients ──> proxy (child process) ──> fault relay (here) ──> emulator app (here)
//!                                   └──────────────────────> emulator Identity Service
//! ```
//!
//! The relay is a TCP relay between the proxy and the emulator's app listener. It makes the
//! network faults at the socket level, where a real network or load balancer makes them:
//! refused connections (its listener closed, then bound again on the same port), answers cut
//! mid-way by a reset (part of a read forwarded, then `SO_LINGER` 0 and close), and stalls
//! (requests go through, answers are held). The emulator itself is unchanged for these; the
//! login hang, which needs to know what a request is, is an emulator switch
//! (`Emulator::hold_logins`, with `hold_tokens` for the Identity Service).
//!
//! Traffic: small clients cycle through GETs and POST creates (each with a unique `Marker`) on
//! the employee (forms `[auth]`), portal (forms, /ssp rule) and oauth2 routes; one client
//! uploads 10 MiB bodies on the three routes in turn; one downloads 10 MiB answers. Every 3 s
//! the config file is replaced by its other variant (downloads served by the employee or by
//! the oauth2 identity; the identities never change) and the proxy gets a SIGHUP; `/healthz`
//! and `/readyz` are probed every 2 s.
//!
//! Faults, in a cycle of about 70 s repeated while time remains: sessions invalidated; tokens
//! revoked; answers reset mid-way for 2 s; Creatio stalls for 8 s (longer than the proxy's
//! 5 s `upstream_timeout`); the login and token endpoints hang for 8 s, with sessions
//! invalidated and tokens revoked so a new one is needed; Creatio down for 10 s.
//!
//! Invariants (each failure is listed in the report and makes the exit code 1):
//! 1. No POST is duplicated: a POST answered 201 exists exactly once among Creatio's records;
//!    one that failed exists at most once.
//! 2. No answer is corrupt: every download that completes has the emulator's byte pattern and
//!    length, and every upload answered 200 reached Creatio whole (length and FNV-1a checksum).
//! 3. Every error is explained by a fault: it overlaps a fault window plus its grace time.
//!    SIGHUP reloads, every few seconds all along, must cost nothing.
//! 4. No client waits longer than the client timeout; `/healthz` always answers 200.
//! 5. Logins and token requests reaching the emulator stay within a bound computed from the
//!    faults injected (printed with the figures).
//! 6. The proxy's RSS and open descriptors are flat: sampled at quiet moments after the
//!    warm-up, in the middle and at the end, within the tolerances below.
//! 7. Every SIGHUP is applied (none refused); the proxy is alive at the end and exits 0 on
//!    SIGTERM.

// A tool run by hand, not a request path: a failed set-up step (a bind, a spawn) ends it.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use creatio_proxy::emulator::{download_byte, fnv1a64, Emulator, EmulatorOptions, FNV_OFFSET};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, RwLock};
use tokio::time::Instant;

/// Size of every upload and download.
const BIG: usize = 10 * 1024 * 1024;
/// The proxy's `server.upstream_timeout`, which is also its login timeout (`min(it, 60 s)`).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// The proxy's `server.login_backoff_max`.
const BACKOFF_MAX: Duration = Duration::from_secs(4);
/// A client gives up after this: the proxy must always answer sooner.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long errors may follow an instant fault (invalidated sessions, revoked tokens): the
/// requests already on their way with the old session.
const GRACE_INSTANT: Duration = Duration::from_secs(3);
/// How long errors may follow the end of a fault window: one login timeout, the longest
/// back-off, and a second.
const GRACE_WINDOW: Duration = Duration::from_secs(10);
/// Flat RSS: the end sample may exceed the start sample by this fraction plus `RSS_SLACK_KIB`.
const RSS_GROWTH: f64 = 0.25;
const RSS_SLACK_KIB: u64 = 16 * 1024;
/// Flat descriptors: each client worker may hold one more keep-alive connection to the proxy
/// and the proxy one more idle connection to Creatio than at the start, plus a few spare.
const FD_SLACK_PER_WORKER: u64 = 2;
const FD_SLACK: u64 = 8;

#[derive(Parser, Debug)]
#[command(about = "A bounded fault soak of the creatio-proxy binary, on 127.0.0.1")]
struct Args {
    /// The creatio-proxy binary to soak.
    #[arg(long)]
    binary: PathBuf,
    /// How long to drive traffic, warm-up included; the fault schedule repeats within it.
    #[arg(long, default_value_t = 180)]
    seconds: u64,
    /// Clients sending small requests (GET and POST), besides one upload and one download
    /// client.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Pause of each small-request client between two requests, in milliseconds.
    #[arg(long, default_value_t = 10)]
    pace_ms: u64,
    /// Keep the work directory (config, proxy log) even when every invariant holds.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if runtime.block_on(soak(args)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// === the proxy process ===

/// The proxy child process. Dropping it kills it by PID, so a failing soak never leaves it
/// running.
struct Proxy {
    child: Child,
    pid: u32,
    listen: SocketAddr,
    admin: SocketAddr,
    log: Arc<LogCounts>,
}

/// What the proxy's stderr said, counted by the thread that copies it to the log file.
#[derive(Default)]
struct LogCounts {
    lines: AtomicU64,
    warn: AtomicU64,
    error: AtomicU64,
    reloaded: AtomicU64,
    reload_refused: AtomicU64,
    /// A few WARN/ERROR lines, for the report.
    samples: Mutex<Vec<String>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Starts `binary run --config config`, copies its stderr to `log_path`, and waits (up to
    /// 30 s) for its "ready" line.
    fn spawn(binary: &PathBuf, config: &PathBuf, log_path: &PathBuf) -> Result<Proxy, String> {
        let mut child = Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped stderr");
        let mut file = std::fs::File::create(log_path).expect("the proxy log file");
        let log = Arc::new(LogCounts::default());
        let counts = log.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                counts.lines.fetch_add(1, Ordering::Relaxed);
                let level = serde_json::from_str::<Value>(&line)
                    .ok()
                    .and_then(|v| v["level"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                let notable = match level.as_str() {
                    "WARN" => Some(&counts.warn),
                    "ERROR" => Some(&counts.error),
                    _ => None,
                };
                if let Some(counter) = notable {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let mut samples = counts.samples.lock().unwrap();
                    if samples.len() < 20 {
                        samples.push(line.chars().take(400).collect());
                    }
                }
                if line.contains("config reloaded") {
                    counts.reloaded.fetch_add(1, Ordering::Relaxed);
                }
                if line.contains("config reload refused") {
                    counts.reload_refused.fetch_add(1, Ordering::Relaxed);
                }
                if line.contains("creatio-proxy ready") {
                    let _ = ready_tx.send(line);
                }
            }
        });
        let mut proxy = Proxy {
            child,
            pid,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| format!("no ready line within 30 s; see {}", log_path.display()))?;
        let ready: Value = serde_json::from_str(&ready)
            .map_err(|e| format!("the ready line is not JSON ({e}): {ready}"))?;
        let field = |name: &str| -> Result<SocketAddr, String> {
            ready
                .get(name)
                .or_else(|| ready.get("fields").and_then(|f| f.get(name)))
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("no {name} address in the ready line: {ready}"))
        };
        proxy.listen = field("listen")?;
        proxy.admin = field("admin")?;
        Ok(proxy)
    }

    fn signal(&self, signal: rustix::process::Signal) -> bool {
        let pid = rustix::process::Pid::from_child(&self.child);
        rustix::process::kill_process(pid, signal).is_ok()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then up to 15 s for the exit; its code (`None`: killed or did not exit).
    async fn terminate(&mut self) -> Option<i32> {
        if !self.alive() {
            return self.child.try_wait().ok().flatten().and_then(|s| s.code());
        }
        self.signal(rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    fn sample(&self, at: &str, elapsed: Duration) -> Sample {
        sample_pid(self.pid, at, elapsed)
    }
}

/// RSS, open descriptors and threads of process `pid`, from /proc.
fn sample_pid(pid: u32, at: &str, elapsed: Duration) -> Sample {
    {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        Sample {
            at: at.to_owned(),
            elapsed_s: elapsed.as_secs_f64(),
            rss_kib: field("VmRSS:"),
            fds,
            threads: field("Threads:"),
        }
    }
}

#[derive(Clone, Debug)]
struct Sample {
    at: String,
    elapsed_s: f64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
}

impl Sample {
    fn json(&self) -> Value {
        json!({"at": self.at, "elapsed_s": round1(self.elapsed_s), "rss_kib": self.rss_kib,
               "fds": self.fds, "threads": self.threads})
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

// === the fault relay ===

/// What the relay does to the traffic between the proxy and Creatio.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Net {
    /// Bytes flow both ways.
    Pass,
    /// The first answer bytes read from Creatio are forwarded in part, then both sockets are
    /// reset: an answer cut mid-way (its head or its body).
    Reset,
    /// Requests reach Creatio; answers are held until the stall ends.
    Stall,
    /// Nothing listens (connections refused); open connections are reset.
    Down,
}

struct Relay {
    addr: SocketAddr,
    mode: watch::Sender<Net>,
    resets: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
        let addr = listener.local_addr().expect("relay address");
        let (mode, _) = watch::channel(Net::Pass);
        let relay = Relay {
            addr,
            mode,
            resets: Arc::default(),
            connections: Arc::default(),
        };
        tokio::spawn(accept_loop(
            listener,
            target,
            relay.mode.subscribe(),
            relay.resets.clone(),
            relay.connections.clone(),
        ));
        relay
    }

    fn set(&self, net: Net) {
        self.mode.send_replace(net);
    }
}

async fn accept_loop(
    mut listener: TcpListener,
    target: SocketAddr,
    mut mode: watch::Receiver<Net>,
    resets: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
) {
    let addr = listener.local_addr().expect("relay address");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(relay_connection(stream, target, mode.clone(), resets.clone()));
                }
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
                if *mode.borrow_and_update() != Net::Down {
                    continue;
                }
                // Down: close the listener so connections are refused, and bind the same port
                // again when the outage ends (SO_REUSEADDR is set by tokio's bind).
                drop(listener);
                if mode.wait_for(|m| *m != Net::Down).await.is_err() {
                    return;
                }
                listener = loop {
                    match TcpListener::bind(addr).await {
                        Ok(l) => break l,
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                };
            }
        }
    }
}

async fn relay_connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Net>,
    resets: Arc<AtomicU64>,
) {
    let _ = client.set_nodelay(true);
    let Ok(mut upstream) = TcpStream::connect(target).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = upstream.set_nodelay(true);
    let reset = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let requests = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match client_read.read(&mut buf).await {
                    Ok(0) => {
                        let _ = upstream_write.shutdown().await;
                        // Half-closed: the answer may still come.
                        std::future::pending::<()>().await;
                    }
                    Ok(n) => {
                        if upstream_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        };
        let mut answer_mode = mode.clone();
        let answers = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match upstream_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(n) => n,
                };
                let now = *answer_mode.borrow();
                match now {
                    Net::Reset | Net::Down => {
                        let _ = client_write.write_all(&buf[..n / 2]).await;
                        return true;
                    }
                    Net::Stall => {
                        if answer_mode.wait_for(|m| *m != Net::Stall).await.is_err() {
                            return false;
                        }
                    }
                    Net::Pass => {}
                }
                if client_write.write_all(&buf[..n]).await.is_err() {
                    return false;
                }
            }
        };
        tokio::select! {
            reset = answers => reset,
            () = requests => false,
            _ = mode.wait_for(|m| *m == Net::Down) => true,
        }
    };
    if reset {
        resets.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_zero_linger();
        let _ = upstream.set_zero_linger();
    }
}

// === traffic ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Op {
    Get,
    Post,
    Upload,
    Download,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Get => "GET",
            Op::Post => "POST create",
            Op::Upload => "upload 10 MiB",
            Op::Download => "download 10 MiB",
        }
    }
}

/// A route of the soak config and the identity behind it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Route {
    /// `[auth]`, forms, the employee Supervisor.
    Employee,
    /// `[identities.portal]`, forms, the portal user, with the /ssp rule.
    Portal,
    /// `[identities.api]`, oauth2 client credentials.
    OAuth2,
    /// The employee in one config, the oauth2 identity in the other: each SIGHUP flips it.
    Flipping,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Employee => "employee",
            Route::Portal => "portal",
            Route::OAuth2 => "oauth2",
            Route::Flipping => "employee|oauth2 (flips per SIGHUP)",
        }
    }

    /// The OData entity POSTs and uploads use on this route (each routed to its identity by
    /// the config).
    fn entity(self) -> &'static str {
        match self {
            Route::Employee => "SoakItem",
            Route::Portal => "PortalItem",
            Route::OAuth2 | Route::Flipping => "ApiItem",
        }
    }
}

/// How a request ended.
#[derive(Clone, Debug)]
enum Outcome {
    Ok,
    /// Failed, with its kind: `"502 creatio_unreachable"`, `"transport: ..."`, ...
    Failed(String),
    /// Completed but wrong (a corrupt download or upload).
    Corrupt(String),
    /// No answer within [`CLIENT_TIMEOUT`].
    TimedOut,
}

struct Record {
    op: Op,
    route: Route,
    start: Instant,
    end: Instant,
    outcome: Outcome,
}

/// A POST create and whether it was answered 201.
struct Created {
    entity: &'static str,
    marker: String,
    answered: bool,
}

/// Everything the workers share.
struct Traffic {
    proxy: SocketAddr,
    emulator: Emulator,
    /// Workers hold a read guard for each request; a sample takes the write guard, so it waits
    /// for the requests under way and holds back new ones.
    gate: RwLock<()>,
    stop: AtomicBool,
    records: Mutex<Vec<Record>>,
    created: Mutex<Vec<Created>>,
    upload_body: Bytes,
    upload_fnv: u64,
    download_fnv: u64,
    pace: Duration,
    next_id: AtomicU64,
    /// When the soak started, for the times in the report.
    run_start: Instant,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

impl Traffic {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    fn record(&self, op: Op, route: Route, start: Instant, outcome: Outcome) {
        let end = Instant::now();
        self.records.lock().unwrap().push(Record {
            op,
            route,
            start,
            end,
            outcome,
        });
    }

    /// A fresh GUID-shaped id, unique in this run.
    fn id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("50a50000-0000-4000-8000-{n:012x}")
    }

    /// One request with the client timeout; the outcome.
    async fn exchange(
        &self,
        client: &HttpClient,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
        check: Check<'_>,
    ) -> Outcome {
        let mut request = Request::builder().method(method).uri(self.url(path));
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let request = request.body(Full::new(body)).expect("a valid request");
        let exchange = async {
            let response = match client.request(request).await {
                Ok(r) => r,
                Err(e) if e.is_connect() => {
                    return Outcome::Failed("transport: cannot connect to the proxy".into())
                }
                Err(e) => {
                    return Outcome::Failed(format!("transport: no answer ({})", root_cause(&e)))
                }
            };
            let status = response.status();
            let mut body = response.into_body();
            if !status.is_success() {
                let bytes = match body.collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(_) => return Outcome::Failed(format!("{} (body broken)", status.as_u16())),
                };
                return Outcome::Failed(error_kind(status, &bytes));
            }
            match check {
                Check::Status(want) if status != want => {
                    Outcome::Failed(format!("{} unexpected", status.as_u16()))
                }
                Check::Download => {
                    let mut len = 0usize;
                    let mut hash = FNV_OFFSET;
                    while let Some(frame) = body.frame().await {
                        match frame {
                            Ok(frame) => {
                                if let Ok(data) = frame.into_data() {
                                    len += data.len();
                                    hash = fnv1a64(hash, &data);
                                }
                            }
                            Err(e) => {
                                return Outcome::Failed(format!(
                                    "transport: answer body broken off ({})",
                                    root_cause(&e)
                                ))
                            }
                        }
                    }
                    if len != BIG || hash != self.download_fnv {
                        Outcome::Corrupt(format!(
                            "download: {len} bytes, checksum {}",
                            if hash == self.download_fnv {
                                "right"
                            } else {
                                "wrong"
                            }
                        ))
                    } else {
                        Outcome::Ok
                    }
                }
                Check::Status(_) => match body.collect().await {
                    Ok(_) => Outcome::Ok,
                    Err(_) => Outcome::Failed("transport: answer body broken off".into()),
                },
                Check::Upload(entity, id) => {
                    if body.collect().await.is_err() {
                        return Outcome::Failed("transport: answer body broken off".into());
                    }
                    match self.emulator.upload(entity, id) {
                        Some(u) if u.len == BIG as u64 && u.fnv1a64 == self.upload_fnv => {
                            Outcome::Ok
                        }
                        Some(u) => Outcome::Corrupt(format!(
                            "upload answered {status} but Creatio got {} bytes{}",
                            u.len,
                            if u.fnv1a64 == self.upload_fnv {
                                ""
                            } else {
                                ", wrong checksum"
                            }
                        )),
                        None => Outcome::Corrupt(format!(
                            "upload answered {status} but Creatio has no upload for {id}"
                        )),
                    }
                }
            }
        };
        match tokio::time::timeout(CLIENT_TIMEOUT, exchange).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::TimedOut,
        }
    }
}

/// The innermost error of a chain, which names what happened on the socket.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut inner = error;
    while let Some(source) = inner.source() {
        inner = source;
    }
    inner.to_string()
}

/// What makes a successful answer right.
enum Check<'a> {
    /// This status (2xx), body read to the end.
    Status(StatusCode),
    /// The 10 MiB download pattern.
    Download,
    /// Creatio holds this upload whole.
    Upload(&'a str, &'a str),
}

/// `"502 creatio_unreachable"` for a proxy-made JSON error, `"404 from Creatio"` otherwise.
fn error_kind(status: StatusCode, body: &[u8]) -> String {
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
    match code {
        Some(code) => format!("{} {code}", status.as_u16()),
        None => format!("{} from Creatio", status.as_u16()),
    }
}

/// A client of small requests: GETs and POST creates on every route, in turn.
async fn small_worker(traffic: Arc<Traffic>, worker: usize) {
    let client = http_client();
    let mut seq = 0u64;
    let mut last_api_id: Option<String> = None;
    while !traffic.stop.load(Ordering::Relaxed) {
        let step = seq % 6;
        seq += 1;
        let guard = traffic.gate.read().await;
        if traffic.stop.load(Ordering::Relaxed) {
            break;
        }
        let start = Instant::now();
        let (op, route, outcome) = match step {
            0 => (
                Op::Get,
                Route::Employee,
                traffic
                    .exchange(
                        &client,
                        Method::GET,
                        "/0/odata/Contact",
                        None,
                        Bytes::new(),
                        Check::Status(StatusCode::OK),
                    )
                    .await,
            ),
            1 | 3 | 5 => {
                let route = match step {
                    1 => Route::Employee,
                    3 => Route::Portal,
                    _ => Route::OAuth2,
                };
                let entity = route.entity();
                let marker = format!("soak-{worker}-{seq}");
                let body = json!({"Marker": marker, "Name": "fault soak"}).to_string();
                let outcome = traffic
                    .exchange(
                        &client,
                        Method::POST,
                        &format!("/0/odata/{entity}"),
                        Some("application/json"),
                        Bytes::from(body),
                        Check::Status(StatusCode::CREATED),
                    )
                    .await;
                let answered = matches!(outcome, Outcome::Ok);
                traffic.created.lock().unwrap().push(Created {
                    entity,
                    marker,
                    answered,
                });
                (Op::Post, route, outcome)
            }
            2 => (
                Op::Get,
                Route::Portal,
                traffic
                    .exchange(
                        &client,
                        Method::GET,
                        "/0/rest/UsrPortalService/Ping",
                        None,
                        Bytes::new(),
                        Check::Status(StatusCode::OK),
                    )
                    .await,
            ),
            _ => {
                // The oauth2 route: read back a record it created (or create the first).
                let id = last_api_id.get_or_insert_with(|| traffic.id());
                let path = format!("/0/odata/ApiItem({id})");
                let outcome = traffic
                    .exchange(
                        &client,
                        Method::GET,
                        &path,
                        None,
                        Bytes::new(),
                        Check::Status(StatusCode::OK),
                    )
                    .await;
                if matches!(&outcome, Outcome::Failed(kind) if kind == "404 from Creatio") {
                    // Not created yet: create it through the proxy (not counted as a soak
                    // POST: it has a client-chosen Id, not a marker) and count this GET as
                    // served.
                    let body = json!({"Id": id, "Name": "fault soak read-back"}).to_string();
                    let _ = traffic
                        .exchange(
                            &client,
                            Method::POST,
                            "/0/odata/ApiItem",
                            Some("application/json"),
                            Bytes::from(body),
                            Check::Status(StatusCode::CREATED),
                        )
                        .await;
                    drop(guard);
                    continue;
                }
                (Op::Get, Route::OAuth2, outcome)
            }
        };
        traffic.record(op, route, start, outcome);
        drop(guard);
        tokio::time::sleep(traffic.pace).await;
    }
}

/// The upload client: 10 MiB PUTs to `<Entity>(<id>)/Data` on each route in turn.
async fn upload_worker(traffic: Arc<Traffic>) {
    let client = http_client();
    let routes = [Route::Employee, Route::Portal, Route::OAuth2];
    let mut n = 0usize;
    while !traffic.stop.load(Ordering::Relaxed) {
        let route = routes[n % routes.len()];
        n += 1;
        let guard = traffic.gate.read().await;
        if traffic.stop.load(Ordering::Relaxed) {
            break;
        }
        let id = traffic.id();
        let entity = route.entity();
        let start = Instant::now();
        let outcome = traffic
            .exchange(
                &client,
                Method::PUT,
                &format!("/0/odata/{entity}({id})/Data"),
                Some("application/octet-stream"),
                traffic.upload_body.clone(),
                Check::Upload(entity, &id),
            )
            .await;
        traffic.record(Op::Upload, route, start, outcome);
        drop(guard);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The download client: 10 MiB GETs of `/0/rest/FileService/Download`, served by the
/// employee or the oauth2 identity as the config flips at each SIGHUP (the emulator serves
/// downloads at one path, and the proxy routes a path to one identity, with or without /ssp).
async fn download_worker(traffic: Arc<Traffic>) {
    let client = http_client();
    let path = "/0/rest/FileService/Download";
    let route = Route::Flipping;
    while !traffic.stop.load(Ordering::Relaxed) {
        let guard = traffic.gate.read().await;
        if traffic.stop.load(Ordering::Relaxed) {
            break;
        }
        let start = Instant::now();
        let outcome = traffic
            .exchange(
                &client,
                Method::GET,
                &format!("{path}?size={BIG}"),
                None,
                Bytes::new(),
                Check::Download,
            )
            .await;
        traffic.record(Op::Download, route, start, outcome);
        drop(guard);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// === faults ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    InvalidateSessions,
    RevokeTokens,
    Reset,
    Stall,
    LoginHang,
    Down,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::InvalidateSessions => "sessions invalidated",
            Fault::RevokeTokens => "tokens revoked",
            Fault::Reset => "answers reset mid-way",
            Fault::Stall => "Creatio stalls",
            Fault::LoginHang => "login and token endpoints hang",
            Fault::Down => "Creatio down",
        }
    }

    /// How long the fault lasts (zero: an instant event).
    fn window(self) -> Duration {
        match self {
            Fault::InvalidateSessions | Fault::RevokeTokens => Duration::ZERO,
            Fault::Reset => Duration::from_secs(2),
            Fault::Stall => Duration::from_secs(8),
            Fault::LoginHang => Duration::from_secs(8),
            Fault::Down => Duration::from_secs(10),
        }
    }

    /// Quiet time after it, before the next fault.
    fn gap(self) -> Duration {
        match self {
            Fault::InvalidateSessions | Fault::RevokeTokens | Fault::Reset => {
                Duration::from_secs(6)
            }
            Fault::Stall | Fault::LoginHang | Fault::Down => Duration::from_secs(8),
        }
    }

    fn grace(self) -> Duration {
        if self.window().is_zero() {
            GRACE_INSTANT
        } else {
            GRACE_WINDOW
        }
    }
}

/// The schedule, repeated while time remains.
const CYCLE: [Fault; 6] = [
    Fault::InvalidateSessions,
    Fault::RevokeTokens,
    Fault::Reset,
    Fault::Stall,
    Fault::LoginHang,
    Fault::Down,
];

struct Window {
    fault: Fault,
    start: Instant,
    end: Instant,
}

/// Injects one fault, waits out its window and ends it.
async fn inject(fault: Fault, emulator: &Emulator, relay: &Relay) {
    match fault {
        Fault::InvalidateSessions => emulator.invalidate_sessions(),
        Fault::RevokeTokens => emulator.revoke_tokens(),
        Fault::Reset => relay.set(Net::Reset),
        Fault::Stall => relay.set(Net::Stall),
        Fault::Down => relay.set(Net::Down),
        Fault::LoginHang => {
            emulator.hold_logins();
            emulator.hold_tokens();
            emulator.invalidate_sessions();
            emulator.revoke_tokens();
        }
    }
    tokio::time::sleep(fault.window()).await;
    match fault {
        Fault::InvalidateSessions | Fault::RevokeTokens => {}
        Fault::Reset | Fault::Stall | Fault::Down => relay.set(Net::Pass),
        Fault::LoginHang => {
            emulator.release_logins();
            emulator.release_tokens();
        }
    }
}

/// Logins (or token requests) one injected fault may cost at most, per identity.
fn allowance(fault: Fault, forms: bool) -> u64 {
    // Attempts that can time out within a window of `w`, plus the one that ends it.
    let timeouts = |w: Duration| w.as_secs().div_ceil(UPSTREAM_TIMEOUT.as_secs()) + 1;
    match (fault, forms) {
        (Fault::InvalidateSessions, true) | (Fault::RevokeTokens, false) => 1,
        (Fault::InvalidateSessions, false) | (Fault::RevokeTokens, true) => 0,
        // Needs a new session and holds every attempt until it ends.
        (Fault::LoginHang, _) => 1 + timeouts(fault.window()),
        // Only a login already on its way can be hit (the Identity Service is not behind the
        // relay).
        (Fault::Reset | Fault::Stall, true) => timeouts(fault.window()),
        (Fault::Down, true) => 1,
        (Fault::Reset | Fault::Stall | Fault::Down, false) => 0,
    }
}

// === the run ===

async fn soak(args: Args) -> bool {
    let run_start = Instant::now();
    let emulator = Emulator::start(
        EmulatorOptions::default(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .expect("the emulator starts");
    let relay = Relay::start(emulator.addr()).await;
    let workdir = std::env::temp_dir().join(format!("creatio-proxy-soak-{}", std::process::id()));
    std::fs::create_dir_all(&workdir).expect("the work directory");
    let config_path = workdir.join("creatio-proxy.toml");
    let log_path = workdir.join("proxy.log");
    std::fs::write(&config_path, config(&emulator, relay.addr, false)).expect("the config file");
    let mut proxy = match Proxy::spawn(&args.binary, &config_path, &log_path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("soak: {e}");
            return false;
        }
    };
    eprintln!(
        "soak: proxy pid {} on {} (admin {}), relay {} -> emulator {}, {} s, work dir {}",
        proxy.pid,
        proxy.listen,
        proxy.admin,
        relay.addr,
        emulator.addr(),
        args.seconds,
        workdir.display()
    );

    let upload_body: Bytes = (0..BIG)
        .map(|i| (i % 253) as u8)
        .collect::<Vec<u8>>()
        .into();
    let upload_fnv = fnv1a64(FNV_OFFSET, &upload_body);
    let download_fnv = (0..BIG as u64).fold(FNV_OFFSET, |h, i| fnv1a64(h, &[download_byte(i)]));
    let traffic = Arc::new(Traffic {
        proxy: proxy.listen,
        emulator: emulator.clone(),
        gate: RwLock::new(()),
        stop: AtomicBool::new(false),
        records: Mutex::default(),
        created: Mutex::default(),
        upload_body,
        upload_fnv,
        download_fnv,
        pace: Duration::from_millis(args.pace_ms),
        next_id: AtomicU64::new(1),
        run_start,
    });
    let mut workers = Vec::new();
    for w in 0..args.clients {
        workers.push(tokio::spawn(small_worker(traffic.clone(), w)));
    }
    workers.push(tokio::spawn(upload_worker(traffic.clone())));
    workers.push(tokio::spawn(download_worker(traffic.clone())));

    // SIGHUP every 3 s, and the admin probes every 2 s, all along.
    let background_stop = Arc::new(AtomicBool::new(false));
    let hups = Arc::new(AtomicU64::new(0));
    let hup_task = {
        let (stop, hups) = (background_stop.clone(), hups.clone());
        let pid = rustix::process::Pid::from_child(&proxy.child);
        let (emulator, relay_addr, config_path) =
            (emulator.clone(), relay.addr, config_path.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3));
            tick.tick().await;
            let mut flipped = false;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                // Replace the file whole (write, then rename), as a config manager does.
                flipped = !flipped;
                let next = config_path.with_extension("toml.next");
                std::fs::write(&next, config(&emulator, relay_addr, flipped))
                    .expect("the config file");
                std::fs::rename(&next, &config_path).expect("the config file");
                if rustix::process::kill_process(pid, rustix::process::Signal::HUP).is_ok() {
                    hups.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let probes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let peak = Arc::new(Mutex::new(proxy.sample("peak", Duration::ZERO)));
    let probe_task = {
        let (stop, probes, admin) = (background_stop.clone(), probes.clone(), proxy.admin);
        let (peak, pid) = (peak.clone(), proxy.pid);
        tokio::spawn(async move {
            let client = http_client();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let now = sample_pid(pid, "peak", run_start.elapsed());
                {
                    let mut peak = peak.lock().unwrap();
                    peak.rss_kib = peak.rss_kib.max(now.rss_kib);
                    peak.fds = peak.fds.max(now.fds);
                    peak.threads = peak.threads.max(now.threads);
                }
                for path in ["/healthz", "/readyz"] {
                    let request = Request::get(format!("http://{admin}{path}"))
                        .body(Full::new(Bytes::new()))
                        .expect("a probe");
                    let answer = tokio::time::timeout(Duration::from_secs(5), async {
                        let r = client.request(request).await.ok()?;
                        let status = r.status().as_u16();
                        r.into_body().collect().await.ok()?;
                        Some(status)
                    })
                    .await;
                    let key = match answer {
                        Ok(Some(status)) => format!("{path} {status}"),
                        Ok(None) => format!("{path} no answer"),
                        Err(_) => format!("{path} timed out"),
                    };
                    *probes.lock().unwrap().entry(key).or_default() += 1;
                }
            }
        })
    };

    // The schedule: warm-up, a quiet sample, faults in cycles with a sample at the middle, a
    // quiet end.
    let deadline = run_start + Duration::from_secs(args.seconds);
    let mut samples = Vec::new();
    let mut windows: Vec<Window> = Vec::new();
    let interrupted = {
        let schedule = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            samples.push(quiet_sample(&traffic, &proxy, "start", run_start).await);
            let middle = run_start + Duration::from_secs(args.seconds / 2);
            let mut middle_taken = false;
            for fault in CYCLE.iter().copied().cycle() {
                if Instant::now() + fault.window() + fault.gap() > deadline {
                    break;
                }
                let start = Instant::now();
                eprintln!(
                    "soak: {:>5.1} s  {}",
                    (start - run_start).as_secs_f64(),
                    fault.name()
                );
                inject(fault, &emulator, &relay).await;
                windows.push(Window {
                    fault,
                    start,
                    end: Instant::now(),
                });
                tokio::time::sleep(fault.gap()).await;
                if !middle_taken && Instant::now() >= middle {
                    samples.push(quiet_sample(&traffic, &proxy, "middle", run_start).await);
                    middle_taken = true;
                }
            }
            tokio::time::sleep_until(deadline).await;
            if !middle_taken {
                samples.push(quiet_sample(&traffic, &proxy, "middle", run_start).await);
            }
        };
        tokio::select! {
            () = schedule => false,
            _ = tokio::signal::ctrl_c() => true,
        }
    };

    // Stop the traffic, let the proxy settle, take the end sample.
    traffic.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    background_stop.store(true, Ordering::Relaxed);
    let _ = hup_task.await;
    let _ = probe_task.await;
    relay.set(Net::Pass);
    emulator.release_logins();
    emulator.release_tokens();
    samples.push(quiet_sample(&traffic, &proxy, "end", run_start).await);
    let recovered = recovery(&traffic, proxy.admin).await;
    let alive_at_end = proxy.alive();
    let exit_code = proxy.terminate().await;
    let elapsed = run_start.elapsed();

    let report = Report::build(
        &args,
        &traffic,
        &emulator,
        &relay,
        &windows,
        &samples,
        &peak.lock().unwrap(),
        &proxy,
        hups.load(Ordering::Relaxed),
        &probes.lock().unwrap(),
        &recovered,
        (alive_at_end, exit_code, interrupted, elapsed),
    );
    write_errors(&traffic, &workdir.join("errors.tsv"));
    report.print(&workdir, &log_path);
    drop(proxy);
    let passed = report.failures.is_empty();
    if passed && !args.keep {
        let _ = std::fs::remove_dir_all(&workdir);
    }
    emulator.shutdown();
    passed
}

/// Every failed request, one line each: start and end (seconds into the run), operation,
/// route, kind.
fn write_errors(traffic: &Traffic, path: &std::path::Path) {
    let mut out = String::from("start_s\tend_s\top\troute\tkind\n");
    for r in traffic.records.lock().unwrap().iter() {
        let kind = match &r.outcome {
            Outcome::Ok => continue,
            Outcome::Failed(kind) => kind.clone(),
            Outcome::Corrupt(what) => format!("corrupt: {what}"),
            Outcome::TimedOut => "client timeout".to_owned(),
        };
        out.push_str(&format!(
            "{:.3}\t{:.3}\t{}\t{}\t{kind}\n",
            (r.start - traffic.run_start).as_secs_f64(),
            (r.end - traffic.run_start).as_secs_f64(),
            r.op.name(),
            r.route.name()
        ));
    }
    let _ = std::fs::write(path, out);
}

/// After the traffic: `/readyz` and one GET per route must succeed. What did not.
async fn recovery(traffic: &Traffic, admin: SocketAddr) -> Vec<String> {
    let client = http_client();
    let mut failed = Vec::new();
    for path in [
        "/0/odata/Contact",
        "/0/rest/UsrPortalService/Ping",
        "/0/odata/ApiItem",
        "/0/rest/FileService/Download?size=1000",
    ] {
        let outcome = traffic
            .exchange(
                &client,
                Method::GET,
                path,
                None,
                Bytes::new(),
                Check::Status(StatusCode::OK),
            )
            .await;
        if !matches!(outcome, Outcome::Ok) {
            failed.push(format!("GET {path}: {outcome:?}"));
        }
    }
    let request = Request::get(format!("http://{admin}/readyz"))
        .body(Full::new(Bytes::new()))
        .expect("a probe");
    match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
        Ok(Ok(r)) if r.status() == StatusCode::OK => {}
        Ok(Ok(r)) => failed.push(format!("/readyz {}", r.status())),
        _ => failed.push("/readyz no answer".into()),
    }
    failed
}

/// A sample at a quiet moment: no request under way (new ones held back), after a short
/// pause for the proxy to finish closing what it closes.
async fn quiet_sample(traffic: &Traffic, proxy: &Proxy, at: &str, run_start: Instant) -> Sample {
    let _quiet = traffic.gate.write().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sample = proxy.sample(at, run_start.elapsed());
    eprintln!(
        "soak: {:>5.1} s  sample {at}: RSS {} KiB, {} fds, {} threads",
        sample.elapsed_s, sample.rss_kib, sample.fds, sample.threads
    );
    sample
}

/// The proxy's config: a forms employee `[auth]`, a portal identity with the /ssp rule, an
/// oauth2 identity; Creatio is the relay, the Identity Service is the emulator's own.
fn config(emulator: &Emulator, relay: SocketAddr, flipped: bool) -> String {
    // The flipped config sends downloads to the oauth2 identity; identities stay the same, so
    // a reload must keep every session.
    let downloads = if flipped {
        "[[routes]]\nprefix = \"/0/rest/FileService\"\nidentity = \"api\"\n"
    } else {
        ""
    };
    format!(
        r#"# Written by bench/soak.rs.
[server]
listen = "127.0.0.1:0"
upstream_timeout = "{upstream}s"
login_backoff = "1s"
login_backoff_max = "{backoff_max}s"
shutdown_grace = "5s"

[admin]
listen = "127.0.0.1:0"

[creatio]
url = "http://{relay}"
connect_timeout = "2s"

[auth]
username = "Supervisor"
password = "Supervisor"

[[routes]]
prefix = "/0/rest/UsrPortalService"
ssp = true
identity = "portal"

[[routes]]
prefix = "/0/odata/PortalItem"
ssp = true
identity = "portal"

{downloads}
[[routes]]
prefix = "/0/odata/ApiItem"
identity = "api"

[identities.portal]
username = "portal.user"
password = "portal-pass"

[identities.api]
mode = "oauth2"
token_url = "{identity}/connect/token"
client_id = "integration-client"
client_secret = "integration-secret"

[log]
format = "json"
level = "info"
"#,
        upstream = UPSTREAM_TIMEOUT.as_secs(),
        backoff_max = BACKOFF_MAX.as_secs(),
        identity = emulator.identity_url(),
    )
}

// === the report ===

struct Report {
    json: Value,
    text: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn build(
        args: &Args,
        traffic: &Traffic,
        emulator: &Emulator,
        relay: &Relay,
        windows: &[Window],
        samples: &[Sample],
        peak: &Sample,
        proxy: &Proxy,
        hups: u64,
        probes: &BTreeMap<String, u64>,
        recovered: &[String],
        (alive_at_end, exit_code, interrupted, elapsed): (bool, Option<i32>, bool, Duration),
    ) -> Report {
        let mut failures = Vec::new();
        let mut text = Vec::new();
        let records = traffic.records.lock().unwrap();

        // Requests served, by operation and route.
        let mut served: BTreeMap<(Op, Route), (u64, u64)> = BTreeMap::new();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        let mut unexplained: Vec<String> = Vec::new();
        let mut corrupt: Vec<String> = Vec::new();
        let mut timed_out = 0u64;
        for r in records.iter() {
            let entry = served.entry((r.op, r.route)).or_default();
            entry.0 += 1;
            let kind = match &r.outcome {
                Outcome::Ok => {
                    entry.1 += 1;
                    continue;
                }
                Outcome::Failed(kind) => kind.clone(),
                Outcome::Corrupt(what) => {
                    corrupt.push(format!("{} {}: {what}", r.op.name(), r.route.name()));
                    "corrupt".to_owned()
                }
                Outcome::TimedOut => {
                    timed_out += 1;
                    "client timeout".to_owned()
                }
            };
            *errors.entry(kind.clone()).or_default() += 1;
            let explained = windows
                .iter()
                .any(|w| r.start <= w.end + w.fault.grace() && r.end >= w.start);
            if !explained {
                unexplained.push(format!(
                    "{} {} at {:.1}-{:.1} s: {kind}",
                    r.op.name(),
                    r.route.name(),
                    (r.start - traffic.run_start).as_secs_f64(),
                    (r.end - traffic.run_start).as_secs_f64(),
                ));
            }
        }
        let total: u64 = served.values().map(|v| v.0).sum();
        let ok: u64 = served.values().map(|v| v.1).sum();
        text.push(format!(
            "requests: {total} sent, {ok} served, {} failed, in {:.0} s",
            total - ok,
            elapsed.as_secs_f64()
        ));
        for ((op, route), (n, good)) in &served {
            text.push(format!(
                "  {:<16} {:<9} {good:>7} of {n:>7}",
                op.name(),
                route.name()
            ));
        }
        if errors.is_empty() {
            text.push("errors: none".into());
        } else {
            text.push("errors by kind:".into());
            for (kind, n) in &errors {
                text.push(format!("  {n:>7}  {kind}"));
            }
        }
        for op in [Op::Get, Op::Post, Op::Upload, Op::Download] {
            if !served.iter().any(|((o, _), v)| *o == op && v.1 > 0) {
                failures.push(format!("no {} was ever served", op.name()));
            }
        }

        // Duplicated POSTs.
        let created = traffic.created.lock().unwrap();
        let mut counts: HashMap<(&str, String), u64> = HashMap::new();
        for entity in ["SoakItem", "PortalItem", "ApiItem"] {
            for record in emulator.records(entity) {
                if let Some(marker) = record.get("Marker").and_then(Value::as_str) {
                    *counts.entry((entity, marker.to_owned())).or_default() += 1;
                }
            }
        }
        let (mut duplicated, mut lost, mut failed_but_created) = (0u64, 0u64, 0u64);
        for c in created.iter() {
            let n = counts
                .get(&(c.entity, c.marker.clone()))
                .copied()
                .unwrap_or(0);
            if n > 1 {
                duplicated += 1;
            }
            if c.answered && n == 0 {
                lost += 1;
            }
            if !c.answered && n == 1 {
                failed_but_created += 1;
            }
        }
        let answered = created.iter().filter(|c| c.answered).count();
        text.push(format!(
            "POST creates: {} sent, {answered} answered 201; duplicated {duplicated}, answered but missing {lost}, failed but created once {failed_but_created} (allowed)",
            created.len()
        ));
        if duplicated > 0 {
            failures.push(format!(
                "{duplicated} POSTs exist more than once at Creatio"
            ));
        }
        if lost > 0 {
            failures.push(format!("{lost} POSTs answered 201 do not exist at Creatio"));
        }
        if !corrupt.is_empty() {
            failures.push(format!(
                "{} corrupt answers: {}",
                corrupt.len(),
                corrupt
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        if timed_out > 0 {
            failures.push(format!(
                "{timed_out} requests got no answer within {CLIENT_TIMEOUT:?}"
            ));
        }
        if !unexplained.is_empty() {
            failures.push(format!(
                "{} errors outside every fault window and its grace, e.g. {}",
                unexplained.len(),
                unexplained
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }

        // Faults injected, and the login bound they give.
        let mut injected: BTreeMap<Fault, u64> = BTreeMap::new();
        for w in windows {
            *injected.entry(w.fault).or_default() += 1;
        }
        let bound = |forms: bool| -> u64 {
            1 + injected
                .iter()
                .map(|(f, n)| n * allowance(*f, forms))
                .sum::<u64>()
        };
        let (forms_bound, token_bound) = (bound(true), bound(false));
        let employee = emulator.logins("Supervisor");
        let portal = emulator.logins("portal.user");
        let login_requests = emulator.login_requests();
        let token_requests = emulator.token_requests();
        text.push(format!(
            "faults: {}; SIGHUP {hups}; relay resets {} of {} connections",
            injected
                .iter()
                .map(|(f, n)| format!("{} ×{n}", f.name()))
                .collect::<Vec<_>>()
                .join(", "),
            relay.resets.load(Ordering::Relaxed),
            relay.connections.load(Ordering::Relaxed),
        ));
        text.push(format!(
            "logins at Creatio: employee {employee}, portal {portal} (each ≤ {forms_bound}); login POSTs received {login_requests} (≤ {}); token requests {token_requests} (≤ {token_bound})",
            2 * forms_bound
        ));
        for (who, n) in [("employee", employee), ("portal", portal)] {
            if n > forms_bound {
                failures.push(format!(
                    "{who} logged in {n} times, more than the faults allow ({forms_bound})"
                ));
            }
        }
        if login_requests > 2 * forms_bound {
            failures.push(format!(
                "{login_requests} login POSTs reached Creatio, more than the faults allow ({})",
                2 * forms_bound
            ));
        }
        if token_requests > token_bound {
            failures.push(format!(
                "{token_requests} token requests, more than the faults allow ({token_bound})"
            ));
        }

        // Flat RSS and descriptors.
        let find = |at: &str| samples.iter().find(|s| s.at == at);
        if let (Some(start), Some(end)) = (find("start"), find("end")) {
            let rss_limit =
                start.rss_kib + (start.rss_kib as f64 * RSS_GROWTH) as u64 + RSS_SLACK_KIB;
            let workers = args.clients as u64 + 2;
            let fd_limit = start.fds + FD_SLACK_PER_WORKER * workers + FD_SLACK;
            text.push(format!(
                "proxy RSS KiB start/middle/end {}/{}/{} (limit {rss_limit}, peak seen {}); fds {}/{}/{} (limit {fd_limit}, peak seen {}); threads {}/{}/{}",
                start.rss_kib, find("middle").map_or(0, |s| s.rss_kib), end.rss_kib, peak.rss_kib,
                start.fds, find("middle").map_or(0, |s| s.fds), end.fds, peak.fds,
                start.threads, find("middle").map_or(0, |s| s.threads), end.threads,
            ));
            for s in samples.iter().filter(|s| s.at != "start") {
                if s.rss_kib > rss_limit {
                    failures.push(format!(
                        "RSS grew from {} KiB to {} KiB at the {} sample (limit {rss_limit})",
                        start.rss_kib, s.rss_kib, s.at
                    ));
                }
                if s.fds > fd_limit {
                    failures.push(format!(
                        "open fds grew from {} to {} at the {} sample (limit {fd_limit})",
                        start.fds, s.fds, s.at
                    ));
                }
            }
        } else {
            failures.push("the start or end sample is missing".into());
        }

        // The admin probes and the process.
        text.push(format!(
            "admin probes: {}",
            probes
                .iter()
                .map(|(k, n)| format!("{k} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        let bad_health: u64 = probes
            .iter()
            .filter(|(k, _)| k.starts_with("/healthz") && k.as_str() != "/healthz 200")
            .map(|(_, n)| n)
            .sum();
        if bad_health > 0 {
            failures.push(format!("/healthz failed {bad_health} times"));
        }
        let reloaded = proxy.log.reloaded.load(Ordering::Relaxed);
        let refused = proxy.log.reload_refused.load(Ordering::Relaxed);
        text.push(format!(
            "proxy log: {} lines, {} WARN, {} ERROR; reloads applied {reloaded}, refused {refused}",
            proxy.log.lines.load(Ordering::Relaxed),
            proxy.log.warn.load(Ordering::Relaxed),
            proxy.log.error.load(Ordering::Relaxed),
        ));
        if refused > 0 {
            failures.push(format!("{refused} reloads refused"));
        }
        // Signals sent within a few ms of each other may be merged; at 3 s apart none should.
        if reloaded + 1 < hups {
            failures.push(format!("{hups} SIGHUPs sent, {reloaded} reloads applied"));
        }
        if !recovered.is_empty() {
            failures.push(format!(
                "not recovered after the faults: {}",
                recovered.join("; ")
            ));
        }
        if !alive_at_end {
            failures.push("the proxy was not running at the end".into());
        }
        if exit_code != Some(0) {
            failures.push(format!(
                "the proxy's exit on SIGTERM: {exit_code:?}, want 0"
            ));
        }
        if interrupted {
            failures.push("interrupted (Ctrl-C) before the end".into());
        }

        let json = json!({
            "soak": {
                "seconds": round1(elapsed.as_secs_f64()),
                "clients": args.clients + 2,
                "requests": total,
                "served": ok,
                "served_by": served.iter().map(|((op, route), (n, good))| json!({"op": op.name(), "route": route.name(), "sent": n, "served": good})).collect::<Vec<_>>(),
                "errors": errors,
                "posts": {"sent": created.len(), "answered": answered, "duplicated": duplicated, "answered_missing": lost, "failed_created_once": failed_but_created},
                "faults": injected.iter().map(|(f, n)| (f.name().to_owned(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "sighup": hups,
                "relay_resets": relay.resets.load(Ordering::Relaxed),
                "logins": {"employee": employee, "portal": portal, "bound_each": forms_bound, "login_requests": login_requests, "login_requests_bound": 2 * forms_bound},
                "token_requests": {"count": token_requests, "bound": token_bound},
                "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
                "peak": {"rss_kib": peak.rss_kib, "fds": peak.fds, "threads": peak.threads},
                "tolerance": {"rss_growth": RSS_GROWTH, "rss_slack_kib": RSS_SLACK_KIB, "fd_slack": FD_SLACK_PER_WORKER * (args.clients as u64 + 2) + FD_SLACK},
                "probes": probes,
                "proxy_log": {"lines": proxy.log.lines.load(Ordering::Relaxed), "warn": proxy.log.warn.load(Ordering::Relaxed), "error": proxy.log.error.load(Ordering::Relaxed), "reloads": reloaded, "reloads_refused": refused},
                "exit_code": exit_code,
                "unexplained_errors": unexplained.len(),
                "failures": failures,
                "passed": failures.is_empty(),
            }
        });
        Report {
            json,
            text,
            failures,
        }
    }

    fn print(&self, workdir: &std::path::Path, log: &std::path::Path) {
        println!("== fault soak ==");
        for line in &self.text {
            println!("{line}");
        }
        if self.failures.is_empty() {
            println!("PASSED: every invariant held");
        } else {
            println!("FAILED:");
            for f in &self.failures {
                println!("  - {f}");
            }
            println!(
                "work dir kept: {} (proxy log {})",
                workdir.display(),
                log.display()
            );
        }
        println!("{}", self.json);
    }
}
