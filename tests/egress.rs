//! Reaching Creatio through a corporate egress proxy (`creatio.proxy`): CONNECT tunnels for
//! https (TLS end to end, the proxy sees no cookie), absolute-form requests for http, proxy
//! credentials, and a refused tunnel explained; `insecure_skip_verify` for a certificate the
//! proxy cannot check.
// Test code: a failed expect() is the test failing, never a request path.
#![allow(clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use creatio_proxy::emulator::{Emulator, EmulatorOptions};
use http::StatusCode;
use support::*;

const CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");

/// The standard config for `emu`, with `creatio` as the `[creatio]` keys (url, ...).
fn with_creatio(emu: &Emulator, creatio: &str) -> String {
    config_toml(emu, "", "").replace(&format!("url = \"{}\"", emu.url()), creatio)
}

/// The config for the TLS front on `port` (trusted through the test CA, by the name
/// `localhost`) reached through the egress proxy at `egress` as `userinfo`. `no_proxy = ""`
/// keeps a developer's `NO_PROXY` out of the test.
fn through_proxy(emu: &Emulator, port: u16, userinfo: &str, egress: SocketAddr) -> String {
    with_creatio(
        emu,
        &format!(
            "url = \"https://localhost:{port}\"\nca_file = \"{CA}\"\nno_proxy = \"\"\nproxy = \"http://{userinfo}@{egress}\""
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_goes_through_one_connect_tunnel_with_the_proxy_credentials() {
    let emu = emulator(EmulatorOptions::default()).await;
    let (port, egress) = tls_behind_proxy(&emu, "corp-user:corp-Pa55").await;
    // `localhost` is a name the test certificate holds; the explicit proxy serves loopback
    // too (only proxies from the environment leave loopback alone).
    let toml = through_proxy(&emu, port, "corp-user:corp-Pa55", egress.addr);
    let proxy = proxy_from_toml(&toml).await;
    let c = client();
    for _ in 0..3 {
        let r = get(&c, &proxy.url("/0/odata/Contact")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(r.json()["value"].is_array());
    }
    assert_eq!(emu.logins("Supervisor"), 1);

    let seen = egress.connections();
    assert_eq!(
        seen.len(),
        1,
        "one tunnel, pooled for the login and the three requests: {seen:?}"
    );
    assert_eq!(
        seen[0].request_line,
        format!("CONNECT localhost:{port} HTTP/1.1")
    );
    assert_eq!(
        seen[0].proxy_authorization.as_deref(),
        Some("Basic Y29ycC11c2VyOmNvcnAtUGE1NQ==")
    );
    // TLS runs inside the tunnel: the proxy never sees the session or the password.
    let tunnelled = String::from_utf8_lossy(&seen[0].client_bytes);
    assert!(seen[0].client_bytes.len() > 500);
    for clear in ["BPMCSRF", "ASPXAUTH", "Supervisor", "/0/odata"] {
        assert!(
            !tunnelled.contains(clear),
            "{clear} crossed the proxy in clear"
        );
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_goes_to_the_proxy_in_absolute_form() {
    let emu = emulator(EmulatorOptions::default()).await;
    let egress = EgressProxyFixture::start(emu.addr(), None).await;
    // A name that only the proxy knows (it sends every destination to the emulator).
    let toml = with_creatio(
        &emu,
        &format!(
            "url = \"http://crm.corp.example\"\nno_proxy = \"\"\nproxy = \"{}\"",
            egress.addr
        ),
    );
    let proxy = proxy_from_toml(&toml).await;
    let r = get(&client(), &proxy.url("/0/odata/Contact?$top=1")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(emu.logins("Supervisor"), 1);
    let seen = egress.connections();
    assert_eq!(
        seen[0].request_line,
        "POST http://crm.corp.example/ServiceModel/AuthService.svc/Login HTTP/1.1"
    );
    let later = String::from_utf8_lossy(&seen[0].client_bytes);
    assert!(
        later.contains("GET http://crm.corp.example/0/odata/Contact?$top=1 HTTP/1.1"),
        "{later}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tunnel_is_a_502_that_names_the_proxy_and_hides_its_password() {
    let emu = emulator(EmulatorOptions::default()).await;
    let (port, egress) = tls_behind_proxy(&emu, "corp-user:right").await;
    let toml = through_proxy(&emu, port, "corp-user:Wr0ng-Pr0xy", egress.addr);
    let proxy = proxy_from_toml(&toml).await;
    let r = get(&client(), &proxy.url("/0/odata/Contact")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"], "creatio_unreachable");
    assert_eq!(e["diagnosis"], "unreachable");
    let m = e["message"].as_str().expect("message");
    assert!(
        m.contains(&format!(
            "through the egress proxy http://127.0.0.1:{}",
            egress.addr.port()
        )) && m.contains("proxy authorization required")
            && m.contains("check creatio.proxy"),
        "{m}"
    );
    assert!(!r.text().contains("Wr0ng-Pr0xy"));
    assert_eq!(emu.login_attempts("Supervisor"), 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_accepts_a_certificate_from_an_unknown_ca() {
    let emu = emulator(EmulatorOptions::default()).await;
    // Without the flag this front is refused: tests/diagnoses.rs,
    // an_untrusted_certificate_suggests_ca_file_and_ca_file_fixes_it.
    let front = tls_front(&emu).await;
    let toml = with_creatio(
        &emu,
        &format!("url = \"{front}\"\ninsecure_skip_verify = true"),
    );
    serves_contacts_after_one_login(&emu, &toml).await;
}

#[test]
fn a_proxy_url_that_is_not_plain_http_is_refused_without_echoing_it() {
    for (value, says) in [
        (
            "https://u:Secr3t@egress:3128",
            "https:// proxies are not supported",
        ),
        (
            "socks5://u:Secr3t@egress:1080",
            "socks5:// proxies are not supported",
        ),
        ("http://u:Secr3t@egress:3128/path", "has a path"),
    ] {
        let toml = format!(
            "[creatio]\nurl = \"https://acme.creatio.com\"\nproxy = \"{value}\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n"
        );
        let e = creatio_proxy::config::Config::from_toml_str(&toml)
            .expect_err("refused")
            .to_string();
        assert!(e.contains("creatio.proxy") && e.contains(says), "{e}");
        assert!(!e.contains("Secr3t"), "{e}");
    }
}
