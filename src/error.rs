//! Errors the proxy answers itself, and how each becomes an HTTP response.
//!
//! Every proxy-made answer is JSON `{"error": "<code>", "message": "...", "request_id": "..."}`
//! (login failures add `identity`, `diagnosis` and `retry_after_seconds`). The status follows where the
//! failure is: the client's request → 4xx, Creatio or the way to it → 502/504, a session that
//! expired under a body too large to replay → 503 (safe to retry). The mapping is an exhaustive
//! `match`: a new variant cannot silently become a 500. Messages never hold a secret.
//!
//! Errors keep their cause as a `source()` (a hyper or pool error, a path refusal) up to the
//! response boundary (the stack's error layer): the JSON message is the top error's sentence,
//! and the log line carries the whole chain ([`chain`]).

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::body::{BodyError, ProxyBody};
use crate::canonical::PathError;
use crate::diagnosis::LoginFailure;
use crate::pool::UpstreamError;

/// A failure the proxy answers itself.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The path has no canonical form (see [`crate::canonical`]).
    #[error("{0}")]
    Path(#[source] PathError),
    /// `unmatched = "deny"` and no route matches.
    #[error("no route serves this path (server.unmatched = \"deny\")")]
    NoRoute,
    /// A client's request to one of Creatio's authentication endpoints (other than the login
    /// and logout the proxy answers itself).
    #[error("the proxy logs in to Creatio itself: Creatio's authentication endpoints and login pages are not forwarded; send your requests without logging in")]
    AuthEndpoint,
    /// Inbound access check failed.
    #[error(
        "this proxy needs a client token: send Authorization: Bearer <token> or X-Api-Key: <token>"
    )]
    Unauthorized,
    /// The request URI could not be turned into an upstream URI.
    #[error("the request target is not a valid path")]
    BadRequestTarget,
    /// Reading the client's body failed.
    #[error("reading the request body failed")]
    ClientBody(#[source] Arc<BodyError>),
    /// The client's body sent nothing for `server.body_read_timeout`.
    #[error("the request body sent nothing for {0:?} (server.body_read_timeout); the request was not completed")]
    ClientBodyTimeout(Duration),
    /// The method is not in `server.allowed_methods` (TRACE and CONNECT never are).
    #[error("the method {method} is not forwarded by this proxy; allowed: {allowed}")]
    MethodNotAllowed {
        /// The method, as sent.
        method: http::Method,
        /// The allow-list, comma-separated (the `Allow` header too).
        allowed: Arc<str>,
    },
    /// The request target is longer than `server.max_uri_bytes`.
    #[error("the request target is {len} bytes long; this proxy takes at most {max} (server.max_uri_bytes)")]
    UriTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The request head is larger than `server.max_header_bytes`.
    #[error(
        "the request head is {len} bytes; this proxy takes at most {max} (server.max_header_bytes)"
    )]
    HeadTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is larger than `max_body` (announced, or counted as it arrived).
    #[error("the request body is larger than {max} bytes (max_body of this route or server.max_body); nothing was sent to Creatio{}", if *.announced { "" } else { " completely: the request to Creatio was aborted" })]
    BodyTooLarge {
        /// The limit.
        max: u64,
        /// Refused from `Content-Length`, before any byte was forwarded.
        announced: bool,
    },
    /// An `Expect` other than `100-continue`.
    #[error("the proxy understands only Expect: 100-continue")]
    ExpectationFailed,
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
        /// What went wrong and what to check, without secrets.
        cause: String,
        /// The pool's error.
        #[source]
        source: Arc<UpstreamError>,
    },
    /// Creatio's answer broke off while the proxy read its start.
    #[error("could not reach Creatio: its answer broke off")]
    AnswerBroken(#[source] Arc<BodyError>),
    /// A bug: a layer of the stack found what another should have put there.
    #[error("internal error: {0}")]
    Internal(&'static str),
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
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::Path(_) | ProxyError::BadRequestTarget | ProxyError::ClientBody(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::ClientBodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ExpectationFailed => StatusCode::EXPECTATION_FAILED,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::AuthEndpoint => StatusCode::FORBIDDEN,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::LoginFailed { .. }
            | ProxyError::Unreachable { .. }
            | ProxyError::AnswerBroken(_)
            | ProxyError::ExpiredAgain { .. }
            | ProxyError::ReloginPaused { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ExpiredDuringUpload => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ProxyError::Path(e) => e.code(),
            ProxyError::NoRoute => "no_route",
            ProxyError::AuthEndpoint => "auth_endpoint_refused",
            ProxyError::Unauthorized => "client_unauthorized",
            ProxyError::BadRequestTarget => "bad_request_target",
            ProxyError::ClientBody(_) => "client_body_error",
            ProxyError::ClientBodyTimeout(_) => "client_body_timeout",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::UriTooLong { .. } => "uri_too_long",
            ProxyError::HeadTooLarge { .. } => "header_too_large",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::ExpectationFailed => "expectation_failed",
            ProxyError::AnswerBroken(_) => "creatio_unreachable",
            ProxyError::Internal(_) => "internal_error",
            ProxyError::LoginFailed { failure, .. } => failure.error_code(),
            ProxyError::Unreachable { .. } => "creatio_unreachable",
            ProxyError::UpstreamTimeout(_) => "creatio_timeout",
            ProxyError::ExpiredDuringUpload => "session_expired_during_upload",
            ProxyError::ExpiredAgain { .. } => "session_expired_again",
            ProxyError::ReloginPaused { .. } => "relogin_paused",
        }
    }

    /// The JSON answer, for a request with id `rid`.
    pub(crate) fn to_response(&self, rid: &str) -> Response<ProxyBody> {
        let mut body = json!({
            "error": self.code(),
            "message": self.to_string(),
            "request_id": rid,
        });
        let mut retry_after = None;
        match self {
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
            ProxyError::Path(_)
            | ProxyError::NoRoute
            | ProxyError::AuthEndpoint
            | ProxyError::Unauthorized
            | ProxyError::BadRequestTarget
            | ProxyError::ClientBody(_)
            | ProxyError::ClientBodyTimeout(_)
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::UriTooLong { .. }
            | ProxyError::HeadTooLarge { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ExpectationFailed
            | ProxyError::Unreachable { .. }
            | ProxyError::AnswerBroken(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::Internal(_) => {}
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
        match self {
            ProxyError::Unauthorized => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ProxyError::MethodNotAllowed { allowed, .. } => {
                if let Ok(v) = HeaderValue::from_str(allowed) {
                    h.insert(header::ALLOW, v);
                }
            }
            _ => {}
        }
        // After a refused body the rest of it is still on the wire: the connection cannot
        // carry another request.
        if matches!(
            self,
            ProxyError::BodyTooLarge { .. }
                | ProxyError::ClientBodyTimeout(_)
                | ProxyError::ClientBody(_)
                | ProxyError::HeadTooLarge { .. }
                | ProxyError::UriTooLong { .. }
        ) {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// The error for a client body that stopped (see [`BodyError`]); `announced` is false:
    /// the limit was found while the body streamed.
    pub(crate) fn from_client_body(e: BodyError) -> ProxyError {
        match e {
            BodyError::Stalled(d) => ProxyError::ClientBodyTimeout(d),
            BodyError::TooLarge(max) => ProxyError::BodyTooLarge {
                max,
                announced: false,
            },
            other @ BodyError::Peer(_) => ProxyError::ClientBody(Arc::new(other)),
        }
    }
}

/// The error and its sources, joined with `: `, for log lines.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        // Some errors repeat their source's text in their own; say it once.
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_chain_reaches_the_log_line_but_not_the_answer() {
        let e = ProxyError::Path(PathError::EncodedSlash);
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.code(), "ambiguous_path");
        let io = std::io::Error::other("inner cause");
        let outer = UpstreamError::Connect {
            kind: crate::pool::ConnectKind::Other,
            detail: "refused".into(),
            source: Box::new(io),
        };
        let e = ProxyError::Unreachable {
            target: "crm:443".into(),
            cause: "the connection was reset".into(),
            source: Arc::new(outer),
        };
        assert_eq!(
            e.to_string(),
            "could not reach Creatio: the connection was reset"
        );
        assert_eq!(
            chain(&e),
            "could not reach Creatio: the connection was reset: connection failed: refused: inner cause"
        );
    }
}
