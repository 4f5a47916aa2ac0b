//! The real `creatio-proxy` binary: its logs never hold a secret, SIGTERM exits 0, `demo`
//! works as the README says, `check` diagnoses each identity, a bad config names its key.
// Test code: a failed expect() is the test failing, never a request path.
#![allow(clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use creatio_proxy::emulator::{Emulator, EmulatorOptions, User};
use http::{Method, StatusCode};
use http_body_util::Full;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_creatio-proxy");
const PASSWORD: &str = "S3cret-Passw0rd!";
const WRONG_PORTAL_PASSWORD: &str = "Wr0ng-Portal-Pass";
const CLIENT_BEARER: &str = "client-bearer-token-123";

struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    ready: Option<String>,
}

impl Drop for Running {
    /// A failed assertion must not leave the proxy running: stop it by its PID.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    /// Waits (up to 30 s) for a stderr line containing `needle`; returns it.
    fn wait_for(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {needle:?}; got:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The "ready" line (waited for once, then remembered).
    fn ready_line(&mut self) -> String {
        if self.ready.is_none() {
            self.ready = Some(self.wait_for("creatio-proxy ready"));
        }
        self.ready.clone().unwrap_or_default()
    }

    /// Waits for the "ready" line and returns the client listener's address.
    fn listen_addr(&mut self) -> String {
        let ready = self.ready_line();
        ready
            .split(['"', ' ', '='])
            .find(|t| t.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no listen address in {ready}"))
            .to_string()
    }

    /// Waits for the "ready" line and returns the admin listener's address.
    fn admin_addr(&mut self) -> String {
        let ready = self.ready_line();
        let mut tokens = ready.split(['"', ' ', '=', ',']).filter(|t| !t.is_empty());
        tokens
            .find(|t| *t == "admin")
            .and_then(|_| tokens.next())
            .filter(|t| t.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no admin address in {ready}"))
            .to_string()
    }

    /// Sends `signal` (e.g. `-HUP`) to the process, by PID.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit by itself; its exit code.
    fn terminate_wait(mut self) -> Option<i32> {
        self.child.wait().expect("proxy exits").code()
    }

    /// SIGTERM by PID, then every remaining stderr line and the exit code.
    fn terminate(mut self) -> (Vec<String>, Option<i32>) {
        self.signal("-TERM");
        let exit = self.child.wait().expect("proxy exits");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.seen.push(line);
        }
        (std::mem::take(&mut self.seen), exit.code())
    }
}

/// The binary with `args`, its stderr followed.
fn spawn(args: &[&str]) -> Running {
    let mut command = Command::new(BIN);
    command.args(args);
    spawn_command(command)
}

/// Starts `command` (the binary, or a wrapper that runs it) without the developer's
/// `RUST_LOG` or root setting, and follows its stderr.
fn spawn_command(mut command: Command) -> Running {
    let child = command
        .env_remove("RUST_LOG")
        .env_remove("CREATIO_PROXY_SERVER__ALLOW_ROOT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    Running::from_child(child)
}

impl Running {
    /// Follows the stderr of a started child.
    fn from_child(mut child: Child) -> Running {
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            seen: Vec::new(),
            ready: None,
        }
    }
}

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("creatio-proxy.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

fn options() -> EmulatorOptions {
    EmulatorOptions {
        users: vec![
            User::employee("Supervisor", PASSWORD),
            User::portal("portal.user", "portal-pass"),
        ],
        session_timeout: Duration::from_secs(600),
        ..EmulatorOptions::default()
    }
}

fn config(emu: &Emulator, format: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
login_backoff = "100ms"
[creatio]
url = "{url}"
[auth]
username = "Supervisor"
password = "{PASSWORD}"
[[routes]]
prefix = "/0/rest/UsrPortalService"
ssp = true
identity = "portal"
[identities.portal]
username = "portal.user"
password = "{WRONG_PORTAL_PASSWORD}"
[[routes]]
prefix = "/0/rest/UsrApi"
identity = "api"
{api}
[log]
format = "{format}"
level = "debug"
"#,
        url = emu.url(),
        api = oauth_identity(emu, "[identities.api]")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_logs_across_a_whole_flow_and_sigterm_exits_zero() {
    for format in ["json", "text"] {
        let emu = emulator(options()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_config(&dir, &config(&emu, format));
        let mut proxy = spawn(&["--config", &path]);
        let addr = proxy.listen_addr();
        let c = client();
        let url = |p: &str| format!("http://{addr}{p}");

        // login, a request carrying the client's own credentials, sliding renewal, expiry and
        // re-login with a replayed POST, and a failing identity.
        let r = send(
            &c,
            Method::GET,
            &url("/0/odata/Contact?secretquery=1"),
            &[
                ("authorization", &format!("Bearer {CLIENT_BEARER}")),
                ("cookie", "mine=abc"),
            ],
            Bytes::new(),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        emu.advance_clock(Duration::from_secs(400));
        assert_eq!(
            get(&c, &url("/0/odata/Contact")).await.status,
            StatusCode::OK
        );
        emu.invalidate_sessions();
        let r = post_json(&c, &url("/0/odata/Contact"), r#"{"Name":"x"}"#).await;
        assert_eq!(r.status, StatusCode::CREATED);
        let r = get(&c, &url("/0/rest/UsrPortalService/Get")).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        // An oauth2 identity: a token request, a bearer call, a revoked token and a new one.
        assert_eq!(
            get(&c, &url("/0/rest/UsrApi/Ping")).await.status,
            StatusCode::OK
        );
        emu.revoke_tokens();
        assert_eq!(
            get(&c, &url("/0/rest/UsrApi/Ping")).await.status,
            StatusCode::OK
        );
        assert_eq!(emu.tokens_issued(), 2);
        proxy.wait_for("relogin");
        let (lines, code) = proxy.terminate();
        assert_eq!(code, Some(0), "SIGTERM: exit 0 ({format})");
        let log = lines.join("\n");

        // The logs are not empty: they say what happened.
        assert!(log.contains("logged in to Creatio"), "{log}");
        assert!(log.contains("obtained an OAuth 2.0 token"), "{log}");
        assert!(
            log.contains("Either user name or password specified incorrectly"),
            "{log}"
        );
        assert!(log.contains("/0/odata/Contact"), "{log}");
        assert!(
            !log.contains("secretquery"),
            "query strings are not logged: {log}"
        );

        // And they hold no secret: passwords, the client's token, any cookie or BPMCSRF value.
        let mut secrets = vec![
            PASSWORD.to_string(),
            WRONG_PORTAL_PASSWORD.to_string(),
            CLIENT_BEARER.to_string(),
            "integration-secret".to_string(),
        ];
        for s in emu.seen() {
            if let Some(line) = s.headers.get("cookie").and_then(|v| v.to_str().ok()) {
                secrets.extend(
                    line.split(';')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(_, v)| v.trim().to_string()),
                );
            }
            if let Some(v) = s.headers.get("bpmcsrf").and_then(|v| v.to_str().ok()) {
                secrets.push(v.to_string());
            }
            if let Some(v) = s.headers.get("authorization").and_then(|v| v.to_str().ok()) {
                if let Some(token) = v.strip_prefix("Bearer ") {
                    secrets.push(token.to_string());
                }
            }
        }
        assert!(
            secrets.len() > 6,
            "the flow produced session values to look for"
        );
        for secret in secrets.iter().filter(|s| s.len() >= 6) {
            assert!(
                !log.contains(secret.as_str()),
                "{format} log leaks a secret value ({} chars)",
                secret.len()
            );
        }
        emu.shutdown();
    }
}

/// Runs `creatio-proxy check --config PATH` off the async runtime (the emulator keeps serving).
async fn run_check(path: String) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check", "--config", &path])
            .output()
    })
    .await
    .expect("join")
    .expect("runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_ok_or_what_is_wrong_per_identity() {
    let emu = emulator(options()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(&dir, &config(&emu, "text"));
    let out = run_check(path).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("OK    default (user Supervisor)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  portal (user portal.user)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Either user name or password specified incorrectly"),
        "{stdout}"
    );
    assert!(!stdout.contains(WRONG_PORTAL_PASSWORD) && !stdout.contains(PASSWORD));
    assert_eq!(
        (emu.logins("Supervisor"), emu.login_attempts("portal.user")),
        (1, 1)
    );

    let fixed = config(&emu, "text").replace(WRONG_PORTAL_PASSWORD, "portal-pass");
    let path = write_config(&dir, &fixed);
    let out = run_check(path).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_bad_config_exits_64_and_names_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(&dir, "[creatio]\nurl = \"https://x.example\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n[[routes]]\nprefix = \"/0/rest/X\"\nidentity = \"nobody\"\n");
    let out = Command::new(BIN)
        .args(["--config", &path])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[0].identity") && stderr.contains("[identities.nobody]"),
        "{stderr}"
    );
}

#[test]
fn demo_shows_the_proxy_working() {
    let out = Command::new(BIN)
        .args(["demo", "--once", "--listen", "127.0.0.1:0"])
        .env_remove("RUST_LOG")
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("GET /0/odata/Contact -> 200 OK"),
        "{stdout}"
    );
    assert!(
        stdout.contains("POST /0/odata/Contact -> 201 Created"),
        "{stdout}"
    );
    assert!(
        stdout.contains("GET /0/rest/UsrPortalService/GetCases -> 200 OK"),
        "{stdout}"
    );
    assert!(stdout.contains("\"user\":\"portal.user\""), "{stdout}");
    assert!(
        stdout.contains("GET /0/rest/UsrIntegrationService/Ping -> 200 OK"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Supervisor 1, portal.user 1; OAuth tokens: 1"),
        "{stdout}"
    );
    assert!(stdout.contains("curl -s http://127.0.0.1:"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_override_the_file() {
    let emu = emulator(options()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The file's creatio.url points nowhere and both passwords are wrong; the environment
    // fixes all three, including a secret of a nested identity and a leading zero.
    let text = config(&emu, "text")
        .replace(&emu.url(), "http://127.0.0.1:9")
        .replace(PASSWORD, "wrong-in-file");
    let path = write_config(&dir, &text);
    emu.set_password("portal.user", "0123");
    let url = emu.url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["check", "--config", &path])
            .env("CREATIO_PROXY_CREATIO__URL", url)
            .env("CREATIO_PROXY_AUTH__PASSWORD", PASSWORD)
            .env("CREATIO_PROXY_IDENTITIES__PORTAL__PASSWORD", "0123")
            .output()
    })
    .await
    .expect("join")
    .expect("runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("OK    default") && stdout.contains("OK    portal"),
        "{stdout}"
    );
    assert_eq!(
        (emu.logins("Supervisor"), emu.logins("portal.user")),
        (1, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_mistakes_read_the_same_in_check_in_the_error_and_in_the_log() {
    let emu = emulator(options()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // token_url at the Creatio application (the classic mistake), and a portal user on a
    // route without ssp = true.
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[creatio]
url = "{url}"
[auth]
mode = "oauth2"
token_url = "{url}/connect/token"
client_id = "integration-client"
client_secret = "integration-secret"
[[routes]]
prefix = "/0/rest/UsrPortalService"
identity = "portal"
[identities.portal]
username = "portal.user"
password = "portal-pass"
[log]
format = "json"
"#,
        url = emu.url()
    );
    let path = write_config(&dir, &text);
    let out = run_check(path.clone()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let fail_line = stdout
        .lines()
        .find(|l| {
            l.starts_with(
                "FAIL  default (client integration-client): [token_url_not_identity_service]",
            )
        })
        .unwrap_or_else(|| panic!("{stdout}"));
    let sentence = fail_line
        .split_once("] ")
        .map(|(_, s)| s.to_string())
        .expect("a sentence");
    assert!(sentence.contains("Identity Service"), "{sentence}");
    assert!(
        stdout.contains("OK    portal (user portal.user)"),
        "{stdout}"
    );

    let mut proxy = spawn(&["--config", &path]);
    let addr = proxy.listen_addr();
    let c = client();
    let r = get(&c, &format!("http://{addr}/0/odata/Contact")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        r.json()["message"],
        sentence.as_str(),
        "check and the proxy say the same"
    );
    let warn = proxy.wait_for("token_url_not_identity_service");
    assert!(warn.contains("\"identity\":\"default\""), "{warn}");
    assert!(warn.contains(&sentence), "the log says the same: {warn}");

    let r = get(
        &c,
        &format!("http://{addr}/0/rest/UsrPortalService/GetCases"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let line = proxy.wait_for("portal user called an API without /ssp");
    assert!(
        line.contains("/0/rest/UsrPortalService") && line.contains("ssp = true"),
        "{line}"
    );
    let (lines, code) = proxy.terminate();
    assert_eq!(code, Some(0));
    let log = lines.join("\n");
    assert!(
        !log.contains("integration-secret") && !log.contains("portal-pass"),
        "{log}"
    );
}

#[test]
fn health_exits_0_only_on_a_2xx_from_the_admin_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Creatio is not needed for /healthz: the process answers it while it runs.
    let path = write_config(
        &dir,
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[creatio]\nurl = \"http://127.0.0.1:9\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n",
    );
    let mut proxy = spawn(&["--config", &path]);
    let admin = proxy.admin_addr();
    let health = |url: String| {
        Command::new(BIN)
            .args(["health", "--url", &url])
            .output()
            .expect("runs")
    };
    let ok = health(format!("http://{admin}/healthz"));
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert!(
        String::from_utf8_lossy(&ok.stdout).contains("200"),
        "{ok:?}"
    );
    // /readyz is 503 here (Creatio cannot be reached), so health of it fails.
    let not_ready = health(format!("http://{admin}/readyz"));
    assert_eq!(not_ready.status.code(), Some(1), "{not_ready:?}");
    assert!(String::from_utf8_lossy(&not_ready.stdout).contains("503"));
    let (_, code) = proxy.terminate();
    assert_eq!(code, Some(0));
    // Nothing listens any more.
    let gone = health(format!("http://{admin}/healthz"));
    assert_eq!(gone.status.code(), Some(1), "{gone:?}");
}

/// As root, `run` warns by default and refuses with `allow_root = false` (the image's setting);
/// the same config starts as an unprivileged user.
/// The refusal half needs root (CI runs as root); the other half drops to uid 65532 with
/// util-linux's `setpriv`, which needs root as well.
#[test]
fn root_is_refused_when_allow_root_is_false_and_the_same_config_starts_unprivileged() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to start the proxy as root and as uid 65532");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "[server]\nlisten = \"127.0.0.1:0\"\n[creatio]\nurl = \"http://127.0.0.1:9\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n";
    let path = write_config(&dir, text);
    // By default, root is allowed with a warning (nginx, HAProxy and the benchmark harness
    // start as root).
    let mut proxy = spawn(&["--config", &path]);
    let warning = proxy.wait_for("running as root");
    assert!(warning.contains("server.allow_root = false"), "{warning}");
    proxy.listen_addr();
    assert_eq!(proxy.terminate().1, Some(0));

    // As the container image runs it: the environment says allow_root = false.
    let out = Command::new(BIN)
        .args(["--config", &path])
        .env("CREATIO_PROXY_SERVER__ALLOW_ROOT", "false")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to run as root") && stderr.contains("server.allow_root"),
        "{stderr}"
    );

    // The same config as uid 65532: it starts (readable config in a world-readable dir).
    let shared_dir = std::env::temp_dir().join(format!("creatio-proxy-uid-{}", std::process::id()));
    std::fs::create_dir_all(&shared_dir).expect("dir");
    let shared_path = shared_dir.join("config.toml");
    std::fs::write(&shared_path, text).expect("write");
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args([
            "--reuid=65532",
            "--regid=65532",
            "--clear-groups",
            BIN,
            "--config",
        ])
        .arg(&shared_path);
    let mut proxy = spawn_command(setpriv);
    proxy.listen_addr();
    let (_, code) = proxy.terminate();
    let _ = std::fs::remove_dir_all(&shared_dir);
    assert_eq!(code, Some(0));
}

/// One HTTP/1.1 connection to `addr`, kept open: a request that fails on it means the
/// connection was dropped.
async fn one_connection(addr: &str) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    path: &str,
) -> StatusCode {
    sender.ready().await.expect("the connection is still open");
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("answered");
    let status = resp.status();
    let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_reload_apply_a_new_route_on_open_connections_and_refuse_a_broken_config() {
    let emu = emulator(options()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nunmatched = \"deny\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [creatio]\nurl = \"{}\"\n[auth]\nusername = \"Supervisor\"\npassword = \"{PASSWORD}\"\n\
         [identities.portal]\nusername = \"portal.user\"\npassword = \"portal-pass\"\n\
         [[routes]]\nprefix = \"/0/odata\"\n",
        emu.url()
    );
    let path = write_config(&dir, &base);
    let mut proxy = spawn(&["--config", &path]);
    let addr = proxy.listen_addr();
    let admin = proxy.admin_addr();
    let mut conn = one_connection(&addr).await;
    assert_eq!(get_on(&mut conn, "/0/odata/Contact").await, StatusCode::OK);
    assert_eq!(
        get_on(&mut conn, "/0/rest/UsrPortalService/GetCases").await,
        StatusCode::NOT_FOUND
    );

    // A route for the portal service appears.
    write_config(
        &dir,
        &format!("{base}[[routes]]\nprefix = \"/0/rest/UsrPortalService\"\nssp = true\nidentity = \"portal\"\n"),
    );
    proxy.signal("-HUP");
    proxy.wait_for("config reloaded");
    assert_eq!(
        get_on(&mut conn, "/0/rest/UsrPortalService/GetCases").await,
        StatusCode::OK
    );
    let seen = emu.seen();
    let last = seen.last().expect("seen");
    assert_eq!(
        (last.path.as_str(), last.user.as_deref()),
        ("/0/ssp/rest/UsrPortalService/GetCases", Some("portal.user"))
    );
    assert_eq!(get_on(&mut conn, "/0/odata/Contact").await, StatusCode::OK);
    assert_eq!(
        emu.logins("Supervisor"),
        1,
        "the unchanged identity kept its session"
    );

    // A broken config is refused, with a line naming the key; the running one stays.
    write_config(
        &dir,
        &format!("{base}[[routes]]\nprefix = \"/0/rest/X\"\nidentity = \"nobody\"\n"),
    );
    proxy.signal("-HUP");
    let refused = proxy.wait_for("config reload refused");
    assert!(refused.contains("routes[1].identity"), "{refused}");
    assert_eq!(
        get_on(&mut conn, "/0/rest/UsrPortalService/GetCases").await,
        StatusCode::OK
    );
    assert_eq!(get_on(&mut conn, "/0/odata/Contact").await, StatusCode::OK);

    // The same through `creatio-proxy reload` (POST /reload on the admin listener), which
    // reports the outcome: first the broken file, then the base config without the route.
    let reload = |admin: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args(["reload", "--url", &format!("http://{admin}/reload")])
                .output()
                .expect("runs")
        })
    };
    let refused = reload(admin.clone()).await.expect("join");
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("422") && stderr.contains("routes[1].identity"),
        "{stderr}"
    );
    write_config(&dir, &base);
    let applied = reload(admin.clone()).await.expect("join");
    assert_eq!(applied.status.code(), Some(0), "{applied:?}");
    assert!(String::from_utf8_lossy(&applied.stdout).contains("config reloaded"));
    assert_eq!(
        get_on(&mut conn, "/0/rest/UsrPortalService/GetCases").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get_on(&mut conn, "/0/odata/Contact").await, StatusCode::OK);
    assert_eq!(emu.logins("Supervisor"), 1);

    let c = client();
    let metrics = get(&c, &format!("http://{admin}/metrics")).await.text();
    assert!(
        metrics.contains("creatio_proxy_config_reloads_total{outcome=\"applied\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("creatio_proxy_config_reloads_total{outcome=\"refused\"} 2"),
        "{metrics}"
    );
    drop(conn);
    let (lines, code) = proxy.terminate();
    assert_eq!(code, Some(0));
    let all = lines.join("\n");
    assert!(
        !all.contains(PASSWORD) && !all.contains("portal-pass"),
        "{all}"
    );
    emu.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_turns_readiness_off_and_exits_zero() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let emu = emulator(options()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        &dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nreplay_buffer = \"1KiB\"\nshutdown_grace = \"30s\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n[creatio]\nurl = \"{}\"\n\
             [auth]\nusername = \"Supervisor\"\npassword = \"{PASSWORD}\"\n",
            emu.url()
        ),
    );
    let mut proxy = spawn(&["--config", &path]);
    let addr = proxy.listen_addr();
    let admin = proxy.admin_addr();
    let c = client();
    assert_eq!(
        get(&c, &format!("http://{admin}/readyz")).await.status,
        StatusCode::OK
    );

    // A client uploads slowly: the head and the first 2 KiB now (more than replay_buffer, so
    // the proxy streams it to Creatio at once), the rest after SIGTERM.
    let body = format!("{{\"Name\":\"{}\"}}", "x".repeat(8 * 1024));
    let (first, rest) = body.as_bytes().split_at(2048);
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /0/odata/Contact HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.expect("head");
    slow.write_all(first).await.expect("first part");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while emu.requests("/0/odata/Contact") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never reached Creatio"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    proxy.signal("-TERM");
    proxy.wait_for("shutting down");
    let draining = get(&c, &format!("http://{admin}/readyz")).await;
    assert_eq!(draining.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(draining.json()["status"], "shutting_down");
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "no new connections while draining"
    );

    slow.write_all(rest).await.expect("the rest");
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer).await.expect("answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert_eq!(emu.records_created("Contact"), 1);

    let exit = tokio::task::spawn_blocking(move || proxy.terminate_wait())
        .await
        .expect("join");
    assert_eq!(exit, Some(0));
    emu.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_proxy_from_the_environment_carries_the_traffic_and_insecure_skip_verify_warns() {
    let emu = emulator(options()).await;
    let (_, egress) = tls_behind_proxy(&emu, "corp:Pr0xy-Pa55").await;
    let dir = tempfile::tempdir().expect("tempdir");
    // A name only the egress proxy can reach (it sends every destination to the TLS front),
    // whose certificate (issued for 127.0.0.1) the proxy cannot check: insecure_skip_verify.
    let path = write_config(
        &dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[creatio]\nurl = \"https://creatio.test\"\n\
             insecure_skip_verify = true\n[auth]\nusername = \"Supervisor\"\npassword = \"{PASSWORD}\"\n"
        ),
    );
    let mut command = Command::new(BIN);
    command
        .args(["--config", &path])
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env(
            "HTTPS_PROXY",
            format!("http://corp:Pr0xy-Pa55@{}", egress.addr),
        );
    let mut proxy = spawn_command(command);
    let warning = proxy.wait_for("insecure_skip_verify");
    assert!(
        warning.contains("WARN") && warning.contains("NOT checked"),
        "{warning}"
    );
    let ready = proxy.ready_line();
    assert!(
        ready.contains(&format!(
            "egress=http://127.0.0.1:{} (from environment)",
            egress.addr.port()
        )),
        "{ready}"
    );
    let addr = proxy.listen_addr();
    let r = get(&client(), &format!("http://{addr}/0/odata/Contact")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(emu.logins("Supervisor"), 1);
    let seen = egress.connections();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].request_line, "CONNECT creatio.test:443 HTTP/1.1");

    let (lines, code) = proxy.terminate();
    assert_eq!(code, Some(0));
    let all = lines.join("\n");
    assert!(
        !all.contains("Pr0xy-Pa55") && !all.contains(PASSWORD),
        "{all}"
    );
    emu.shutdown();
}

/// Started with a soft limit of 256 open files (and a hard one of 4096), the proxy raises the
/// soft limit to the hard one, so hundreds of clients are not refused for want of descriptors.
#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        &dir,
        "[server]\nlisten = \"127.0.0.1:0\"\n[creatio]\nurl = \"http://127.0.0.1:9\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n",
    );
    let mut prlimit = Command::new("prlimit");
    prlimit.args(["--nofile=256:4096", BIN, "--config", &path]);
    let mut proxy = spawn_command(prlimit);
    let ready = proxy.ready_line();
    assert!(ready.contains("open_files=4096"), "{ready}");
    let limits =
        std::fs::read_to_string(format!("/proc/{}/limits", proxy.child.id())).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
    assert_eq!(proxy.terminate().1, Some(0));
}

/// `[log] query = true` puts the query string into the access line's path; without it (the
/// default, after a reload here) the path stands alone, as the query may hold data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_line_shows_the_query_only_when_asked() {
    let emu = emulator(options()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[creatio]\nurl = \"{}\"\n\
         [auth]\nusername = \"Supervisor\"\npassword = \"{PASSWORD}\"\n[log]\nformat = \"json\"\n",
        emu.url()
    );
    let path = write_config(&dir, &format!("{base}query = true\n"));
    let mut proxy = spawn(&["--config", &path]);
    let addr = proxy.listen_addr();
    let c = client();
    let url = format!("http://{addr}/0/odata/Contact?$top=2&$select=Name");
    assert_eq!(get(&c, &url).await.status, StatusCode::OK);
    let line = proxy.wait_for("\"request_id\"");
    let access: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(
        access["path"], "/0/odata/Contact?$top=2&$select=Name",
        "{line}"
    );

    write_config(&dir, &base);
    proxy.signal("-HUP");
    proxy.wait_for("config reloaded");
    assert_eq!(get(&c, &url).await.status, StatusCode::OK);
    let line = proxy.wait_for("\"request_id\"");
    let access: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(access["path"], "/0/odata/Contact", "{line}");
    assert_eq!(proxy.terminate().1, Some(0));
}

/// With `format = "json"`, every line the process writes to stderr is one JSON object: the
/// start-up lines, the root warning (when the test runs as root, the binary does too), the
/// access and error lines, and the shutdown lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_json_logs_every_stderr_line_is_a_json_object() {
    let emu = emulator(options()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(&dir, &config(&emu, "json"));
    let mut proxy = spawn(&["--config", &path]);
    let addr = proxy.listen_addr();
    let c = client();
    let url = |p: &str| format!("http://{addr}{p}");
    assert_eq!(
        get(&c, &url("/0/odata/Contact")).await.status,
        StatusCode::OK
    );
    let trace = send(
        &c,
        Method::TRACE,
        &url("/0/odata/Contact"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(trace.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = get(&c, &url("/0/rest/UsrPortalService/Get")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let (lines, code) = proxy.terminate();
    assert_eq!(code, Some(0));
    let mut levels = std::collections::BTreeSet::new();
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        let level = value["level"].as_str().unwrap_or("").to_string();
        assert!(!level.is_empty(), "no level: {line}");
        levels.insert(level);
    }
    let log = lines.join("\n");
    assert!(log.contains("creatio-proxy ready"), "{log}");
    assert!(log.contains("method_not_allowed"), "{log}");
    assert!(
        log.contains("\"status\":405") || log.contains("\"status\":\"405\""),
        "{log}"
    );
    assert!(
        levels.contains("WARN"),
        "a warning (the failing portal login): {levels:?}"
    );
    if rustix::process::geteuid().is_root() {
        assert!(log.contains("running as root"), "{log}");
    }
}

/// Out of file descriptors, the accept loop pauses instead of spinning, logs the failure
/// rarely (not every 100 ms), and serves again once descriptors are free: here the silent
/// connections that used them up are closed by `header_read_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_backs_off_logs_rarely_and_recovers() {
    let emu = emulator(options()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        &dir,
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout = \"1s\"\n[creatio]\nurl = \"{}\"\n[auth]\nusername = \"Supervisor\"\npassword = \"{PASSWORD}\"\n",
            emu.url()
        ),
    );
    let mut prlimit = Command::new("prlimit");
    prlimit.args(["--nofile=64:64", BIN, "--config", &path]);
    let mut proxy = spawn_command(prlimit);
    let addr = proxy.listen_addr();
    // More silent connections than the proxy has descriptors for.
    let mut silent = Vec::new();
    for _ in 0..120 {
        silent.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("the kernel queues the connection"),
        );
    }
    let c = client();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        get(&c, &format!("http://{addr}/0/odata/Contact")),
    )
    .await
    .expect("served once descriptors are free again");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    drop(silent);
    let (lines, code) = proxy.terminate();
    assert_eq!(code, Some(0));
    let failures: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("accept failed"))
        .collect();
    assert!(
        !failures.is_empty(),
        "the proxy never ran out of descriptors; the test proves nothing:\n{}",
        lines.join("\n")
    );
    assert!(
        failures.len() <= 4,
        "accept failures logged {} times:\n{}",
        failures.len(),
        lines.join("\n")
    );
}
