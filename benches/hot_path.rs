//! Micro-benchmarks of the per-request work, one piece at a time: `cargo bench --bench
//! hot_path`. Each piece's time is small against a whole request (bench/instructions.sh counts
//! about 46,000 instructions per request), so these show a regression in one piece before a
//! load test does; they do not say how fast the proxy is (../shared/bench does).
#![allow(clippy::expect_used)]

use std::hint::black_box;

use creatio_proxy::benchmarks::{canonical, ssp, Cookies, Routes};
use creatio_proxy::config::Config;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Uri};

/// A config with the routes a typical deployment has: a portal route, two services, default.
fn config() -> Config {
    Config::from_toml_str(
        r#"
[creatio]
url = "https://acme.creatio.com"
[auth]
username = "Supervisor"
password = "pw"
[identities.portal]
username = "portal.user"
password = "pw"
[[routes]]
prefix = "/0/rest/UsrPortalService"
ssp = true
identity = "portal"
[[routes]]
prefix = "/0/odata/Case"
[[routes]]
prefix = "/0/ServiceModel/DataService.svc"
"#,
    )
    .expect("a valid config")
}

/// What Creatio's login sets (the 320-hex-digit ticket of a real one).
fn login_cookies() -> Vec<HeaderValue> {
    let ticket = "A1".repeat(160);
    [
        format!(".ASPXAUTH={ticket}; path=/; HttpOnly"),
        "BPMCSRF=kTgkMwQ2d1bHGBWCUAgJlw; path=/".to_string(),
        "BPMLOADER=xkxsv0a2qfmuhqsm1ffk0ymm; path=/; HttpOnly".to_string(),
        "UserName=83|117|112|101|114|118|105|115|111|114; expires=Fri, 03-Dec-2027 12:00:00 GMT; path=/".to_string(),
    ]
    .into_iter()
    .map(|l| HeaderValue::from_str(&l).expect("a header value"))
    .collect()
}

/// The headers an ESB typically sends, with credentials of its own the proxy must remove.
fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "127.0.0.1:5080"),
        ("user-agent", "Synapse-PT-HttpComponents-NIO"),
        ("accept", "application/json"),
        ("content-type", "application/json; charset=utf-8"),
        ("cookie", "BPMCSRF=stale; .ASPXAUTH=stale"),
        ("bpmcsrf", "stale"),
        ("connection", "keep-alive"),
        ("x-request-id", "3f1c2a"),
    ] {
        h.insert(
            http::HeaderName::from_static(k),
            HeaderValue::from_static(v),
        );
    }
    h
}

fn paths(c: &mut Criterion) {
    let plain: Uri = "/0/odata/Contact?$top=10".parse().expect("uri");
    let spelled: Uri = "/0//ODATA/%43ontact/./?$top=10".parse().expect("uri");
    c.bench_function("canonical: already canonical", |b| {
        b.iter(|| canonical(black_box(&plain)))
    });
    c.bench_function("canonical: respelled", |b| {
        b.iter(|| canonical(black_box(&spelled)))
    });
    c.bench_function("ssp rule", |b| {
        b.iter(|| ssp(black_box("/0/rest/UsrPortalService/GetCases")))
    });
    let routes = Routes::new(&config());
    let portal: Uri = "/0/rest/UsrPortalService/GetCases".parse().expect("uri");
    c.bench_function("route: default", |b| {
        b.iter(|| routes.decide(black_box(&plain)))
    });
    c.bench_function("route: portal", |b| {
        b.iter(|| routes.decide(black_box(&portal)))
    });
}

fn session(c: &mut Criterion) {
    let lines = login_cookies();
    c.bench_function("jar: login", |b| {
        b.iter(|| Cookies::login(black_box(&lines)))
    });
    let mut cookies = Cookies::login(&lines);
    c.bench_function("jar: render Cookie and BPMCSRF", |b| {
        b.iter(|| cookies.render())
    });
    let renewal =
        HeaderValue::from_str(&format!(".ASPXAUTH={}; path=/; HttpOnly", "B2".repeat(160)))
            .expect("a header value");
    c.bench_function("jar: merge a sliding renewal", |b| {
        b.iter(|| cookies.merge(black_box(&renewal)))
    });
    let headers = client_headers();
    c.bench_function("headers: strip and attach the session", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| cookies.attach(h),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(hot_path, paths, session);
criterion_main!(hot_path);
