//! The classic Creatio integration mistakes, each turned into one sentence that says what to
//! change: in the JSON error body (`diagnosis` + `message`), and for a portal user on a route
//! without /ssp, a hint header on Creatio's own 403.
// Test code: a failed expect() is the test failing, never a request path.
#![allow(clippy::expect_used)]

mod support;

use creatio_proxy::emulator::{EmulatorOptions, User};
use http::StatusCode;
use support::*;

/// The JSON error of `GET /0/odata/Contact` through a proxy configured with `toml`.
async fn error_of(toml: &str) -> serde_json::Value {
    let proxy = proxy_from_toml(toml).await;
    let r = get(&client(), &proxy.url("/0/odata/Contact")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(r.headers.contains_key("x-request-id"));
    proxy.stop().await;
    r.json()
}

fn message(e: &serde_json::Value) -> &str {
    e["message"].as_str().expect("a message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_quote_creatio_and_say_what_to_check() {
    let emu = emulator(EmulatorOptions::default()).await;
    let toml =
        config_toml(&emu, "", "").replace("password = \"Supervisor\"", "password = \"nope\"");
    let e = error_of(&toml).await;
    assert_eq!(e["error"], "creatio_login_failed");
    assert_eq!(e["diagnosis"], "wrong_credentials");
    assert_eq!(e["identity"], "default");
    let m = message(&e);
    assert!(
        m.contains("Either user name or password specified incorrectly"),
        "{m}"
    );
    assert!(m.contains("check the username and password"), "{m}");
    assert!(!e.to_string().contains("nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_user_is_named_as_locked() {
    let emu = emulator(EmulatorOptions::default()).await;
    emu.lock_user("Supervisor");
    let e = error_of(&config_toml(&emu, "", "")).await;
    assert_eq!(e["diagnosis"], "user_locked");
    let m = message(&e);
    assert!(
        m.contains("\"Supervisor\" is locked") && m.contains("unlock it"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_password_says_to_change_it() {
    let emu = emulator(EmulatorOptions {
        users: vec![User {
            password_expired: true,
            ..User::employee("Supervisor", "Supervisor")
        }],
        ..EmulatorOptions::default()
    })
    .await;
    let e = error_of(&config_toml(&emu, "", "")).await;
    assert_eq!(e["diagnosis"], "password_expired");
    assert!(message(&e).contains("has expired") && message(&e).contains("change it in Creatio"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_that_redirects_to_a_login_page_is_named() {
    let emu = emulator(EmulatorOptions {
        front_redirect: Some("https://sso.example.com/Login/NuiLogin.aspx?ReturnUrl=%2f".into()),
        ..EmulatorOptions::default()
    })
    .await;
    let e = error_of(&config_toml(&emu, "", "")).await;
    assert_eq!(e["diagnosis"], "login_redirected");
    let m = message(&e);
    assert!(
        m.contains("redirect (HTTP 302)") && m.contains("sso.example.com"),
        "{m}"
    );
    assert!(
        m.contains("creatio.url must reach the Creatio application directly"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_origin_suggests_that_origin() {
    let emu = emulator(EmulatorOptions {
        front_redirect: Some("https://crm.example.com/ServiceModel/AuthService.svc/Login".into()),
        ..EmulatorOptions::default()
    })
    .await;
    let e = error_of(&config_toml(&emu, "", "")).await;
    assert_eq!(e["diagnosis"], "login_redirected");
    assert!(
        message(&e).contains("try creatio.url = \"https://crm.example.com\""),
        "{}",
        message(&e)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_user_on_a_route_without_ssp_gets_creatios_403_and_a_hint() {
    let emu = emulator(EmulatorOptions::default()).await;
    let toml = config_toml(
        &emu,
        "",
        r#"
[[routes]]
prefix = "/0/rest/UsrPortalService"
identity = "portal"

[identities.portal]
username = "portal.user"
password = "portal-pass"
"#,
    );
    let proxy = proxy_from_toml(&toml).await;
    let c = client();
    let r = get(&c, &proxy.url("/0/rest/UsrPortalService/GetCases")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.text()
            .contains("Access to non-SSP API is denied for portal users"),
        "Creatio's own answer passes through: {}",
        r.text()
    );
    let hint = r
        .headers
        .get("x-creatio-proxy-hint")
        .and_then(|v| v.to_str().ok())
        .expect("a hint header");
    assert!(
        hint.contains("ssp = true") && hint.contains("\"/0/rest/UsrPortalService\""),
        "{hint}"
    );
    // An employee's ordinary answers get no hint, and neither does a 403 of another kind.
    let r = get(&c, &proxy.url("/0/odata/Contact")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.headers.contains_key("x-creatio-proxy-hint"));
    // (The route catches /0/ssp/rest/UsrPortalService too, so the employee is sent to another
    // service under /ssp.)
    let r = get(&c, &proxy.url("/0/ssp/rest/UsrOtherService/GetCases")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "employee on /ssp");
    assert!(!r.headers.contains_key("x-creatio-proxy-hint"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_and_connection_failures_name_the_host_and_port() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let cases = [
        (
            format!("http://127.0.0.1:{port}"),
            format!("127.0.0.1:{port} (connection refused)"),
        ),
        // RFC 6761: .invalid names never resolve.
        (
            "http://creatio-proxy-test.invalid".to_string(),
            "cannot resolve the host name creatio-proxy-test.invalid".to_string(),
        ),
    ];
    for (url, says) in cases {
        let toml = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[creatio]\nurl = \"{url}\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n"
        );
        let e = error_of(&toml).await;
        assert_eq!(e["error"], "creatio_unreachable", "{e}");
        assert_eq!(e["diagnosis"], "unreachable");
        assert!(message(&e).contains(&says), "{}", message(&e));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_suggests_ca_file_and_ca_file_fixes_it() {
    let emu = emulator(EmulatorOptions::default()).await;
    let front = tls_front(&emu).await;
    let toml = config_toml(&emu, "", "").replace(&emu.url(), &front);
    let e = error_of(&toml).await;
    assert_eq!(e["error"], "creatio_unreachable");
    assert_eq!(e["diagnosis"], "tls_certificate_untrusted", "{e}");
    let m = message(&e);
    assert!(
        m.contains("is not trusted") && m.contains("creatio.ca_file"),
        "{m}"
    );
    assert_eq!(emu.login_attempts("Supervisor"), 0);

    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");
    let toml = toml.replace(
        &format!("url = \"{front}\""),
        &format!("url = \"{front}\"\nca_file = \"{ca}\""),
    );
    serves_contacts_after_one_login(&emu, &toml).await;
}

/// `check` reads the creatio.url mistakes before any login, with the URL that works.
#[test]
fn creatio_url_with_0_or_a_login_page_is_refused_with_the_root_to_use() {
    for (url, root) in [
        ("http://127.0.0.1:9/0", "http://127.0.0.1:9"),
        (
            "http://127.0.0.1:9/Login/NuiLogin.aspx",
            "http://127.0.0.1:9",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!("[creatio]\nurl = \"{url}\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n"),
        )
        .expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_creatio-proxy"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_ne!(out.status.code(), Some(0), "{text}");
        assert!(text.contains("creatio.url"), "{text}");
        assert!(
            text.contains(&format!("set creatio.url = \"{root}\"")),
            "{text}"
        );
    }
}
