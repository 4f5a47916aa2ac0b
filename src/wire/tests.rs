// Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
// whose failure is this test failing; none of it is on a request path.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::body::ProxyBody;
use crate::pool::Upstream;

fn headers(list: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in list {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    map
}

/// Rules 3 to 7, one row each: what delimits the body, whether the connection is reused,
/// and the `Content-Length` left for the client.
#[test]
fn framing_follows_rfc_9112() {
    use Framing::*;
    let v11 = Version::HTTP_11;
    type Row<'a> = (
        Method,
        u16,
        Version,
        &'a [(&'a str, &'a str)],
        Result<(Framing, bool), ()>,
        Option<&'a str>,
    );
    let rows: Vec<Row<'_>> = vec![
        (
            Method::GET,
            200,
            v11,
            &[("content-length", "5")],
            Ok((Length(5), true)),
            Some("5"),
        ),
        (
            Method::GET,
            200,
            v11,
            &[("content-length", "0")],
            Ok((Empty, true)),
            Some("0"),
        ),
        (
            Method::GET,
            200,
            v11,
            &[("transfer-encoding", "chunked")],
            Ok((Chunked, true)),
            None,
        ),
        (
            Method::GET,
            200,
            v11,
            &[("transfer-encoding", "gzip, Chunked")],
            Ok((Chunked, true)),
            None,
        ),
        // Transfer-Encoding wins; the Content-Length goes and the connection is not reused.
        (
            Method::GET,
            200,
            v11,
            &[("content-length", "5"), ("transfer-encoding", "chunked")],
            Ok((Chunked, false)),
            None,
        ),
        // A final coding other than chunked: until close.
        (
            Method::GET,
            200,
            v11,
            &[("transfer-encoding", "chunked, gzip")],
            Ok((Close, false)),
            None,
        ),
        (
            Method::GET,
            200,
            v11,
            &[("transfer-encoding", "gzip")],
            Ok((Close, false)),
            None,
        ),
        // Neither: until close.
        (Method::GET, 200, v11, &[], Ok((Close, false)), None),
        // No body, whatever the headers say.
        (
            Method::HEAD,
            200,
            v11,
            &[("content-length", "5")],
            Ok((Empty, true)),
            Some("5"),
        ),
        (
            Method::HEAD,
            200,
            v11,
            &[("transfer-encoding", "chunked")],
            Ok((Empty, true)),
            None,
        ),
        (
            Method::GET,
            204,
            v11,
            &[("content-length", "5")],
            Ok((Empty, true)),
            Some("5"),
        ),
        (
            Method::GET,
            304,
            v11,
            &[("content-length", "5")],
            Ok((Empty, true)),
            Some("5"),
        ),
        (Method::GET, 304, v11, &[], Ok((Empty, true)), None),
        // Repeats of one length fold; lengths that disagree, or are not numbers, are refused.
        (
            Method::GET,
            200,
            v11,
            &[("content-length", "5, 5")],
            Ok((Length(5), true)),
            Some("5"),
        ),
        (
            Method::GET,
            200,
            v11,
            &[("content-length", "5"), ("content-length", "5")],
            Ok((Length(5), true)),
            Some("5"),
        ),
        (
            Method::GET,
            200,
            v11,
            &[("content-length", "5"), ("content-length", "6")],
            Err(()),
            None,
        ),
        (
            Method::GET,
            200,
            v11,
            &[("content-length", "5, 6")],
            Err(()),
            None,
        ),
        (
            Method::GET,
            200,
            v11,
            &[("content-length", "+5")],
            Err(()),
            None,
        ),
        (
            Method::GET,
            200,
            v11,
            &[("content-length", "0x5")],
            Err(()),
            None,
        ),
        (
            Method::GET,
            200,
            v11,
            &[("content-length", "")],
            Err(()),
            None,
        ),
        (
            Method::GET,
            200,
            v11,
            &[("content-length", "99999999999999999999")],
            Err(()),
            None,
        ),
        // Connection: close, and HTTP/1.0, end the connection after the body.
        (
            Method::GET,
            200,
            v11,
            &[("content-length", "5"), ("connection", "keep-alive, Close")],
            Ok((Length(5), false)),
            Some("5"),
        ),
        (
            Method::GET,
            200,
            Version::HTTP_10,
            &[("content-length", "5")],
            Ok((Length(5), false)),
            Some("5"),
        ),
    ];
    for (method, status, version, list, want, length) in rows {
        let mut map = headers(list);
        let got = framing(
            &method,
            StatusCode::from_u16(status).expect("status"),
            version,
            &mut map,
        )
        .map_err(|_| ());
        assert_eq!(got, want, "{method} {status} {version:?} {list:?}");
        if got.is_ok() {
            let lengths: Vec<_> = map
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .map(|v| v.to_str().expect("ascii").to_string())
                .collect();
            assert_eq!(
                lengths,
                length.map(str::to_string).into_iter().collect::<Vec<_>>(),
                "{list:?}"
            );
        }
    }
}

#[test]
fn the_request_head_is_written_from_the_request_and_its_body() {
    let host = HeaderValue::from_static("creatio.example:8443");
    let req = Request::post("/0/odata/Contact?$top=1")
        .header("accept", "application/json")
        .header("content-length", "999")
        .header("transfer-encoding", "chunked")
        .header("host", "client.example")
        .body(())
        .expect("request");
    let body = Bytes::from_static(b"{\"Name\":\"x\"}");
    let (head, rest) = encode(&req, &host, Some(&body));
    assert_eq!(
        &head[..],
        &b"POST /0/odata/Contact?$top=1 HTTP/1.1\r\nhost: creatio.example:8443\r\naccept: application/json\r\ncontent-length: 12\r\n\r\n{\"Name\":\"x\"}"[..]
    );
    assert!(rest.is_none());

    // An empty POST says so (IIS answers 411 otherwise); an empty GET says nothing.
    for (method, want) in [
        (
            Method::POST,
            &b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 0\r\n\r\n"[..],
        ),
        (Method::GET, &b"GET / HTTP/1.1\r\nhost: h\r\n\r\n"[..]),
    ] {
        let req = Request::builder()
            .method(method)
            .uri("/")
            .body(())
            .expect("request");
        let (head, _) = encode(&req, &HeaderValue::from_static("h"), None);
        assert_eq!(&head[..], want);
    }

    // A large body is written after the head, not copied into it.
    let big = Bytes::from(vec![b'x'; COALESCE + 1]);
    let req = Request::put("/big").body(()).expect("request");
    let (head, rest) = encode(&req, &HeaderValue::from_static("h"), Some(&big));
    assert!(head.ends_with(format!("content-length: {}\r\n\r\n", COALESCE + 1).as_bytes()));
    assert_eq!(rest.as_ref().map(Bytes::len), Some(COALESCE + 1));
}

/// A server on 127.0.0.1 that answers each request with the next of `answers`, byte for
/// byte, closing the connection after an answer marked so; it records each request it read
/// and counts connections.
struct Scripted {
    origin: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    /// How many connections the server has closed (its socket dropped).
    closed: tokio::sync::watch::Receiver<usize>,
}

async fn scripted(answers: Vec<(Vec<u8>, bool)>) -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let answers: Answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    let (count, seen) = (connections.clone(), requests.clone());
    let (closed_tx, closed) = tokio::sync::watch::channel(0usize);
    let closed_tx = Arc::new(closed_tx);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (answers, seen, closed) = (answers.clone(), seen.clone(), closed_tx.clone());
            tokio::spawn(async move {
                answer(stream, answers, seen).await;
                closed.send_modify(|n| *n += 1);
            });
        }
    });
    Scripted {
        origin,
        connections,
        requests,
        closed,
    }
}

type Answers = Arc<Mutex<VecDeque<(Vec<u8>, bool)>>>;

/// Serves one connection of [`scripted`]; the socket closes when this returns.
async fn answer(
    mut stream: tokio::net::TcpStream,
    answers: Answers,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let mut buf = Vec::new();
    loop {
        // One request: the head, then Content-Length bytes.
        let mut chunk = [0u8; 4096];
        let request = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    break buf.drain(..end + 4 + length).collect::<Vec<u8>>();
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        seen.lock().expect("lock").push(request);
        let Some((answer, close)) = answers.lock().expect("lock").pop_front() else {
            return;
        };
        if stream.write_all(&answer).await.is_err() || close {
            return;
        }
    }
}

fn upstream(origin: &str) -> Upstream {
    let config = crate::config::Config::from_toml_str(&format!(
        "[creatio]\nurl = \"{origin}\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n"
    ))
    .expect("config");
    crate::upstream::build_upstream(&config).expect("pool")
}

/// Status, headers and body of one exchange, or the error's text.
async fn send(
    up: &Upstream,
    method: Method,
    path: &str,
) -> Result<(u16, HeaderMap, Vec<u8>), String> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(ProxyBody::Empty)
        .expect("request");
    let resp = up.request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| format!("body: {e}"))?;
    Ok((
        parts.status.as_u16(),
        parts.headers,
        body.to_bytes().to_vec(),
    ))
}

const NEXT: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext";

/// Each answer over a real socket, then one more request: the body the client gets, and
/// whether the second request reused the connection.
#[tokio::test]
async fn answers_are_read_to_their_end_and_connections_reused_only_when_safe() {
    type Case<'a> = (Method, &'a [u8], bool, Result<&'a [u8], &'a str>, bool);
    let cases: Vec<Case<'_>> = vec![
        (Method::GET, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false, Ok(b"hello"), true),
        (
            Method::GET,
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n",
            false,
            Ok(b"hello world"),
            true,
        ),
        (
            Method::GET,
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            false,
            Ok(b"hello"),
            false,
        ),
        (Method::GET, b"HTTP/1.1 200 OK\r\n\r\nuntil close", true, Ok(b"until close"), false),
        (Method::HEAD, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false, Ok(b""), true),
        (Method::GET, b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n", false, Ok(b""), true),
        (Method::GET, b"HTTP/1.1 304 Not Modified\r\n\r\n", false, Ok(b""), true),
        (
            Method::GET,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
            Ok(b"ok"),
            true,
        ),
        (
            Method::GET,
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
            true,
            Ok(b"ok"),
            false,
        ),
        (Method::GET, b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", true, Ok(b"ok"), false),
        // Bytes after the body: the connection is not trusted again.
        (
            Method::GET,
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil",
            false,
            Ok(b"ok"),
            false,
        ),
        (Method::GET, b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n", true, Err("101"), false),
        (
            Method::GET,
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            true,
            Err("Content-Length"),
            false,
        ),
        (Method::GET, b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", true, Err("body"), false),
        (
            Method::GET,
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello world\r\n0\r\n\r\n",
            true,
            Err("body"),
            false,
        ),
        (Method::GET, b"HTTP/1.1 200 OK\r\ncontent-le", true, Err("closed"), false),
        (Method::GET, b"SSH-2.0-OpenSSH\r\n\r\n", true, Err("malformed"), false),
    ];
    for (method, answer, close, want, reused) in cases {
        let label = String::from_utf8_lossy(answer).into_owned();
        let server = scripted(vec![(answer.to_vec(), close), (NEXT.to_vec(), false)]).await;
        let up = upstream(&server.origin);
        let got = send(&up, method, "/first").await;
        match (want, &got) {
            (Ok(body), Ok((_, _, got))) => assert_eq!(got, body, "{label}"),
            (Err(text), Err(e)) => assert!(e.contains(text), "{label}: {e}"),
            _ => panic!("{label}: {got:?}"),
        }
        let (status, _, body) = send(&up, Method::GET, "/next").await.expect("next");
        assert_eq!((status, &body[..]), (200, &b"next"[..]), "{label}");
        assert_eq!(
            server.connections.load(Ordering::SeqCst),
            if reused { 1 } else { 2 },
            "reused after {label}"
        );
    }
}

#[tokio::test]
async fn a_content_length_overridden_by_chunked_does_not_reach_the_client() {
    let server = scripted(vec![(
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
        false,
    )])
    .await;
    let (_, headers, body) = send(&upstream(&server.origin), Method::GET, "/")
        .await
        .expect("answer");
    assert_eq!(body, b"hello");
    assert!(headers.get(header::CONTENT_LENGTH).is_none(), "{headers:?}");
}

#[tokio::test]
async fn a_connection_creatio_closed_while_idle_is_not_used() {
    // The first answer says nothing of closing, then the server closes: the pool must see it
    // when it takes the connection, and the second request must succeed on a new one.
    let server = scripted(vec![
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            true,
        ),
        (NEXT.to_vec(), false),
    ])
    .await;
    let up = upstream(&server.origin);
    assert_eq!(send(&up, Method::GET, "/a").await.expect("a").2, b"ok");
    // Once the server has dropped its socket, the FIN is on this side of loopback (a request
    // written before that would be an honest race, which no client can win).
    let mut closed = server.closed.clone();
    closed.wait_for(|n| *n >= 1).await.expect("server runs");
    assert_eq!(send(&up, Method::GET, "/b").await.expect("b").2, b"next");
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    let requests = server.requests.lock().expect("lock").len();
    assert_eq!(requests, 2, "each request was written once");
}

/// Creatio answers (413) after the head of a large buffered upload and stops reading: the
/// caller gets that answer rather than a broken pipe, and the connection, whose request was
/// cut short, is not reused.
#[tokio::test]
async fn an_answer_that_comes_before_the_whole_body_is_read_and_returned() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("addr"));
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                    break;
                }
                head.push(byte[0]);
            }
            let answer: &[u8] = if head.starts_with(b"PUT") {
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 8\r\n\r\ntoo big!"
            } else {
                NEXT
            };
            let _ = stream.write_all(answer).await;
            // Never reads the rest; keeps the connection open.
            held.push(stream);
        }
    });
    let up = upstream(&origin);
    let big = Bytes::from(vec![b'x'; 64 << 20]);
    let req = Request::put("/0/odata/Contact(1)/Data")
        .body(ProxyBody::full(big))
        .expect("request");
    let resp = up.request(req).await.expect("Creatio's early answer");
    assert_eq!(resp.status(), 413);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&body[..], b"too big!");
    let (status, _, body) = send(&up, Method::GET, "/next").await.expect("next");
    assert_eq!((status, &body[..]), (200, &b"next"[..]));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "the cut-short connection was not reused"
    );
}

#[tokio::test]
async fn an_answer_head_larger_than_the_limit_is_refused() {
    let mut answer = b"HTTP/1.1 200 OK\r\n".to_vec();
    while answer.len() <= MAX_HEAD {
        answer.extend_from_slice(b"x-filler: ");
        answer.extend(std::iter::repeat_n(b'x', 4000));
        answer.extend_from_slice(b"\r\n");
    }
    let server = scripted(vec![(answer, true)]).await;
    let e = send(&upstream(&server.origin), Method::GET, "/")
        .await
        .expect_err("too large");
    assert!(e.contains("larger than"), "{e}");
}

/// Sends `req` through hyper's own HTTP/1.1 client on a new connection to `addr`: the
/// reference the proxy's client is compared with.
async fn by_hyper(
    addr: std::net::SocketAddr,
    req: Request<http_body_util::Full<Bytes>>,
) -> (u16, Version, HeaderMap, Bytes) {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.expect("connect"));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let resp = sender.send_request(req).await.expect("hyper's answer");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status.as_u16(), parts.version, parts.headers, body)
}

/// What may differ between two answers to one request: the date, and the session values a
/// login issues (compared by cookie name).
fn comparable(mut headers: HeaderMap) -> HeaderMap {
    headers.remove(header::DATE);
    let names: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split('=').next().map(str::to_string))
        .filter_map(|n| HeaderValue::from_str(&n).ok())
        .collect();
    headers.remove(header::SET_COOKIE);
    for n in names {
        headers.append(header::SET_COOKIE, n);
    }
    headers
}

/// The same requests, once through hyper's client and once through the proxy's, to the
/// emulator: Creatio sees the same request (method, path, query, headers, body) and the
/// caller gets the same answer (status, version, headers, body).
#[tokio::test]
async fn the_proxys_client_and_hypers_send_and_read_the_same_exchange() {
    use crate::emulator::{Emulator, EmulatorOptions};
    let emulator = Emulator::start(
        EmulatorOptions::default(),
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .expect("emulator");
    let up = upstream(&emulator.url());
    let host = emulator.addr().to_string();
    let login = r#"{"UserName":"Supervisor","UserPassword":"Supervisor"}"#;
    // (method, path, headers, body, whether the body is compared)
    type Case<'a> = (Method, String, Vec<(String, String)>, &'a str, bool);
    let mut cases: Vec<Case<'_>> = vec![
        (
            Method::GET,
            "/api/HealthCheck/Ping".into(),
            vec![],
            "",
            true,
        ),
        (
            Method::GET,
            "/0/odata/Contact?$top=2&$select=Name".into(),
            vec![("accept".into(), "application/json".into())],
            "",
            true,
        ),
        (Method::GET, "/nothing/here".into(), vec![], "", true),
        (
            Method::POST,
            "/ServiceModel/AuthService.svc/Login".into(),
            vec![("content-type".into(), "application/json".into())],
            login,
            true,
        ),
    ];
    // Log in once (by hyper) to send session-bearing requests both ways.
    let (_, _, set, _) = by_hyper(
        emulator.addr(),
        Request::post("/ServiceModel/AuthService.svc/Login")
            .header("host", &host)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(Bytes::from(login)))
            .expect("request"),
    )
    .await;
    let cookies: Vec<String> = set
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_string))
        .collect();
    let csrf = cookies
        .iter()
        .find_map(|c| c.strip_prefix("BPMCSRF="))
        .unwrap_or_default()
        .to_string();
    let session = vec![
        ("cookie".to_string(), cookies.join("; ")),
        ("bpmcsrf".to_string(), csrf),
        ("accept".to_string(), "application/json".to_string()),
        ("x-extra".to_string(), "one".to_string()),
        ("x-extra".to_string(), "two".to_string()),
    ];
    cases.push((
        Method::GET,
        "/0/odata/Contact?$top=3".into(),
        session.clone(),
        "",
        true,
    ));
    cases.push((
        Method::POST,
        "/0/odata/Contact".into(),
        [
            session.clone(),
            vec![("content-type".into(), "application/json".into())],
        ]
        .concat(),
        r#"{"Name":"Differential"}"#,
        // A new record each time: its id differs.
        false,
    ));
    cases.push((
        Method::DELETE,
        "/0/odata/Contact(00000000-0000-0000-0000-000000000001)".into(),
        session.clone(),
        "",
        true,
    ));
    for (method, path, list, body, compare_body) in cases {
        let before = emulator.seen().len();
        let mut reference = Request::builder()
            .method(method.clone())
            .uri(path.as_str())
            .header("host", &host);
        let mut ours = Request::builder().method(method.clone()).uri(path.as_str());
        for (k, v) in &list {
            reference = reference.header(k.as_str(), v.as_str());
            ours = ours.header(k.as_str(), v.as_str());
        }
        let (status, version, headers, answer) = by_hyper(
            emulator.addr(),
            reference
                .body(http_body_util::Full::new(Bytes::from(body)))
                .expect("request"),
        )
        .await;
        let resp = up
            .request(ours.body(ProxyBody::full(body)).expect("request"))
            .await
            .expect("our answer");
        let (parts, our_body) = resp.into_parts();
        let our_body = our_body.collect().await.expect("body").to_bytes();
        let label = format!("{method} {path}");
        assert_eq!(parts.status.as_u16(), status, "{label}");
        assert_eq!(parts.version, version, "{label}");
        let (mut mine, mut theirs) = (comparable(parts.headers), comparable(headers));
        if compare_body {
            assert_eq!(our_body, answer, "{label}");
        } else {
            // The new record's address.
            mine.remove(header::LOCATION);
            theirs.remove(header::LOCATION);
        }
        assert_eq!(mine, theirs, "{label}");
        let seen = emulator.seen();
        let [theirs, mine] = &seen[before..] else {
            panic!("{label}: {} requests seen", seen.len() - before);
        };
        assert_eq!(
            (&mine.method, &mine.raw_path, &mine.query),
            (&theirs.method, &theirs.raw_path, &theirs.query),
            "{label}"
        );
        assert_eq!(mine.headers, theirs.headers, "{label}");
        assert_eq!(mine.status, theirs.status, "{label}");
    }
}
