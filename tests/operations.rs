//! Running it in production, in-process: the admin endpoints (`/readyz` telling the truth,
//! `/metrics` counting a scripted flow exactly) and config reloads keeping sessions.
//! SIGHUP and SIGTERM themselves are driven through the real binary in tests/binary.rs.
// Test code: a failed expect() is the test failing, never a request path.
#![allow(clippy::expect_used)]

mod support;

use bytes::Bytes;
use creatio_proxy::config::Config;
use creatio_proxy::emulator::{EmulatorOptions, TokenFault};
use http::{Method, StatusCode};
use support::*;

/// The value of the metric line that starts with `series` (name and labels), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

async fn scrape(client: &TestClient, proxy: &TestProxy) -> String {
    let reply = get(client, &proxy.admin_url("/metrics")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    reply.text()
}

/// Asks `/readyz` until `done` holds (a back-off of a few milliseconds may have to pass
/// first); gives up after 10 s.
async fn readyz_until(c: &TestClient, proxy: &TestProxy, done: impl Fn(&Reply) -> bool) -> Reply {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let reply = get(c, &proxy.admin_url("/readyz")).await;
        if done(&reply) {
            return reply;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz never got there: {}",
            reply.text()
        );
        tokio::task::yield_now().await;
    }
}

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

#[tokio::test]
async fn metrics_count_a_scripted_flow_exactly() {
    let emu = emulator(EmulatorOptions::default()).await;
    let toml = config_toml(
        &emu,
        "login_backoff = \"60s\"\nlogin_backoff_max = \"60s\"",
        &format!(
            "[[routes]]\nprefix = \"/0/rest/UsrPortalService\"\nssp = true\nidentity = \"portal\"\n\
             [identities.portal]\nusername = \"portal.user\"\npassword = \"not-the-password\"\n{ADMIN}"
        ),
    );
    let proxy = proxy_from_toml(&toml).await;
    let c = client();

    for _ in 0..5 {
        assert_eq!(
            get(&c, &proxy.url("/0/odata/Contact")).await.status,
            StatusCode::OK
        );
    }
    // The session ends on Creatio's side: the next write meets a 302, the proxy logs in again
    // and replays it once.
    emu.invalidate_sessions();
    let body = r#"{"Name":"Metrics Test"}"#;
    let created = post_json(
        &c,
        &proxy.url("/0/odata/Contact"),
        Bytes::from_static(body.as_bytes()),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    // The portal identity's password is wrong: one failed login, a 502.
    let refused = get(&c, &proxy.url("/0/rest/UsrPortalService/GetCases")).await;
    assert_eq!(refused.status, StatusCode::BAD_GATEWAY);

    assert_eq!(emu.logins("Supervisor"), 2);
    assert_eq!(emu.records_created("Contact"), 1);
    let text = scrape(&c, &proxy).await;
    let expect = [
        (
            r#"creatio_proxy_requests_total{route="-",method="GET",status="2xx"}"#,
            5.0,
        ),
        (
            r#"creatio_proxy_requests_total{route="-",method="POST",status="2xx"}"#,
            1.0,
        ),
        (
            r#"creatio_proxy_requests_total{route="/0/rest/UsrPortalService",method="GET",status="5xx"}"#,
            1.0,
        ),
        (
            r#"creatio_proxy_logins_total{identity="default",outcome="ok"}"#,
            2.0,
        ),
        (
            r#"creatio_proxy_logins_total{identity="portal",outcome="wrong_credentials"}"#,
            1.0,
        ),
        (r#"creatio_proxy_relogins_total{identity="default"}"#, 1.0),
        (
            r#"creatio_proxy_replays_total{identity="default",outcome="ok"}"#,
            1.0,
        ),
        (
            r#"creatio_proxy_replays_total{identity="default",outcome="expired_again"}"#,
            0.0,
        ),
        // 5 GETs, the POST that met the expired session, and its replay.
        (
            r#"creatio_proxy_upstream_duration_seconds_count{route="-"}"#,
            7.0,
        ),
        ("creatio_proxy_request_body_bytes_total", body.len() as f64),
        (r#"creatio_proxy_identity_ready{identity="default"}"#, 1.0),
        (r#"creatio_proxy_identity_ready{identity="portal"}"#, 0.0),
        (
            r#"creatio_proxy_login_backoff_seconds{identity="default"}"#,
            0.0,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(metric(&text, series), Some(value), "{series} in\n{text}");
    }
    let backoff = metric(
        &text,
        r#"creatio_proxy_login_backoff_seconds{identity="portal"}"#,
    )
    .expect("portal back-off");
    assert!(backoff > 50.0 && backoff <= 60.0, "{backoff}");
    assert!(metric(&text, "creatio_proxy_response_body_bytes_total").expect("bytes out") > 0.0);
    assert!(metric(
        &text,
        r#"creatio_proxy_session_age_seconds{identity="default"}"#
    )
    .is_some());
    assert_eq!(
        metric(
            &text,
            r#"creatio_proxy_session_age_seconds{identity="portal"}"#
        ),
        None
    );
    // The client's connection (kept alive by the pool) is open while it scrapes.
    assert!(metric(&text, "creatio_proxy_open_connections").expect("gauge") >= 1.0);
    // No secret in the metrics.
    for secret in ["not-the-password", "Supervisor\"} ", "BPMCSRF", "ASPXAUTH"] {
        assert!(!text.contains(secret), "{secret} in\n{text}");
    }
    proxy.stop().await;
    emu.shutdown();
}

#[tokio::test]
async fn readiness_follows_what_creatio_and_the_identity_service_say() {
    let emu = emulator(EmulatorOptions::default()).await;
    let toml = config_toml(
        &emu,
        "login_backoff = \"1ms\"\nlogin_backoff_max = \"1ms\"",
        &format!(
            "[[routes]]\nprefix = \"/0/rest/UsrApi\"\nidentity = \"api\"\n{}{ADMIN}",
            oauth_identity(&emu, "[identities.api]")
        ),
    );
    emu.set_password("Supervisor", "changed-by-an-admin");
    emu.set_token_fault(Some(TokenFault::NoAccessToken));
    let proxy = proxy_from_toml(&toml).await;
    let c = client();

    // Nothing has been sent through the proxy: the probe itself tries, and says why not.
    let not_ready = get(&c, &proxy.admin_url("/readyz")).await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = not_ready.json();
    assert_eq!(body["status"], "not_ready");
    let ids = body["identities"].as_array().expect("identities");
    assert_eq!(ids.len(), 2, "{body}");
    assert_eq!(ids[0]["identity"], "default");
    assert_eq!(ids[0]["principal"], "user Supervisor");
    assert_eq!(ids[0]["error"], "creatio_login_failed");
    assert_eq!(ids[0]["diagnosis"], "wrong_credentials");
    assert!(
        ids[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("user name or password")),
        "{body}"
    );
    assert_eq!(ids[1]["identity"], "api");
    assert_eq!(ids[1]["error"], "oauth_token_failed");
    assert_eq!(ids[1]["diagnosis"], "token_response_invalid");
    assert!(!not_ready.text().contains("changed-by-an-admin"));
    assert!(!not_ready.text().contains("integration-secret"));

    // Fixed on Creatio's side only: once the (1 ms) back-off has passed, a probe logs in, and
    // the oauth2 identity alone holds readiness back.
    emu.set_password("Supervisor", "Supervisor");
    let half = readyz_until(&c, &proxy, |r| {
        r.json()["identities"].as_array().map(Vec::len) == Some(1)
    })
    .await;
    assert_eq!(half.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(half.json()["identities"][0]["identity"], "api");

    emu.set_token_fault(None);
    let ready = readyz_until(&c, &proxy, |r| r.status == StatusCode::OK).await;
    assert_eq!(ready.json()["status"], "ready");
    // The probe's login is the session requests use: no second login for traffic.
    assert_eq!(emu.logins("Supervisor"), 1);
    assert_eq!(
        get(&c, &proxy.url("/0/odata/Contact")).await.status,
        StatusCode::OK
    );
    assert_eq!(emu.logins("Supervisor"), 1);
    assert_eq!(emu.tokens_issued(), 1);
    // Asked again, a ready proxy does not log in again.
    assert_eq!(
        get(&c, &proxy.admin_url("/readyz")).await.status,
        StatusCode::OK
    );
    assert_eq!((emu.logins("Supervisor"), emu.tokens_issued()), (1, 1));

    // Liveness does not depend on Creatio; unknown paths and other methods are refused.
    emu.set_password("Supervisor", "changed-again");
    assert_eq!(
        get(&c, &proxy.admin_url("/healthz")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&c, &proxy.admin_url("/nope")).await.status,
        StatusCode::NOT_FOUND
    );
    let post = send(
        &c,
        Method::POST,
        &proxy.admin_url("/readyz"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    proxy.stop().await;
    emu.shutdown();
}

#[tokio::test]
async fn a_reload_applies_new_routes_and_keeps_the_sessions_of_unchanged_identities() {
    let emu = emulator(EmulatorOptions::default()).await;
    let portal = |password: &str| {
        format!(
            "[identities.portal]\nusername = \"portal.user\"\npassword = \"{password}\"\n{ADMIN}"
        )
    };
    let v1 = config_toml(&emu, "", &portal("portal-pass"));
    let proxy = proxy_from_toml(&v1).await;
    let c = client();
    assert_eq!(
        get(&c, &proxy.url("/0/odata/Contact")).await.status,
        StatusCode::OK
    );
    // Without a route, the portal path goes unchanged as Supervisor (an employee may use
    // non-/ssp paths).
    let before = get(&c, &proxy.url("/0/rest/UsrPortalService/GetCases")).await;
    assert_eq!(before.status, StatusCode::OK);
    let seen = emu.seen();
    let last = seen.last().expect("seen");
    assert_eq!(
        (last.path.as_str(), last.user.as_deref()),
        ("/0/rest/UsrPortalService/GetCases", Some("Supervisor"))
    );

    // v2: a portal route appears.
    let v2 = format!(
        "{}\n[[routes]]\nprefix = \"/0/rest/UsrPortalService\"\nssp = true\nidentity = \"portal\"\n",
        config_toml(&emu, "replay_buffer = \"64KiB\"", &portal("portal-pass"))
    );
    let v2 = Config::from_toml_str(&v2).expect("v2 valid");
    proxy.reloader.apply(&v2).expect("v2 applies");
    let after = get(&c, &proxy.url("/0/rest/UsrPortalService/GetCases")).await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.text());
    let seen = emu.seen();
    let last = seen.last().expect("seen");
    assert_eq!(
        (last.path.as_str(), last.user.as_deref()),
        ("/0/ssp/rest/UsrPortalService/GetCases", Some("portal.user"))
    );
    // Both identities were unchanged: Supervisor's session was kept.
    assert_eq!(
        get(&c, &proxy.url("/0/odata/Contact")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        (emu.logins("Supervisor"), emu.logins("portal.user")),
        (1, 1)
    );

    // v3: the portal password changes (rotated in the secret store): that identity starts
    // afresh, the default one keeps its session.
    emu.set_password("portal.user", "rotated");
    let v3 = format!(
        "{}\n[[routes]]\nprefix = \"/0/rest/UsrPortalService\"\nssp = true\nidentity = \"portal\"\n",
        config_toml(&emu, "", &portal("rotated"))
    );
    proxy
        .reloader
        .apply(&Config::from_toml_str(&v3).expect("v3 valid"))
        .expect("v3 applies");
    assert_eq!(
        get(&c, &proxy.url("/0/rest/UsrPortalService/GetCases"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get(&c, &proxy.url("/0/odata/Contact")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        (emu.logins("Supervisor"), emu.logins("portal.user")),
        (1, 2)
    );
    proxy.stop().await;
    emu.shutdown();
}

/// `server.allowed_clients` guards the client port; the admin port always lets loopback in, so
/// the image's HEALTHCHECK and `creatio-proxy reload` (both run beside the proxy) keep working.
#[tokio::test]
async fn allowed_clients_never_lock_loopback_out_of_the_admin_port() {
    let emu = emulator(EmulatorOptions::default()).await;
    let toml = config_toml(&emu, "allowed_clients = [\"10.0.0.0/8\"]", ADMIN);
    let proxy = proxy_from_toml(&toml).await;
    let c = client();
    let health = get(&c, &proxy.admin_url("/healthz")).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = get(&c, &proxy.admin_url("/readyz")).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    // The client port still refuses 127.0.0.1: the connection is closed unanswered.
    let refused = c
        .request(
            http::Request::get(proxy.url("/0/odata/Contact"))
                .body(http_body_util::Full::new(Bytes::new()))
                .expect("request"),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(emu.requests("/0/odata/Contact"), 0);
    proxy.stop().await;
}

/// Reloads while clients keep writing: every request is answered by the old or the new config,
/// none is dropped or sent twice, and the unchanged identity never logs in again. Broken files
/// in between are refused without a trace in the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_no_request_and_cost_no_login() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let emu = emulator(EmulatorOptions::default()).await;
    let v1 = config_toml(&emu, "", ADMIN);
    let v2 = config_toml(
        &emu,
        "replay_buffer = \"64KiB\"",
        &format!("{ADMIN}[[routes]]\nprefix = \"/0/rest/Other\"\n"),
    );
    let configs = [
        Config::from_toml_str(&v1).expect("v1"),
        Config::from_toml_str(&v2).expect("v2"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        format!("{v1}\n[[routes]]\nprefix = \"/x\"\nidentity = \"nobody\"\n"),
    )
    .expect("write");
    let proxy = proxy_from_toml(&v1).await;

    const CLIENTS: usize = 4;
    const WRITES: usize = 50;
    let done = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..CLIENTS {
        let url = proxy.url("/0/odata/Contact");
        let done = done.clone();
        writers.push(tokio::spawn(async move {
            let c = client();
            let mut statuses = Vec::new();
            for i in 0..WRITES {
                let body = format!("{{\"Name\":\"writer {w} record {i}\"}}");
                let r = post_json(&c, &url, Bytes::from(body)).await;
                statuses.push(r.status);
            }
            done.fetch_add(1, Ordering::SeqCst);
            statuses
        }));
    }
    let mut reloads = 0;
    while done.load(Ordering::SeqCst) < CLIENTS {
        proxy
            .reloader
            .apply(&configs[reloads % 2])
            .expect("a valid config applies");
        assert!(proxy.reloader.reload_file(&broken).is_err());
        reloads += 1;
        tokio::task::yield_now().await;
    }
    for writer in writers {
        let statuses = writer.await.expect("writer");
        assert!(
            statuses.iter().all(|s| *s == StatusCode::CREATED),
            "{statuses:?}"
        );
    }
    eprintln!("{reloads} reloads during {} writes", CLIENTS * WRITES);
    assert!(
        reloads >= 10,
        "only {reloads} reloads ran during the writes"
    );
    assert_eq!(emu.records_created("Contact"), (CLIENTS * WRITES) as u64);
    assert_eq!(emu.logins("Supervisor"), 1);
    proxy.stop().await;
}
