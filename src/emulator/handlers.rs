//! Request routing and the answers of the fake Creatio.
//!
//! Order for a `/0/...` request: the session check (a bearer token, or the ticket then
//! `BPMCSRF`), then the portal rule, then the endpoint. The front-door redirect, when set,
//! comes before everything. Each refusal reads the request body to the end before answering.
//! A client that is still sending then sees the refusal and not a reset connection, and the
//! keep-alive connection stays usable.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::request::Parts;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

use super::model::{fnv1a64, ExpiredResponse, Flavour, SeenRequest, Upload, FNV_OFFSET};
use super::pages;
use super::state::{Auth, LoginOutcome, NewSession, Shared};
use super::wire::{
    aspnet_url_encode, cooked_path, http_date, parse_resource, segments, strip_base, strip_segment,
    strip_suffix_ci, CookedPathError,
};

/// Every response body: small buffered ones and the streamed download.
pub(super) type Body = BoxBody<Bytes, Infallible>;

const LOGIN_PATH: &str = "/ServiceModel/AuthService.svc/Login";
/// The Identity Service's token path, which clients sometimes send to the app by mistake.
const TOKEN_PATH: &str = "/connect/token";
const JSON: &str = "application/json; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
/// Limit for request bodies that are buffered (everything except `Data` uploads).
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Size of one download frame.
const DOWNLOAD_CHUNK: u64 = 64 * 1024;
/// How long the `UserName` cookie lives. `UserNameExpireDays` is clamped to 180 (§2).
const USER_NAME_COOKIE_LIFETIME: Duration = Duration::from_secs(180 * 24 * 60 * 60);

/// Entry point for every request. It never fails, and it records the request in the log.
pub(super) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let raw_path = parts.uri.path().to_owned();
    // IIS decodes the path before anything routes it; the emulator does the same, so a test
    // can see a spelling that escapes the proxy's routing.
    let response = match cooked_path(&raw_path) {
        Ok(cooked) => {
            if cooked != raw_path {
                let target = match parts.uri.query() {
                    Some(q) => format!("{cooked}?{q}"),
                    None => cooked,
                };
                if let Ok(uri) = target.parse() {
                    parts.uri = uri;
                }
            }
            shared.count_request(parts.uri.path());
            let mut user = None;
            let response = dispatch(&shared, &parts, body, &mut user).await;
            (response, user)
        }
        Err(e) => {
            drain(body).await;
            let status = match e {
                CookedPathError::BadEscape => StatusCode::BAD_REQUEST,
                CookedPathError::DoubleEscape => StatusCode::NOT_FOUND,
            };
            (html_response(status, pages::not_found()), None)
        }
    };
    let (response, user) = response;
    shared.record_seen(SeenRequest {
        raw_path,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        method: parts.method,
        headers: parts.headers,
        user,
        status: response.status().as_u16(),
    });
    Ok(response)
}

async fn dispatch(
    shared: &Shared,
    parts: &Parts,
    body: Incoming,
    user: &mut Option<String>,
) -> Response<Body> {
    if let Some(location) = &shared.front_redirect {
        drain(body).await;
        return redirect(location.clone());
    }
    let Some(relative) = strip_base(parts.uri.path(), &shared.base_path) else {
        drain(body).await;
        return not_found_outside();
    };
    if relative.eq_ignore_ascii_case(LOGIN_PATH) {
        return login(shared, parts, body).await;
    }
    if relative.eq_ignore_ascii_case(TOKEN_PATH) {
        // A token request sent to Creatio instead of the Identity Service meets forms
        // authentication and gets the login page (§8, addendum). ReturnUrl is the whole path,
        // as ASP.NET encodes it: `%2fconnect%2ftoken` on the site root.
        drain(body).await;
        let return_url = aspnet_url_encode(parts.uri.path());
        let page = pages::login_page(shared.flavour, &shared.base_path, &return_url);
        return html_response(StatusCode::OK, page);
    }
    if let Some(app) = strip_segment(relative, "0") {
        if app.eq_ignore_ascii_case(LOGIN_PATH) {
            match shared.flavour {
                // Live test recorded in §1: the /0 login URL answers 401 on .NET Framework.
                Flavour::NetFramework => {
                    drain(body).await;
                    return authentication_failed();
                }
                // On .NET Core, /0 is taken as an alias of the root. This is unconfirmed (§6),
                // but it is the kinder answer for clients that add /0 everywhere.
                Flavour::NetCore => return login(shared, parts, body).await,
            }
        }
        return app_request(shared, parts, body, app, user).await;
    }
    drain(body).await;
    if parts.method == Method::GET && relative.eq_ignore_ascii_case("/api/HealthCheck/Ping") {
        return json_response(StatusCode::OK, &json!(true));
    }
    not_found_outside()
}

// === login ===

async fn login(shared: &Shared, parts: &Parts, body: Incoming) -> Response<Body> {
    if parts.method != Method::POST {
        drain(body).await;
        let mut response = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"Message": "Method not allowed."}),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    shared.faults.count_login_request();
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    shared
        .faults
        .logins_released(shared.subscribe_shutdown())
        .await;
    let Ok(credentials) = serde_json::from_slice::<Value>(&bytes) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"Message": "The request body is not valid JSON."}),
        );
    };
    let name = credentials.get("UserName").and_then(Value::as_str);
    let password = credentials.get("UserPassword").and_then(Value::as_str);
    // Creatio keeps HTTP 200 for refusals. Only `Code` and `Message` say what went wrong (§1).
    let (message, password_change_url) = match shared.login(name, password) {
        LoginOutcome::Success(session) => return login_success(shared, &session),
        LoginOutcome::WrongCredentials => {
            ("Either user name or password specified incorrectly", None)
        }
        LoginOutcome::Locked => (
            "The user is locked. Please contact your system administrator",
            None,
        ),
        LoginOutcome::PasswordExpired => (
            "Password expired. Change the password",
            Some("/Login/NuiLogin.aspx?pwdExpired=true"),
        ),
    };
    json_response(
        StatusCode::OK,
        &json!({
            "Code": 1,
            "Message": message,
            "Exception": null,
            "PasswordChangeUrl": password_change_url,
            "RedirectUrl": null,
        }),
    )
}

fn login_success(shared: &Shared, session: &NewSession) -> Response<Body> {
    let mut response = json_response(
        StatusCode::OK,
        &json!({
            "Code": 0,
            "Message": "",
            "Exception": null,
            "PasswordChangeUrl": null,
            "RedirectUrl": null,
            "UserType": if session.portal { "SSP" } else { "General" },
        }),
    );
    // The UserName cookie holds the character codes of the name joined by '|', as Creatio
    // writes it.
    let codes: Vec<String> = session
        .user
        .chars()
        .map(|c| u32::from(c).to_string())
        .collect();
    let expires = http_date(shared.wall_clock() + USER_NAME_COOKIE_LIFETIME);
    let cookies = [
        format!("BPMLOADER={}; path=/; HttpOnly", session.loader),
        ticket_cookie(&session.ticket),
        // Not HttpOnly: clients must read it to send it back as the BPMCSRF header.
        format!("BPMCSRF={}; path=/", session.csrf),
        format!(
            "UserName={}; expires={expires}; path=/; HttpOnly",
            codes.join("|")
        ),
    ];
    for cookie in cookies {
        append_header(&mut response, SET_COOKIE, cookie);
    }
    response
}

fn ticket_cookie(ticket: &str) -> String {
    format!(".ASPXAUTH={ticket}; path=/; HttpOnly")
}

// === the app under /0 ===

async fn app_request(
    shared: &Shared,
    parts: &Parts,
    body: Incoming,
    app: &str,
    user: &mut Option<String>,
) -> Response<Body> {
    let (ssp, endpoint) = match strip_segment(app, "ssp") {
        Some(rest) => (true, rest),
        None => (false, app),
    };
    let (name, portal, renewed) = match shared.authenticate(&parts.headers) {
        Auth::Missing => {
            drain(body).await;
            return expired(shared, parts.uri.path());
        }
        Auth::BadCsrf => {
            drain(body).await;
            return authentication_failed();
        }
        Auth::BearerDenied => {
            drain(body).await;
            return bearer_denied();
        }
        Auth::Valid {
            user,
            portal,
            renewed,
        } => (user, portal, renewed),
    };
    let mut response = if portal && !ssp {
        drain(body).await;
        forbidden(
            "Access to non-SSP API is denied for portal users",
            parts.uri.path(),
        )
    } else if !portal && ssp {
        // Secondary evidence only (§7: an unattributed live note on Creatio 10.1 / .NET 8).
        drain(body).await;
        forbidden(
            "Access to SSP API is denied for non-portal users",
            parts.uri.path(),
        )
    } else {
        // `endpoint` is a suffix of the path, so what is left is the app prefix exactly as the
        // client sent it, e.g. `/CreatioWebApp/0/ssp`.
        let path = parts.uri.path();
        let prefix = path.strip_suffix(endpoint).unwrap_or(path);
        let app_url = format!("{}{prefix}", shared.origin);
        let caller = Caller {
            app_url,
            user: &name,
            portal,
        };
        serve(shared, parts, body, endpoint, &caller).await
    };
    if let Some(ticket) = renewed {
        append_header(&mut response, SET_COOKIE, ticket_cookie(&ticket));
    }
    *user = Some(name);
    response
}

/// The answer for a request without a valid session (§4).
fn expired(shared: &Shared, path: &str) -> Response<Body> {
    if path.to_ascii_lowercase().contains(".svc") {
        return authentication_failed();
    }
    // Only the path goes into ReturnUrl, as the project's emulator contract says. ASP.NET
    // encodes the raw URL with its query, but the reference's examples show none, and the
    // path alone is enough for clients that check `ReturnUrl=`.
    let return_url = aspnet_url_encode(path);
    match shared.expired_response() {
        ExpiredResponse::Redirect => {
            let login_page = match shared.flavour {
                Flavour::NetFramework => "/Login/NuiLogin.aspx",
                Flavour::NetCore => "/Login/Login.html",
            };
            redirect(format!(
                "{}{login_page}?ReturnUrl={return_url}",
                shared.base_path
            ))
        }
        ExpiredResponse::LoginPage => {
            let page = pages::login_page(shared.flavour, &shared.base_path, &return_url);
            html_response(StatusCode::OK, page)
        }
        ExpiredResponse::Unauthorized => {
            let mut response = Response::new(empty());
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            response
        }
    }
}

/// What the handlers below need to know about the caller.
struct Caller<'a> {
    /// Origin plus the app prefix as received, e.g. `http://127.0.0.1:1234/0/ssp`.
    app_url: String,
    user: &'a str,
    portal: bool,
}

async fn serve(
    shared: &Shared,
    parts: &Parts,
    body: Incoming,
    endpoint: &str,
    caller: &Caller<'_>,
) -> Response<Body> {
    if let Some(rest) = strip_segment(endpoint, "odata") {
        return odata(shared, parts, body, rest, caller).await;
    }
    if let Some(rest) = strip_segment(endpoint, "rest") {
        if let [service, method] = segments(rest).as_slice() {
            if parts.method == Method::GET
                && service.eq_ignore_ascii_case("FileService")
                && method.eq_ignore_ascii_case("Download")
            {
                drain(body).await;
                return download(parts.uri.query());
            }
            if service.eq_ignore_ascii_case("UsrDenyService") {
                // A custom configuration service that answers 401 by itself, whatever the
                // session: Creatio lets services set their own status. A proxy must not take
                // this for an expired session forever.
                drain(body).await;
                return json_response(
                    StatusCode::UNAUTHORIZED,
                    &json!({ "Message": "Denied by UsrDenyService" }),
                );
            }
            let bytes = match read_body(body).await {
                Ok(bytes) => bytes,
                Err(response) => return response,
            };
            return json_response(
                StatusCode::OK,
                &json!({
                    "service": service,
                    "method": method,
                    "user": caller.user,
                    "portal": caller.portal,
                    "body": String::from_utf8_lossy(&bytes),
                }),
            );
        }
    }
    drain(body).await;
    if let Some(rest) = strip_segment(endpoint, "ServiceModel") {
        if let [file, method] = segments(rest).as_slice() {
            if let Some(service) = strip_suffix_ci(file, ".svc") {
                return json_response(
                    StatusCode::OK,
                    &json!({"service": service, "method": method, "user": caller.user}),
                );
            }
        }
    }
    no_resource()
}

// === OData 4 ===

async fn odata(
    shared: &Shared,
    parts: &Parts,
    body: Incoming,
    rest: &str,
    caller: &Caller<'_>,
) -> Response<Body> {
    let segs = segments(rest);
    let Some((entity, key)) = segs.first().and_then(|s| parse_resource(s)) else {
        drain(body).await;
        return no_resource();
    };
    match (key, &segs[1..]) {
        (None, []) => match parts.method {
            Method::GET => {
                drain(body).await;
                let context_url = format!("{}/odata/$metadata#{entity}", caller.app_url);
                let value = shared.records(entity);
                json_response(
                    StatusCode::OK,
                    &json!({"@odata.context": context_url, "value": value}),
                )
            }
            Method::POST => {
                let fields = match read_json_object(body).await {
                    Ok(fields) => fields,
                    Err(response) => return response,
                };
                let record = shared.create_record(entity, fields);
                let id = record.get("Id").and_then(Value::as_str).unwrap_or_default();
                let location = format!("{}/odata/{entity}({id})", caller.app_url);
                let mut response = json_response(StatusCode::CREATED, &record);
                append_header(&mut response, LOCATION, location);
                response
            }
            _ => method_not_supported(&parts.method, body).await,
        },
        (Some(id), []) => match parts.method {
            Method::GET => {
                drain(body).await;
                match shared.record(entity, id) {
                    Some(record) => json_response(StatusCode::OK, &record),
                    None => record_not_found(),
                }
            }
            Method::PATCH => {
                let fields = match read_json_object(body).await {
                    Ok(fields) => fields,
                    Err(response) => return response,
                };
                if shared.patch_record(entity, id, fields) {
                    no_content()
                } else {
                    record_not_found()
                }
            }
            Method::DELETE => {
                drain(body).await;
                if shared.delete_record(entity, id) {
                    no_content()
                } else {
                    record_not_found()
                }
            }
            _ => method_not_supported(&parts.method, body).await,
        },
        (Some(id), [property]) if property.eq_ignore_ascii_case("Data") => {
            if parts.method == Method::PUT {
                upload(shared, body, entity, id).await
            } else {
                method_not_supported(&parts.method, body).await
            }
        }
        _ => {
            drain(body).await;
            no_resource()
        }
    }
}

/// ASP.NET Web API's answer for a route that exists but does not take this verb.
async fn method_not_supported(method: &Method, body: Incoming) -> Response<Body> {
    drain(body).await;
    let message = format!("The requested resource does not support http method '{method}'.");
    json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "Message": message }),
    )
}

fn record_not_found() -> Response<Body> {
    odata_error(StatusCode::NOT_FOUND, "The record was not found.")
}

/// Reads the body frame by frame, keeping only its length and checksum, and answers once the
/// whole body has arrived.
async fn upload(shared: &Shared, mut body: Incoming, entity: &str, id: &str) -> Response<Body> {
    let mut len = 0u64;
    let mut hash = FNV_OFFSET;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return odata_error(
                StatusCode::BAD_REQUEST,
                "The request body could not be read.",
            );
        };
        if let Ok(data) = frame.into_data() {
            len += data.len() as u64;
            hash = fnv1a64(hash, &data);
        }
    }
    shared.store_upload(entity, id, Upload { len, fnv1a64: hash });
    json_response(StatusCode::OK, &json!({"len": len}))
}

fn download(query: Option<&str>) -> Response<Body> {
    let size = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("size="))
        .and_then(|v| v.parse::<u64>().ok());
    let Some(size) = size else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"Message": "Query parameter 'size' must be a non-negative integer."}),
        );
    };
    let mut response = Response::new(DownloadBody { next: 0, size }.boxed());
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CONTENT_LENGTH, HeaderValue::from(size));
    response
}

/// The `download_byte` pattern produced lazily, 64 KiB per frame, each frame a zero-copy slice
/// of one static table.
struct DownloadBody {
    next: u64,
    size: u64,
}

/// `DOWNLOAD_CHUNK + 251` bytes of the pattern, so any chunk starting at `i % 251` is a slice.
fn pattern_table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..DOWNLOAD_CHUNK + 251)
            .map(super::model::download_byte)
            .collect()
    })
}

impl http_body::Body for DownloadBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.next >= this.size {
            return Poll::Ready(None);
        }
        let len = DOWNLOAD_CHUNK.min(this.size - this.next);
        let start = (this.next % 251) as usize;
        let chunk = Bytes::from_static(pattern_table()).slice(start..start + len as usize);
        this.next += len;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.size
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.size - self.next)
    }
}

// === bodies ===

/// Buffers a small request body. Bodies over [`MAX_BODY`] get 413.
pub(super) async fn read_body(body: Incoming) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            &json!({"Message": "The request body is too large."}),
        )),
        Err(_) => Err(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"Message": "The request body could not be read."}),
        )),
    }
}

async fn read_json_object(body: Incoming) -> Result<Map<String, Value>, Response<Body>> {
    let bytes = read_body(body).await?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(odata_error(
            StatusCode::BAD_REQUEST,
            "The request body must be a JSON object.",
        )),
        Err(error) => Err(odata_error(
            StatusCode::BAD_REQUEST,
            &format!("The request body is not valid JSON: {error}"),
        )),
    }
}

/// Reads and discards the rest of a body, so the connection can be reused after an early
/// answer.
pub(super) async fn drain(mut body: Incoming) {
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}

// === canned answers ===

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(JSON));
    response
}

fn html_response(status: StatusCode, html: String) -> Response<Body> {
    let mut response = Response::new(full(html));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(HTML));
    response
}

/// The WCF/IIS answer to an unauthenticated `.svc` call (§4), also used for a bad `BPMCSRF`.
fn authentication_failed() -> Response<Body> {
    json_response(
        StatusCode::UNAUTHORIZED,
        &json!({
            "Message": "Authentication failed.",
            "StackTrace": null,
            "ExceptionType": "System.Security.Authentication.AuthenticationException",
        }),
    )
}

/// A refused bearer token: ASP.NET Web API's JSON 401 on every path, never the login page
/// (§8).
fn bearer_denied() -> Response<Body> {
    json_response(
        StatusCode::UNAUTHORIZED,
        &json!({"Message": "Authorization has been denied for this request."}),
    )
}

/// ASP.NET's 302 with an "Object moved" body.
fn redirect(location: String) -> Response<Body> {
    let mut response = html_response(StatusCode::FOUND, pages::object_moved(&location));
    append_header(&mut response, LOCATION, location);
    response
}

/// The IIS detailed-error page for the portal rule (§7), with status 403.
fn forbidden(reason: &str, path: &str) -> Response<Body> {
    html_response(StatusCode::FORBIDDEN, pages::forbidden(reason, path))
}

fn no_resource() -> Response<Body> {
    json_response(
        StatusCode::NOT_FOUND,
        &json!({"Message": "No HTTP resource was found that matches the request URI"}),
    )
}

fn not_found_outside() -> Response<Body> {
    html_response(StatusCode::NOT_FOUND, pages::not_found())
}

fn odata_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({"error": {"code": "", "message": message}}))
}

fn no_content() -> Response<Body> {
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
}

pub(super) fn empty() -> Body {
    Empty::new().boxed()
}

/// Appends a header built from text. The values built here are always valid, but a bad one is
/// dropped rather than panicking on the request path.
fn append_header(response: &mut Response<Body>, name: HeaderName, value: String) {
    match HeaderValue::try_from(value) {
        Ok(value) => {
            response.headers_mut().append(name, value);
        }
        Err(error) => tracing::debug!(%error, header = %name, "emulator dropped a header"),
    }
}
