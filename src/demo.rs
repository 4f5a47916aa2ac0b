//! `creatio-proxy demo`: the emulator and the proxy on loopback, shown working.
//!
//! Starts the built-in emulator on a free port, the proxy on `--listen` (or a free port when that
//! one is taken) with a default identity, a portal route and an OAuth 2.0 route, runs four
//! example requests through it, prints what came back and the curl lines to repeat them, then
//! serves until Ctrl-C (`--once`: exit after the examples).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::{Config, LogConfig, LogFormat};
use crate::emulator::{Emulator, EmulatorOptions};
use crate::server::{shutdown_signal, Server};

/// Runs the demo; returns the exit code.
pub(crate) async fn demo(listen: SocketAddr, once: bool) -> i32 {
    crate::telemetry::init(
        &LogConfig {
            format: LogFormat::Text,
            level: "warn".into(),
            query: false,
        },
        false,
    );
    let emulator = match Emulator::start(
        EmulatorOptions::default(),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("demo: cannot start the emulator: {e}");
            return 1;
        }
    };
    let toml = |listen: SocketAddr| {
        format!(
            r#"
[server]
listen = "{listen}"

[creatio]
url = "{url}"

[auth]
username = "Supervisor"
password = "Supervisor"

[[routes]]
prefix = "/0/rest/UsrPortalService"
ssp = true
identity = "portal"

[identities.portal]
username = "portal.user"
password = "portal-pass"

[[routes]]
prefix = "/0/rest/UsrIntegrationService"
identity = "api"

[identities.api]
mode = "oauth2"
token_url = "{is}/connect/token"
client_id = "integration-client"
client_secret = "integration-secret"
"#,
            url = emulator.url(),
            is = emulator.identity_url()
        )
    };
    let mut server = None;
    for addr in [listen, SocketAddr::from(([127, 0, 0, 1], 0))] {
        let config = match Config::from_toml_str(&toml(addr)) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("demo: {e}");
                return 1;
            }
        };
        match Server::bind(&config).await {
            Ok(s) => {
                server = Some(s);
                break;
            }
            Err(e) => eprintln!("demo: {e}; trying a free port instead"),
        }
    }
    let Some(server) = server else {
        return 1;
    };
    let Ok(addr) = server.local_addr() else {
        return 1;
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async move {
        let _ = stop_rx.await;
    }));

    println!("creatio-proxy demo");
    println!("  Creatio emulator (not Creatio): {}", emulator.url());
    println!(
        "  its Identity Service (OAuth):   {}",
        emulator.identity_url()
    );
    println!(
        "  proxy:                          http://{addr}   (no credentials needed by clients)\n"
    );
    let base = format!("http://{addr}");
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let examples: [(&str, Method, String, Option<&str>); 4] = [
        (
            "list contacts (OData 4)",
            Method::GET,
            "/0/odata/Contact".into(),
            None,
        ),
        (
            "create a contact",
            Method::POST,
            "/0/odata/Contact".into(),
            Some(r#"{"Name":"Ada Lovelace","Email":"ada@example.com"}"#),
        ),
        (
            "call a portal service (route with ssp = true, identity portal.user)",
            Method::GET,
            "/0/rest/UsrPortalService/GetCases".into(),
            None,
        ),
        (
            "call a service as an OAuth 2.0 client (identity api: a bearer token, no cookies)",
            Method::GET,
            "/0/rest/UsrIntegrationService/Ping".into(),
            None,
        ),
    ];
    let mut ok = true;
    for (what, method, path, body) in &examples {
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("{base}{path}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = match req.body(Full::new(Bytes::from(body.unwrap_or("").to_string()))) {
            Ok(r) => r,
            Err(_) => continue,
        };
        match client.request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let bytes = resp
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes);
                let short: String = text.chars().take(160).collect();
                println!(
                    "{what}\n  {method} {path} -> {status}\n  {short}{}\n",
                    if text.len() > 160 { " ..." } else { "" }
                );
                ok &= status.is_success();
            }
            Err(e) => {
                println!("{what}\n  {method} {path} -> failed: {e}\n");
                ok = false;
            }
        }
    }
    println!(
        "Creatio logins so far: Supervisor {}, portal.user {}; OAuth tokens: {} (one per identity, shared by every request)\n",
        emulator.logins("Supervisor"),
        emulator.logins("portal.user"),
        emulator.tokens_issued()
    );
    println!("Try it yourself (paste into another terminal):");
    println!("  curl -s {base}/0/odata/Contact");
    println!("  curl -s -X POST {base}/0/odata/Contact -H 'Content-Type: application/json' -d '{{\"Name\":\"Grace Hopper\"}}'");
    println!("  curl -s {base}/0/rest/UsrPortalService/GetCases");
    println!("  curl -s {base}/0/rest/UsrIntegrationService/Ping");
    if once {
        let _ = stop_tx.send(());
        let _ = serving.await;
        emulator.shutdown();
        return if ok { 0 } else { 1 };
    }
    println!("\nServing until Ctrl-C.");
    shutdown_signal().await;
    let _ = stop_tx.send(());
    let _ = serving.await;
    emulator.shutdown();
    0
}

/// `creatio-proxy emulator`: only the emulator, until Ctrl-C.
pub(crate) async fn emulator_only(listen: SocketAddr, options: EmulatorOptions) -> i32 {
    crate::telemetry::init(
        &LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
            query: false,
        },
        false,
    );
    let one_session_per_user = options.one_session_per_user;
    let clients: Vec<String> = options
        .oauth_clients
        .iter()
        .map(|c| format!("{}/{} as {}", c.client_id, c.client_secret, c.user))
        .collect();
    match Emulator::start(options, listen).await {
        Ok(e) => {
            println!("Creatio emulator (not Creatio) on {} (users Supervisor/Supervisor, portal.user/portal-pass); Ctrl-C stops it", e.url());
            println!(
                "Identity Service token URL: {}/connect/token (OAuth clients {})",
                e.identity_url(),
                clients.join(", ")
            );
            if one_session_per_user {
                println!(
                    "AllowOnlyOneSessionPerUser is on: a login ends that user's other sessions"
                );
            }
            shutdown_signal().await;
            e.shutdown();
            0
        }
        Err(e) => {
            eprintln!("emulator: cannot listen on {listen}: {e}");
            1
        }
    }
}
