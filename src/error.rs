//! Errors the proxy answers itself, and how each becomes an HTTP response.
//!
//! Every proxy-made answer is JSON `{"error": "<code>", "message": "...", "request_id": "..."}`
//! (login failures add `identity`, `diagnosis` and `retry_after_seconds`). The status follows where the
//! failure is: the client's request → 4xx, Creatio or the way to it → 502/504, a session that
//! expired under a body too large to replay → 503 (safe to retry). The mapping is an exhaustive
//! `match`: a new variant cannot silently become a 500. Messages never hold a secret.

use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::auth::LoginFailure;
use crate::body::ProxyBody;

/// A failure the proxy answers itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// The path has a dot segment or a backslash.
    #[error("the path contains a '.' or '..' segment (or a backslash); send the path without it")]
    DotSegment,
    /// `unmatched = "deny"` and no route matches.
    #[error("no route serves this path (server.unmatched = \"deny\")")]
    NoRoute,
    /// Inbound access check failed.
    #[error(
        "this proxy needs a client token: send Authorization: Bearer <token> or X-Api-Key: <token>"
    )]
    Unauthorized,
    /// The request URI could not be turned into an upstream URI.
    #[error("the request target is not a valid path")]
    BadRequestTarget,
    /// Reading the client's body failed.
    #[error("reading the request body failed: {0}")]
    ClientBody(String),
    /// Logging in to Creatio or getting a token failed (now, or recently and the back-off
    /// is running).
    #[error("{failure}")]
    LoginFailed {
        /// Identity name.
        identity: String,
        /// What went wrong, with its diagnosis.
        failure: LoginFailure,
        /// Time until the next login attempt is allowed.
        retry_after: Option<Duration>,
    },
    /// Creatio could not be reached.
    #[error("could not reach Creatio: {cause}")]
    Unreachable {
        /// host:port.
        target: String,
        /// The connection error, without secrets.
        cause: String,
    },
    /// Creatio did not answer within `server.upstream_timeout`.
    #[error("Creatio did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    /// The session expired while a body too large to replay was being sent.
    #[error("the Creatio session expired during a large upload; the session has been renewed, so it is safe to send the request again")]
    ExpiredDuringUpload,
    /// Re-logins are paused after fresh sessions were refused too.
    #[error("Creatio answered as if the session had expired, but a fresh login did not help a moment ago (identity \"{identity}\"), so the proxy is not logging in again for now; the endpoint itself may be refusing the request")]
    ReloginPaused {
        /// Identity name.
        identity: String,
        /// Until re-logins resume.
        retry_after: Duration,
    },
    /// The request met an expired session right after a fresh login.
    #[error("{}", expired_again(identity, *oauth2))]
    ExpiredAgain {
        /// Identity name.
        identity: String,
        /// The identity uses bearer tokens.
        oauth2: bool,
    },
}

fn expired_again(identity: &str, oauth2: bool) -> String {
    if oauth2 {
        // A brand-new token refused: Creatio trusts another Identity Service (a test Identity
        // Service paired with a production Creatio, say).
        format!("Creatio rejected a token issued a moment ago (identity \"{identity}\"): check that creatio.url's Creatio is connected to the Identity Service of token_url (Creatio's system setting OAuth20IdentityServerUrl), and the client's rights")
    } else {
        format!("Creatio rejected the request as unauthenticated again right after a fresh login (identity \"{identity}\"); check the user's rights and that creatio.url is the application root")
    }
}

impl ProxyError {
    /// Status code of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::DotSegment | ProxyError::BadRequestTarget | ProxyError::ClientBody(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::LoginFailed { .. }
            | ProxyError::Unreachable { .. }
            | ProxyError::ExpiredAgain { .. }
            | ProxyError::ReloginPaused { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ExpiredDuringUpload => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::DotSegment => "dot_segment_in_path",
            ProxyError::NoRoute => "no_route",
            ProxyError::Unauthorized => "client_unauthorized",
            ProxyError::BadRequestTarget => "bad_request_target",
            ProxyError::ClientBody(_) => "client_body_error",
            ProxyError::LoginFailed { failure, .. } => failure.error_code(),
            ProxyError::Unreachable { .. } => "creatio_unreachable",
            ProxyError::UpstreamTimeout(_) => "creatio_timeout",
            ProxyError::ExpiredDuringUpload => "session_expired_during_upload",
            ProxyError::ExpiredAgain { .. } => "session_expired_again",
            ProxyError::ReloginPaused { .. } => "relogin_paused",
        }
    }

    /// The JSON answer.
    pub fn into_response(self, request_id: &HeaderValue) -> Response<ProxyBody> {
        let rid = request_id.to_str().unwrap_or("");
        let mut body = json!({
            "error": self.code(),
            "message": self.to_string(),
            "request_id": rid,
        });
        let mut retry_after = None;
        match &self {
            ProxyError::LoginFailed {
                identity,
                failure,
                retry_after: ra,
            } => {
                body["identity"] = json!(identity);
                body["diagnosis"] = json!(failure.diagnosis.code());
                if let Some(ra) = ra {
                    let secs = ra.as_secs() + u64::from(ra.subsec_nanos() > 0);
                    body["retry_after_seconds"] = json!(secs);
                    retry_after = Some(secs);
                }
            }
            ProxyError::ExpiredAgain { identity, .. } => body["identity"] = json!(identity),
            ProxyError::ReloginPaused {
                identity,
                retry_after: ra,
            } => {
                body["identity"] = json!(identity);
                let secs = ra.as_secs() + u64::from(ra.subsec_nanos() > 0);
                body["retry_after_seconds"] = json!(secs);
                retry_after = Some(secs);
            }
            ProxyError::ExpiredDuringUpload => retry_after = Some(0),
            _ => {}
        }
        let mut resp = Response::new(ProxyBody::full(body.to_string()));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        if let Some(secs) = retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ProxyError::Unauthorized) {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
