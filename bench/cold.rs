//! Cold start: many concurrent requests reach a proxy that has not logged in yet. They must
//! cause one login, and wait for it no longer than it takes: their p99 within one login round
//! trip of the p99 of the same burst once the proxy is warm (issue 12's target).
//!
//! The real `creatio-proxy` binary (a child process) runs in front of the built-in emulator
//! (in this process), whose login takes `--login-latency` as real Creatio's does. Every client
//! connection is opened first; then all send one GET at once, and each request's time from
//! its write to the end of its answer is taken. The same burst is sent again on new
//! connections to the now warm proxy. Everything stays on 127.0.0.1; the child is stopped by
//! its PID.
//!
//! ```text
//! cargo run --release --example cold -- [--binary target/release/creatio-proxy]
//!     [--requests 1000] [--login-latency-ms 300]
//! ```
//!
//! A cargo example so that `cargo test` compiles it; CI does not run it. Exit code 1 when
//! there was not exactly one login or the cold p99 is over the bound.
// A measurement program, not a request path: a failed expect() ends the run with its reason.
#![allow(clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use creatio_proxy::emulator::{Emulator, EmulatorOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST: &[u8] = b"GET /0/odata/Contact?$top=1 HTTP/1.1\r\nHost: cold\r\n\r\n";

struct Args {
    binary: String,
    requests: usize,
    login_latency: Duration,
}

fn args() -> Args {
    let mut args = Args {
        binary: "target/release/creatio-proxy".to_string(),
        requests: 1000,
        login_latency: Duration::from_millis(300),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().expect("a value after each flag");
        match flag.as_str() {
            "--binary" => args.binary = value,
            "--requests" => args.requests = value.parse().expect("--requests N"),
            "--login-latency-ms" => {
                args.login_latency = Duration::from_millis(value.parse().expect("milliseconds"))
            }
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Reads one answer with a `Content-Length` body; returns its status code.
async fn read_answer(stream: &mut TcpStream) -> u16 {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            }
        }
        let n = stream.read(&mut chunk).await.expect("read an answer");
        assert!(n > 0, "the proxy closed a connection before answering");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Opens `n` connections, then sends one request on each at once; the latencies, sorted.
async fn burst(proxy: SocketAddr, n: usize) -> Vec<Duration> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = TcpStream::connect(proxy).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        streams.push(stream);
    }
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let sent = Instant::now();
                stream.write_all(REQUEST).await.expect("write");
                let status = read_answer(&mut stream).await;
                assert_eq!(status, 200, "a request failed");
                sent.elapsed()
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for task in tasks {
        out.push(task.await.expect("a client task"));
    }
    out.sort();
    out
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One login POST straight to the emulator: the login round trip the proxy cannot avoid.
async fn login_round_trip(emulator: SocketAddr) -> Duration {
    let body = r#"{"UserName":"Supervisor","UserPassword":"Supervisor"}"#;
    let request = format!(
        "POST /ServiceModel/AuthService.svc/Login HTTP/1.1\r\nHost: cold\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(emulator).await.expect("connect");
    let sent = Instant::now();
    stream.write_all(request.as_bytes()).await.expect("write");
    assert_eq!(read_answer(&mut stream).await, 200, "the direct login");
    sent.elapsed()
}

async fn run(args: Args) -> bool {
    let emulator = Emulator::start(EmulatorOptions::default(), ([127, 0, 0, 1], 0).into())
        .await
        .expect("the emulator starts");
    emulator.set_login_latency(args.login_latency);
    let mut trips = Vec::new();
    for _ in 0..5 {
        trips.push(login_round_trip(emulator.addr()).await);
    }
    trips.sort();
    let login_rtt = trips[trips.len() / 2];
    let direct_logins = emulator.logins("Supervisor");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let (port, admin) = (free_port(), free_port());
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
             [creatio]\nurl = \"{}\"\n[auth]\nusername = \"Supervisor\"\npassword = \"Supervisor\"\n\
             [log]\nlevel = \"warn\"\n",
            emulator.url()
        ),
    )
    .expect("write the config");
    let mut child = Command::new(&args.binary)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the proxy");
    let proxy: SocketAddr = ([127, 0, 0, 1], port).into();
    // The proxy is up once it accepts; it logs in on the first request, not before.
    let up = Instant::now();
    while TcpStream::connect(proxy).await.is_err() {
        assert!(
            up.elapsed() < Duration::from_secs(30),
            "the proxy did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        emulator.logins("Supervisor"),
        direct_logins,
        "no login before the burst"
    );

    let cold = burst(proxy, args.requests).await;
    let logins = emulator.logins("Supervisor") - direct_logins;
    let warm = burst(proxy, args.requests).await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();

    let bound = quantile(&warm, 0.99) + login_rtt;
    println!(
        "{} concurrent requests, login round trip {} (median of 5 direct logins)",
        args.requests,
        ms(login_rtt)
    );
    println!("| burst | p50 | p99 | max |\n|---|---:|---:|---:|");
    for (name, set) in [("cold", &cold), ("warm", &warm)] {
        println!(
            "| {name} | {} | {} | {} |",
            ms(quantile(set, 0.5)),
            ms(quantile(set, 0.99)),
            ms(set[set.len() - 1])
        );
    }
    println!(
        "logins caused by the cold burst: {logins}; cold p99 {} against warm p99 + one login \
         round trip = {}",
        ms(quantile(&cold, 0.99)),
        ms(bound)
    );
    logins == 1 && quantile(&cold, 0.99) <= bound
}

fn main() -> ExitCode {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    if runtime.block_on(run(args)) {
        ExitCode::SUCCESS
    } else {
        println!("NOT MET");
        ExitCode::FAILURE
    }
}
