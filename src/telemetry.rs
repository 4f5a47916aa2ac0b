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
pub fn init(log: &LogConfig, batched: bool) {
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
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Writes out whatever batched lines are waiting (call before the process exits).
pub fn flush() {
    if let Some(batch) = BATCH.get() {
        batch.flush();
    }
}

/// Size at which a batch is written without waiting for the timer.
const BATCH_LIMIT: usize = 32 * 1024;
/// Longest time a line waits in a batch.
const BATCH_INTERVAL: Duration = Duration::from_millis(100);

static BATCH: OnceLock<Batch> = OnceLock::new();

struct Batch {
    buffer: Mutex<Vec<u8>>,
}

impl Batch {
    fn flush(&self) {
        let pending = match self.buffer.lock() {
            Ok(mut buf) if !buf.is_empty() => std::mem::take(&mut *buf),
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
