//! `[session_store]`: replicas share one session per identity through a real redis-server.
//!
//! Each test starts its own `redis-server --port <free> --save "" --appendonly no` on
//! 127.0.0.1 and stops it by PID. Built only with `--features redis-tests` (a machine without
//! redis-server still passes `cargo test`); `.ci/run` installs redis-server and runs
//! `cargo test --features redis-tests --test shared_sessions`.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use creatio_proxy::emulator::{Emulator, EmulatorOptions};
use http::StatusCode;
use support::{client, config_toml, emulator, get, oauth_identity, proxy_from_toml, TestProxy};

/// A redis-server of the test's own, stopped (by PID) when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Redis::start_on(port)
    }

    fn start_on(port: u16) -> Redis {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--logfile", ""])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need it on PATH \
                     (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
                )
            });
        // The server says when it accepts connections; its log is read up to that line, then
        // drained by a thread so it never blocks on a full pipe.
        let mut log = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let read = log.read_line(&mut line).expect("redis-server's log");
            assert!(read > 0, "redis-server exited before it was ready:\n{seen}");
            seen.push_str(&line);
            if line.contains("Ready to accept connections") {
                break;
            }
        }
        std::thread::spawn(move || std::io::copy(&mut log, &mut std::io::sink()));
        Redis {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("url")
            .get_connection()
            .expect("connects")
    }

    /// Every key with every byte it holds (hash fields and values, strings).
    fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut c = self.conn();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut c).expect("keys");
        let mut out = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut c).expect("type");
            let mut bytes = Vec::new();
            match kind.as_str() {
                "hash" => {
                    let fields: Vec<Vec<u8>> = redis::cmd("HGETALL")
                        .arg(&key)
                        .query(&mut c)
                        .expect("hgetall");
                    for f in fields {
                        bytes.extend_from_slice(&f);
                        bytes.push(b'\n');
                    }
                }
                "string" => {
                    let v: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut c).expect("get");
                    bytes.extend_from_slice(&v);
                }
                other => panic!("unexpected key type {other} for {key}"),
            }
            out.push((key, bytes));
        }
        out
    }

    /// Resolves with the key of the next hash written under `pattern`, from Redis's keyspace
    /// notifications (subscribed before this returns; 10 s without one is a failure).
    fn next_hash_write(&self, pattern: &str) -> tokio::task::JoinHandle<String> {
        let mut c = self.conn();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("notify-keyspace-events")
            .arg("Kh")
            .query(&mut c)
            .expect("keyspace events on");
        let channel = format!("__keyspace@0__:{pattern}");
        let mut sub = self.conn();
        let (subscribed, ready) = std::sync::mpsc::channel();
        let task = tokio::task::spawn_blocking(move || {
            // A PubSub unsubscribes when dropped: it lives here until the message came.
            let mut pubsub = sub.as_pubsub();
            pubsub.psubscribe(&channel).expect("subscribed");
            pubsub
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("a read timeout");
            subscribed.send(()).expect("the test waits");
            let msg = pubsub.get_message().expect("a hash written within 10 s");
            msg.get_channel_name()
                .trim_start_matches("__keyspace@0__:")
                .to_string()
        });
        ready.recv().expect("the subscriber started");
        task
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A 32-byte key in base64, in a file of its own.
fn key_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    use base64::Engine;
    let path = dir.join(name);
    std::fs::write(
        &path,
        base64::engine::general_purpose::STANDARD.encode([byte; 32]),
    )
    .expect("key file");
    path
}

fn store_table(redis: &Redis, key: &Path) -> String {
    format!(
        "[session_store]\nurl = \"{}\"\nkey_prefix = \"test\"\nencryption_key_file = {:?}\n",
        redis.url(),
        key.display().to_string()
    )
}

/// A redis-server, the emulator, a folder and a key file in it: what every test starts with.
async fn rig() -> (Redis, Emulator, tempfile::TempDir, PathBuf) {
    let redis = Redis::start();
    let emu = emulator(EmulatorOptions::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path(), "key", 7);
    (redis, emu, dir, key)
}

/// A forms proxy (Supervisor) with the store and an admin port.
async fn forms_proxy(emu: &Emulator, redis: &Redis, key: &Path) -> TestProxy {
    proxy_from_toml(&config_toml(
        emu,
        "",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n{}",
            store_table(redis, key)
        ),
    ))
    .await
}

/// Sends `n` GETs of the contacts, spread over `proxies` round-robin, all at once; every
/// answer must be 200.
async fn burst(proxies: &[&TestProxy], n: usize) {
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..n {
        let url = proxies[i % proxies.len()].url("/0/odata/Contact");
        let c = c.clone();
        tasks.push(tokio::spawn(async move { get(&c, &url).await }));
    }
    for t in tasks {
        let r = t.await.expect("task");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
}

/// The value of the metric line starting with `prefix` on `proxy`'s admin port.
async fn metric(proxy: &TestProxy, prefix: &str) -> Option<f64> {
    let text = get(&client(), &proxy.admin_url("/metrics")).await.text();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn readyz_store_state(proxy: &TestProxy) -> (StatusCode, String) {
    let r = get(&client(), &proxy.admin_url("/readyz")).await;
    let state = r.json()["session_store"]["state"]
        .as_str()
        .unwrap_or("absent")
        .to_string();
    (r.status, state)
}

/// `/readyz` is 200 whatever the store does, and says the store is in `want` (a probe asks a
/// store marked down again, so the answer is current).
async fn assert_store_state(proxy: &TestProxy, want: &str) {
    let (status, state) = readyz_store_state(proxy).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "readyz stays 200 whatever the store does"
    );
    assert_eq!(state, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_make_one_login_and_store_nothing_readable() {
    let (redis, emu, _dir, key) = rig().await;
    let (a, b, c) = (
        forms_proxy(&emu, &redis, &key).await,
        forms_proxy(&emu, &redis, &key).await,
        forms_proxy(&emu, &redis, &key).await,
    );
    burst(&[&a, &b, &c], 150).await;
    assert_eq!(
        emu.logins("Supervisor"),
        1,
        "one login across three replicas"
    );
    assert_eq!(emu.login_attempts("Supervisor"), 1);

    // What the session is made of, as Creatio received it.
    let seen = support::last_seen(&emu, "/0/odata/Contact");
    let cookie = seen.headers["cookie"].to_str().expect("ascii").to_string();
    let csrf = seen.headers["bpmcsrf"].to_str().expect("ascii").to_string();
    let mut secrets: Vec<String> = cookie
        .split(';')
        .filter_map(|kv| kv.trim().split_once('=').map(|(_, v)| v.to_string()))
        .filter(|v| v.len() >= 4)
        .collect();
    secrets.push(csrf);
    // The user name and password (both "Supervisor" on the emulator).
    secrets.push("Supervisor".to_string());
    let dump = redis.dump();
    assert!(!dump.is_empty(), "the session is stored");
    for (key, bytes) in &dump {
        assert!(key.starts_with("test:"), "{key}");
        for secret in &secrets {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
                || key.contains(secret.as_str());
            assert!(!found, "{key} holds a secret in plaintext");
        }
    }
    for p in [a, b, c] {
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_a_session_is_stored_logs_in_zero_times() {
    let (redis, emu, _dir, key) = rig().await;
    let first = forms_proxy(&emu, &redis, &key).await;
    burst(&[&first], 5).await;
    first.stop().await;
    assert_eq!(emu.logins("Supervisor"), 1);
    // A restart (or a rolling update): the new process takes the stored session.
    let second = forms_proxy(&emu, &redis, &key).await;
    burst(&[&second], 20).await;
    assert_eq!(
        emu.logins("Supervisor"),
        1,
        "the restarted replica logged in"
    );
    assert_eq!(
        metric(
            &second,
            "creatio_proxy_session_store_adopted_total{identity=\"default\"}"
        )
        .await,
        Some(1.0)
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_under_load_costs_one_relogin_across_replicas() {
    let (redis, emu, _dir, key) = rig().await;
    let proxies = [
        forms_proxy(&emu, &redis, &key).await,
        forms_proxy(&emu, &redis, &key).await,
        forms_proxy(&emu, &redis, &key).await,
    ];
    let all: Vec<&TestProxy> = proxies.iter().collect();
    burst(&all, 30).await;
    assert_eq!(emu.logins("Supervisor"), 1);
    emu.invalidate_sessions();
    burst(&all, 150).await;
    assert_eq!(
        emu.logins("Supervisor"),
        2,
        "one re-login for all three replicas"
    );
    for p in proxies {
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth2_identity_gets_one_token_across_replicas() {
    let (redis, emu, _dir, key) = rig().await;
    let toml = support::config_with_auth(
        &emu,
        "",
        &oauth_identity(&emu, "[auth]"),
        &store_table(&redis, &key),
    );
    let proxies = [
        proxy_from_toml(&toml).await,
        proxy_from_toml(&toml).await,
        proxy_from_toml(&toml).await,
    ];
    let all: Vec<&TestProxy> = proxies.iter().collect();
    burst(&all, 90).await;
    assert_eq!(emu.token_requests(), 1, "one token for three replicas");
    // A revoked token: one new token for all of them.
    emu.revoke_tokens();
    burst(&all, 90).await;
    assert_eq!(emu.token_requests(), 2);
    for p in proxies {
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_store_replicas_serve_alone_and_share_again_when_it_is_back() {
    let (mut redis, emu, _dir, key) = rig().await;
    let port = redis.port;
    let proxies = [
        forms_proxy(&emu, &redis, &key).await,
        forms_proxy(&emu, &redis, &key).await,
        forms_proxy(&emu, &redis, &key).await,
    ];
    let all: Vec<&TestProxy> = proxies.iter().collect();
    burst(&all, 30).await;
    assert_eq!(emu.logins("Supervisor"), 1);
    assert_store_state(&proxies[0], "up").await;

    // The store goes away: requests are still served, on the sessions in hand...
    redis.stop();
    burst(&all, 30).await;
    // ...and after the session ends, each replica logs in on its own (at most one each).
    emu.invalidate_sessions();
    burst(&all, 60).await;
    assert_eq!(
        emu.logins("Supervisor"),
        1 + 3,
        "without the store, one login per replica"
    );
    for p in &proxies {
        assert_store_state(p, "unreachable").await;
        assert_eq!(
            metric(p, "creatio_proxy_session_store_up{").await,
            Some(0.0),
            "the metric says the store is down"
        );
    }

    // The store is back (empty, as after a restart): sharing resumes without a restart.
    let redis = Redis::start_on(port);
    for p in &proxies {
        assert_store_state(p, "up").await;
        assert_eq!(
            metric(p, "creatio_proxy_session_store_up{").await,
            Some(1.0)
        );
    }
    let before = emu.logins("Supervisor");
    emu.invalidate_sessions();
    burst(&all, 150).await;
    assert_eq!(
        emu.logins("Supervisor") - before,
        1,
        "one re-login for the next expiry, not one per replica"
    );
    drop(redis);
    for p in proxies {
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_does_not_open_is_reported_and_replaced_never_a_crash() {
    let (redis, emu, dir, key) = rig().await;
    let first = forms_proxy(&emu, &redis, &key).await;
    burst(&[&first], 3).await;
    first.stop().await;

    // A replica with another key: its keys have other names, so it shares nothing with the
    // others; it says so (the prefix was last written with another key) and logs in alone.
    let other_key = key_file(dir.path(), "other", 9);
    let other = forms_proxy(&emu, &redis, &other_key).await;
    burst(&[&other], 10).await;
    assert_eq!(emu.logins("Supervisor"), 2);
    assert!(metric(
        &other,
        "creatio_proxy_session_store_errors_total{kind=\"other_key\"}"
    )
    .await
    .is_some_and(|n| n >= 1.0));
    other.stop().await;

    // Corrupted values (both keys' sessions): they do not open; it is reported, and the new
    // login replaces them.
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("test:session:*")
        .query(&mut c)
        .unwrap();
    assert_eq!(keys.len(), 2, "one name per key: {keys:?}");
    for key in &keys {
        let _: () = redis::cmd("HSET")
            .arg(key)
            .arg("data")
            .arg(b"\x01garbage-not-a-sealed-session".as_slice())
            .query(&mut c)
            .unwrap();
    }
    let fresh = forms_proxy(&emu, &redis, &key).await;
    burst(&[&fresh], 10).await;
    assert_eq!(emu.logins("Supervisor"), 3);
    assert!(metric(
        &fresh,
        "creatio_proxy_session_store_errors_total{kind=\"undecryptable\"}"
    )
    .await
    .is_some_and(|n| n >= 1.0));
    fresh.stop().await;
    // What it stored opens: the next replica takes it without a login.
    let last = forms_proxy(&emu, &redis, &key).await;
    burst(&[&last], 10).await;
    assert_eq!(emu.logins("Supervisor"), 3);
    last.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_whose_holder_died_is_taken_over_when_its_lease_ends() {
    let (redis, emu, _dir, key) = rig().await;
    let first = forms_proxy(&emu, &redis, &key).await;
    burst(&[&first], 1).await;
    first.stop().await;
    // The identity's keys share their name: `test:session:N` and `test:lock:N`. The stored
    // session is gone and a replica that died mid-login holds the lock for 1.5 s more.
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("test:session:*")
        .query(&mut c)
        .unwrap();
    let lock = keys[0].replace(":session:", ":lock:");
    let _: () = redis::cmd("DEL").arg(&keys[0]).query(&mut c).unwrap();
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("a-replica-that-died")
        .arg("PX")
        .arg(1500)
        .query(&mut c)
        .unwrap();
    let started = Instant::now();
    let proxies = [
        forms_proxy(&emu, &redis, &key).await,
        forms_proxy(&emu, &redis, &key).await,
    ];
    let all: Vec<&TestProxy> = proxies.iter().collect();
    burst(&all, 20).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "the replicas waited for the lease: {:?}",
        started.elapsed()
    );
    assert_eq!(
        emu.logins("Supervisor"),
        2,
        "one login once the lease ended"
    );
    for p in proxies {
        p.stop().await;
    }
}

/// Sends `rounds` rounds of one GET to each proxy in turn (each answer must be 200): the
/// pattern that makes replicas without a store log each other out.
async fn round_robin(proxies: &[&TestProxy], rounds: usize) {
    let c = client();
    for _ in 0..rounds {
        for p in proxies {
            let r = get(&c, &p.url("/0/odata/Contact")).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_session_per_user_the_store_ends_the_replicas_ping_pong() {
    let redis = Redis::start();
    let emu = emulator(EmulatorOptions {
        one_session_per_user: true,
        ..EmulatorOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path(), "key", 7);

    // Without the store: every replica's login ends the others' sessions, so requests
    // spread over them keep logging in (every answer is still 200: each is replayed).
    let alone: Vec<TestProxy> = vec![
        proxy_from_toml(&config_toml(&emu, "", "")).await,
        proxy_from_toml(&config_toml(&emu, "", "")).await,
        proxy_from_toml(&config_toml(&emu, "", "")).await,
    ];
    round_robin(&alone.iter().collect::<Vec<_>>(), 100).await;
    let ping_pong = emu.logins("Supervisor");
    assert!(
        ping_pong > 3,
        "{ping_pong} logins: the replicas should have logged each other out"
    );
    for p in alone {
        p.stop().await;
    }

    // With the store: 300 requests, one login.
    let before = emu.logins("Supervisor");
    let shared = [
        forms_proxy(&emu, &redis, &key).await,
        forms_proxy(&emu, &redis, &key).await,
        forms_proxy(&emu, &redis, &key).await,
    ];
    round_robin(&shared.iter().collect::<Vec<_>>(), 100).await;
    assert_eq!(
        emu.logins("Supervisor") - before,
        1,
        "one login for 300 requests"
    );
    for p in shared {
        p.stop().await;
    }
}

/// The stored session's sealed bytes (the only session key under `test:`).
fn stored_data(redis: &Redis) -> Vec<u8> {
    let mut c = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("test:session:*")
        .query(&mut c)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    redis::cmd("HGET")
        .arg(&keys[0])
        .arg("data")
        .query(&mut c)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_renewal_is_written_back_for_replicas_that_start_later() {
    let redis = Redis::start();
    let lifetime = Duration::from_secs(600);
    let emu = emulator(EmulatorOptions {
        session_timeout: lifetime,
        ..EmulatorOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(dir.path(), "key", 7);
    let first = forms_proxy(&emu, &redis, &key).await;
    burst(&[&first], 1).await;
    let before = stored_data(&redis);
    // Redis says when the session's hash is written (a keyspace event): the wait is on that.
    let written = redis.next_hash_write("test:session:*");
    // Past half its lifetime, the answer renews the ticket; the replica writes it back.
    emu.advance_clock(lifetime * 6 / 10);
    burst(&[&first], 1).await;
    let key_written = written.await.expect("the waiting task");
    assert!(key_written.starts_with("test:session:"), "{key_written}");
    assert_ne!(stored_data(&redis), before, "the stored session changed");
    first.stop().await;
    // The first ticket has now expired; only the renewed one works.
    emu.advance_clock(lifetime * 6 / 10);
    let later = forms_proxy(&emu, &redis, &key).await;
    burst(&[&later], 5).await;
    assert_eq!(
        emu.logins("Supervisor"),
        1,
        "the later replica used the renewed ticket"
    );
    later.stop().await;
}
