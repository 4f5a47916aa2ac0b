//! OAuth 2.0 client-credentials identities against the emulator's Identity Service: one token
//! for many requests, renewal ahead of expiry without making anyone wait, recovery from a
//! revoked token, each token-endpoint failure told apart, and forms and oauth2 identities side
//! by side.
// Test code: a failed expect() is the test failing, never a request path.
#![allow(clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use creatio_proxy::emulator::{Emulator, EmulatorOptions, OAuthClient, TokenFault};
use http::{Method, StatusCode};
use support::*;

const CLIENT_ID: &str = "integration-client";
const CLIENT_SECRET: &str = "integration-secret";

/// `[auth]` as an oauth2 identity of `emu`'s Identity Service, plus `extra`.
fn oauth_toml(emu: &Emulator, server_extra: &str, extra: &str) -> String {
    config_with_auth(emu, server_extra, &oauth_identity(emu, "[auth]"), extra)
}

/// An emulator issuing tokens for `lifetime`, a proxy with an oauth2 `[auth]`, and one request
/// through it (so the first token is in use).
async fn with_first_token(lifetime: Duration) -> (Emulator, TestProxy, TestClient, String) {
    let emu = emulator(EmulatorOptions {
        token_lifetime: lifetime,
        ..EmulatorOptions::default()
    })
    .await;
    let proxy = proxy_from_toml(&oauth_toml(&emu, "", "")).await;
    let c = client();
    let url = proxy.url("/0/odata/Contact");
    assert_eq!(get(&c, &url).await.status, StatusCode::OK);
    assert_eq!(emu.tokens_issued(), 1);
    (emu, proxy, c, url)
}

/// The `Authorization` values Creatio received on `path`, in order.
fn bearers_seen(emu: &Emulator, path: &str) -> Vec<String> {
    emu.seen()
        .into_iter()
        .filter(|s| s.path == path)
        .map(|s| {
            s.headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_share_one_token_and_carry_no_cookies() {
    let emu = emulator(EmulatorOptions::default()).await;
    let proxy = proxy_from_toml(&oauth_toml(&emu, "", "")).await;
    let c = client();
    let url = proxy.url("/0/odata/Contact");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            // The client's own credentials must not reach Creatio.
            send(
                &c,
                Method::GET,
                &url,
                &[
                    ("authorization", "Bearer client-made-up"),
                    ("cookie", "BPMCSRF=mine"),
                    ("bpmcsrf", "mine"),
                ],
                Bytes::new(),
            )
            .await
        }));
    }
    for t in tasks {
        let r = t.await.expect("join");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    assert_eq!(
        emu.token_requests(),
        1,
        "one token for 50 concurrent requests"
    );
    assert_eq!(emu.token_auth(), vec!["form"], "form fields by default");
    assert_eq!(
        emu.logins("Supervisor"),
        0,
        "no forms login for an oauth2 identity"
    );

    let seen: Vec<_> = emu
        .seen()
        .into_iter()
        .filter(|s| s.path == "/0/odata/Contact")
        .collect();
    assert_eq!(seen.len(), 50);
    let first = seen[0].headers.get("authorization").cloned();
    for s in &seen {
        assert_eq!(s.user.as_deref(), Some("Supervisor"));
        assert_eq!(s.headers.get("authorization").cloned(), first);
        assert!(s.headers.get("cookie").is_none(), "no Creatio cookies");
        assert!(s.headers.get("bpmcsrf").is_none(), "no BPMCSRF header");
    }
    let first = first.expect("a bearer token");
    let first = first.to_str().expect("ascii");
    assert!(first.starts_with("Bearer ") && first != "Bearer client-made-up");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_renewed_before_it_expires_without_anyone_waiting() {
    // 15 s tokens: renewal starts at 12 s, and the token is no longer sent from 13.5 s. The
    // 1.5 s between is the time this test has to see the renewal start, on a loaded machine.
    let (emu, proxy, c, url) = with_first_token(Duration::from_secs(15)).await;

    // From now on the Identity Service takes token requests but does not answer them. Every
    // request below that completes therefore used the first token and did not wait for the
    // renewal.
    emu.hold_tokens();
    let mut served = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while emu.token_requests() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no renewal started");
        tick.tick().await;
        let r = tokio::time::timeout(Duration::from_secs(3), get(&c, &url))
            .await
            .expect("a request waited for the renewal");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        served += 1;
    }
    // The renewal is under way and unanswered; a request still goes through on the old token.
    let r = tokio::time::timeout(Duration::from_secs(1), get(&c, &url))
        .await
        .expect("a request waited for the renewal");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        emu.tokens_issued(),
        1,
        "the renewal has not been answered yet"
    );
    assert!(
        served > 10,
        "requests went on during the token's life ({served})"
    );
    assert_eq!(emu.token_requests(), 2, "one renewal, not one per request");

    emu.release_tokens();
    // Once answered, requests move to the new token.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(get(&c, &url).await.status, StatusCode::OK);
        let seen = bearers_seen(&emu, "/0/odata/Contact");
        if seen.last() != seen.first() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new token never used"
        );
        tick.tick().await;
    }
    assert_eq!((emu.token_requests(), emu.tokens_issued()), (2, 2));
    let failed = emu
        .seen()
        .into_iter()
        .filter(|s| s.path == "/0/odata/Contact" && s.status != 200)
        .count();
    assert_eq!(failed, 0, "Creatio never saw an expired token");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_proxy_renews_its_token_by_itself() {
    // 3 s tokens: renewal at 2.4 s. No request is sent after the first one.
    let (emu, proxy, _, _) = with_first_token(Duration::from_secs(3)).await;
    tokio::time::timeout(Duration::from_secs(20), emu.wait_token_requests(3))
        .await
        .expect("the token is renewed, twice, with no request coming");
    assert_eq!(
        emu.requests("/0/odata/Contact"),
        1,
        "no traffic drove the renewals"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_renewal_keeps_the_current_token_in_use() {
    // 15 s tokens: the renewal (started by the proxy itself at 12 s) fails; the token is still
    // good until 13.5 s and must go on being used, without a retry per request.
    let (emu, proxy, c, url) = with_first_token(Duration::from_secs(15)).await;
    emu.set_token_fault(Some(TokenFault::NoAccessToken));
    tokio::time::timeout(Duration::from_secs(30), emu.wait_token_requests(2))
        .await
        .expect("the renewal was tried");
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(1), get(&c, &url))
            .await
            .expect("no request waits");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    }
    assert_eq!(emu.tokens_issued(), 1);
    assert_eq!(emu.token_requests(), 2, "the failed renewal backs off");
    let bearers = bearers_seen(&emu, "/0/odata/Contact");
    assert!(
        bearers.iter().all(|b| *b == bearers[0]),
        "the first token throughout"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_once_and_the_request_replayed_once() {
    let emu = emulator(EmulatorOptions::default()).await;
    let proxy = proxy_from_toml(&oauth_toml(&emu, "", "")).await;
    let c = client();
    let url = proxy.url("/0/odata/Contact");
    let post = |name: &'static str| {
        let (c, url) = (c.clone(), url.clone());
        async move { post_json(&c, &url, format!(r#"{{"Name":"{name}"}}"#)).await }
    };
    assert_eq!(post("first").await.status, StatusCode::CREATED);
    emu.revoke_tokens();
    let r = post("second").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(emu.token_requests(), 2, "one new token");
    assert_eq!(
        emu.records_created("Contact"),
        2,
        "no write lost or doubled"
    );
    let statuses: Vec<u16> = emu
        .seen()
        .into_iter()
        .filter(|s| s.path == "/0/odata/Contact")
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses, vec![201, 401, 201], "refused once, replayed once");
    let bearers = bearers_seen(&emu, "/0/odata/Contact");
    assert_eq!(
        bearers[0], bearers[1],
        "the refused request used the old token"
    );
    assert_ne!(bearers[1], bearers[2], "the replay used the new one");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_client_authentication_works_too() {
    let emu = emulator(EmulatorOptions::default()).await;
    let proxy = proxy_from_toml(&oauth_toml(&emu, "", "client_auth = \"basic\"")).await;
    let c = client();
    let r = get(&c, &proxy.url("/0/odata/Contact")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        emu.token_auth(),
        vec!["basic"],
        "the secret went in HTTP Basic"
    );
    proxy.stop().await;
}

/// The JSON error a request gets through a proxy configured with `toml`.
async fn error_of(toml: &str) -> serde_json::Value {
    let proxy = proxy_from_toml(toml).await;
    let r = get(&client(), &proxy.url("/0/odata/Contact")).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    proxy.stop().await;
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_endpoint_failure_has_its_own_error() {
    let mut options = EmulatorOptions::default();
    options.oauth_clients.push(OAuthClient {
        client_credentials: false,
        ..OAuthClient::new("no-grant-client", "no-grant-secret", "Supervisor")
    });
    let emu = emulator(options).await;

    // token_url at the Creatio application: its HTML login page.
    let toml = oauth_toml(&emu, "", "").replace(
        &format!("{}/connect", emu.identity_url()),
        &format!("{}/connect", emu.url()),
    );
    let e = error_of(&toml).await;
    assert_eq!(e["error"], "oauth_token_failed");
    assert_eq!(e["diagnosis"], "token_url_not_identity_service");
    assert_eq!(e["identity"], "default");
    let m = e["message"].as_str().expect("message");
    assert!(
        m.contains("HTML login page") && m.contains("Identity Service") && m.contains("-is."),
        "{m}"
    );

    // A wrong secret: the OAuth error code.
    let e = error_of(&oauth_toml(&emu, "", "").replace(CLIENT_SECRET, "wrong-secret")).await;
    assert_eq!(e["diagnosis"], "oauth_client_rejected");
    let m = e["message"].as_str().expect("message");
    assert!(m.contains("invalid_client") && m.contains(CLIENT_ID), "{m}");
    assert!(
        !e.to_string().contains("wrong-secret"),
        "the secret is never shown"
    );

    // A client without the grant: code and description.
    let e = error_of(
        &oauth_toml(&emu, "", "")
            .replace(CLIENT_ID, "no-grant-client")
            .replace(CLIENT_SECRET, "no-grant-secret"),
    )
    .await;
    assert_eq!(e["diagnosis"], "oauth_client_rejected");
    let m = e["message"].as_str().expect("message");
    assert!(
        m.contains("unauthorized_client") && m.contains("client_credentials grant"),
        "{m}"
    );

    // An answer without access_token.
    emu.set_token_fault(Some(TokenFault::NoAccessToken));
    let e = error_of(&oauth_toml(&emu, "", "")).await;
    emu.set_token_fault(None);
    assert_eq!(e["diagnosis"], "token_response_invalid");
    assert!(e["message"]
        .as_str()
        .expect("message")
        .contains("without an access_token"));

    // Nothing listening: the host and port are named.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let e = error_of(
        &oauth_toml(&emu, "", "").replace(&emu.identity_url(), &format!("http://127.0.0.1:{port}")),
    )
    .await;
    assert_eq!(e["error"], "identity_service_unreachable");
    assert_eq!(e["diagnosis"], "unreachable");
    let m = e["message"].as_str().expect("message");
    assert!(
        m.contains(&format!("127.0.0.1:{port}")) && m.contains("connection refused"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_token_endpoint_backs_off() {
    let emu = emulator(EmulatorOptions::default()).await;
    let toml = oauth_toml(&emu, "login_backoff = \"30s\"", "").replace(CLIENT_SECRET, "wrong");
    let proxy = proxy_from_toml(&toml).await;
    let c = client();
    for _ in 0..5 {
        let r = get(&c, &proxy.url("/0/odata/Contact")).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(r.json()["diagnosis"], "oauth_client_rejected");
        assert!(r.headers.contains_key("retry-after"));
    }
    assert_eq!(
        emu.token_requests(),
        1,
        "one token request, then the back-off"
    );
    proxy.stop().await;
}

/// Forms identity `[auth]` on every path, oauth2 identity `api` on /0/rest/UsrApi.
fn mixed_toml(emu: &Emulator) -> String {
    let api = oauth_identity(emu, "[identities.api]");
    config_toml(
        emu,
        "login_backoff = \"30s\"",
        &format!("[[routes]]\nprefix = \"/0/rest/UsrApi\"\nidentity = \"api\"\n\n{api}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_and_oauth2_identities_serve_side_by_side_and_fail_apart() {
    for broken in ["oauth2", "forms"] {
        let emu = emulator(EmulatorOptions::default()).await;
        let proxy = proxy_from_toml(&mixed_toml(&emu)).await;
        let c = client();
        let forms = proxy.url("/0/odata/Contact");
        let api = proxy.url("/0/rest/UsrApi/Ping");
        assert_eq!(get(&c, &forms).await.status, StatusCode::OK);
        assert_eq!(get(&c, &api).await.status, StatusCode::OK);
        for s in emu.seen() {
            let has = |h: &str| s.headers.contains_key(h);
            if s.path == "/0/odata/Contact" {
                assert!(has("cookie") && has("bpmcsrf") && !has("authorization"));
            } else if s.path == "/0/rest/UsrApi/Ping" {
                assert!(!has("cookie") && !has("bpmcsrf") && has("authorization"));
            }
        }

        let (working, failing, diagnosis) = if broken == "oauth2" {
            emu.revoke_tokens();
            emu.set_token_fault(Some(TokenFault::NoAccessToken));
            (&forms, &api, "token_response_invalid")
        } else {
            emu.set_password("Supervisor", "changed-elsewhere");
            emu.invalidate_sessions();
            (&api, &forms, "wrong_credentials")
        };
        let r = get(&c, failing).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{broken}: {}", r.text());
        assert_eq!(r.json()["diagnosis"], diagnosis);
        for _ in 0..3 {
            let r = get(&c, working).await;
            assert_eq!(r.status, StatusCode::OK, "{broken} broken: {}", r.text());
        }
        assert_eq!(
            emu.logins("Supervisor"),
            1,
            "{broken}: one forms login, never repeated"
        );
        let expected_tokens = if broken == "oauth2" { 2 } else { 1 };
        assert_eq!(emu.token_requests(), expected_tokens, "{broken}");
        proxy.stop().await;
    }
}
