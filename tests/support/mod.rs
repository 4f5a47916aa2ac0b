//! Shared test helpers: the emulator and the proxy in-process on 127.0.0.1 ephemeral ports,
//! and a plain hyper client (which never follows redirects).
// Test set-up: a failed expect() is the test failing, never a request path.
#![allow(dead_code, unreachable_pub, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use creatio_proxy::config::Config;
use creatio_proxy::emulator::{Emulator, EmulatorOptions};
use creatio_proxy::server::Server;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub const LOCAL: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

pub async fn emulator(options: EmulatorOptions) -> Emulator {
    Emulator::start(options, SocketAddr::from(LOCAL))
        .await
        .expect("emulator starts")
}

/// A proxy running in this process.
pub struct TestProxy {
    pub addr: SocketAddr,
    /// The admin listener, when the config has `[admin] listen`.
    pub admin: Option<SocketAddr>,
    /// Applies a new config to the running proxy (what SIGHUP does).
    pub reloader: creatio_proxy::server::Reloader,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        let admin = self.admin.expect("the config has [admin] listen");
        format!("http://{admin}{path}")
    }

    /// Stops the proxy and waits for it, re-raising a panic from its task.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            if let Err(e) = t.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    }
}

/// A route that sends the emulator's portal service to `portal.user`, with `ssp = SSP` (replace
/// `SSP` with `true` or `false`).
pub const PORTAL: &str = r#"
[[routes]]
prefix = "/0/rest/UsrPortalService"
ssp = SSP
identity = "portal"

[identities.portal]
username = "portal.user"
password = "portal-pass"
"#;

/// The standard config for `emulator`: `[auth]` is the forms user Supervisor, plus `extra`
/// TOML (routes, identities) and `server_extra` keys.
pub fn config_toml(emulator: &Emulator, server_extra: &str, extra: &str) -> String {
    config_with_auth(
        emulator,
        server_extra,
        "[auth]\nusername = \"Supervisor\"\npassword = \"Supervisor\"\n",
        extra,
    )
}

/// The emulator's default OAuth client, as the TOML table `table` (`[auth]`,
/// `[identities.api]`).
pub fn oauth_identity(emulator: &Emulator, table: &str) -> String {
    format!(
        "{table}\nmode = \"oauth2\"\ntoken_url = \"{}/connect/token\"\nclient_id = \"integration-client\"\nclient_secret = \"integration-secret\"\n",
        emulator.identity_url()
    )
}

/// A config for `emulator` with `auth` as the `[auth]` table (and anything after it).
pub fn config_with_auth(
    emulator: &Emulator,
    server_extra: &str,
    auth: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server_extra}

[creatio]
url = "{url}"

{auth}
{extra}
"#,
        url = emulator.url()
    )
}

pub async fn proxy_from_toml(toml: &str) -> TestProxy {
    let config = Config::from_toml_str(toml).expect("test config is valid");
    proxy(&config).await
}

pub async fn proxy(config: &Config) -> TestProxy {
    let server = Server::bind(config).await.expect("proxy binds");
    let addr = server.local_addr().expect("local addr");
    let admin = server.admin_addr();
    let reloader = server.reloader();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    TestProxy {
        addr,
        admin,
        reloader,
        stop: Some(tx),
        task: Some(task),
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A finished exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub async fn send(
    client: &TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let resp = client.request(req).await.expect("proxy answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// A proxy from `toml` answers `GET /0/odata/Contact` with 200 after exactly one login of
/// Supervisor on `emu`.
pub async fn serves_contacts_after_one_login(emu: &Emulator, toml: &str) {
    let proxy = proxy_from_toml(toml).await;
    let r = get(&client(), &proxy.url("/0/odata/Contact")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(emu.logins("Supervisor"), 1);
    proxy.stop().await;
}

/// The last request Creatio (the emulator) saw on `path` (the path as it executed it).
pub fn last_seen(emu: &Emulator, path: &str) -> creatio_proxy::emulator::SeenRequest {
    emu.seen()
        .into_iter()
        .rev()
        .find(|s| s.path == path)
        .unwrap_or_else(|| panic!("Creatio never saw {path}"))
}

/// `POST url` with a JSON body.
pub async fn post_json(client: &TestClient, url: &str, body: impl Into<Bytes>) -> Reply {
    send(
        client,
        Method::POST,
        url,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

pub async fn get(client: &TestClient, url: &str) -> Reply {
    send(client, Method::GET, url, &[], Bytes::new()).await
}

/// The value of cookie `name` in a Cookie header line.
pub fn cookie_value(line: &str, name: &str) -> Option<String> {
    line.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then(|| v.to_string())
    })
}

/// A TLS front for `emu` with the test certificate from tests/fixtures/tls (a test-only CA).
pub async fn tls_front(emu: &Emulator) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(format!("{dir}/server.pem"))
            .expect("server.pem")
            .collect::<Result<_, _>>()
            .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/server.key")).expect("server.key");
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("certificate");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let backend = emu.addr();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    format!("https://127.0.0.1:{}", addr.port())
}

/// The port of an `https://127.0.0.1:PORT` URL.
pub fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// A TLS front for `emu` (its certificate names `localhost` and 127.0.0.1) behind an egress
/// proxy that wants `credentials` (`user:password`): the front's port and the proxy.
pub async fn tls_behind_proxy(emu: &Emulator, credentials: &str) -> (u16, EgressProxyFixture) {
    let port = port_of(&tls_front(emu).await);
    let backend = SocketAddr::from(([127, 0, 0, 1], port));
    let egress = EgressProxyFixture::start(backend, Some(credentials)).await;
    (port, egress)
}

/// What the egress proxy fixture saw on one client connection.
#[derive(Debug, Clone, Default)]
pub struct ProxiedConnection {
    /// The request line: `CONNECT host:port HTTP/1.1`, or `GET http://... HTTP/1.1`.
    pub request_line: String,
    /// Its `Proxy-Authorization` header, if any.
    pub proxy_authorization: Option<String>,
    /// Every byte the client sent after the head (the tunnelled TLS, or the rest of the
    /// plain requests).
    pub client_bytes: Vec<u8>,
}

/// A small egress HTTP proxy on 127.0.0.1: `CONNECT host:port` (answered `200`, then bytes
/// copied both ways) and plain requests in absolute form (forwarded as they are). Every
/// destination is sent to `backend` (the test's stand-in for the named host). With
/// `credentials`, a request without `Proxy-Authorization: Basic <credentials>` gets 407.
pub struct EgressProxyFixture {
    pub addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<Arc<std::sync::Mutex<ProxiedConnection>>>>>,
}

impl EgressProxyFixture {
    pub async fn start(backend: SocketAddr, credentials: Option<&str>) -> Self {
        use base64::Engine;
        let expected = credentials.map(|c| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(c)
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<std::sync::Mutex<Vec<Arc<std::sync::Mutex<ProxiedConnection>>>>> =
            Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let conn = Arc::new(std::sync::Mutex::new(ProxiedConnection::default()));
                record.lock().expect("lock").push(conn.clone());
                let expected = expected.clone();
                tokio::spawn(Self::serve(client, backend, expected, conn));
            }
        });
        EgressProxyFixture { addr, seen }
    }

    async fn serve(
        mut client: tokio::net::TcpStream,
        backend: SocketAddr,
        expected: Option<String>,
        conn: Arc<std::sync::Mutex<ProxiedConnection>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match client.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let request_line = text.lines().next().unwrap_or_default().to_string();
        let auth = text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("proxy-authorization")
                .then(|| value.trim().to_string())
        });
        {
            let mut c = conn.lock().expect("lock");
            c.request_line = request_line.clone();
            c.proxy_authorization = auth.clone();
        }
        if expected.is_some() && auth != expected {
            let _ = client
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic realm=\"egress\"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
            return;
        }
        let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await else {
            let _ = client
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        };
        if request_line.starts_with("CONNECT ") {
            if client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
        } else if upstream.write_all(&head).await.is_err() {
            return;
        }
        let (mut client_read, mut client_write) = client.into_split();
        let (mut up_read, mut up_write) = upstream.into_split();
        let upload = async {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        conn.lock()
                            .expect("lock")
                            .client_bytes
                            .extend_from_slice(&buf[..n]);
                        if up_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = up_write.shutdown().await;
        };
        let download = async {
            let _ = tokio::io::copy(&mut up_read, &mut client_write).await;
            let _ = client_write.shutdown().await;
        };
        tokio::join!(upload, download);
    }

    /// The connections seen so far, in the order they arrived.
    pub fn connections(&self) -> Vec<ProxiedConnection> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|c| c.lock().expect("lock").clone())
            .collect()
    }
}
