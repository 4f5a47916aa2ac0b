//! The Identity Service on its own listener: the OAuth 2.0 token endpoint and discovery (§8).
//!
//! `POST /connect/token` takes a form with `grant_type=client_credentials` and authenticates
//! the client either by the `client_id`/`client_secret` fields or by HTTP Basic (RFC 6749
//! §2.3.1). Checks run in this order, each with its own 400 answer: client authentication
//! (`invalid_client`), the grant type (`unsupported_grant_type`), then whether the client may
//! use that grant (`unauthorized_client`). A request that passes gets a token acting as the
//! client's Creatio user.
//!
//! Every POST is counted as soon as it arrives, then its body is read, then it waits while
//! tests hold token requests. Paths match case-insensitively, as ASP.NET Core routing does.

use std::convert::Infallible;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, PRAGMA};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use serde_json::{json, Value};

use super::handlers::{drain, empty, json_response, read_body, Body};
use super::model::OAuthClient;
use super::state::Shared;

const TOKEN_PATH: &str = "/connect/token";
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
const FORM: &str = "application/x-www-form-urlencoded";
const GRANT: &str = "client_credentials";
/// The scope Creatio's Identity Service grants to client-credentials clients.
const SCOPE: &str = "ApplicationAccess";

/// Entry point for every request on the Identity Service listener. It never fails.
pub(super) async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    if path.eq_ignore_ascii_case(TOKEN_PATH) {
        return Ok(token_endpoint(&shared, &parts, body).await);
    }
    drain(body).await;
    if parts.method == Method::GET && path.eq_ignore_ascii_case(DISCOVERY_PATH) {
        return Ok(discovery(&shared));
    }
    Ok(json_response(
        StatusCode::NOT_FOUND,
        &json!({"error": "not_found"}),
    ))
}

/// A subset of the OpenID Connect discovery document: what a client-credentials client needs.
fn discovery(shared: &Shared) -> Response<Body> {
    let issuer = &shared.identity_origin;
    json_response(
        StatusCode::OK,
        &json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}{TOKEN_PATH}"),
            "grant_types_supported": [GRANT],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": [SCOPE],
        }),
    )
}

async fn token_endpoint(shared: &Shared, parts: &Parts, body: Incoming) -> Response<Body> {
    if parts.method != Method::POST {
        drain(body).await;
        let mut response = Response::new(empty());
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    shared.count_token_request();
    let bytes = match read_body(body).await {
        Ok(bytes) => bytes,
        Err(response) => return response,
    };
    shared.tokens_released().await;
    if !is_form(&parts.headers) {
        return token_error("invalid_request", None);
    }
    let form: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
    // RFC 6749 §5.2 allows 401 for a failed client authentication (and asks for it after
    // Basic), but IdentityServer answers 400 in every case. Clients must survive that.
    let Some((client, method)) = authenticate_client(shared, &parts.headers, &form) else {
        return token_error("invalid_client", None);
    };
    if field(&form, "grant_type") != Some(GRANT) {
        return token_error("unsupported_grant_type", None);
    }
    if !client.client_credentials {
        return token_error(
            "unauthorized_client",
            Some("The client is not allowed to use the client_credentials grant"),
        );
    }
    let grant = shared.grant_token(&client.user, method);
    let expires_in = grant.lifetime.as_secs();
    let answer = match grant.token {
        Some(token) => json!({
            "access_token": token,
            "expires_in": expires_in,
            "token_type": "Bearer",
            "scope": SCOPE,
        }),
        None => json!({"token_type": "Bearer", "expires_in": expires_in}),
    };
    no_store(json_response(StatusCode::OK, &answer))
}

/// Client credentials as presented, before they are checked.
struct Credentials {
    id: String,
    secret: Option<String>,
}

/// The registered client the request authenticates as, and how (`"basic"` or `"form"`), or
/// `None` for invalid_client.
///
/// Basic is used when the form names no client. When both name one, they must agree.
fn authenticate_client<'a>(
    shared: &'a Shared,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Option<(&'a OAuthClient, &'static str)> {
    let basic = basic_credentials(headers).ok()?;
    let posted = field(form, "client_id").map(|id| Credentials {
        id: id.to_owned(),
        secret: field(form, "client_secret").map(str::to_owned),
    });
    let (presented, method) = match (basic, posted) {
        (None, None) => return None,
        (Some(credentials), None) => (credentials, "basic"),
        (None, Some(credentials)) => (credentials, "form"),
        (Some(basic), Some(posted)) => {
            let agree = basic.id == posted.id
                && posted
                    .secret
                    .as_deref()
                    .is_none_or(|s| basic.secret.as_deref().is_some_and(|b| same_secret(s, b)));
            if !agree {
                return None;
            }
            (basic, "basic")
        }
    };
    let client = shared.client(&presented.id)?;
    let secret = presented.secret?;
    same_secret(&secret, &client.client_secret).then_some((client, method))
}

/// Credentials from `Authorization: Basic`: `Ok(None)` without one, `Err` when it cannot be
/// decoded. RFC 6749 §2.3.1 has id and secret form-urlencoded before base64, so both are
/// decoded after it.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<Credentials>, ()> {
    let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let value = value.trim();
    let (scheme, encoded) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("Basic") {
        return Ok(None);
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(drop)?;
    let text = String::from_utf8(decoded).map_err(drop)?;
    let (id, secret) = text.split_once(':').ok_or(())?;
    Ok(Some(Credentials {
        id: form_decode(id).ok_or(())?,
        secret: Some(form_decode(secret).ok_or(())?),
    }))
}

/// Decodes one `application/x-www-form-urlencoded` value: `+` is a space, then `%XX`.
fn form_decode(text: &str) -> Option<String> {
    let spaced = text.replace('+', " ");
    let decoded = percent_decode_str(&spaced).decode_utf8().ok()?;
    Some(decoded.into_owned())
}

/// The first value of a form field.
fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Compares secrets without stopping at the first difference, so timing tells nothing.
fn same_secret(a: &str, b: &str) -> bool {
    let diff = a
        .bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && diff == 0
}

/// Whether the body is declared as a form. IdentityServer refuses anything else with
/// invalid_request.
fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(FORM))
}

/// An RFC 6749 §5.2 error: 400 with `error` and, sometimes, `error_description`.
fn token_error(error: &str, description: Option<&str>) -> Response<Body> {
    let mut answer = json!({ "error": error });
    if let (Some(description), Value::Object(fields)) = (description, &mut answer) {
        fields.insert("error_description".to_owned(), json!(description));
    }
    no_store(json_response(StatusCode::BAD_REQUEST, &answer))
}

/// Token endpoint answers must not be cached (RFC 6749 §5.1).
fn no_store(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
