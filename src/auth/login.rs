//! Forms login: `POST {url}/ServiceModel/AuthService.svc/Login`.
//!
//! Creatio answers a login with HTTP 200 whatever the outcome; only a JSON body with
//! `"Code": 0` is a success (reference §1). Everything else is a failure that carries Creatio's
//! own `Message` when there is one: `Code` 1 (wrong password, locked user, expired password
//! with a `PasswordChangeUrl`), an HTML page (the URL is not the application root), a 401/403,
//! or a redirect. The password only ever leaves the process inside the login body.

use std::collections::VecDeque;
use std::time::Duration;

use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;

use super::expiry::is_login_location;
use super::jar::Jar;
use crate::body::ProxyBody;
use crate::config::{Config, CreatioUrl, Secret};
use crate::diagnosis::{network_failure, quoted, Diagnosis, LoginFailure, Server};
use crate::pool::Upstream;

/// Settings every login shares.
#[derive(Clone)]
pub(crate) struct LoginContext {
    /// The connection pool.
    pub(crate) client: Upstream,
    /// Where Creatio is.
    pub(crate) creatio: CreatioUrl,
    /// How long one login may take.
    pub(crate) timeout: Duration,
    /// First back-off.
    pub(crate) backoff: Duration,
    /// Longest back-off.
    pub(crate) backoff_max: Duration,
}

impl std::fmt::Debug for LoginContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginContext")
            .field("creatio", &self.creatio.display)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl LoginContext {
    /// Builds the context from a config and a client.
    pub(crate) fn new(config: &Config, client: Upstream) -> Self {
        LoginContext {
            client,
            creatio: config.creatio.clone(),
            timeout: config.upstream_timeout.min(Duration::from_secs(60)),
            backoff: config.login_backoff,
            backoff_max: config.login_backoff_max,
        }
    }
}

/// Largest login or token answer read (Creatio's is ~150 bytes; an HTML page is cut here).
const MAX_REPLY: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct LoginReply {
    code: Option<i64>,
    message: Option<String>,
    password_change_url: Option<String>,
}

fn fail(diagnosis: Diagnosis, message: impl Into<String>) -> LoginFailure {
    LoginFailure::new(diagnosis, Server::Creatio, message)
}

/// Logs in and returns the session's cookie jar.
pub(super) async fn login(
    ctx: &LoginContext,
    username: &str,
    password: &Secret,
) -> Result<Jar, LoginFailure> {
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
        .map_err(|e| {
            fail(
                Diagnosis::NotAppRoot,
                format!("cannot build the login request for {url}: {e}"),
            )
        })?;

    let target = ctx.creatio.host_port();
    let (parts, bytes) = exchange(&ctx.client, request, ctx.timeout, &target, "creatio.url")
        .await
        .map_err(|(diagnosis, message)| fail(diagnosis, message))?;
    judge(ctx, username, parts, &bytes)
}

/// Sends a request and reads at most [`MAX_REPLY`] of the answer. Network failures come back
/// as a diagnosis and its sentence.
pub(super) async fn exchange(
    client: &Upstream,
    request: Request<ProxyBody>,
    timeout: Duration,
    target: &str,
    key: &str,
) -> Result<(http::response::Parts, Vec<u8>), (Diagnosis, String)> {
    let response = match tokio::time::timeout(timeout, client.request(request)).await {
        Err(_) => {
            return Err((
                Diagnosis::Unreachable,
                format!("{target} did not answer within {timeout:?}: check that it is reachable from here and not overloaded"),
            ))
        }
        Ok(Err(e)) => return Err(network_failure(&e, target, key)),
        Ok(Ok(r)) => r,
    };
    let (parts, body) = response.into_parts();
    let bytes = tokio::time::timeout(timeout, read_limited(body))
        .await
        .map_err(|_| {
            (
                Diagnosis::Unreachable,
                format!("the answer from {target} stalled for {timeout:?}"),
            )
        })?
        .map_err(|e| {
            (
                Diagnosis::Unreachable,
                format!("the answer from {target} broke off: {e}"),
            )
        })?;
    Ok((parts, bytes))
}

/// A redirect's `Location`, safe to quote.
pub(super) fn location_of(headers: &http::HeaderMap) -> String {
    quoted(
        headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?"),
    )
}

/// True when a body starts like HTML.
pub(super) fn looks_html(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'<')
}

pub(crate) fn judge(
    ctx: &LoginContext,
    username: &str,
    parts: http::response::Parts,
    bytes: &[u8],
) -> Result<Jar, LoginFailure> {
    let status = parts.status;
    let root = &ctx.creatio.display;
    let reply: Option<LoginReply> = serde_json::from_slice(bytes).ok();

    if status.is_redirection() {
        let location = location_of(&parts.headers);
        let location = location.as_str();
        let advice = if is_login_location(location) {
            "something in front of Creatio (an SSO gateway or a load balancer) sends API calls to a login page; creatio.url must reach the Creatio application directly".to_string()
        } else {
            match other_origin(location, &ctx.creatio) {
                Some(origin) => format!("Creatio lives elsewhere: try creatio.url = \"{origin}{}\"", ctx.creatio.base_path),
                None => "creatio.url must be the application root that serves ServiceModel/AuthService.svc/Login itself".to_string(),
            }
        };
        return Err(fail(
            Diagnosis::LoginRedirected,
            format!(
                "Creatio answered the login with a redirect (HTTP {}) to {location}: {advice} (creatio.url is {root})",
                status.as_u16()
            ),
        ));
    }
    if !status.is_success() {
        let detail = reply
            .as_ref()
            .and_then(|r| r.message.clone())
            .filter(|m| !m.is_empty())
            .map(|m| format!(" ({})", quoted(&m)))
            .unwrap_or_default();
        let (diagnosis, hint) = match status {
            StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND => (
                Diagnosis::NotAppRoot,
                format!(": creatio.url ({root}) must be the application root, without /0 and without a virtual directory Creatio does not have"),
            ),
            _ => (Diagnosis::LoginRefused, String::new()),
        };
        return Err(fail(
            diagnosis,
            format!(
                "Creatio answered the login with HTTP {}{detail}{hint}",
                status.as_u16()
            ),
        ));
    }
    let Some(reply) = reply else {
        return Err(fail(
            Diagnosis::NotAppRoot,
            if looks_html(bytes) {
                format!("Creatio answered the login with an HTML page instead of JSON: creatio.url ({root}) must be the application root, e.g. https://mycompany.creatio.com")
            } else {
                format!("Creatio answered the login with something that is not JSON: creatio.url ({root}) must be the application root")
            },
        ));
    };
    match reply.code {
        Some(0) => {}
        Some(code) => return Err(refusal(username, code, reply)),
        None => {
            return Err(fail(
                Diagnosis::NotAppRoot,
                format!(
                "the login answer has no Code: creatio.url ({root}) must be the application root"
            ),
            ))
        }
    }
    let mut jar = Jar::default();
    for value in parts.headers.get_all(header::SET_COOKIE) {
        jar.apply(value);
    }
    if jar.get(".ASPXAUTH").is_none() {
        return Err(fail(
            Diagnosis::LoginRefused,
            "Creatio accepted the login but set no .ASPXAUTH cookie; is something between the proxy and Creatio removing cookies?",
        ));
    }
    Ok(jar)
}

/// A `Code` other than 0: Creatio's own message, sorted into the three cases users meet.
fn refusal(username: &str, code: i64, reply: LoginReply) -> LoginFailure {
    let said = reply
        .message
        .filter(|m| !m.is_empty())
        .map(|m| quoted(&m))
        .unwrap_or_else(|| format!("Code {code}"));
    let lower = said.to_ascii_lowercase();
    if reply.password_change_url.is_some_and(|u| !u.is_empty()) {
        return fail(
            Diagnosis::PasswordExpired,
            format!("the password of Creatio user \"{username}\" has expired (Creatio: \"{said}\"): change it in Creatio, then give the proxy the new password; until its config is reloaded the proxy does not try to log in again"),
        );
    }
    // Creatio's English texts; a localised message falls through to the general case, which
    // still quotes it.
    if lower.contains("is locked")
        || lower.contains("locked out")
        || lower.contains("has been locked")
    {
        let window = lock_window(&said);
        let next = match window {
            Some(w) => format!(
                "the proxy does not try to log in again until that lock has passed (in {}) or its config is reloaded",
                humantime::format_duration(w)
            ),
            None => "the proxy does not try to log in again until its config is reloaded (creatio-proxy reload, SIGHUP or POST /reload), so it never extends the lock".to_string(),
        };
        return fail(
            Diagnosis::UserLocked,
            format!("Creatio user \"{username}\" is locked (Creatio: \"{said}\"): unlock it in Creatio (System Designer, System users); {next}"),
        )
        .with_lock_window(window);
    }
    if lower.contains("user name or password") || lower.contains("username or password") {
        return fail(
            Diagnosis::WrongCredentials,
            format!("Creatio refused the login of user \"{username}\" (Creatio: \"{said}\"): check the username and password of this identity (or its _PASSWORD environment variable)"),
        );
    }
    fail(
        Diagnosis::LoginRefused,
        format!("Creatio refused the login of user \"{username}\" (Creatio: \"{said}\"): Creatio's message says why; check the user in Creatio (active, licensed, allowed to log in from here)"),
    )
}

/// Longest lock window believed: a message that seems to name more is still read as a lock,
/// and the proxy tries again after this (once).
const MAX_LOCK_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The time a lock message names ("locked for 15 minutes", "try again in 1 hour"), if it names
/// one: the first number followed by a unit of time.
///
/// Which words Creatio uses is not known (its `UserLockoutDuration` setting sets the time, but
/// the reference has no captured message; the emulator's names none), so this reads any
/// "<number> <unit>" in English, and a message without one stops logins until a reload. A time
/// that is not the lock's ("3 attempts within 10 minutes") costs at most one attempt per that
/// time.
pub(crate) fn lock_window(message: &str) -> Option<Duration> {
    let lower = message.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    for (i, word) in words.iter().enumerate() {
        // "15", then "minutes"; or "15min" in one word.
        let digits = word
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(word.len());
        let Ok(number) = word[..digits].parse::<u64>() else {
            continue;
        };
        let unit = match &word[digits..] {
            "" => words.get(i + 1).copied().unwrap_or_default(),
            rest => rest,
        };
        let seconds = match unit {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86_400,
            _ => continue,
        };
        let window = Duration::from_secs(number.saturating_mul(seconds));
        return (!window.is_zero()).then(|| window.min(MAX_LOCK_WINDOW));
    }
    None
}

/// `scheme://authority` of an absolute `Location` on another origin than Creatio's.
fn other_origin(location: &str, creatio: &CreatioUrl) -> Option<String> {
    let uri: http::Uri = location.parse().ok()?;
    let (scheme, authority) = (uri.scheme_str()?, uri.authority()?);
    let same = scheme.eq_ignore_ascii_case(creatio.scheme.as_str())
        && authority
            .as_str()
            .eq_ignore_ascii_case(creatio.authority.as_str());
    (!same).then(|| format!("{scheme}://{authority}"))
}

async fn read_limited(mut body: crate::body::PeerBody) -> Result<Vec<u8>, crate::body::BodyError> {
    let mut chunks: VecDeque<bytes::Bytes> = VecDeque::new();
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            total += data.len();
            chunks.push_back(data);
            if total >= MAX_REPLY {
                break;
            }
        }
    }
    Ok(crate::body::concat(chunks, total).to_vec())
}

/// Counts a request out of [`super::Identity::renew`]'s waiters however its wait ends.
pub(super) struct Waiting<'a>(pub(super) &'a std::sync::atomic::AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diagnosis_of(message: &str, change_url: Option<&str>) -> Diagnosis {
        let reply = LoginReply {
            code: Some(1),
            message: Some(message.to_string()),
            password_change_url: change_url.map(str::to_string),
        };
        refusal("u", 1, reply).diagnosis
    }

    #[test]
    fn refusals_are_sorted_by_creatios_message() {
        assert_eq!(
            diagnosis_of("Either user name or password specified incorrectly", None),
            Diagnosis::WrongCredentials
        );
        assert_eq!(
            diagnosis_of(
                "The user is locked. Please contact your system administrator",
                None
            ),
            Diagnosis::UserLocked
        );
        assert_eq!(
            diagnosis_of(
                "Password expired",
                Some("/Login/NuiLogin.aspx?pwdExpired=true")
            ),
            Diagnosis::PasswordExpired
        );
        // Not every refusal is a wrong password, and "block" or "clock" is not "locked".
        assert_eq!(
            diagnosis_of("No license available for the user", None),
            Diagnosis::LoginRefused
        );
        assert_eq!(
            diagnosis_of("Login blocked by the clock skew check", None),
            Diagnosis::LoginRefused
        );
    }

    #[test]
    fn a_lock_message_may_name_its_window() {
        let min = |n: u64| Some(Duration::from_secs(n * 60));
        let cases = [
            (
                "The user is locked. Please contact your system administrator",
                None,
            ),
            ("The user is locked for 15 minutes", min(15)),
            (
                "Your account has been locked. Try again in 1 hour.",
                min(60),
            ),
            (
                "User is locked out for 30 sec",
                Some(Duration::from_secs(30)),
            ),
            ("Account locked (5min)", min(5)),
            ("The user is locked for 0 minutes", None),
            ("The user is locked until 2025", None),
            ("The user is locked for 400 days", Some(MAX_LOCK_WINDOW)),
        ];
        for (message, window) in cases {
            assert_eq!(lock_window(message), window, "{message}");
        }
        let reply = LoginReply {
            code: Some(1),
            message: Some("The user is locked for 15 minutes".into()),
            password_change_url: None,
        };
        let failure = refusal("u", 1, reply);
        assert_eq!(failure.diagnosis, Diagnosis::UserLocked);
        assert_eq!(failure.lock_window, min(15));
        assert!(failure.message.contains("in 15m"), "{}", failure.message);
    }
}
