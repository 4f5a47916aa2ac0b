//! What every request is held to, over real sockets: methods, target and head sizes, body
//! size and body stalls, `Expect`, and where a rewritten `Location` points. Each refusal is
//! checked for its exact status and JSON body, and for never reaching Creatio (the emulator).

// Test set-up: a failed expect() is the test failing.
#![allow(clippy::expect_used)]

mod support;

use std::time::Duration;

use creatio_proxy::emulator::{Emulator, EmulatorOptions};
use http::{Method, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn setup(server: &str, extra: &str) -> (Emulator, TestProxy) {
    let emu = emulator(EmulatorOptions::default()).await;
    let proxy = proxy_from_toml(&config_toml(&emu, server, extra)).await;
    (emu, proxy)
}

/// Sends raw bytes on a fresh connection; returns the status line's code, the headers and
/// the body of the answer (the proxy closes or answers within 10 s).
async fn raw(proxy: &TestProxy, bytes: &[u8]) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    // The proxy may answer (and close) before it has read everything: a failed write is fine.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Requests the emulator saw with `method`.
fn seen_with(emu: &Emulator, method: &str) -> usize {
    emu.seen()
        .iter()
        .filter(|s| s.method.as_str() == method)
        .count()
}

#[tokio::test]
async fn trace_connect_and_unknown_methods_are_405_json_and_never_forwarded() {
    let (emu, proxy) = setup("", "").await;
    let c = client();
    for method in ["TRACE", "PROPFIND", "BREW"] {
        let r = send(
            &c,
            Method::from_bytes(method.as_bytes()).expect("method"),
            &proxy.url("/0/odata/Contact"),
            &[],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        let body = r.json();
        assert_eq!(body["error"], "method_not_allowed", "{method}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains(method) && m.contains("MERGE")),
            "{body}"
        );
        assert!(body["request_id"].is_string());
        assert_eq!(
            r.headers["allow"],
            "GET, HEAD, POST, PUT, PATCH, MERGE, DELETE, OPTIONS"
        );
        assert_eq!(seen_with(&emu, method), 0, "{method} reached Creatio");
    }
    // CONNECT in authority form: hyper's client cannot send it, so raw bytes.
    let (status, _, body) = raw(
        &proxy,
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(json(&body)["error"], "method_not_allowed");
    assert_eq!(seen_with(&emu, "CONNECT"), 0);
    // The allowed ones pass, MERGE included (Creatio's OData 3 update).
    let r = send(&c, Method::GET, &proxy.url("/0/odata/Contact"), &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(emu.logins("Supervisor"), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn long_targets_are_414_and_large_heads_431_json_never_forwarded() {
    let (emu, proxy) = setup("", "").await;
    let c = client();
    let long = format!("/0/odata/Contact?$filter={}", "a".repeat(9000));
    let r = send(&c, Method::GET, &proxy.url(&long), &[], "").await;
    assert_eq!(r.status, StatusCode::URI_TOO_LONG, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], "uri_too_long");
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("server.max_uri_bytes")));
    // 40 KiB of headers: over the 32 KiB default, within what hyper reads: the JSON answer.
    let big = "v".repeat(10 * 1024);
    let headers = [
        ("x-a", big.as_str()),
        ("x-b", big.as_str()),
        ("x-c", big.as_str()),
        ("x-d", big.as_str()),
    ];
    let r = send(
        &c,
        Method::GET,
        &proxy.url("/0/odata/Contact"),
        &headers,
        "",
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{}",
        r.text()
    );
    assert_eq!(r.json()["error"], "header_too_large");
    // One 256 KiB header: hyper cuts it at its buffer, still 431, and nothing is forwarded.
    let huge = format!(
        "GET /0/odata/Contact HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
        "h".repeat(256 * 1024)
    );
    let (status, _, _) = raw(&proxy, huge.as_bytes()).await;
    assert_eq!(status, 431);
    assert!(
        emu.seen().iter().all(|s| s.path != "/0/odata/Contact"),
        "a refused request reached Creatio"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn bodies_over_max_body_are_413_before_a_byte_is_forwarded_or_cut_when_chunked() {
    let routes = r#"
[[routes]]
prefix = "/0/odata/Account"
max_body = "8KiB"

[[routes]]
prefix = "/0/odata/Lead"
max_body = "0"
"#;
    let (emu, proxy) = setup("max_body = \"1KiB\"", routes).await;
    let c = client();
    let record = |n: usize| format!("{{\"Name\":\"{}\"}}", "n".repeat(n));
    // Announced: refused from Content-Length, nothing sent to Creatio.
    let r = post_json(&c, &proxy.url("/0/odata/Contact"), record(2000)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"], "body_too_large");
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("1024 bytes") && m.contains("nothing was sent")));
    assert_eq!(r.headers["connection"], "close");
    // Chunked (no Content-Length): cut once it passes the limit.
    let chunk = record(2000);
    let chunked = format!(
        "POST /0/odata/Contact HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    let (status, _, body) = raw(&proxy, chunked.as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(json(&body)["error"], "body_too_large");
    assert_eq!(emu.records_created("Contact"), 0);
    // A small body passes; a route's own limit replaces the server's, "0" lifts it.
    let r = post_json(&c, &proxy.url("/0/odata/Contact"), record(100)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = post_json(&c, &proxy.url("/0/odata/Account"), record(4000)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = post_json(&c, &proxy.url("/0/odata/Account"), record(9000)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = post_json(&c, &proxy.url("/0/odata/Lead"), record(100_000)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(
        (
            emu.records_created("Contact"),
            emu.records_created("Account"),
            emu.records_created("Lead")
        ),
        (1, 1, 1)
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_stalled_body_is_408_json_and_creatio_sees_its_request_aborted() {
    // A body small enough to be held for a replay never leaves the proxy; a larger one
    // streams to Creatio, which must see it cut off, not completed.
    let (emu, proxy) = setup(
        "body_read_timeout = \"300ms\"\nreplay_buffer = \"64KiB\"",
        "",
    )
    .await;
    let c = client();
    let r = post_json(&c, &proxy.url("/0/odata/Contact"), "{\"Name\":\"warm\"}").await;
    assert_eq!(r.status, StatusCode::CREATED);
    for (path, announced, sent) in [
        ("/0/odata/Contact", 1000usize, 10usize),
        (
            "/0/odata/Contact(00000000-0000-0000-0000-000000000001)/Data",
            1 << 20,
            200 * 1024,
        ),
    ] {
        let mut stream = tokio::net::TcpStream::connect(proxy.addr)
            .await
            .expect("connect");
        let method = if path.ends_with("/Data") {
            "PUT"
        } else {
            "POST"
        };
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {announced}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        stream
            .write_all(&vec![b'x'; sent])
            .await
            .expect("part of the body");
        // Then nothing: the proxy must answer by itself.
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out))
            .await
            .expect("the proxy answers a stalled body")
            .expect("read");
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").expect("an answer");
        assert!(head.starts_with("HTTP/1.1 408"), "{path}: {head}");
        let body = json(body);
        assert_eq!(body["error"], "client_body_timeout", "{path}");
        assert!(body["message"]
            .as_str()
            .is_some_and(|m| m.contains("server.body_read_timeout")));
    }
    assert_eq!(
        emu.records_created("Contact"),
        1,
        "the held body was never sent"
    );
    // The streamed upload reached Creatio and was cut off: it answered the broken body 400
    // and stored nothing.
    tokio::time::timeout(
        Duration::from_secs(10),
        emu.wait_seen(|s| s.method == Method::PUT && s.path.ends_with("/Data") && s.status == 400),
    )
    .await
    .unwrap_or_else(|_| {
        let seen: Vec<_> = emu
            .seen()
            .iter()
            .map(|s| (s.method.clone(), s.path.clone(), s.status))
            .collect();
        panic!("Creatio never saw the upload cut off: {seen:?}")
    });
    assert!(emu
        .upload("Contact", "00000000-0000-0000-0000-000000000001")
        .is_none());
    proxy.stop().await;
}

#[tokio::test]
async fn expect_100_continue_is_answered_once_by_the_proxy_and_not_forwarded() {
    let (emu, proxy) = setup("", "").await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let body = "{\"Name\":\"Expecting\"}";
    let head = format!(
        "POST /0/odata/Contact HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    // The interim answer comes before the body is sent, as a client that waits for it needs.
    let mut interim = [0u8; 25];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut interim))
        .await
        .expect("100 Continue arrives")
        .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(body.as_bytes()).await.expect("body");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 201"), "{text}");
    assert!(
        !text.contains("100 Continue"),
        "a second 100 Continue: {text}"
    );
    let seen = last_seen(&emu, "/0/odata/Contact");
    assert!(seen.headers.get("expect").is_none(), "Expect was forwarded");
    assert_eq!(emu.records_created("Contact"), 1);
    let (status, _, body) = raw(
        &proxy,
        b"POST /0/odata/Contact HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 200-ok\r\n\r\n{}",
    )
    .await;
    assert_eq!(status, 417, "{body}");
    assert_eq!(json(&body)["error"], "expectation_failed");
    proxy.stop().await;
}

#[tokio::test]
async fn a_location_points_at_a_plain_host_or_the_listener_never_at_an_injected_one() {
    let (emu, proxy) = setup("", "").await;
    let created = |head: &str| {
        let (_, rest) = head.split_once("\r\nlocation: ").expect("a Location");
        rest.split("\r\n").next().unwrap_or_default().to_string()
    };
    let post = |host: &str| {
        format!(
            "POST /0/odata/Contact HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: 14\r\nConnection: close\r\n\r\n{{\"Name\":\"Loc\"}}"
        )
    };
    let listener = proxy.addr.to_string();
    for (host, base) in [
        ("gw.internal:5080", "http://gw.internal:5080".to_string()),
        ("evil.example/x?a=", format!("http://{listener}")),
        ("evil.example@other", format!("http://{listener}")),
    ] {
        let (status, head, body) = raw(&proxy, post(host).as_bytes()).await;
        assert_eq!(status, 201, "{host}: {body}");
        let location = created(&head);
        assert!(
            location.starts_with(&format!("{base}/0/odata/contact(")),
            "{host}: {location}"
        );
    }
    assert_eq!(emu.records_created("Contact"), 3);
    proxy.stop().await;
    // Behind a TLS terminator: the configured public URL.
    let emu2 = emulator(EmulatorOptions::default()).await;
    let proxy = proxy_from_toml(&config_toml(
        &emu2,
        "public_url = \"https://crm-gateway.example.com\"",
        "",
    ))
    .await;
    let (status, head, _) = raw(&proxy, post("127.0.0.1").as_bytes()).await;
    assert_eq!(status, 201);
    assert!(
        created(&head).starts_with("https://crm-gateway.example.com/0/odata/contact("),
        "{head}"
    );
    proxy.stop().await;
}
