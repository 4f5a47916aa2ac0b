//! Forms login: `POST {url}/ServiceModel/AuthService.svc/Login`.
//!
//! Creatio answers a login with HTTP 200 whatever the outcome; only a JSON body with
//! `"Code": 0` is a success (reference §1). Everything else is a failure that carries Creatio's
//! own `Message` when there is one: `Code` 1 (wrong password, locked user, expired password
//! with a `PasswordChangeUrl`), an HTML page (the URL is not the application root), a 401/403,
//! or a redirect. The password only ever leaves the process inside the login body.

use std::collections::VecDeque;

use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;

use super::{Jar, LoginContext};
use crate::body::ProxyBody;
use crate::config::LoginConfig;

/// Largest login answer read (Creatio's is ~150 bytes; an HTML page is cut here).
const MAX_LOGIN_REPLY: usize = 64 * 1024;

/// Why a login failed.
#[derive(Debug, Clone)]
pub enum LoginFailure {
    /// Creatio answered, and the answer is not a successful login.
    Refused {
        /// Creatio's message, or a description of the unexpected answer and what to change.
        message: String,
    },
    /// Creatio could not be reached.
    Unreachable {
        /// host:port.
        target: String,
        /// What went wrong.
        cause: String,
    },
}

impl LoginFailure {
    /// One sentence for logs and `check`.
    pub fn message(&self) -> String {
        match self {
            LoginFailure::Refused { message } => message.clone(),
            LoginFailure::Unreachable { target, cause } => {
                format!("could not reach Creatio at {target}: {cause}")
            }
        }
    }
}

impl std::fmt::Display for LoginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LoginReply {
    code: Option<i64>,
    message: Option<String>,
    password_change_url: Option<String>,
}

fn refused(message: impl Into<String>) -> LoginFailure {
    LoginFailure::Refused {
        message: message.into(),
    }
}

/// Logs in and returns the session's cookie jar.
pub(super) async fn login(ctx: &LoginContext, how: &LoginConfig) -> Result<Jar, LoginFailure> {
    let LoginConfig::Forms { username, password } = how;
    let body =
        serde_json::json!({ "UserName": username, "UserPassword": password.expose() }).to_string();
    let url = ctx.creatio.join("/ServiceModel/AuthService.svc/Login");
    let request = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
        .header(header::ACCEPT, "application/json")
        .header("ForceUseSession", "true")
        .body(ProxyBody::full(body))
        .map_err(|e| refused(format!("cannot build the login request for {url}: {e}")))?;

    let target = ctx.creatio.host_port();
    let response = match tokio::time::timeout(ctx.timeout, ctx.client.request(request)).await {
        Err(_) => {
            return Err(LoginFailure::Unreachable {
                target,
                cause: format!("no answer to the login within {:?}", ctx.timeout),
            })
        }
        Ok(Err(e)) => {
            return Err(LoginFailure::Unreachable {
                target,
                cause: e.to_string(),
            })
        }
        Ok(Ok(r)) => r,
    };
    let (parts, body) = response.into_parts();
    let bytes = read_limited(body)
        .await
        .map_err(|e| LoginFailure::Unreachable {
            target: target.clone(),
            cause: format!("the login answer broke off: {e}"),
        })?;
    let status = parts.status;
    let reply: Option<LoginReply> = serde_json::from_slice(&bytes).ok();
    let looks_html = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<');

    if status.is_redirection() {
        let location = parts
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        return Err(refused(format!(
            "Creatio answered the login with a redirect (HTTP {}) to {location}: creatio.url must be the application root, e.g. https://mycompany.creatio.com",
            status.as_u16()
        )));
    }
    if !status.is_success() {
        let detail = reply
            .as_ref()
            .and_then(|r| r.message.clone())
            .filter(|m| !m.is_empty())
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let hint = if status == StatusCode::UNAUTHORIZED || status == StatusCode::NOT_FOUND {
            " (is creatio.url the application root, without /0?)"
        } else {
            ""
        };
        return Err(refused(format!(
            "Creatio answered the login with HTTP {}{detail}{hint}",
            status.as_u16()
        )));
    }
    let Some(reply) = reply else {
        return Err(refused(if looks_html {
            format!("Creatio answered the login with an HTML page instead of JSON: creatio.url ({}) must be the application root", ctx.creatio.display)
        } else {
            "Creatio answered the login with something that is not JSON".to_string()
        }));
    };
    match reply.code {
        Some(0) => {}
        Some(code) => {
            let mut message = reply
                .message
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| format!("Creatio refused the login (Code {code})"));
            if reply.password_change_url.is_some_and(|u| !u.is_empty()) {
                message.push_str(" (the password has expired: change it in Creatio, then update the proxy's password)");
            }
            return Err(refused(message));
        }
        None => {
            return Err(refused(
                "Creatio's login answer has no Code: creatio.url must be the application root",
            ))
        }
    }
    let mut jar = Jar::default();
    for value in parts.headers.get_all(header::SET_COOKIE) {
        jar.apply(value);
    }
    if jar.get(".ASPXAUTH").is_none() {
        return Err(refused(
            "Creatio accepted the login but set no .ASPXAUTH cookie; is something between the proxy and Creatio removing cookies?",
        ));
    }
    Ok(jar)
}

async fn read_limited(mut body: crate::pool::PeerBody) -> Result<Vec<u8>, hyper::Error> {
    let mut chunks: VecDeque<bytes::Bytes> = VecDeque::new();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            total += data.len();
            chunks.push_back(data);
            if total >= MAX_LOGIN_REPLY {
                break;
            }
        }
    }
    Ok(crate::body::concat(chunks, total).to_vec())
}
