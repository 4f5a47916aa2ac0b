//! What the proxy decides on is what Creatio executes: every spelling of a path is either
//! refused with 400 JSON before anything reaches Creatio, or routed and forwarded as its one
//! canonical form. The emulator decodes paths as IIS does, so a spelling that escaped its
//! route would show up here as the wrong user or the wrong path on the emulator's side.
// Test code: a failed expect() is the test failing, never a request path.
#![allow(clippy::expect_used)]

mod support;

use creatio_proxy::emulator::{Emulator, EmulatorOptions};
use http::{Method, StatusCode};
use support::*;

async fn setup() -> (Emulator, TestProxy, TestClient) {
    let emu = emulator(EmulatorOptions::default()).await;
    // The portal service is served as `portal.user` under `/ssp`; everything else as Supervisor.
    let proxy = proxy_from_toml(&config_toml(&emu, "", &PORTAL.replace("SSP", "true"))).await;
    (emu, proxy, client())
}

/// Every spelling of the portal service's path: each letter of the route prefix
/// percent-encoded (upper- and lower-case hex), mixed case, repeated slashes.
fn portal_spellings() -> Vec<String> {
    let plain = "/0/rest/UsrPortalService/GetCases";
    let prefix_len = "/0/rest/UsrPortalService".len();
    let mut out = Vec::new();
    for (i, c) in plain.char_indices().take(prefix_len) {
        if c == '/' {
            continue;
        }
        let hex = if i % 2 == 0 {
            format!("%{:02X}", c as u32)
        } else {
            format!("%{:02x}", c as u32)
        };
        out.push(format!("{}{hex}{}", &plain[..i], &plain[i + 1..]));
    }
    out.extend([
        "/0/REST/usrportalservice/GetCases".to_string(),
        "/0/rest//UsrPortalService/GetCases".to_string(),
        "//0/rest/UsrPortalService//GetCases".to_string(),
        "/0/rest/UsrPortal%53ervice/GetCases".to_string(),
        "/%30/%72%65%73%74/%55%73%72%50%6F%72%74%61%6C%53%65%72%76%69%63%65/GetCases".to_string(),
        // Spellings of the route that Creatio serves the same service under: the client's own
        // /ssp, in any case.
        "/0/ssp/rest/UsrPortalService/GetCases".to_string(),
        "/0/rest/UsrPortalService/GetCases".to_string(),
        "/0/rest/usrportalservice/GetCases".to_string(),
        "/0/SSP/rest/UsrPortalService/GetCases".to_string(),
        "/0/%73sp/rest/UsrPortalService/GetCases".to_string(),
    ]);
    out
}

#[tokio::test]
async fn every_spelling_of_a_route_reaches_creatio_as_its_canonical_form_and_identity() {
    let (emu, proxy, c) = setup().await;
    let spellings = portal_spellings();
    assert!(spellings.len() >= 30, "{}", spellings.len());
    for path in &spellings {
        let before = emu.seen().len();
        let r = get(&c, &proxy.url(path)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        let seen = emu.seen();
        let new: Vec<_> = seen[before..]
            .iter()
            .filter(|s| !s.path.contains("AuthService.svc"))
            .collect();
        assert_eq!(new.len(), 1, "{path}: one request reached Creatio");
        let s = new[0];
        // The bytes on the wire are the canonical form: nothing left for IIS to decode. Case
        // is kept (IIS ignores it; OData keys are data).
        assert!(
            s.raw_path
                .eq_ignore_ascii_case("/0/ssp/rest/UsrPortalService/GetCases"),
            "{path}: {}",
            s.raw_path
        );
        assert_eq!(s.path, s.raw_path, "{path}");
        assert_eq!(s.user.as_deref(), Some("portal.user"), "{path}");
    }
    assert_eq!(emu.requests("/0/rest/UsrPortalService/GetCases"), 0);
    assert_eq!(
        (emu.logins("portal.user"), emu.logins("Supervisor")),
        (1, 0)
    );
    proxy.stop().await;
}

#[tokio::test]
async fn spellings_with_no_single_meaning_are_refused_before_creatio() {
    let (emu, proxy, c) = setup().await;
    let cases = [
        ("/0/rest/UsrPortalService;x/GetCases", "ambiguous_path"),
        ("/0/rest/UsrPortalService./GetCases", "ambiguous_path"),
        ("/0/rest/UsrPortalService%2E/GetCases", "ambiguous_path"),
        ("/0/rest/UsrPortalService%20/GetCases", "ambiguous_path"),
        ("/0/rest%2FUsrPortalService/GetCases", "ambiguous_path"),
        ("/0/rest%2fUsrPortalService/GetCases", "ambiguous_path"),
        ("/0/rest%5CUsrPortalService/GetCases", "ambiguous_path"),
        ("/0/rest/UsrPortal%00Service/GetCases", "ambiguous_path"),
        ("/0/rest/UsrPortal%2553ervice/GetCases", "ambiguous_path"),
        ("/0/rest/UsrPortal%C0%AFService/GetCases", "ambiguous_path"),
        (
            "/0/rest/UsrPortal%E0%80%B3ervice/GetCases",
            "ambiguous_path",
        ),
        ("/0/rest/UsrPortal%C5%BFervice/GetCases", "ambiguous_path"),
        (
            "/0/rest/UsrPortal%EF%BC%B3ervice/GetCases",
            "ambiguous_path",
        ),
        ("/0/rest/UsrPortal%u0053ervice/GetCases", "ambiguous_path"),
        ("/(S(x))/0/rest/UsrPortalService/GetCases", "ambiguous_path"),
        ("/0/(S(x))/rest/UsrPortalService/GetCases", "ambiguous_path"),
        (
            "/0/rest/%28F(x))/UsrPortalService/GetCases",
            "ambiguous_path",
        ),
        ("/0/rest/USRPOR~1/GetCases", "ambiguous_path"),
        (
            "/0/rest/UsrPortalService/%2e%2e/GetCases",
            "dot_segment_in_path",
        ),
        (
            "/0/rest/x/%2E%2E/UsrPortalService/GetCases",
            "dot_segment_in_path",
        ),
    ];
    for (path, code) in cases {
        let r = get(&c, &proxy.url(path)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text());
        let j = r.json();
        assert_eq!(j["error"], code, "{path}");
        assert!(
            j["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path}"
        );
        assert!(j["request_id"].is_string(), "{path}");
    }
    assert!(
        emu.seen().is_empty(),
        "nothing reached Creatio, not even a login"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_clients_login_as_another_user_in_any_spelling_never_changes_the_session() {
    let (emu, proxy, c) = setup().await;
    // The default identity logs in first.
    assert_eq!(
        get(&c, &proxy.url("/0/odata/Contact")).await.status,
        StatusCode::OK
    );
    let other_user = r#"{"UserName":"portal.user","UserPassword":"portal-pass"}"#;
    let plain = "/ServiceModel/AuthService.svc/Login";
    let mut spellings: Vec<String> = plain
        .char_indices()
        .filter(|(_, c)| *c != '/')
        .map(|(i, c)| format!("{}%{:02X}{}", &plain[..i], c as u32, &plain[i + 1..]))
        .collect();
    spellings.extend(
        [
            plain,
            "/ServiceModel/AuthService.svc/login/",
            "//ServiceModel//AuthService.svc/Login",
            "/%53erviceModel/AuthService.svc/LOGIN",
            "/0/ServiceModel/AuthService.svc/Login",
        ]
        .map(String::from),
    );
    assert!(spellings.len() >= 30, "{}", spellings.len());
    for path in &spellings {
        let r = post_json(&c, &proxy.url(path), other_user).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        assert_eq!(r.json()["Code"], 0, "{path}");
        // The next request still runs as the configured user.
        let r = get(&c, &proxy.url("/0/odata/Contact")).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        let last = last_seen(&emu, "/0/odata/Contact");
        assert_eq!(last.user.as_deref(), Some("Supervisor"), "{path}");
    }
    // The client's credentials never reached Creatio.
    assert_eq!(emu.login_attempts("portal.user"), 0);
    assert_eq!(emu.logins("Supervisor"), 1);
    // A cookieless segment in the login path is refused, never forwarded with the client's
    // credentials.
    let r = post_json(
        &c,
        &proxy.url("/ServiceModel/AuthService.svc/(S(x))/Login"),
        other_user,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"], "ambiguous_path");
    // Other methods on the login path are refused locally, as Creatio would.
    let r = send(
        &c,
        Method::GET,
        &proxy.url("/ServiceModel/AuthService.svc/Logi%6E"),
        &[],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(emu.login_attempts("portal.user"), 0);
    proxy.stop().await;
}

#[tokio::test]
async fn forwarded_requests_carry_force_use_session_unless_the_client_sent_its_own() {
    let (emu, proxy, c) = setup().await;
    assert_eq!(
        get(&c, &proxy.url("/0/odata/Contact")).await.status,
        StatusCode::OK
    );
    let s = last_seen(&emu, "/0/odata/Contact");
    assert_eq!(s.headers["forceusesession"], "true");
    let r = send(
        &c,
        Method::GET,
        &proxy.url("/0/odata/Account"),
        &[("ForceUseSession", "false")],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let s = last_seen(&emu, "/0/odata/Account");
    let values: Vec<_> = s.headers.get_all("forceusesession").iter().collect();
    assert_eq!(values, vec!["false"]);
    proxy.stop().await;
}

#[tokio::test]
async fn the_query_string_passes_unchanged_behind_a_decoded_path() {
    let (emu, proxy, c) = setup().await;
    let r = get(
        &c,
        &proxy.url("/0/odata/Con%74act?$filter=Name%20eq%20%27a%2Fb%27&$top=2"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let s = last_seen(&emu, "/0/odata/Contact");
    assert_eq!(s.raw_path, "/0/odata/Contact");
    assert_eq!(
        s.query.as_deref(),
        Some("$filter=Name%20eq%20%27a%2Fb%27&$top=2")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_clients_connection_header_cannot_take_the_session_off_the_request() {
    let (emu, proxy, c) = setup().await;
    for _ in 0..3 {
        let r = send(
            &c,
            Method::GET,
            &proxy.url("/0/odata/Contact"),
            &[(
                "connection",
                "cookie, bpmcsrf, authorization, forceusesession, keep-alive",
            )],
            "",
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    let seen = emu.seen();
    let contacts: Vec<_> = seen
        .iter()
        .filter(|s| s.path == "/0/odata/Contact")
        .collect();
    assert_eq!(contacts.len(), 3);
    for s in contacts {
        assert_eq!(s.user.as_deref(), Some("Supervisor"));
        assert!(s.headers.contains_key("cookie") && s.headers.contains_key("bpmcsrf"));
        assert_eq!(s.headers["forceusesession"], "true");
        assert!(!s.headers.contains_key("connection"));
    }
    assert_eq!(emu.logins("Supervisor"), 1, "no re-login");
    proxy.stop().await;
}

#[tokio::test]
async fn creatios_other_authentication_endpoints_are_refused_not_forwarded() {
    let (emu, proxy, c) = setup().await;
    let other_user = r#"{"UserName":"portal.user","UserPassword":"portal-pass"}"#;
    for (method, path) in [
        (Method::POST, "/ServiceModel/AuthService.svc/SsoLogin"),
        (Method::POST, "/0/ServiceModel/AuthService%2Esvc/Anything"),
        (Method::GET, "/Login/NuiLogin.aspx"),
        (Method::POST, "/0/Login/NuiLogin.aspx"),
        (Method::POST, "/ServiceModel/AUTHSE~1.SVC/Login"),
    ] {
        let r = send(
            &c,
            method.clone(),
            &proxy.url(path),
            &[("content-type", "application/json")],
            other_user,
        )
        .await;
        assert!(
            r.status == StatusCode::FORBIDDEN || r.status == StatusCode::BAD_REQUEST,
            "{method} {path}: {}",
            r.text()
        );
        let code = r.json()["error"].as_str().unwrap_or("").to_string();
        assert!(
            code == "auth_endpoint_refused" || code == "ambiguous_path",
            "{method} {path}: {code}"
        );
    }
    assert!(emu.seen().is_empty(), "nothing reached Creatio");
    assert_eq!(emu.login_attempts("portal.user"), 0);
    proxy.stop().await;
}
