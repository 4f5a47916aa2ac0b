//! End-to-end checks of the emulator through a real hyper-util client (redirects are not
//! followed, so 302s are visible). Each test starts its own emulator on `127.0.0.1:0`.

// Tests may unwrap: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::wire::{
    aspnet_url_encode, cooked_path, http_date, parse_resource, strip_base, strip_segment,
    CookedPathError,
};
use super::*;

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// `name=value` of every Set-Cookie, attributes dropped.
    fn set_cookies(&self) -> Vec<(String, String)> {
        self.headers
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| {
                let pair = v.to_str().unwrap().split(';').next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }
}

/// A logged-in client session: the Cookie line and the BPMCSRF value.
struct Session {
    cookie: String,
    csrf: String,
}

impl Session {
    fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cookie", self.cookie.clone()),
            ("BPMCSRF", self.csrf.clone()),
        ]
    }

    /// Replaces the `.ASPXAUTH` value, as a cookie jar does on a renewal.
    fn with_ticket(&self, ticket: &str) -> Session {
        let cookie = self
            .cookie
            .split("; ")
            .map(|pair| match pair.split_once('=') {
                Some((".ASPXAUTH", _)) => format!(".ASPXAUTH={ticket}"),
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("; ");
        Session {
            cookie,
            csrf: self.csrf.clone(),
        }
    }
}

struct Harness {
    emulator: Emulator,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Harness {
    async fn start(options: EmulatorOptions) -> Harness {
        let emulator = Emulator::start(options, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let client = Client::builder(TokioExecutor::new()).build_http();
        Harness { emulator, client }
    }

    async fn default() -> Harness {
        Harness::start(EmulatorOptions::default()).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let url = format!("{}{path}", self.emulator.url());
        send_to(&self.client, method, &url, headers, body.into()).await
    }

    /// A POST to the Identity Service's token endpoint with a form body.
    async fn token_reply(&self, headers: &[(&str, String)], form: &str) -> Reply {
        let url = format!("{}/connect/token", self.emulator.identity_url());
        let mut all = vec![("content-type", FORM.to_owned())];
        all.extend(headers.iter().map(|(n, v)| (*n, v.clone())));
        send_to(
            &self.client,
            Method::POST,
            &url,
            &all,
            form.to_owned().into(),
        )
        .await
    }

    /// A token for a client, by form fields.
    async fn token(&self, client_id: &str, client_secret: &str) -> String {
        let form = format!(
            "grant_type=client_credentials&client_id={client_id}&client_secret={client_secret}"
        );
        let reply = self.token_reply(&[], &form).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()["access_token"]
            .as_str()
            .expect("a token answer has access_token")
            .to_owned()
    }

    async fn get(&self, path: &str, headers: &[(&str, String)]) -> Reply {
        self.send(Method::GET, path, headers, Bytes::new()).await
    }

    async fn login_reply(&self, user: &str, password: &str) -> Reply {
        let body = json!({"UserName": user, "UserPassword": password}).to_string();
        let headers = [("content-type", "application/json; charset=utf-8".to_owned())];
        self.send(
            Method::POST,
            "/ServiceModel/AuthService.svc/Login",
            &headers,
            body,
        )
        .await
    }

    async fn login(&self, user: &str, password: &str) -> Session {
        let reply = self.login_reply(user, password).await;
        assert_eq!(reply.json()["Code"], 0, "{}", reply.text());
        let cookies = reply.set_cookies();
        let csrf = cookies
            .iter()
            .find(|(n, _)| n == "BPMCSRF")
            .unwrap()
            .1
            .clone();
        let cookie = cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        Session { cookie, csrf }
    }
}

const FORM: &str = "application/x-www-form-urlencoded";

async fn send_to(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, String)],
    body: Bytes,
) -> Reply {
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = client
        .request(request.body(Full::new(body)).expect("a valid test request"))
        .await
        .expect("the emulator answers");
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body
            .collect()
            .await
            .expect("the answer body arrives")
            .to_bytes(),
    }
}

fn bearer(token: &str) -> Vec<(&'static str, String)> {
    vec![("authorization", format!("Bearer {token}"))]
}

fn renewed_ticket(reply: &Reply) -> Option<String> {
    reply
        .set_cookies()
        .into_iter()
        .find(|(n, _)| n == ".ASPXAUTH")
        .map(|(_, v)| v)
}

#[tokio::test]
async fn login_sets_four_cookies_and_code_zero() {
    let h = Harness::default().await;
    let reply = h.login_reply("supervisor", "Supervisor").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers[CONTENT_TYPE],
        "application/json; charset=utf-8"
    );
    assert_eq!(
        reply.json(),
        json!({"Code":0,"Message":"","Exception":null,"PasswordChangeUrl":null,"RedirectUrl":null,"UserType":"General"})
    );
    let raw: Vec<&str> = reply
        .headers
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(raw.len(), 4, "{raw:?}");
    assert!(raw[0].starts_with("BPMLOADER=") && raw[0].ends_with("; path=/; HttpOnly"));
    assert!(raw[1].starts_with(".ASPXAUTH=") && raw[1].ends_with("; path=/; HttpOnly"));
    assert!(raw[2].starts_with("BPMCSRF=") && raw[2].ends_with("; path=/"));
    assert!(raw[3].starts_with("UserName=83|117|112|101|114|118|105|115|111|114; expires="));
    assert!(raw[3].ends_with(" GMT; path=/; HttpOnly"), "{}", raw[3]);
    let cookies = reply.set_cookies();
    assert_eq!(cookies[1].1.len(), 300);
    assert_eq!(cookies[2].1.len(), 22);
    assert_eq!(h.emulator.logins("Supervisor"), 1);
    assert_eq!(h.emulator.login_attempts("SUPERVISOR"), 1);
}

#[tokio::test]
async fn get_with_cookies_and_csrf_is_served_and_without_csrf_is_refused() {
    let h = Harness::default().await;
    let session = h.login("Supervisor", "Supervisor").await;
    let ok = h.get("/0/rest/Svc/Do", &session.headers()).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        ok.json(),
        json!({"service":"Svc","method":"Do","user":"Supervisor","portal":false,"body":""})
    );

    let no_csrf = h
        .get("/0/rest/Svc/Do", &[("cookie", session.cookie.clone())])
        .await;
    assert_eq!(no_csrf.status, StatusCode::UNAUTHORIZED);
    assert_eq!(no_csrf.json()["Message"], "Authentication failed.");

    let seen = h.emulator.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].user.as_deref(), Some("Supervisor"));
    assert_eq!(seen[1].status, 200);
    assert_eq!(seen[2].user, None);
    assert_eq!(h.emulator.requests("/0/rest/Svc/Do"), 2);
}

#[tokio::test]
async fn no_session_redirects_to_nui_login_with_return_url() {
    let h = Harness::start(EmulatorOptions {
        base_path: "/CreatioWebApp/".to_owned(),
        ..EmulatorOptions::default()
    })
    .await;
    assert!(h.emulator.url().ends_with("/CreatioWebApp"));
    let reply = h.get("/0/odata/Contact?$top=1", &[]).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let location =
        "/CreatioWebApp/Login/NuiLogin.aspx?ReturnUrl=%2fCreatioWebApp%2f0%2fodata%2fContact";
    assert_eq!(reply.headers[LOCATION], location);
    assert!(reply
        .text()
        .contains(&format!("Object moved to <a href=\"{location}\">here</a>")));

    let svc = h.get("/0/ServiceModel/X.svc/Y", &[]).await;
    assert_eq!(svc.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        svc.json()["ExceptionType"],
        "System.Security.Authentication.AuthenticationException"
    );
    // Cookies sent as Set-Cookie request headers (the WSO2 bug) count for nothing.
    let session = h.login("Supervisor", "Supervisor").await;
    let wso2 = h
        .get(
            "/0/rest/Svc/Do",
            &[
                ("set-cookie", session.cookie.clone()),
                ("BPMCSRF", session.csrf.clone()),
            ],
        )
        .await;
    assert_eq!(wso2.status, StatusCode::FOUND);
}

#[tokio::test]
async fn expired_response_variants() {
    let h = Harness::start(EmulatorOptions {
        flavour: Flavour::NetCore,
        ..EmulatorOptions::default()
    })
    .await;
    let redirect = h.get("/0/odata/Contact", &[]).await;
    assert_eq!(
        redirect.headers[LOCATION],
        "/Login/Login.html?ReturnUrl=%2f0%2fodata%2fContact"
    );

    h.emulator.set_expired_response(ExpiredResponse::LoginPage);
    let page = h.get("/0/odata/Contact", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.len() > 4096);
    assert!(page.text()[..2048].contains("data-loadbootstrap=\"bootstrap.login\""));

    h.emulator
        .set_expired_response(ExpiredResponse::Unauthorized);
    let bare = h.get("/0/odata/Contact", &[]).await;
    assert_eq!(bare.status, StatusCode::UNAUTHORIZED);
    assert!(bare.body.is_empty());

    let netfw = Harness::start(EmulatorOptions {
        expired_response: ExpiredResponse::LoginPage,
        ..EmulatorOptions::default()
    })
    .await;
    let page = netfw.get("/0/Nui/ViewModule.aspx", &[]).await;
    let text = page.text();
    assert!(page.body.len() > 4096);
    assert!(text.starts_with("<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0 Transitional//EN\""));
    let head = &text[..2048];
    assert!(head.contains(
        "<form name=\"IndexForm\" method=\"post\" action=\"./NuiLogin.aspx?ReturnUrl=%2f0%2fNui%2fViewModule.aspx\" id=\"IndexForm\">"
    ));
    assert!(head.contains("Terrasoft.loginUrl = '/ServiceModel/AuthService.svc/Login'"));
}

#[tokio::test]
async fn invalidate_sessions_then_redirect() {
    let h = Harness::default().await;
    let session = h.login("Supervisor", "Supervisor").await;
    assert_eq!(
        h.get("/0/rest/S/M", &session.headers()).await.status,
        StatusCode::OK
    );
    h.emulator.invalidate_sessions();
    assert_eq!(
        h.get("/0/rest/S/M", &session.headers()).await.status,
        StatusCode::FOUND
    );
}

#[tokio::test]
async fn invalidate_after_n_refuses_the_nth_request() {
    let h = Harness::default().await;
    let session = h.login("Supervisor", "Supervisor").await;
    h.emulator.invalidate_sessions_after(3);
    let statuses = [
        h.get("/0/rest/S/M", &session.headers()).await.status,
        h.get("/0/rest/S/M", &session.headers()).await.status,
        h.get("/0/rest/S/M", &session.headers()).await.status,
    ];
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::OK, StatusCode::FOUND]
    );
    assert_eq!(h.emulator.seen()[3].user, None);
    let fresh = h.login("Supervisor", "Supervisor").await;
    assert_eq!(
        h.get("/0/rest/S/M", &fresh.headers()).await.status,
        StatusCode::OK
    );
}

/// The status of `GET /0/rest/S/M` with `session`.
async fn status_with(h: &Harness, session: &Session) -> StatusCode {
    h.get("/0/rest/S/M", &session.headers()).await.status
}

#[tokio::test]
async fn one_session_per_user_ends_the_older_session_of_that_user_only() {
    let h = Harness::start(EmulatorOptions {
        one_session_per_user: true,
        ..EmulatorOptions::default()
    })
    .await;
    let first = h.login("Supervisor", "Supervisor").await;
    let portal = h.login("portal.user", "portal-pass").await;
    assert_eq!(status_with(&h, &first).await, StatusCode::OK);
    // Names match in any case, so this is the same user.
    let second = h.login("SUPERVISOR", "Supervisor").await;
    assert_eq!(status_with(&h, &first).await, StatusCode::FOUND);
    assert_eq!(status_with(&h, &second).await, StatusCode::OK);
    let svc = h
        .get("/0/ServiceModel/X.svc/Y", &first.headers())
        .await
        .status;
    assert_eq!(svc, StatusCode::UNAUTHORIZED, ".svc gets its JSON 401");
    let portal_path = "/0/ssp/rest/S/M";
    assert_eq!(
        h.get(portal_path, &portal.headers()).await.status,
        StatusCode::OK,
        "another user's session is untouched"
    );
    assert_eq!(h.emulator.logins("Supervisor"), 2);
}

#[tokio::test]
async fn one_session_per_user_ends_renewed_tickets_and_follows_expired_response() {
    let h = Harness::start(EmulatorOptions {
        one_session_per_user: true,
        expired_response: ExpiredResponse::Unauthorized,
        ..EmulatorOptions::default()
    })
    .await;
    let first = h.login("Supervisor", "Supervisor").await;
    h.emulator.advance_clock(Duration::from_secs(11 * 60));
    let renewed = h.get("/0/rest/S/M", &first.headers()).await;
    let ticket = renewed_ticket(&renewed).expect("a renewed .ASPXAUTH");
    let _second = h.login("Supervisor", "Supervisor").await;
    assert_eq!(status_with(&h, &first).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        status_with(&h, &first.with_ticket(&ticket)).await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn one_session_per_user_is_a_runtime_switch_and_leaves_tokens_alone() {
    let h = Harness::default().await;
    let token = h.token("integration-client", "integration-secret").await;
    let first = h.login("Supervisor", "Supervisor").await;
    let second = h.login("Supervisor", "Supervisor").await;
    assert_eq!(status_with(&h, &first).await, StatusCode::OK, "off: both");
    assert_eq!(status_with(&h, &second).await, StatusCode::OK, "off: both");

    h.emulator.set_one_session_per_user(true);
    // Turning it on ends nothing by itself; the next login does.
    assert_eq!(status_with(&h, &first).await, StatusCode::OK);
    let third = h.login("Supervisor", "Supervisor").await;
    assert_eq!(status_with(&h, &first).await, StatusCode::FOUND);
    assert_eq!(status_with(&h, &second).await, StatusCode::FOUND);
    assert_eq!(status_with(&h, &third).await, StatusCode::OK);
    assert_eq!(
        h.get("/0/rest/S/M", &bearer(&token)).await.status,
        StatusCode::OK,
        "a bearer token of the same user is not a session"
    );

    h.emulator.set_one_session_per_user(false);
    let fourth = h.login("Supervisor", "Supervisor").await;
    assert_eq!(status_with(&h, &third).await, StatusCode::OK, "off again");
    assert_eq!(status_with(&h, &fourth).await, StatusCode::OK, "off again");
}

#[tokio::test]
async fn sliding_renewal_outlives_the_old_ticket() {
    let h = Harness::default().await;
    let session = h.login("Supervisor", "Supervisor").await;
    h.emulator.advance_clock(Duration::from_secs(9 * 60));
    let early = h.get("/0/rest/S/M", &session.headers()).await;
    assert_eq!(
        renewed_ticket(&early),
        None,
        "no renewal before half the lifetime"
    );

    h.emulator.advance_clock(Duration::from_secs(2 * 60));
    let renewed = h.get("/0/rest/S/M", &session.headers()).await;
    assert_eq!(renewed.status, StatusCode::OK);
    let ticket = renewed_ticket(&renewed).expect("a renewed .ASPXAUTH");
    let raw = renewed.headers[SET_COOKIE].to_str().unwrap();
    assert_eq!(raw, format!(".ASPXAUTH={ticket}; path=/; HttpOnly"));

    // The old ticket is still good until its own expiry (20 min after login).
    h.emulator.advance_clock(Duration::from_secs(8 * 60));
    assert_eq!(
        h.get("/0/rest/S/M", &session.headers()).await.status,
        StatusCode::OK
    );
    h.emulator.advance_clock(Duration::from_secs(2 * 60));
    assert_eq!(
        h.get("/0/rest/S/M", &session.headers()).await.status,
        StatusCode::FOUND
    );
    let renewed_session = session.with_ticket(&ticket);
    assert_eq!(
        h.get("/0/rest/S/M", &renewed_session.headers())
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn portal_users_need_ssp_and_employees_must_not_use_it() {
    let h = Harness::default().await;
    let portal = h.login("portal.user", "portal-pass").await;
    let off = h.get("/0/rest/S/M", &portal.headers()).await;
    assert_eq!(off.status, StatusCode::FORBIDDEN);
    assert!(off
        .text()
        .contains("403.0 - Access to non-SSP API is denied for portal users"));
    let on = h.get("/0/ssp/rest/S/M", &portal.headers()).await;
    assert_eq!(on.status, StatusCode::OK);
    assert_eq!(on.json()["portal"], true);
    assert_eq!(on.json()["user"], "portal.user");

    let employee = h.login("Supervisor", "Supervisor").await;
    let ssp = h.get("/0/ssp/rest/S/M", &employee.headers()).await;
    assert_eq!(ssp.status, StatusCode::FORBIDDEN);
    assert!(ssp
        .text()
        .contains("Access to SSP API is denied for non-portal users"));
}

#[tokio::test]
async fn odata_post_get_patch_delete() {
    let h = Harness::default().await;
    let session = h.login("Supervisor", "Supervisor").await;
    let created = h
        .send(
            Method::POST,
            "/0/odata/Contact",
            &session.headers(),
            r#"{"Name":"Ann"}"#,
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let record = created.json();
    let id = record["Id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36);
    assert_eq!(record["Name"], "Ann");
    let location = created.headers[LOCATION].to_str().unwrap();
    assert_eq!(
        location,
        format!("{}/0/odata/Contact({id})", h.emulator.url())
    );
    assert_eq!(h.emulator.records_created("Contact"), 1);

    let list = h.get("/0/odata/Contact", &session.headers()).await;
    assert_eq!(
        list.json()["@odata.context"],
        format!("{}/0/odata/$metadata#Contact", h.emulator.url())
    );
    assert_eq!(list.json()["value"][0]["Id"], id.as_str());

    let path = format!("/0/odata/Contact({id})");
    let patched = h
        .send(Method::PATCH, &path, &session.headers(), r#"{"Age":3}"#)
        .await;
    assert_eq!(patched.status, StatusCode::NO_CONTENT);
    assert_eq!(h.get(&path, &session.headers()).await.json()["Age"], 3);
    assert_eq!(h.emulator.records("Contact")[0]["Name"], "Ann");

    let bad = h
        .send(
            Method::POST,
            "/0/odata/Contact",
            &session.headers(),
            "{nope",
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["code"], "");

    let deleted = h
        .send(Method::DELETE, &path, &session.headers(), Bytes::new())
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(
        h.get(&path, &session.headers()).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        h.get("/0/nothing/here", &session.headers()).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn put_data_records_length_and_checksum() {
    let h = Harness::default().await;
    let session = h.login("Supervisor", "Supervisor").await;
    let data: Vec<u8> = (0..1_000_003u32)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    let reply = h
        .send(
            Method::PUT,
            "/0/odata/SysImage(abc)/Data",
            &session.headers(),
            data.clone(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"len": 1_000_003}));
    let upload = h.emulator.upload("SysImage", "abc").unwrap();
    assert_eq!(upload.len, 1_000_003);
    assert_eq!(upload.fnv1a64, fnv1a64(FNV_OFFSET, &data));
    let (a, b) = data.split_at(777);
    assert_eq!(fnv1a64(fnv1a64(FNV_OFFSET, a), b), upload.fnv1a64);
}

/// A chunked request body: `chunks` frames of 64 KiB of the download pattern, no length.
struct PatternBody {
    sent: u64,
    chunks: u64,
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.sent == self.chunks {
            return std::task::Poll::Ready(None);
        }
        let start = self.sent * 65_536;
        self.sent += 1;
        let chunk: Vec<u8> = (start..start + 65_536).map(download_byte).collect();
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(chunk)))))
    }
}

#[tokio::test]
async fn streamed_upload_larger_than_the_buffer_limit() {
    let h = Harness::default().await;
    let session = h.login("Supervisor", "Supervisor").await;
    let chunks = 20 * 16; // 20 MiB, over the 16 MiB limit for buffered bodies
    let client: Client<HttpConnector, PatternBody> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut request = Request::builder()
        .method(Method::PUT)
        .uri(format!("{}/0/odata/SysFile(big)/Data", h.emulator.url()));
    for (name, value) in session.headers() {
        request = request.header(name, value);
    }
    let body = PatternBody { sent: 0, chunks };
    let response = client.request(request.body(body).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(CONTENT_LENGTH).is_some());
    let len = chunks * 65_536;
    let hash = (0..len).fold(FNV_OFFSET, |hash, i| fnv1a64(hash, &[download_byte(i)]));
    assert_eq!(
        h.emulator.upload("SysFile", "big"),
        Some(Upload { len, fnv1a64: hash })
    );
    let seen = h.emulator.seen();
    let put = seen.last().unwrap();
    assert_eq!(put.headers.get("transfer-encoding").unwrap(), "chunked");
}

#[tokio::test]
async fn download_streams_the_pattern() {
    let h = Harness::default().await;
    let session = h.login("Supervisor", "Supervisor").await;
    let size = 3 * 65_536 + 1_234;
    let reply = h
        .get(
            &format!("/0/rest/FileService/Download?size={size}"),
            &session.headers(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[CONTENT_LENGTH], size.to_string().as_str());
    assert_eq!(reply.headers[CONTENT_TYPE], "application/octet-stream");
    assert_eq!(reply.body.len(), size);
    assert!(reply
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == download_byte(i as u64)));
}

#[tokio::test]
async fn login_failures_lockout_and_expired_password() {
    let h = Harness::start(EmulatorOptions {
        users: vec![
            User::employee("Supervisor", "Supervisor"),
            User {
                password_expired: true,
                ..User::employee("old", "pw")
            },
        ],
        lockout_after: Some(2),
        ..EmulatorOptions::default()
    })
    .await;
    let wrong = h.login_reply("Supervisor", "nope").await;
    assert_eq!(wrong.status, StatusCode::OK);
    assert!(wrong.headers.get(SET_COOKIE).is_none());
    assert_eq!(
        wrong.json(),
        json!({"Code":1,"Message":"Either user name or password specified incorrectly","Exception":null,"PasswordChangeUrl":null,"RedirectUrl":null})
    );
    h.login_reply("Supervisor", "nope").await;
    let locked = h.login_reply("Supervisor", "Supervisor").await;
    assert_eq!(
        locked.json()["Message"],
        "The user is locked. Please contact your system administrator"
    );
    assert_eq!(h.emulator.login_attempts("Supervisor"), 3);
    h.emulator.unlock("Supervisor");
    h.emulator.set_password("Supervisor", "new");
    h.login("Supervisor", "new").await;
    assert_eq!(h.emulator.logins("Supervisor"), 1);

    let expired = h.login_reply("old", "pw").await;
    assert_eq!(
        expired.json()["Message"],
        "Password expired. Change the password"
    );
    assert_eq!(
        expired.json()["PasswordChangeUrl"],
        "/Login/NuiLogin.aspx?pwdExpired=true"
    );

    let unknown = h.login_reply("ghost", "x").await;
    assert_eq!(unknown.json()["Code"], 1);
    assert_eq!(h.emulator.login_attempts("ghost"), 1);

    let not_json = h
        .send(
            Method::POST,
            "/ServiceModel/AuthService.svc/Login",
            &[],
            "UserName=x",
        )
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        not_json.json(),
        json!({"Message": "The request body is not valid JSON."})
    );

    let at_app = h
        .send(
            Method::POST,
            "/0/ServiceModel/AuthService.svc/Login",
            &[],
            r#"{"UserName":"Supervisor","UserPassword":"new"}"#,
        )
        .await;
    assert_eq!(at_app.status, StatusCode::UNAUTHORIZED);
    assert_eq!(at_app.json()["Message"], "Authentication failed.");
}

#[tokio::test]
async fn ping_is_anonymous_and_unknown_paths_404() {
    let h = Harness::default().await;
    assert_eq!(
        h.get("/api/HealthCheck/Ping", &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(h.get("/elsewhere", &[]).await.status, StatusCode::NOT_FOUND);
    let session = h.login("Supervisor", "Supervisor").await;
    let svc = h
        .get("/0/ServiceModel/Info.svc/Get", &session.headers())
        .await;
    assert_eq!(
        svc.json(),
        json!({"service":"Info","method":"Get","user":"Supervisor"})
    );
}

#[tokio::test]
async fn h2c_prior_knowledge_works() {
    let h = Harness::default().await;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let uri = format!("{}/api/HealthCheck/Ping", h.emulator.url());
    let response = client.get(uri.parse().unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let h = Harness::default().await;
    assert_eq!(
        h.get("/api/HealthCheck/Ping", &[]).await.status,
        StatusCode::OK
    );
    let identity: std::net::SocketAddr = h
        .emulator
        .identity_url()
        .trim_start_matches("http://")
        .parse()
        .expect("identity_url is http://IP:PORT");
    h.emulator.shutdown();
    // Once shut down, connecting eventually fails on both listeners. Poll by trying to
    // connect (no sleeps): each accept loop stops at its next turn.
    for addr in [h.emulator.addr(), identity] {
        let mut refused = false;
        for _ in 0..1000 {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(refused, "{addr}");
    }
}

// === Identity Service and bearer tokens ===

#[tokio::test]
async fn token_by_form_fields_and_by_basic() {
    let h = Harness::start(EmulatorOptions {
        oauth_clients: vec![
            OAuthClient::new("integration-client", "integration-secret", "Supervisor"),
            OAuthClient::new("odd id", "p@ss:w+rd", "Supervisor"),
        ],
        ..EmulatorOptions::default()
    })
    .await;
    let form = "grant_type=client_credentials&client_id=integration-client&client_secret=integration-secret";
    let reply = h.token_reply(&[], form).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers[CONTENT_TYPE],
        "application/json; charset=utf-8"
    );
    assert_eq!(reply.headers["cache-control"], "no-store");
    let answer = reply.json();
    let first = answer["access_token"]
        .as_str()
        .expect("a token answer has access_token")
        .to_owned();
    assert!(first.len() >= 64, "{first}");
    assert!(first
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)));
    assert_eq!(
        answer,
        json!({"access_token": first, "expires_in": 3600, "token_type": "Bearer", "scope": "ApplicationAccess"})
    );

    // RFC 6749 §2.3.1: id and secret are form-urlencoded, then joined and base64-encoded.
    let basic = base64::engine::general_purpose::STANDARD.encode("odd+id:p%40ss%3Aw%2Brd");
    let by_basic = h
        .token_reply(
            &[("authorization", format!("Basic {basic}"))],
            "grant_type=client_credentials",
        )
        .await;
    assert_eq!(by_basic.status, StatusCode::OK, "{}", by_basic.text());
    assert_ne!(by_basic.json()["access_token"], first);

    // Both methods at once must name the same client.
    let both = [("authorization", format!("Basic {basic}"))];
    assert_eq!(
        h.token_reply(&both, "grant_type=client_credentials&client_id=odd+id")
            .await
            .status,
        StatusCode::OK
    );
    let conflict = h.token_reply(&both, form).await;
    assert_eq!(conflict.status, StatusCode::BAD_REQUEST);
    assert_eq!(conflict.json(), json!({"error": "invalid_client"}));
    assert_eq!(h.emulator.tokens_issued(), 3);
    assert_eq!(h.emulator.token_requests(), 4);
}

#[tokio::test]
async fn token_errors_are_400_json() {
    let h = Harness::start(EmulatorOptions {
        oauth_clients: vec![
            OAuthClient::new("integration-client", "integration-secret", "Supervisor"),
            OAuthClient {
                client_credentials: false,
                ..OAuthClient::new("code-only", "code-secret", "Supervisor")
            },
        ],
        ..EmulatorOptions::default()
    })
    .await;
    let cases = [
        (
            "wrong secret",
            "grant_type=client_credentials&client_id=integration-client&client_secret=nope",
            json!({"error": "invalid_client"}),
        ),
        (
            "unknown id",
            "grant_type=client_credentials&client_id=ghost&client_secret=integration-secret",
            json!({"error": "invalid_client"}),
        ),
        (
            "no credentials",
            "grant_type=client_credentials",
            json!({"error": "invalid_client"}),
        ),
        (
            "grant not allowed",
            "grant_type=client_credentials&client_id=code-only&client_secret=code-secret",
            json!({"error": "unauthorized_client", "error_description": "The client is not allowed to use the client_credentials grant"}),
        ),
        (
            "grant missing",
            "client_id=integration-client&client_secret=integration-secret",
            json!({"error": "unsupported_grant_type"}),
        ),
        (
            "other grant",
            "grant_type=password&client_id=integration-client&client_secret=integration-secret",
            json!({"error": "unsupported_grant_type"}),
        ),
    ];
    for (name, form, want) in &cases {
        let reply = h.token_reply(&[], form).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(reply.json(), *want, "{name}");
    }
    assert_eq!(h.emulator.tokens_issued(), 0);

    let token_url = format!("{}/connect/token", h.emulator.identity_url());
    let get = send_to(&h.client, Method::GET, &token_url, &[], Bytes::new()).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(h.emulator.token_requests(), cases.len() as u64);

    let discovery_url = format!(
        "{}/.well-known/openid-configuration",
        h.emulator.identity_url()
    );
    let discovery = send_to(&h.client, Method::GET, &discovery_url, &[], Bytes::new()).await;
    assert_eq!(discovery.status, StatusCode::OK);
    assert_eq!(discovery.json()["token_endpoint"], token_url.as_str());
    assert_eq!(
        discovery.json()["grant_types_supported"],
        json!(["client_credentials"])
    );
    let elsewhere = format!("{}/0/odata/Contact", h.emulator.identity_url());
    let missing = send_to(&h.client, Method::GET, &elsewhere, &[], Bytes::new()).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json().is_object());
}

#[tokio::test]
async fn bearer_token_needs_no_cookie_or_csrf() {
    let h = Harness::default().await;
    let token = h.token("integration-client", "integration-secret").await;
    let reply = h.get("/0/odata/Contact", &bearer(&token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.headers.get(SET_COOKIE).is_none());
    assert_eq!(
        h.emulator
            .seen()
            .last()
            .expect("the request was recorded")
            .user
            .as_deref(),
        Some("Supervisor")
    );

    // The scheme is case-insensitive, and the token wins over a cookie without BPMCSRF.
    let session = h.login("Supervisor", "Supervisor").await;
    let headers = [
        ("authorization", format!("bearer {token}")),
        ("cookie", session.cookie.clone()),
    ];
    let reply = h.get("/0/rest/S/M", &headers).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["user"], "Supervisor");
}

/// 401 with Web API's JSON, not the login redirect, on an OData and a `.svc` path.
async fn assert_bearer_refused(h: &Harness, token: &str) {
    for path in ["/0/odata/Contact", "/0/ServiceModel/Info.svc/Get"] {
        let reply = h.get(path, &bearer(token)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(
            reply.json(),
            json!({"Message": "Authorization has been denied for this request."}),
            "{path}"
        );
        assert_eq!(
            h.emulator
                .seen()
                .last()
                .expect("the request was recorded")
                .user,
            None
        );
    }
}

#[tokio::test]
async fn expired_unknown_and_revoked_tokens_get_json_401() {
    let h = Harness::default().await;
    assert_bearer_refused(&h, "not-a-token").await;

    let expiring = h.token("integration-client", "integration-secret").await;
    h.emulator.advance_clock(Duration::from_secs(3599));
    let reply = h.get("/0/odata/Contact", &bearer(&expiring)).await;
    assert_eq!(reply.status, StatusCode::OK);
    h.emulator.advance_clock(Duration::from_secs(2));
    assert_bearer_refused(&h, &expiring).await;

    let revoked = h.token("integration-client", "integration-secret").await;
    assert_eq!(
        h.get("/0/odata/Contact", &bearer(&revoked)).await.status,
        StatusCode::OK
    );
    h.emulator.revoke_tokens();
    assert_bearer_refused(&h, &revoked).await;
    let fresh = h.token("integration-client", "integration-secret").await;
    assert_eq!(
        h.get("/0/odata/Contact", &bearer(&fresh)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn portal_client_token_follows_the_ssp_rule() {
    let h = Harness::default().await;
    let token = h.token("portal-client", "portal-secret").await;
    let off = h.get("/0/rest/X/Y", &bearer(&token)).await;
    assert_eq!(off.status, StatusCode::FORBIDDEN);
    assert!(off
        .text()
        .contains("403.0 - Access to non-SSP API is denied for portal users"));
    let on = h.get("/0/ssp/rest/X/Y", &bearer(&token)).await;
    assert_eq!(on.status, StatusCode::OK);
    assert_eq!(on.json()["user"], "portal.user");
    assert_eq!(on.json()["portal"], true);
}

#[tokio::test]
async fn token_request_sent_to_the_app_gets_the_login_page() {
    let h = Harness::default().await;
    let form = "grant_type=client_credentials&client_id=integration-client&client_secret=integration-secret";
    let reply = h
        .send(
            Method::POST,
            "/connect/token",
            &[("content-type", FORM.to_owned())],
            form,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[CONTENT_TYPE], "text/html; charset=utf-8");
    let text = reply.text();
    assert!(text.contains("<form name=\"IndexForm\" method=\"post\" action=\"./NuiLogin.aspx?ReturnUrl=%2fconnect%2ftoken\" id=\"IndexForm\">"));
    assert!(text.contains("IndexForm"));
    assert!(text.contains("NuiLogin.aspx?ReturnUrl=%2fconnect%2ftoken"));
    assert_eq!(h.emulator.token_requests(), 0);
    assert_eq!(h.emulator.requests("/connect/token"), 1);
}

#[tokio::test]
async fn no_access_token_fault_and_token_lifetime() {
    let h = Harness::default().await;
    let form = "grant_type=client_credentials&client_id=integration-client&client_secret=integration-secret";
    h.emulator.set_token_lifetime(Duration::from_secs(60));
    h.emulator.set_token_fault(Some(TokenFault::NoAccessToken));
    let reply = h.token_reply(&[], form).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({"token_type": "Bearer", "expires_in": 60})
    );
    assert_eq!(h.emulator.tokens_issued(), 0);

    h.emulator.set_token_fault(None);
    let reply = h.token_reply(&[], form).await;
    assert_eq!(reply.json()["expires_in"], 60);
    let token = reply.json()["access_token"]
        .as_str()
        .expect("a token answer has access_token")
        .to_owned();
    h.emulator.advance_clock(Duration::from_secs(61));
    assert_eq!(
        h.get("/0/odata/Contact", &bearer(&token)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn held_token_requests_wait_for_release() {
    let h = Harness::default().await;
    h.emulator.hold_tokens();
    let client = h.client.clone();
    let url = format!("{}/connect/token", h.emulator.identity_url());
    let form = "grant_type=client_credentials&client_id=integration-client&client_secret=integration-secret";
    let pending = tokio::spawn(async move {
        let headers = [("content-type", FORM.to_owned())];
        send_to(&client, Method::POST, &url, &headers, Bytes::from(form)).await
    });
    h.emulator.wait_token_requests(1).await;
    assert!(!pending.is_finished());
    assert_eq!(h.emulator.tokens_issued(), 0);
    h.emulator.release_tokens();
    let reply = pending.await.expect("the held token request completes");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(h.emulator.tokens_issued(), 1);
    // Released: later requests are answered at once.
    h.token("integration-client", "integration-secret").await;
    assert_eq!(h.emulator.token_requests(), 2);
}

#[tokio::test]
async fn front_redirect_answers_every_app_request_with_302() {
    let location = "https://sso.example.com/login?app=creatio";
    let h = Harness::start(EmulatorOptions {
        front_redirect: Some(location.to_owned()),
        ..EmulatorOptions::default()
    })
    .await;
    let login = h.login_reply("Supervisor", "Supervisor").await;
    assert_eq!(login.status, StatusCode::FOUND);
    assert_eq!(login.headers[LOCATION], location);
    assert!(login.text().contains("Object moved"));
    assert_eq!(h.emulator.login_attempts("Supervisor"), 0);
    assert_eq!(
        h.get("/0/odata/Contact", &[]).await.status,
        StatusCode::FOUND
    );
    // The Identity Service is not behind the front door.
    h.token("integration-client", "integration-secret").await;
}

#[tokio::test]
async fn lock_user_makes_the_right_password_fail_as_locked() {
    let h = Harness::default().await;
    h.emulator.lock_user("supervisor");
    let reply = h.login_reply("Supervisor", "Supervisor").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["Code"], 1);
    assert_eq!(
        reply.json()["Message"],
        "The user is locked. Please contact your system administrator"
    );
    h.emulator.unlock("Supervisor");
    h.login("Supervisor", "Supervisor").await;
}

#[tokio::test]
async fn forms_session_controls_leave_tokens_alone() {
    let h = Harness::default().await;
    let token = h.token("integration-client", "integration-secret").await;
    h.emulator.invalidate_sessions();
    assert_eq!(
        h.get("/0/odata/Contact", &bearer(&token)).await.status,
        StatusCode::OK
    );
    // Bearer requests do not count towards the countdown; the cookie request does.
    let session = h.login("Supervisor", "Supervisor").await;
    h.emulator.invalidate_sessions_after(1);
    assert_eq!(
        h.get("/0/odata/Contact", &bearer(&token)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        h.get("/0/odata/Contact", &session.headers()).await.status,
        StatusCode::FOUND
    );
    assert_eq!(
        h.get("/0/odata/Contact", &bearer(&token)).await.status,
        StatusCode::OK
    );
}

#[test]
fn path_helpers() {
    assert_eq!(
        strip_base("/CreatioWebApp/0/x", "/creatiowebapp"),
        Some("/0/x")
    );
    assert_eq!(strip_base("/CreatioWebAppX/0", "/CreatioWebApp"), None);
    assert_eq!(strip_segment("/0", "0"), Some(""));
    assert_eq!(
        strip_segment("/0/SSP/rest", "0").and_then(|p| strip_segment(p, "ssp")),
        Some("/rest")
    );
    assert_eq!(strip_segment("/00/x", "0"), None);
    assert_eq!(parse_resource("Contact"), Some(("Contact", None)));
    assert_eq!(
        parse_resource("Contact(ab-1)"),
        Some(("Contact", Some("ab-1")))
    );
    assert_eq!(
        parse_resource("Contact('ab')"),
        Some(("Contact", Some("ab")))
    );
    assert_eq!(parse_resource("(ab)"), None);
    assert_eq!(parse_resource("Contact(ab"), None);
}

#[test]
fn url_encoding_and_dates_match_aspnet() {
    assert_eq!(
        aspnet_url_encode("/app/0/DataService/"),
        "%2fapp%2f0%2fDataService%2f"
    );
    assert_eq!(aspnet_url_encode("/a b/(x)!*-_.~"), "%2fa+b%2f(x)!*-_.%7e");
    let epoch = std::time::SystemTime::UNIX_EPOCH;
    assert_eq!(http_date(epoch), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(
        http_date(epoch + Duration::from_secs(784_111_777)),
        "Sun, 06 Nov 1994 08:49:37 GMT"
    );
    assert_eq!(
        http_date(epoch + Duration::from_secs(951_782_400)),
        "Tue, 29 Feb 2000 00:00:00 GMT"
    );
}

#[test]
fn paths_are_cooked_as_iis_cooks_them() {
    let cases: &[(&str, Result<&str, CookedPathError>)] = &[
        (
            "/0/rest/UsrPortal%53ervice/GetCases",
            Ok("/0/rest/UsrPortalService/GetCases"),
        ),
        ("/0/rest%2FUsrPortalService", Ok("/0/rest/UsrPortalService")),
        ("/0\\rest", Ok("/0/rest")),
        ("/(S(abc))/0/rest/X", Ok("/0/rest/X")),
        ("/0/(A(x))/rest/X", Ok("/0/rest/X")),
        ("/0/rest/X./Y%20", Ok("/0/rest/X/Y")),
        ("/0/odata/Contact(1)", Ok("/0/odata/Contact(1)")),
        ("/0/odata/Name%20x", Ok("/0/odata/Name%20x")),
        ("/0/x/", Ok("/0/x/")),
        ("/0/%2553", Err(CookedPathError::DoubleEscape)),
        ("/0/%zz", Err(CookedPathError::BadEscape)),
    ];
    for (raw, want) in cases {
        assert_eq!(cooked_path(raw).as_deref(), want.as_deref(), "{raw}");
    }
}

#[tokio::test]
async fn held_logins_wait_until_released_and_an_abandoned_one_is_never_carried_out() {
    let h = Harness::default().await;
    h.emulator.hold_logins();
    // A client that gives up while its login is held: counted on arrival, never carried out.
    let body = json!({"UserName": "Supervisor", "UserPassword": "Supervisor"}).to_string();
    let head = format!(
        "POST /ServiceModel/AuthService.svc/Login HTTP/1.1\r\nhost: emulator\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut abandoned = tokio::net::TcpStream::connect(h.emulator.addr())
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut abandoned, head.as_bytes())
        .await
        .unwrap();
    // The count is bumped on arrival, so waiting for it needs no sleep: yield until the
    // emulator's connection task has run.
    while h.emulator.login_requests() < 1 {
        tokio::task::yield_now().await;
    }
    drop(abandoned);
    let pending = {
        let client = h.client.clone();
        let url = format!("{}/ServiceModel/AuthService.svc/Login", h.emulator.url());
        tokio::spawn(async move {
            let body = json!({"UserName": "Supervisor", "UserPassword": "Supervisor"});
            let headers = [("content-type", "application/json".to_owned())];
            send_to(
                &client,
                Method::POST,
                &url,
                &headers,
                body.to_string().into(),
            )
            .await
        })
    };
    while h.emulator.login_requests() < 2 {
        tokio::task::yield_now().await;
    }
    assert!(!pending.is_finished());
    assert_eq!(h.emulator.logins("Supervisor"), 0);
    h.emulator.release_logins();
    let reply = pending.await.unwrap();
    assert_eq!(reply.json()["Code"], 0, "{}", reply.text());
    assert_eq!(h.emulator.logins("Supervisor"), 1);
    assert_eq!(
        h.emulator.login_attempts("Supervisor"),
        1,
        "the abandoned login was never carried out"
    );
    // Released: later logins are answered at once.
    h.login("Supervisor", "Supervisor").await;
    assert_eq!(h.emulator.login_requests(), 3);
}
