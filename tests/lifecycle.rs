//! The life of client connections, over real sockets: silent and half-open sockets are closed
//! on both ports, idle keep-alive connections are closed, a client that stops reading is cut
//! and its Creatio connection freed, and `max_connections` makes room by closing idle
//! connections before it refuses. The timeouts are set short here; no assertion is on speed.

// Test set-up: a failed expect() is the test failing.
#![allow(clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use creatio_proxy::emulator::EmulatorOptions;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest wait for anything the proxy should do by itself.
const PATIENCE: Duration = Duration::from_secs(15);

/// Reads until the proxy closes the connection; how long that took. Panics if it stays open.
async fn closed_by_proxy(stream: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Err(_) => panic!("the proxy kept the connection open for {PATIENCE:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// The value of a metric line that starts with `name`, from the admin listener.
async fn metric(admin: &str, name: &str) -> f64 {
    let r = get(&client(), admin).await;
    r.text()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Raises this test process's soft limit on open files to its hard limit (the in-process
/// proxy and the test's clients share it).
fn more_open_files(wanted: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c >= wanted) {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let _ = setrlimit(Resource::Nofile, raised);
    let now = getrlimit(Resource::Nofile).current.unwrap_or(0);
    assert!(
        now >= wanted,
        "this test needs {wanted} open files; the hard limit allows {now}"
    );
}

#[tokio::test]
async fn silent_and_half_open_connections_are_closed_after_the_header_timeout_on_both_ports() {
    let emu = emulator(EmulatorOptions::default()).await;
    let proxy = proxy_from_toml(&config_toml(
        &emu,
        "header_read_timeout = \"400ms\"\n[admin]\nlisten = \"127.0.0.1:0\"",
        "",
    ))
    .await;
    let admin = proxy.admin.expect("admin listener");
    let sends: [&[u8]; 5] = [
        b"",
        b"P",
        // Half of the h2 preface: hyper's protocol sniffing waits for the rest.
        b"PRI * HTTP/2.0\r\n",
        // The whole preface and nothing more.
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        // Half of an HTTP/1 head.
        b"GET /0/odata/Contact HTTP/1.1\r\nHost: x\r\n",
    ];
    for port in [proxy.addr, admin] {
        for sent in sends {
            let mut s = TcpStream::connect(port).await.expect("connect");
            s.write_all(sent).await.expect("write");
            let took = closed_by_proxy(&mut s).await;
            assert!(
                took >= Duration::from_millis(300),
                "{port} {:?}: closed after {took:?}, before the timeout",
                String::from_utf8_lossy(sent)
            );
        }
    }
    let closed = metric(
        &proxy.admin_url("/metrics"),
        "creatio_proxy_connections_closed_total{reason=\"header_timeout\"}",
    )
    .await;
    assert_eq!(closed, 10.0);
    assert_eq!(emu.seen().len(), 0, "nothing reached Creatio");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_sockets_do_not_stop_a_new_client_and_are_all_closed() {
    more_open_files(4096);
    let emu = emulator(EmulatorOptions::default()).await;
    let proxy = proxy_from_toml(&config_toml(
        &emu,
        "header_read_timeout = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"",
        "",
    ))
    .await;
    let mut silent = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        if i % 2 == 0 {
            s.write_all(b"P").await.expect("write");
        }
        silent.push(s);
    }
    // Served while the 1000 sockets are open.
    let c = client();
    let r = get(&c, &proxy.url("/0/odata/Contact")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let health = get(&c, &proxy.admin_url("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
    // And every one of them is closed by the proxy.
    let mut waits = Vec::new();
    for mut s in silent {
        waits.push(tokio::spawn(async move { closed_by_proxy(&mut s).await }));
    }
    for w in waits {
        w.await.expect("closed");
    }
    let closed = metric(
        &proxy.admin_url("/metrics"),
        "creatio_proxy_connections_closed_total{reason=\"header_timeout\"}",
    )
    .await;
    assert!(closed >= 1000.0, "{closed}");
    // The client's own keep-alive connection is still usable.
    let r = get(&c, &proxy.url("/0/odata/Contact")).await;
    assert_eq!(r.status, StatusCode::OK);
    proxy.stop().await;
}

/// One keep-alive HTTP/1.1 request on `s`; the status.
async fn request_on(s: &mut TcpStream, path: &str) -> u16 {
    let head = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed before answering");
        out.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&out);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .and_then(|v| v.trim().parse().ok())
                })
                .expect("content-length");
            if body.len() >= len {
                return head
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_http1_and_h2() {
    let emu = emulator(EmulatorOptions::default()).await;
    let proxy = proxy_from_toml(&config_toml(
        &emu,
        "idle_timeout = \"400ms\"\n[admin]\nlisten = \"127.0.0.1:0\"",
        "",
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(request_on(&mut s, "/0/odata/Contact").await, 200);
    let took = closed_by_proxy(&mut s).await;
    assert!(took >= Duration::from_millis(300), "closed after {took:?}");
    // h2 (prior knowledge): GOAWAY, then the connection ends by itself.
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let req = Request::get(proxy.url("/0/odata/Contact"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let r = send.send_request(req).await.expect("h2 answer");
    assert_eq!(r.status(), StatusCode::OK);
    let _ = r.into_body().collect().await.expect("body");
    tokio::time::timeout(PATIENCE, driver)
        .await
        .expect("the idle h2 connection is closed by the proxy")
        .expect("driver")
        .expect("a clean GOAWAY");
    let idle = metric(
        &proxy.admin_url("/metrics"),
        "creatio_proxy_connections_closed_total{reason=\"idle\"}",
    )
    .await;
    assert_eq!(idle, 2.0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_idle_ones_are_closed_first_then_new_ones_refused_with_503_json() {
    let emu = emulator(EmulatorOptions::default()).await;
    let proxy = proxy_from_toml(&config_toml(
        &emu,
        "max_connections = 3\nheader_read_timeout = \"30s\"\n[admin]\nlisten = \"127.0.0.1:0\"",
        "",
    ))
    .await;
    // Three keep-alive connections, each idle after one request.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        assert_eq!(request_on(&mut s, "/0/odata/Contact").await, 200);
        idle.push(s);
    }
    // A fourth is served: an idle one made room.
    let mut fourth = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(request_on(&mut fourth, "/0/odata/Contact").await, 200);
    let mut still_open = 0;
    for s in &mut idle {
        let mut buf = [0u8; 16];
        match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            _ => still_open += 1,
        }
    }
    // At least one was closed; the proxy holds three at most.
    assert!(still_open <= 2, "no idle connection made room");
    let shed = metric(
        &proxy.admin_url("/metrics"),
        "creatio_proxy_connections_closed_total{reason=\"shed\"}",
    )
    .await;
    assert!(shed >= 1.0, "{shed}");
    drop(idle);
    drop(fourth);
    // Three connections that have not sent a request yet are not idle: a fourth is refused.
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(TcpStream::connect(proxy.addr).await.expect("connect"));
    }
    // Closed sockets above take a moment to give their places back; the refusal is what a
    // connection gets once all three places are held by the new ones.
    let deadline = Instant::now() + PATIENCE;
    let answer = loop {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        // A client that sends its request at once still reads the refusal (not a reset).
        let _ = s
            .write_all(b"GET /0/odata/Contact HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
        let text = String::from_utf8_lossy(&out).into_owned();
        if text.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
            break text;
        }
    };
    let (head, body) = answer.split_once("\r\n\r\n").expect("an answer");
    assert!(head.starts_with("HTTP/1.1 503"), "{answer}");
    let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(body["error"], "too_many_connections");
    drop(busy);
    proxy.stop().await;
}

/// A Creatio stand-in whose answers never end; says when an answer's body was dropped
/// (its connection closed by the proxy).
async fn endless_creatio() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (dropped, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let dropped = dropped.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let dropped = dropped.clone();
                async move {
                    let mut r = Response::new(Endless {
                        chunk: Bytes::from(vec![b'x'; 64 * 1024]),
                        dropped: Some(dropped),
                    });
                    if req.uri().path().ends_with("/AuthService.svc/Login") {
                        r.headers_mut().append(
                            "set-cookie",
                            http::HeaderValue::from_static(".ASPXAUTH=ticket; path=/; HttpOnly"),
                        );
                        r.headers_mut().append(
                            "set-cookie",
                            http::HeaderValue::from_static("BPMCSRF=csrf; path=/"),
                        );
                        r.body_mut().dropped = None;
                        r.body_mut().chunk = Bytes::from_static(br#"{"Code":0,"Message":""}"#);
                    }
                    Ok::<_, Infallible>(r)
                }
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// A body of `chunk` forever (or once, without `dropped`); reports its drop.
struct Endless {
    chunk: Bytes,
    dropped: Option<tokio::sync::mpsc::UnboundedSender<()>>,
}

impl hyper::body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.dropped.is_none() {
            if self.chunk.is_empty() {
                return Poll::Ready(None);
            }
            let once = std::mem::take(&mut self.chunk);
            return Poll::Ready(Some(Ok(Frame::data(once))));
        }
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }
}

impl Drop for Endless {
    fn drop(&mut self) {
        if let Some(d) = self.dropped.take() {
            let _ = d.send(());
        }
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_and_its_creatio_connection_freed() {
    let (creatio, mut dropped) = endless_creatio().await;
    let proxy = proxy_from_toml(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nsend_timeout = \"500ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[creatio]\nurl = \"http://{creatio}\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n"
    ))
    .await;
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    s.write_all(b"GET /0/odata/Big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    // Never read: the proxy's writes back up, and after send_timeout it gives up.
    tokio::time::timeout(PATIENCE, dropped.recv())
        .await
        .expect("the answer from Creatio was dropped (its connection closed)")
        .expect("signal");
    let cut = metric(
        &proxy.admin_url("/metrics"),
        "creatio_proxy_connections_closed_total{reason=\"send_timeout\"}",
    )
    .await;
    assert_eq!(cut, 1.0);
    closed_by_proxy(&mut s).await;
    proxy.stop().await;
}

#[tokio::test]
async fn an_h2_header_list_over_max_header_bytes_is_refused_and_never_forwarded() {
    let emu = emulator(EmulatorOptions::default()).await;
    let proxy = proxy_from_toml(&config_toml(&emu, "max_header_bytes = \"64KiB\"", "")).await;
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let ok = Request::get(proxy.url("/0/odata/Contact"))
        .header("x-within", "v".repeat(40 * 1024))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let r = send.send_request(ok).await.expect("h2 answer");
    assert_eq!(r.status(), StatusCode::OK);
    let big = Request::get(proxy.url("/0/odata/Account"))
        .header("x-big", "v".repeat(80 * 1024))
        .body(Empty::<Bytes>::new())
        .expect("request");
    // h2 answers the stream itself, before the stack sees it.
    let r = send.send_request(big).await.expect("h2 answer");
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(emu.seen().iter().all(|s| s.path != "/0/odata/Account"));
    proxy.stop().await;
}
