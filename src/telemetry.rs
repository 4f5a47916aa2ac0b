//! Log set-up: `[log] format` (text or JSON lines) and level, on stderr; `RUST_LOG` wins.
//!
//! What is logged never includes a secret: the access line carries the path without its query,
//! and no header value, cookie, password or token is ever a field.
//!
//! The proxy writes one access line per request. Writing each line with its own `write(2)`
//! costs as much as a third of a small request's CPU, so `run` collects lines in memory and
//! writes them in batches: when 32 KiB have gathered, every 100 ms, at shutdown, and at once for
//! every warning or error (those should be seen when they happen).

use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber (once; later calls do nothing). `batched`: gather lines and
/// write them in batches (for `run`); otherwise every line is written at once.
pub(crate) fn init(log: &LogConfig, batched: bool) {
    let _ = ACCESS_OUTPUT.set((log.format, batched));
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = if batched {
        Output::Batched(batch())
    } else {
        Output::Direct
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    let installed = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if installed.is_ok() {
        report_panics();
    }
}

/// A panic (a bug) is logged as an error event like any other line, so that with
/// `format = "json"` it is one JSON object, not Rust's plain-text report. The task that
/// panicked ends; hyper and tokio keep serving the others.
fn report_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_string());
        let location = info
            .location()
            .map_or_else(String::new, |l| format!("{}:{}", l.file(), l.line()));
        let thread = std::thread::current();
        tracing::error!(
            panic = %message,
            location = %location,
            thread = thread.name().unwrap_or("-"),
            "a bug: a task panicked (please report it)"
        );
        flush();
    }));
}

/// Writes out whatever batched lines are waiting (call before the process exits).
pub(crate) fn flush() {
    if let Some(batch) = BATCH.get() {
        batch.flush();
    }
}

/// Size at which a batch is written without waiting for the timer.
const BATCH_LIMIT: usize = 32 * 1024;
/// Longest time a line waits in a batch.
const BATCH_INTERVAL: Duration = Duration::from_millis(100);

static BATCH: OnceLock<Batch> = OnceLock::new();

/// Format and destination of access lines, set by [`init`].
static ACCESS_OUTPUT: OnceLock<(LogFormat, bool)> = OnceLock::new();

/// One request, as the access log records it.
pub(crate) struct Access<'a> {
    /// Request id (as sent back in `x-request-id`).
    pub request_id: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Matched route prefix, `-` for none.
    pub route: &'a str,
    /// Identity name, `-` for none.
    pub identity: &'a str,
    /// Status sent to the client.
    pub status: u16,
    /// Creatio's status, 0 when Creatio was not reached.
    pub upstream_status: u16,
    /// The request was replayed after a re-login.
    pub relogin: bool,
    /// Time from receiving the request head to sending the response head.
    pub latency_us: u64,
}

/// Writes the access line for one request, when the `creatio_proxy::access` target is enabled
/// at INFO (by `[log] level` or `RUST_LOG`).
///
/// The line is formatted here rather than by the tracing formatter: this runs once per request,
/// and the general-purpose formatter (field visitor, padding, styling) cost several per cent of
/// a small request's CPU. The fields and layout are the same as the other log lines.
pub(crate) fn access(record: &Access<'_>) {
    if !tracing::enabled!(target: "creatio_proxy::access", Level::INFO) {
        return;
    }
    let Some(&(format, batched)) = ACCESS_OUTPUT.get() else {
        return;
    };
    let now = std::time::SystemTime::now();
    if batched {
        // Formatted straight into the batch: no allocation per line.
        let batch = batch();
        let full = match batch.buffer.lock() {
            Ok(mut buf) => {
                write_access(&mut buf, format, record, now);
                buf.len() >= BATCH_LIMIT
            }
            Err(_) => false,
        };
        if full {
            batch.flush();
        }
    } else {
        let mut line = Vec::with_capacity(320);
        write_access(&mut line, format, record, now);
        let _ = std::io::stderr().write_all(&line);
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of the current second, computed once per second per thread.
fn push_timestamp(out: &mut Vec<u8>, now: std::time::SystemTime) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
    }
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let text = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            )
            .to_string();
            let bytes = text.as_bytes();
            if bytes.len() >= 19 {
                cached.1.copy_from_slice(&bytes[..19]);
                cached.0 = secs;
            }
        }
        out.extend_from_slice(&cached.1);
    });
    let _ = write!(out, ".{micros:06}Z");
}

/// Appends `"s"` (with Rust-style escapes only when needed), as the tracing formatter quotes
/// string fields.
fn push_quoted(out: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

fn write_access(out: &mut Vec<u8>, format: LogFormat, r: &Access<'_>, now: std::time::SystemTime) {
    match format {
        LogFormat::Text => {
            push_timestamp(out, now);
            out.extend_from_slice(b"  INFO request request_id=");
            push_quoted(out, r.request_id);
            out.extend_from_slice(b" method=");
            out.extend_from_slice(r.method.as_bytes());
            let _ = write!(out, " path={}", Plain(r.path));
            out.extend_from_slice(b" route=");
            push_quoted(out, r.route);
            out.extend_from_slice(b" identity=");
            push_quoted(out, r.identity);
            let _ = writeln!(
                out,
                " status={} upstream_status={} relogin={} latency_us={}",
                r.status, r.upstream_status, r.relogin, r.latency_us
            );
        }
        LogFormat::Json => {
            out.extend_from_slice(b"{\"timestamp\":\"");
            push_timestamp(out, now);
            out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
            json_str(out, r.request_id);
            out.extend_from_slice(b",\"method\":");
            json_str(out, r.method);
            out.extend_from_slice(b",\"path\":");
            json_str(out, r.path);
            out.extend_from_slice(b",\"route\":");
            json_str(out, r.route);
            out.extend_from_slice(b",\"identity\":");
            json_str(out, r.identity);
            let _ = writeln!(
                out,
                ",\"status\":{},\"upstream_status\":{},\"relogin\":{},\"latency_us\":{}}}",
                r.status, r.upstream_status, r.relogin, r.latency_us
            );
        }
    }
}

/// Displays a string as is when it has nothing to escape (the usual path), else escaped.
struct Plain<'a>(&'a str);

impl std::fmt::Display for Plain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.bytes().all(|b| b.is_ascii_graphic()) {
            f.write_str(self.0)
        } else {
            write!(f, "{}", self.0.escape_debug())
        }
    }
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

struct Batch {
    buffer: Mutex<Vec<u8>>,
    /// Held from taking a batch until it is written, so batches reach stderr in order.
    writing: Mutex<()>,
}

impl Batch {
    fn flush(&self) {
        let _order = self.writing.lock();
        let pending = match self.buffer.lock() {
            Ok(mut buf) if !buf.is_empty() => {
                std::mem::replace(&mut *buf, Vec::with_capacity(BATCH_LIMIT * 2))
            }
            _ => return,
        };
        let _ = std::io::stderr().lock().write_all(&pending);
    }
}

fn batch() -> &'static Batch {
    BATCH.get_or_init(|| {
        // A plain thread, so batches are written whatever the async runtime is doing.
        let _ = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(|| loop {
                std::thread::sleep(BATCH_INTERVAL);
                flush();
            });
        Batch {
            buffer: Mutex::new(Vec::with_capacity(BATCH_LIMIT * 2)),
            writing: Mutex::new(()),
        }
    })
}

#[derive(Clone, Copy)]
enum Output {
    Direct,
    Batched(&'static Batch),
}

/// One event's writer: stderr directly, or the batch.
enum LineWriter {
    Direct(std::io::Stderr),
    Batched { batch: &'static Batch, urgent: bool },
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            LineWriter::Direct(stderr) => stderr.write(bytes),
            LineWriter::Batched { batch, .. } => {
                let full = match batch.buffer.lock() {
                    Ok(mut buf) => {
                        buf.extend_from_slice(bytes);
                        buf.len() >= BATCH_LIMIT
                    }
                    Err(_) => return std::io::stderr().write(bytes),
                };
                if full {
                    batch.flush();
                }
                Ok(bytes.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            LineWriter::Direct(stderr) => stderr.flush(),
            LineWriter::Batched { batch, .. } => {
                batch.flush();
                Ok(())
            }
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if let LineWriter::Batched {
            batch,
            urgent: true,
        } = self
        {
            batch.flush();
        }
    }
}

impl<'a> MakeWriter<'a> for Output {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        match self {
            Output::Direct => LineWriter::Direct(std::io::stderr()),
            Output::Batched(batch) => LineWriter::Batched {
                batch,
                urgent: false,
            },
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        match self {
            Output::Direct => LineWriter::Direct(std::io::stderr()),
            Output::Batched(batch) => LineWriter::Batched {
                batch,
                urgent: *meta.level() <= Level::WARN,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(path: &'a str) -> Access<'a> {
        Access {
            request_id: "abc",
            method: "GET",
            path,
            route: "-",
            identity: "default",
            status: 200,
            upstream_status: 200,
            relogin: true,
            latency_us: 321,
        }
    }

    #[test]
    fn json_access_lines_are_valid_json_with_every_field() {
        let mut out = Vec::new();
        write_access(
            &mut out,
            LogFormat::Json,
            &record("/0/odata/\"x\\\u{1}"),
            std::time::SystemTime::UNIX_EPOCH,
        );
        let line = String::from_utf8(out).expect("utf-8");
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect("valid JSON");
        assert_eq!(v["path"], "/0/odata/\"x\\\u{1}");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["relogin"], true);
        assert_eq!(v["latency_us"], 321);
        assert_eq!(v["identity"], "default");
        assert_eq!(v["message"], "request");
    }

    #[test]
    fn timestamps_and_quoting_match_the_tracing_formatter() {
        let mut out = Vec::new();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_795_000_000_123_456);
        push_timestamp(&mut out, t);
        push_timestamp(&mut out, t + std::time::Duration::from_secs(1));
        let want = format!(
            "{}{}",
            humantime::format_rfc3339_micros(t),
            humantime::format_rfc3339_micros(t + std::time::Duration::from_secs(1))
        );
        assert_eq!(String::from_utf8(out).expect("utf-8"), want);
        let mut out = Vec::new();
        push_quoted(&mut out, "plain");
        push_quoted(&mut out, "with \"quote\"");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "\"plain\"\"with \\\"quote\\\"\""
        );
    }

    #[test]
    fn text_access_lines_read_like_the_other_log_lines() {
        let mut out = Vec::new();
        write_access(
            &mut out,
            LogFormat::Text,
            &record("/0/odata/Contact"),
            std::time::SystemTime::UNIX_EPOCH,
        );
        let line = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000000Z  INFO request request_id=\"abc\" method=GET path=/0/odata/Contact route=\"-\" identity=\"default\" status=200 upstream_status=200 relogin=true latency_us=321\n"
        );
    }
}
