//! What went wrong with a login or a token request: a stable code and one sentence that says
//! what to change.
//!
//! `check`, the proxy's JSON error bodies and its log lines all show the same
//! [`LoginFailure`], so a user sees the same advice wherever they look first.

use crate::pool::{ConnectKind, UpstreamError};

/// The kinds of login and token failures the proxy can tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Diagnosis {
    /// Creatio's `Code` 1 for a wrong user name or password.
    WrongCredentials,
    /// Creatio says the user is locked.
    UserLocked,
    /// The password has expired (`PasswordChangeUrl` in the answer).
    PasswordExpired,
    /// The login was answered with a redirect (a login page, or another host).
    LoginRedirected,
    /// The login URL is not the application root (an HTML page, a 401/404, no `Code`).
    NotAppRoot,
    /// Creatio refused the login for another reason.
    LoginRefused,
    /// `token_url` answered with HTML or a redirect: it is not the Identity Service.
    TokenUrlNotIdentityService,
    /// The Identity Service refused the client (`invalid_client`, `unauthorized_client`, ...).
    ClientRejected,
    /// The token answer is unusable (no `access_token`, not JSON, an error status).
    TokenResponseInvalid,
    /// The host could not be reached (DNS, refused, timed out, broken off).
    Unreachable,
    /// The server's TLS certificate is not trusted.
    Certificate,
}

impl Diagnosis {
    /// The stable code, as the `diagnosis` field of error bodies and log lines.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Diagnosis::WrongCredentials => "wrong_credentials",
            Diagnosis::UserLocked => "user_locked",
            Diagnosis::PasswordExpired => "password_expired",
            Diagnosis::LoginRedirected => "login_redirected",
            Diagnosis::NotAppRoot => "creatio_url_not_app_root",
            Diagnosis::LoginRefused => "login_refused",
            Diagnosis::TokenUrlNotIdentityService => "token_url_not_identity_service",
            Diagnosis::ClientRejected => "oauth_client_rejected",
            Diagnosis::TokenResponseInvalid => "token_response_invalid",
            Diagnosis::Unreachable => "unreachable",
            Diagnosis::Certificate => "tls_certificate_untrusted",
        }
    }

    /// True when Creatio has said the account cannot log in until someone acts (locked, or the
    /// password expired): another attempt cannot succeed before that and, for a lock, may
    /// extend it. The proxy stops logging in for the identity (see [`crate::auth`]).
    pub(crate) fn stops_logins(self) -> bool {
        matches!(self, Diagnosis::UserLocked | Diagnosis::PasswordExpired)
    }
}

/// Which server a failure concerns: Creatio (forms login) or the Identity Service (token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    /// Creatio's `AuthService.svc/Login`.
    Creatio,
    /// The Identity Service's token endpoint.
    IdentityService,
}

/// Why a login or token request failed.
#[derive(Debug, Clone)]
pub(crate) struct LoginFailure {
    /// What kind of failure.
    pub diagnosis: Diagnosis,
    /// Which server.
    pub server: Server,
    /// One sentence: what happened and what to change. Never holds a secret.
    pub message: String,
    /// How long the account stays locked, when Creatio's message named a time.
    pub lock_window: Option<std::time::Duration>,
}

impl LoginFailure {
    /// A failure with its sentence.
    pub(crate) fn new(diagnosis: Diagnosis, server: Server, message: impl Into<String>) -> Self {
        LoginFailure {
            diagnosis,
            server,
            message: message.into(),
            lock_window: None,
        }
    }

    /// The same failure, with the lock window Creatio named.
    pub(crate) fn with_lock_window(mut self, window: Option<std::time::Duration>) -> Self {
        self.lock_window = window;
        self
    }

    /// The `error` code of the JSON answer: what failed, at the level a client acts on.
    pub(crate) fn error_code(&self) -> &'static str {
        match (self.server, self.diagnosis) {
            (Server::Creatio, Diagnosis::Unreachable | Diagnosis::Certificate) => {
                "creatio_unreachable"
            }
            (Server::IdentityService, Diagnosis::Unreachable | Diagnosis::Certificate) => {
                "identity_service_unreachable"
            }
            (Server::Creatio, _) => "creatio_login_failed",
            (Server::IdentityService, _) => "oauth_token_failed",
        }
    }
}

impl std::fmt::Display for LoginFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Text a server sent (a message, a `Location`, an `error_description`), made safe to quote
/// in one log line or JSON string: control characters become spaces, and it is cut at 200
/// characters.
pub(crate) fn quoted(text: &str) -> String {
    const LIMIT: usize = 200;
    let mut out: String = text
        .chars()
        .take(LIMIT)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(LIMIT).is_some() {
        out.push('…');
    }
    out
}

/// The diagnosis and sentence for a request to `target` (host:port) that got no answer.
/// `key` is the config key that names the server (`creatio.url`, `auth.token_url`).
pub(crate) fn network_failure(e: &UpstreamError, target: &str, key: &str) -> (Diagnosis, String) {
    let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
    match e {
        UpstreamError::Connect { kind: ConnectKind::Dns, .. } => (
            Diagnosis::Unreachable,
            format!("cannot resolve the host name {host} (DNS lookup failed for {target}): check the host in {key}, and that this machine's DNS knows it"),
        ),
        UpstreamError::Connect { kind: ConnectKind::Refused, .. } => (
            Diagnosis::Unreachable,
            format!("nothing accepts connections at {target} (connection refused): check the host and port in {key}, and that the server is running"),
        ),
        UpstreamError::Connect { kind: ConnectKind::TimedOut, .. } => (
            Diagnosis::Unreachable,
            format!("no connection to {target} within creatio.connect_timeout: check that {host} is reachable from here (firewall, egress proxy)"),
        ),
        UpstreamError::Connect { kind: ConnectKind::Certificate, detail, .. } => (
            Diagnosis::Certificate,
            format!("the TLS certificate of {target} is not trusted ({detail}): if the server uses a private or corporate CA, give that CA's PEM file as creatio.ca_file"),
        ),
        UpstreamError::Connect { kind: ConnectKind::CertificateName, detail, .. } => (
            Diagnosis::Certificate,
            format!("the TLS certificate of {target} is not valid for the name {host} ({detail}): use in {key} the host name the certificate was issued for"),
        ),
        UpstreamError::Connect { kind: ConnectKind::CertificateExpired, detail, .. } => (
            Diagnosis::Certificate,
            format!("the TLS certificate of {target} has expired or is not valid yet ({detail}): renew it on the server (or check this machine's clock)"),
        ),
        UpstreamError::Connect { kind: ConnectKind::Egress, detail, .. } => (
            Diagnosis::Unreachable,
            format!("could not reach {target} {detail}: check creatio.proxy (or HTTPS_PROXY, HTTP_PROXY and NO_PROXY), the proxy's credentials, and that it allows CONNECT to {target}"),
        ),
        UpstreamError::Connect { kind: ConnectKind::Other, detail, .. } => (
            Diagnosis::Unreachable,
            format!("could not connect to {target}: {detail}"),
        ),
        UpstreamError::Exchange { detail, .. } => (
            Diagnosis::Unreachable,
            format!("the exchange with {target} failed: {detail}"),
        ),
    }
}
