//! Shared test helpers: the emulator and the proxy in-process on 127.0.0.1 ephemeral ports,
//! and a plain hyper client (which never follows redirects).
#![allow(dead_code)]

use std::net::SocketAddr;

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
