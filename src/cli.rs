//! The command line: `run` (default), `check`, `health`, `reload`, `demo`, `emulator`.
//!
//! Exit codes: 0 success; 1 `check` found a problem, `health` got no 2xx, or the proxy failed at
//! run time; 64 the command line or the config file is wrong, or `run` was started as root
//! (EX_USAGE).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;

/// Exit code for a bad command line or config.
pub const EXIT_USAGE: i32 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "creatio-proxy",
    version,
    about = "Logs in to Creatio once and forwards plain HTTP from local clients with the session attached"
)]
struct Cli {
    /// The TOML config file.
    #[arg(long, short = 'c', global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy in the foreground (the default).
    Run,
    /// Validate the config, log each identity in once, print OK or a diagnosis per identity.
    Check,
    /// GET an admin URL once and exit 0 on a 2xx answer, 1 otherwise: a container
    /// HEALTHCHECK that needs no shell or curl.
    Health {
        /// The URL to ask (plain http).
        #[arg(long, default_value = "http://127.0.0.1:5090/healthz")]
        url: String,
        /// Longest wait for the answer.
        #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Ask the running proxy to re-read its config file (as SIGHUP does) through the admin
    /// listener's POST /reload, from the same host; exit 0 when the new config was applied, 1
    /// when it was refused (the reason is printed) or the proxy did not answer.
    Reload {
        /// The admin listener's reload URL (plain http, loopback).
        #[arg(long, default_value = "http://127.0.0.1:5090/reload")]
        url: String,
        /// Longest wait for the answer.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Start the built-in Creatio emulator and the proxy in front of it, and show it working.
    Demo {
        /// Where the demo proxy listens (a free port is taken if this one is busy).
        #[arg(long, default_value = "127.0.0.1:5080")]
        listen: SocketAddr,
        /// Run the example requests and exit instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
    },
    /// Run only the built-in Creatio emulator (users Supervisor/Supervisor and
    /// portal.user/portal-pass), e.g. as a stand-in Creatio for a local trial.
    Emulator {
        /// Where the emulator listens.
        #[arg(long, default_value = "127.0.0.1:5081")]
        listen: SocketAddr,
        /// Act as a Creatio with "AllowOnlyOneSessionPerUser" on: a login ends that user's
        /// other sessions.
        #[arg(long)]
        one_session_per_user: bool,
    },
}

/// Parses the command line, runs the command, returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
                _ => EXIT_USAGE,
            };
        }
    };
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("creatio-proxy: cannot start the async runtime: {e}");
            return 1;
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            // First of all: SIGHUP's default action would end the process.
            let hup = {
                let _context = runtime.enter();
                crate::reload::catch_sighup()
            };
            let Some(config) = load(cli.config.as_deref()) else {
                return EXIT_USAGE;
            };
            // Logging starts before anything else is said, so that with format = "json" every
            // line on stderr is a JSON object (the root warning included).
            crate::telemetry::init(&config.log, true);
            if let Some(refusal) = refuse_root(config.allow_root) {
                tracing::error!("{refusal}");
                crate::telemetry::flush();
                return EXIT_USAGE;
            }
            let path = cli.config.unwrap_or_default();
            let code = runtime.block_on(run(config, path, hup));
            crate::telemetry::flush();
            code
        }
        Command::Check => {
            let Some(config) = load(cli.config.as_deref()) else {
                return EXIT_USAGE;
            };
            runtime.block_on(crate::check::check(&config))
        }
        Command::Health { url, timeout } => runtime.block_on(health(&url, timeout)),
        Command::Reload { url, timeout } => runtime.block_on(reload(&url, timeout)),
        Command::Demo { listen, once } => runtime.block_on(crate::demo::demo(listen, once)),
        Command::Emulator {
            listen,
            one_session_per_user,
        } => {
            let options = crate::emulator::EmulatorOptions {
                one_session_per_user,
                ..Default::default()
            };
            runtime.block_on(crate::demo::emulator_only(listen, options))
        }
    }
}

/// One worker per available core; a single-core allotment (a pinned sidecar, a 1-CPU pod)
/// gets the current-thread scheduler, which does the same work without cross-thread wake-ups.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores)
            .enable_all()
            .build()
    }
}

/// The proxy needs no privilege (it binds high ports and reads its files), so running it as
/// root only widens what a bug could do. On a plain host it warns (nginx and HAProxy start as
/// root too, and scripts such as the benchmark harness do); with `server.allow_root = false`,
/// which the container image sets, `run` refuses.
fn refuse_root(allowed: bool) -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    if allowed {
        tracing::warn!(
            "running as root (uid 0), which the proxy does not need; \
             run it as an unprivileged user, or set server.allow_root = false to refuse root"
        );
        return None;
    }
    Some(
        "refusing to run as root (uid 0) because server.allow_root = false: run as an \
         unprivileged user (the image uses uid 65532), or set server.allow_root = true \
         (CREATIO_PROXY_SERVER__ALLOW_ROOT=true) to override"
            .to_string(),
    )
}

/// One request to an admin URL: the status and body, or why there was none.
async fn admin_call(
    method: http::Method,
    url: &str,
    timeout: std::time::Duration,
) -> Result<(http::StatusCode, bytes::Bytes), String> {
    use http_body_util::{BodyExt, Empty};
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url} is not a URL: {e}"))?;
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

/// `health`: one GET, exit 0 on 2xx.
async fn health(url: &str, timeout: std::time::Duration) -> i32 {
    match admin_call(http::Method::GET, url, timeout).await {
        Ok((status, _)) => {
            println!("{url}: {status}");
            if status.is_success() {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("health: {e}");
            1
        }
    }
}

/// `reload`: POST /reload, print the outcome, exit 0 when the new config was applied.
async fn reload(url: &str, timeout: std::time::Duration) -> i32 {
    match admin_call(http::Method::POST, url, timeout).await {
        Ok((status, body)) => {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            if status.is_success() {
                println!("reload: {message}");
                0
            } else {
                eprintln!("reload: {status}: {message}");
                1
            }
        }
        Err(e) => {
            eprintln!("reload: {e}");
            1
        }
    }
}

fn load(path: Option<&std::path::Path>) -> Option<Config> {
    let Some(path) = path else {
        eprintln!("creatio-proxy: give the config file with --config FILE (config/creatio-proxy.toml is a commented example)");
        return None;
    };
    match Config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("creatio-proxy: invalid config {}: {e}", path.display());
            None
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as Go and nginx's
/// `worker_rlimit_nofile` users do: every client connection and every connection to Creatio
/// takes a descriptor, and the usual soft limit of 1024 would refuse connections past a few
/// hundred clients. Returns the soft limit in force, if known.
///
/// The limits are read from `/proc/self/limits` rather than with `getrlimit`: rustix treats
/// that call as infallible, and a seccomp filter (systemd's `SystemCallFilter=~@resources`)
/// can make it fail. Raising is a plain `setrlimit`, whose failure is only logged.
fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .map(|n| n.parse::<u64>().ok());
    let (Some(Some(current)), Some(maximum)) = (numbers.next(), numbers.next()) else {
        return None;
    };
    let Some(maximum) = maximum.filter(|m| *m > current) else {
        return Some(current);
    };
    let raised = Rlimit {
        current: Some(maximum),
        maximum: Some(maximum),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Some(maximum),
        Err(e) => {
            tracing::debug!("cannot raise the open files limit from {current}: {e}");
            Some(current)
        }
    }
}

async fn run(config: Config, path: PathBuf, hup: Option<tokio::signal::unix::Signal>) -> i32 {
    let open_files = raise_open_files_limit();
    let server = match crate::server::Server::bind(&config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    let wanted = (config.limits.max_connections as u64)
        .saturating_mul(2)
        .saturating_add(64);
    if let Some(limit) = open_files.filter(|n| *n < wanted) {
        tracing::warn!(
            open_files = limit,
            max_connections = config.limits.max_connections,
            "the open files limit is below what server.max_connections needs (a client connection and one to Creatio each): past it, new connections wait; raise the limit (ulimit -n, LimitNOFILE=) or lower server.max_connections"
        );
    }
    let addr = server
        .local_addr()
        .map_or_else(|_| config.listen.to_string(), |a| a.to_string());
    tracing::info!(
        listen = %addr,
        admin = %server.admin_addr().map_or_else(|| "off".to_string(), |a| a.to_string()),
        creatio = %config.creatio.display,
        egress = %server.egress(),
        identities = config.identities.len(),
        open_files = %open_files.map_or_else(|| "unknown".to_string(), |n| n.to_string()),
        routes = config.routes.len(),
        "creatio-proxy ready"
    );
    server.set_config_path(path.clone());
    if let Some(hup) = hup {
        tokio::spawn(crate::reload::reload_on_sighup(
            server.reloader(),
            path,
            hup,
        ));
    }
    server.serve(crate::server::shutdown_signal()).await;
    tracing::info!("stopped");
    0
}
