//! Tests of identities: back-off, stopped logins, the token keeper.
//!
//! Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
//! whose failure is the test failing; none of it is on a request path.

use super::*;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::upstream::build_upstream;
use std::sync::atomic::AtomicU64;

/// An identity of the config `[creatio] url` + `auth` (the `[auth]` keys), and its context.
fn identity(creatio: &str, auth: &str) -> (Arc<Identity>, LoginContext) {
    let config = Config::from_toml_str(&format!("[creatio]\nurl = \"{creatio}\"\n[auth]\n{auth}"))
        .expect("config");
    let client = build_upstream(&config).expect("pool");
    let first = &config.identities[0];
    let oauth2 = matches!(first.login, LoginConfig::OAuth2(_));
    let metrics = Metrics::new().identity(&first.name, oauth2);
    let identity = Arc::new(Identity::new(first, &client, metrics));
    (identity, LoginContext::new(&config, client))
}

/// A stand-in for Creatio's login on 127.0.0.1 that refuses every login with `message`;
/// its URL and the count of login attempts.
async fn refusing_creatio(
    message: &'static str,
    change_url: Option<&'static str>,
) -> (String, Arc<AtomicU64>) {
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let attempts = Arc::new(AtomicU64::new(0));
    let counted = attempts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = counted.clone();
            let svc = hyper::service::service_fn(move |_req| {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = serde_json::json!({"Code": 1, "Message": message, "PasswordChangeUrl": change_url}).to_string();
                let mut answer =
                    http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                answer.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                async move { Ok::<_, std::convert::Infallible>(answer) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    (url, attempts)
}

fn stopped_for(err: &ProxyError) -> (&'static str, Option<Duration>) {
    match err {
        ProxyError::LoginFailed {
            failure,
            retry_after,
            ..
        } => (failure.diagnosis.code(), *retry_after),
        other => panic!("not a login failure: {other}"),
    }
}

#[tokio::test]
async fn a_lock_that_names_its_window_stops_logins_until_it_has_passed_or_a_reload() {
    let (url, attempts) = refusing_creatio("The user is locked for 5 minutes", None).await;
    let (identity, ctx) = identity(&url, "username = \"u\"\npassword = \"p\"\n");
    let err = identity.session(&ctx).await.expect_err("locked");
    let (diagnosis, retry) = stopped_for(&err);
    assert_eq!(diagnosis, "user_locked");
    let retry = retry.expect("the window is the retry time");
    assert!(
        retry <= Duration::from_secs(300) && retry > Duration::from_secs(290),
        "{retry:?}"
    );
    for _ in 0..20 {
        let err = identity.session(&ctx).await.expect_err("still locked");
        assert_eq!(stopped_for(&err).0, "user_locked");
    }
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "the attempt that found the lock"
    );
    assert!(identity
        .logins_stopped()
        .is_some_and(|(_, left)| left.is_some()));

    // The proxy's clock moves past the window (not a sleep): one attempt, which finds the
    // lock again.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(301)).await;
    tokio::time::resume();
    assert!(identity.logins_stopped().is_none(), "the window has passed");
    identity.session(&ctx).await.expect_err("locked again");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    identity.session(&ctx).await.expect_err("stopped again");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);

    // A reload lets it try once more at once.
    assert!(identity.resume_logins());
    assert!(!identity.resume_logins(), "nothing left to resume");
    identity.session(&ctx).await.expect_err("locked once more");
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_expired_password_stops_logins_until_a_reload() {
    let (url, attempts) = refusing_creatio(
        "Password expired",
        Some("/Login/NuiLogin.aspx?pwdExpired=true"),
    )
    .await;
    let (identity, ctx) = identity(&url, "username = \"u\"\npassword = \"p\"\n");
    for _ in 0..20 {
        let err = identity.session(&ctx).await.expect_err("expired");
        assert_eq!(
            stopped_for(&err),
            ("password_expired", None),
            "no retry time"
        );
    }
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert!(identity
        .logins_stopped()
        .is_some_and(|(_, left)| left.is_none()));
    assert!(identity.resume_logins());
    identity.session(&ctx).await.expect_err("still expired");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_token_keeper_of_a_dropped_identity_that_never_got_a_token_ends() {
    let (identity, ctx) = identity(
        "http://127.0.0.1:9",
        "mode = \"oauth2\"\ntoken_url = \"http://127.0.0.1:9/connect/token\"\n\
         client_id = \"c\"\nclient_secret = \"s\"\n",
    );
    let keeper = identity
        .keep_fresh(&ctx)
        .expect("an oauth2 identity is kept");
    assert!(
        identity.keep_fresh(&ctx).is_none(),
        "one keeper per identity"
    );
    // Let the keeper reach its wait for a token that never comes (current-thread runtime:
    // it runs until it waits).
    tokio::task::yield_now().await;
    assert!(!keeper.is_finished(), "it waits while the identity lives");
    assert_eq!(identity.logins(), 0);
    let weak = Arc::downgrade(&identity);
    drop(identity);
    assert!(
        weak.upgrade().is_none(),
        "the keeper holds no strong reference"
    );
    tokio::time::timeout(Duration::from_secs(10), keeper)
        .await
        .expect("the keeper ends when its identity is dropped")
        .expect("and does not panic");
    // What it held (the login context, with the pool to Creatio) went with it.
    drop(ctx);
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let base = Duration::from_secs(2);
    let max = Duration::from_secs(60);
    let waits: Vec<u64> = (1..=7)
        .map(|n| backoff_after(n, base, max).as_secs())
        .collect();
    assert_eq!(waits, vec![2, 4, 8, 16, 32, 60, 60]);
    assert_eq!(backoff_after(100, base, max), max);
    // Attempts at t = 0, 2, 6, 14 s: a client retrying for 10 s causes at most 3 logins.
    let mut t = 0;
    let mut attempts_within_10s = 0;
    for n in 1..=10 {
        if t <= 10 {
            attempts_within_10s += 1;
        }
        t += backoff_after(n, base, max).as_secs();
    }
    assert_eq!(attempts_within_10s, 3);
}
