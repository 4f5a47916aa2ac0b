//! Login safety (issue 11, part 5), end to end on 127.0.0.1: the re-login pause is per
//! endpoint, a locked account or an expired password stops logins (requests, `/readyz`) until
//! a reload, a reload ends the token keeper of an oauth2 identity it drops, and an admin port
//! off loopback without `allowed_clients` is warned about. The emulator's lock message names
//! no lock window, so logins here resume only by a reload; the window case is tested against a
//! stand-in in `src/auth/tests.rs`.
// Test code: a failed expect() is the test failing, never a request path.
#![allow(clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use creatio_proxy::config::Config;
use creatio_proxy::emulator::{Emulator, EmulatorOptions};
use http::StatusCode;
use support::*;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// The error body's fields that must be the same for every request while logins are stopped.
fn login_error(r: &Reply) -> (String, String, String, String) {
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(
        r.headers.get("retry-after").is_none(),
        "no time to wait for"
    );
    let body = r.json();
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(body.get("retry_after_seconds").is_none(), "{body}");
    let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
    (
        field("error"),
        field("diagnosis"),
        field("identity"),
        field("message"),
    )
}

/// `/readyz` while the default identity's logins are stopped with `diagnosis`.
async fn readyz_says_stopped(c: &TestClient, proxy: &TestProxy, diagnosis: &str) {
    let r = get(c, &proxy.admin_url("/readyz")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    let body = r.json();
    assert_eq!(body["status"], "not_ready");
    let entry = &body["identities"][0];
    assert_eq!(entry["identity"], "default", "{body}");
    assert_eq!(entry["error"], "creatio_login_failed", "{body}");
    assert_eq!(entry["diagnosis"], diagnosis, "{body}");
    assert_eq!(entry["logins_stopped"], true, "{body}");
    assert_eq!(entry["next_login"], "after_reload", "{body}");
    assert!(
        entry["reason"]
            .as_str()
            .is_some_and(|r| r.contains("reloaded")),
        "{body}"
    );
}

/// Requests and probes, sequential and 50 at once, for at least `busy` (longer than the login
/// back-off, so a back-off alone would have let attempts through): every request gets
/// `expected`, every probe says the logins are stopped.
async fn hammer(
    c: &TestClient,
    proxy: &TestProxy,
    expected: &(String, String, String, String),
    busy: Duration,
) {
    let burst = (0..50).map(|_| {
        let c = c.clone();
        let url = proxy.url("/0/odata/Contact");
        tokio::spawn(async move { get(&c, &url).await })
    });
    for r in futures_join(burst).await {
        assert_eq!(&login_error(&r), expected);
    }
    let start = Instant::now();
    let mut rounds = 0;
    while rounds < 20 || start.elapsed() < busy {
        let r = post_json(c, &proxy.url("/0/odata/Contact"), r#"{"Name":"x"}"#).await;
        assert_eq!(&login_error(&r), expected);
        readyz_says_stopped(c, proxy, &expected.1).await;
        rounds += 1;
    }
}

/// Awaits every task, re-raising a panic.
async fn futures_join<T: Send + 'static>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        out.push(t.await.expect("task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_always_answers_401_does_not_keep_a_real_expiry_elsewhere_from_recovering()
{
    let emu = emulator(EmulatorOptions::default()).await;
    let proxy = proxy_from_toml(&config_toml(&emu, "login_backoff = \"30s\"", "")).await;
    let c = client();
    let contacts = proxy.url("/0/odata/Contact");
    assert_eq!(get(&c, &contacts).await.status, StatusCode::OK);
    assert_eq!(emu.logins("Supervisor"), 1);

    // The endpoint that refuses every session: one re-login finds that out, then it pauses.
    let deny = get(&c, &proxy.url("/0/rest/UsrDenyService/Check")).await;
    assert_eq!(
        deny.json()["error"],
        "session_expired_again",
        "{}",
        deny.text()
    );
    assert_eq!(emu.logins("Supervisor"), 2);
    for spelling in [
        "/0/rest/UsrDenyService/Check",
        "/0/rest/usrdenyservice/CHECK?x=1",
    ] {
        let r = get(&c, &proxy.url(spelling)).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            r.json()["error"],
            "relogin_paused",
            "{spelling}: {}",
            r.text()
        );
        assert_eq!(r.json()["retry_after_seconds"], 30, "{spelling}");
    }
    assert_eq!(
        emu.logins("Supervisor"),
        2,
        "no login for a paused endpoint"
    );

    // A real expiry within that pause, met by 10 requests at once on another endpoint: one
    // re-login, and every one of them replayed.
    emu.invalidate_sessions();
    let burst = (0..10).map(|_| {
        let c = c.clone();
        let url = contacts.clone();
        tokio::spawn(async move { get(&c, &url).await })
    });
    for r in futures_join(burst).await {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    assert_eq!(emu.logins("Supervisor"), 3, "exactly one re-login");

    // A write recovers as well (its own expiry), and the refusing endpoint stays paused.
    emu.invalidate_sessions();
    let created = post_json(&c, &contacts, r#"{"Name":"after expiry"}"#).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(emu.records_created("Contact"), 1, "created once");
    assert_eq!(emu.logins("Supervisor"), 4);
    let r = get(&c, &proxy.url("/0/rest/UsrDenyService/Check")).await;
    assert_eq!(r.json()["error"], "relogin_paused");
    assert_eq!(emu.logins("Supervisor"), 4);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_account_gets_only_the_attempt_that_found_the_lock_until_a_reload() {
    let emu = emulator(EmulatorOptions::default()).await;
    // A back-off of 50 ms: a back-off alone would let a probe try again many times below.
    let toml = config_toml(
        &emu,
        "login_backoff = \"50ms\"\nlogin_backoff_max = \"50ms\"",
        ADMIN,
    );
    let proxy = proxy_from_toml(&toml).await;
    let c = client();
    emu.lock_user("Supervisor");

    let first = get(&c, &proxy.url("/0/odata/Contact")).await;
    let expected = login_error(&first);
    assert_eq!(expected.0, "creatio_login_failed");
    assert_eq!(expected.1, "user_locked");
    assert_eq!(expected.2, "default");
    assert!(
        expected.3.contains("The user is locked")
            && expected.3.contains("until its config is reloaded"),
        "{}",
        expected.3
    );
    assert_eq!(emu.login_attempts("Supervisor"), 1);

    hammer(&c, &proxy, &expected, Duration::from_millis(300)).await;
    assert_eq!(
        emu.login_attempts("Supervisor"),
        1,
        "the attempt that found the lock, and no other"
    );

    // Unlocked in Creatio: nothing happens by itself ...
    emu.unlock("Supervisor");
    assert_eq!(
        login_error(&get(&c, &proxy.url("/0/odata/Contact")).await),
        expected
    );
    assert_eq!(emu.login_attempts("Supervisor"), 1);
    // ... until the operator reloads the (unchanged) config.
    let config = Config::from_toml_str(&toml).expect("config");
    proxy.reloader.apply(&config).expect("reload");
    let r = get(&c, &proxy.url("/0/odata/Contact")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(emu.login_attempts("Supervisor"), 2);
    assert_eq!(emu.logins("Supervisor"), 1);
    assert_eq!(
        get(&c, &proxy.admin_url("/readyz")).await.status,
        StatusCode::OK
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_that_gets_the_account_locked_stops_there_and_a_new_password_resumes() {
    // The emulator locks after 5 wrong passwords in a row, as Creatio's LoginAttemptCount does.
    let emu = emulator(EmulatorOptions::default()).await;
    let wrong = "[auth]\nusername = \"Supervisor\"\npassword = \"wrong\"\n";
    let proxy = proxy_from_toml(&config_with_auth(
        &emu,
        "login_backoff = \"10ms\"\nlogin_backoff_max = \"10ms\"",
        wrong,
        ADMIN,
    ))
    .await;
    let c = client();
    // Probes alone, as a Kubernetes readiness probe would: each may try once the back-off
    // ends, until Creatio says "locked".
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&c, &proxy.admin_url("/readyz")).await;
        if r.json()["identities"][0]["diagnosis"] == "user_locked" {
            break;
        }
        assert!(Instant::now() < deadline, "never locked: {}", r.text());
        tokio::task::yield_now().await;
    }
    let found = emu.login_attempts("Supervisor");
    assert_eq!(
        found, 6,
        "5 wrong passwords, then the one that met the lock"
    );
    readyz_says_stopped(&c, &proxy, "user_locked").await;
    let expected = login_error(&get(&c, &proxy.url("/0/odata/Contact")).await);
    assert_eq!(expected.1, "user_locked");
    hammer(&c, &proxy, &expected, Duration::from_millis(100)).await;
    assert_eq!(
        emu.login_attempts("Supervisor"),
        found,
        "no attempt on a locked account"
    );

    // The admin unlocks the user; the operator gives the right password (a changed identity).
    emu.unlock("Supervisor");
    let right = config_toml(
        &emu,
        "login_backoff = \"10ms\"\nlogin_backoff_max = \"10ms\"",
        ADMIN,
    );
    proxy
        .reloader
        .apply(&Config::from_toml_str(&right).expect("config"))
        .expect("reload");
    let r = get(&c, &proxy.url("/0/odata/Contact")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(emu.login_attempts("Supervisor"), found + 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_password_stops_logins_until_a_reload() {
    let mut options = EmulatorOptions::default();
    for user in &mut options.users {
        user.password_expired = user.name == "Supervisor";
    }
    let emu = emulator(options).await;
    let toml = config_toml(&emu, "login_backoff = \"10ms\"", ADMIN);
    let proxy = proxy_from_toml(&toml).await;
    let c = client();
    readyz_until_stopped(&c, &proxy).await;
    let expected = login_error(&get(&c, &proxy.url("/0/odata/Contact")).await);
    assert_eq!(expected.1, "password_expired");
    assert!(expected.3.contains("has expired"), "{}", expected.3);
    hammer(&c, &proxy, &expected, Duration::from_millis(100)).await;
    assert_eq!(emu.login_attempts("Supervisor"), 1);
    proxy
        .reloader
        .apply(&Config::from_toml_str(&toml).expect("config"))
        .expect("reload");
    login_error(&get(&c, &proxy.url("/0/odata/Contact")).await);
    assert_eq!(
        emu.login_attempts("Supervisor"),
        2,
        "one attempt per reload"
    );
    proxy.stop().await;
}

/// The first `/readyz` logs in (and finds the password expired); it says so.
async fn readyz_until_stopped(c: &TestClient, proxy: &TestProxy) {
    let r = get(c, &proxy.admin_url("/readyz")).await;
    assert_eq!(
        r.json()["identities"][0]["diagnosis"],
        "password_expired",
        "{}",
        r.text()
    );
    readyz_says_stopped(c, proxy, "password_expired").await;
}

// === the real binary ===

const BIN: &str = env!("CARGO_BIN_EXE_creatio-proxy");

/// The binary (maybe behind a wrapper such as `unshare`), its stderr lines as they come.
struct Binary {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Binary {
    fn start(mut command: Command) -> Binary {
        let mut child = command
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Binary {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// The first stderr line (within 30 s) holding every one of `needles`.
    fn line_with(&mut self, needles: &[&str]) -> String {
        loop {
            let Ok(line) = self.lines.recv_timeout(Duration::from_secs(30)) else {
                panic!("no line with {needles:?}:\n{}", self.log.join("\n"))
            };
            self.log.push(line.clone());
            if needles.iter().all(|n| line.contains(n)) {
                return line;
            }
        }
    }

    /// SIGTERM by PID; every stderr line of the run once it has exited.
    fn finish(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.log.push(line);
        }
        self.log.join("\n")
    }
}

impl Drop for Binary {
    /// Stopped by its own PID.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("creatio-proxy.toml");
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

fn with_api(emu: &Emulator) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{ADMIN}[creatio]\nurl = \"{url}\"\n\
         [auth]\nusername = \"Supervisor\"\npassword = \"Supervisor\"\n\
         [[routes]]\nprefix = \"/0/rest/UsrApi\"\nidentity = \"api\"\n{api}",
        url = emu.url(),
        api = oauth_identity(emu, "[identities.api]"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_drops_an_oauth2_identity_without_a_token_ends_its_keeper() {
    let emu = emulator(EmulatorOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(&dir, &with_api(&emu));
    let mut proxy = Binary::start({
        let mut c = Command::new(BIN);
        c.args(["--config", &path]);
        c
    });
    let ready = proxy.line_with(&["creatio-proxy ready"]);
    let admin = ready
        .split(['"', ' ', '=', ','])
        .skip_while(|t| *t != "admin")
        .find(|t| t.starts_with("127.0.0.1:"))
        .unwrap_or_else(|| panic!("no admin address in {ready}"))
        .to_string();
    assert_eq!(emu.token_requests(), 0, "the identity never got a token");

    // The same config without the oauth2 identity (and its route).
    let without = with_api(&emu);
    let without = &without[..without.find("[[routes]]").expect("routes")];
    config_file(&dir, without);
    let c = client();
    let r = send(
        &c,
        http::Method::POST,
        &format!("http://{admin}/reload"),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let stopped = proxy.line_with(&["token keeper stopped"]);
    assert!(stopped.contains("api"), "{stopped}");
    assert_eq!(emu.token_requests(), 0);
}

#[test]
fn an_admin_port_off_loopback_without_allowed_clients_is_warned_about_at_start() {
    // Off loopback, but in a network namespace of its own whose only interface is loopback:
    // nothing outside this machine can reach it.
    let isolated = Command::new("unshare")
        .args(["-rn", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !isolated {
        eprintln!("skipped: `unshare -rn` (a private network namespace) is not available here");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = config_file(
        &dir,
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"0.0.0.0:0\"\n\
         [creatio]\nurl = \"http://127.0.0.1:9\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n",
    );
    let mut proxy = Binary::start({
        let mut c = Command::new("unshare");
        c.args(["-rn", BIN, "--config", &path]);
        c
    });
    let warning = proxy.line_with(&["admin listener", "off loopback"]);
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("server.allowed_clients"), "{warning}");
    assert!(warning.contains("0.0.0.0:"), "{warning}");

    // With allowed_clients, no warning in the whole run.
    let path = config_file(
        &dir,
        "[server]\nlisten = \"127.0.0.1:0\"\nallowed_clients = [\"10.0.0.0/8\"]\n\
         [admin]\nlisten = \"0.0.0.0:0\"\n\
         [creatio]\nurl = \"http://127.0.0.1:9\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n",
    );
    let mut guarded = Binary::start({
        let mut c = Command::new("unshare");
        c.args(["-rn", BIN, "--config", &path]);
        c
    });
    guarded.line_with(&["creatio-proxy ready"]);
    let log = guarded.finish();
    assert!(log.contains("stopped"), "it ran and stopped: {log}");
    assert!(!log.contains("off loopback"), "{log}");
}
