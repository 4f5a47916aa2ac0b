//! OAuth 2.0 client credentials: `POST {token_url}` on the Identity Service (reference §8).
//!
//! The request is a form (`grant_type=client_credentials`, plus `client_id` and
//! `client_secret`, or HTTP Basic with `client_auth = "basic"`); the answer is JSON with
//! `access_token`, `token_type` `Bearer` and `expires_in` (3600 s out of the box). No refresh
//! token exists for this grant: renewing means asking again.
//!
//! The mistakes users make each get their own diagnosis: `token_url` pointing at the Creatio
//! application (which answers its HTML login page or a redirect to it), a refused client (OAuth
//! error JSON), an answer without a token, an unreachable Identity Service. The secret leaves
//! the process only in the token request, and the token only in `Authorization` headers.

use std::time::Duration;

use base64::Engine as _;
use http::{header, HeaderValue, Method, Request, Uri};
use serde::Deserialize;

use super::expiry::{is_html, is_login_location, is_login_page};
use super::login::{exchange, location_of, looks_html};
use crate::body::ProxyBody;
use crate::config::{ClientAuth, CreatioUrl, OAuth2Config};
use crate::diagnosis::{quoted, Diagnosis, LoginFailure, Server};
use crate::pool::Upstream;

/// Lifetime assumed when the answer has no `expires_in`: Creatio's default (reference §8).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// A bearer token, ready to send.
pub(crate) struct Token {
    /// `Bearer <access_token>`, marked sensitive.
    pub authorization: HeaderValue,
    /// `expires_in`.
    pub lifetime: Duration,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    error: Option<String>,
    error_description: Option<String>,
}

fn fail(diagnosis: Diagnosis, message: impl Into<String>) -> LoginFailure {
    LoginFailure::new(diagnosis, Server::IdentityService, message)
}

/// The `Uri` of the token endpoint's origin, for its connection pool.
pub(crate) fn origin(config: &OAuth2Config) -> Option<Uri> {
    Uri::builder()
        .scheme(config.token_url.scheme.clone())
        .authority(config.token_url.authority.clone())
        .path_and_query("/")
        .build()
        .ok()
}

/// Asks the Identity Service for a token.
pub(super) async fn fetch(
    client: &Upstream,
    config: &OAuth2Config,
    creatio: &CreatioUrl,
    timeout: Duration,
) -> Result<Token, LoginFailure> {
    let mut fields = vec![("grant_type", "client_credentials")];
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(config.token_url.path_and_query.as_str())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json");
    match config.client_auth {
        ClientAuth::Form => {
            fields.push(("client_id", &config.client_id));
            fields.push(("client_secret", config.client_secret.expose()));
        }
        ClientAuth::Basic => {
            // RFC 6749 §2.3.1: both parts are form-encoded before they are joined.
            let pair = format!(
                "{}:{}",
                form_urlencoded::byte_serialize(config.client_id.as_bytes()).collect::<String>(),
                form_urlencoded::byte_serialize(config.client_secret.expose().as_bytes())
                    .collect::<String>()
            );
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
            let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| {
                fail(
                    Diagnosis::ClientRejected,
                    "the client id or secret cannot be sent in a header",
                )
            })?;
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
    }
    let request = request
        .body(ProxyBody::full(form_body(&fields)))
        .map_err(|e| {
            fail(
                Diagnosis::TokenResponseInvalid,
                format!("cannot build the token request: {e}"),
            )
        })?;
    let target = config.token_url.host_port();
    let (parts, bytes) = exchange(client, request, timeout, &target, "token_url")
        .await
        .map_err(|(diagnosis, message)| fail(diagnosis, message))?;
    judge(config, creatio, parts, &bytes)
}

/// `application/x-www-form-urlencoded` text of `fields`. (The serializer is not `Send`, so it
/// must not live across an await.)
fn form_body(fields: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish()
}

pub(crate) fn judge(
    config: &OAuth2Config,
    creatio: &CreatioUrl,
    parts: http::response::Parts,
    bytes: &[u8],
) -> Result<Token, LoginFailure> {
    let url = &config.token_url.display;
    let status = parts.status;
    let not_is = "token_url must be the Identity Service's token endpoint (usually https://<name>-is.creatio.com/connect/token), not the Creatio application";
    let same_host = if config
        .token_url
        .authority
        .host()
        .eq_ignore_ascii_case(creatio.authority.host())
    {
        " (token_url has the same host as creatio.url)"
    } else {
        ""
    };

    if status.is_redirection() {
        let location = location_of(&parts.headers);
        let location = location.as_str();
        if is_login_location(location) {
            return Err(fail(
                Diagnosis::TokenUrlNotIdentityService,
                format!("token_url ({url}) answered with a redirect to Creatio's login page ({location}) instead of a token: {not_is}{same_host}"),
            ));
        }
        return Err(fail(
            Diagnosis::TokenResponseInvalid,
            format!(
                "token_url ({url}) answered with a redirect (HTTP {}) to {location}: give the final token endpoint URL as token_url",
                status.as_u16()
            ),
        ));
    }
    if is_html(&parts.headers) || looks_html(bytes) {
        // A login page, or any HTML page served as a success, is not an Identity Service. An
        // HTML error page (a 502 from a gateway in front of a healthy URL) is a failure of
        // that server, and must not send the user off to change a correct token_url.
        let login_page = is_login_page(bytes);
        if login_page || status.is_success() {
            let what = if login_page {
                "Creatio's HTML login page"
            } else {
                "an HTML page"
            };
            return Err(fail(
                Diagnosis::TokenUrlNotIdentityService,
                format!("token_url ({url}) answered with {what} instead of a token: {not_is}{same_host}"),
            ));
        }
        return Err(fail(
            Diagnosis::TokenResponseInvalid,
            format!(
                "token_url ({url}) answered HTTP {} with an HTML error page: the Identity Service, or a gateway in front of it, is failing",
                status.as_u16()
            ),
        ));
    }
    let reply: Option<TokenReply> = serde_json::from_slice(bytes).ok();
    if let Some(error) = reply.as_ref().and_then(|r| r.error.as_deref()) {
        let described = reply
            .as_ref()
            .and_then(|r| r.error_description.as_deref())
            .filter(|d| !d.is_empty())
            .map(|d| format!(" ({})", quoted(d)))
            .unwrap_or_default();
        let error = quoted(error);
        let (diagnosis, advice) = match error.as_str() {
            "invalid_client" => (Diagnosis::ClientRejected, "check client_id and client_secret against the OAuth integrated application in Creatio (System Designer, OAuth 2.0 integrated applications)"),
            "unauthorized_client" => (Diagnosis::ClientRejected, "allow the client credentials grant for this integrated application in Creatio"),
            "unsupported_grant_type" => (Diagnosis::TokenResponseInvalid, "token_url must be a token endpoint that supports the client_credentials grant"),
            _ => (Diagnosis::TokenResponseInvalid, "see the Identity Service's log"),
        };
        let verb = if diagnosis == Diagnosis::ClientRejected {
            "refused client"
        } else {
            "answered the token request of client"
        };
        return Err(fail(
            diagnosis,
            format!(
                "the Identity Service {verb} \"{}\" with {error}{described} (HTTP {}): {advice}",
                config.client_id,
                status.as_u16()
            ),
        ));
    }
    if !status.is_success() {
        return Err(fail(
            Diagnosis::TokenResponseInvalid,
            format!(
                "token_url ({url}) answered HTTP {} without a token: check that the Identity Service is healthy and that token_url ends with /connect/token",
                status.as_u16()
            ),
        ));
    }
    let Some(reply) = reply else {
        return Err(fail(
            Diagnosis::TokenResponseInvalid,
            format!("token_url ({url}) answered with something that is not JSON: token_url must be the Identity Service's token endpoint"),
        ));
    };
    let Some(access) = reply.access_token.filter(|t| !t.is_empty()) else {
        return Err(fail(
            Diagnosis::TokenResponseInvalid,
            format!("token_url ({url}) answered HTTP {} without an access_token: token_url must be the token endpoint (…/connect/token) of the Identity Service", status.as_u16()),
        ));
    };
    if let Some(kind) = reply
        .token_type
        .as_deref()
        .filter(|t| !t.eq_ignore_ascii_case("bearer"))
    {
        return Err(fail(
            Diagnosis::TokenResponseInvalid,
            format!(
                "the Identity Service issued a token of type \"{}\"; Creatio takes Bearer tokens",
                quoted(kind)
            ),
        ));
    }
    let lifetime = match &reply.expires_in {
        None => DEFAULT_LIFETIME,
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64))
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .map(Duration::from_secs)
            .ok_or_else(|| {
                fail(
                    Diagnosis::TokenResponseInvalid,
                    format!("token_url ({url}) answered with an expires_in that is not a number of seconds"),
                )
            })?,
    };
    let mut authorization = HeaderValue::from_str(&format!("Bearer {access}")).map_err(|_| {
        fail(
            Diagnosis::TokenResponseInvalid,
            format!("token_url ({url}) issued an access_token that cannot be sent in a header"),
        )
    })?;
    authorization.set_sensitive(true);
    Ok(Token {
        authorization,
        lifetime,
    })
}

/// When a token of `lifetime`, asked for at `started`, is renewed and when it stops being
/// sent. Renewal starts a fifth of the lifetime before expiry, at most 60 s before; the token
/// is not sent in its last tenth (at most 5 s), so that it never arrives expired.
pub(crate) fn token_schedule(
    started: tokio::time::Instant,
    lifetime: Duration,
) -> (tokio::time::Instant, tokio::time::Instant) {
    // An absurd `expires_in` must not overflow the clock; a token is renewed at least monthly.
    let lifetime = lifetime.clamp(Duration::from_secs(1), MAX_TOKEN_LIFETIME);
    let lead = (lifetime / 5).min(Duration::from_secs(60));
    let margin = (lifetime / 10).min(Duration::from_secs(5));
    (started + (lifetime - lead), started + (lifetime - margin))
}

/// Longest token lifetime believed.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> (OAuth2Config, CreatioUrl) {
        let c = crate::config::Config::from_toml_str(
            "[creatio]\nurl = \"https://crm.example.com\"\n[auth]\nmode = \"oauth2\"\ntoken_url = \"https://crm-is.example.com/connect/token\"\nclient_id = \"c\"\nclient_secret = \"s\"\n",
        )
        .expect("config");
        let crate::config::LoginConfig::OAuth2(o) = c.identities[0].login.clone() else {
            panic!("oauth2")
        };
        (o, c.creatio)
    }

    fn judged(status: u16, content_type: &str, body: &str) -> Result<Token, LoginFailure> {
        let (o, creatio) = config();
        let (parts, ()) = http::Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(())
            .expect("response")
            .into_parts();
        judge(&o, &creatio, parts, body.as_bytes())
    }

    #[test]
    fn answers_are_sorted_into_their_diagnoses() {
        let diagnosis = |status, ct, body| judged(status, ct, body).err().map(|f| f.diagnosis);
        let html = "text/html; charset=utf-8";
        let json = "application/json";
        assert_eq!(
            diagnosis(200, html, "<html><form id=\"IndexForm\" action=\"./NuiLogin.aspx?ReturnUrl=%2fconnect%2ftoken\">"),
            Some(Diagnosis::TokenUrlNotIdentityService)
        );
        // A gateway's error page in front of a correct token_url is not "the wrong URL".
        assert_eq!(
            diagnosis(502, html, "<html><body>502 Bad Gateway</body></html>"),
            Some(Diagnosis::TokenResponseInvalid)
        );
        assert_eq!(
            diagnosis(400, json, r#"{"error":"invalid_client"}"#),
            Some(Diagnosis::ClientRejected)
        );
        assert_eq!(
            diagnosis(503, json, r#"{"error":"temporarily_unavailable"}"#),
            Some(Diagnosis::TokenResponseInvalid)
        );
        assert_eq!(
            diagnosis(200, json, r#"{"token_type":"Bearer"}"#),
            Some(Diagnosis::TokenResponseInvalid)
        );
        let ok = judged(200, json, r#"{"access_token":"abc","expires_in":3600.0}"#).expect("token");
        assert_eq!(ok.lifetime, Duration::from_secs(3600));
        assert!(ok.authorization.is_sensitive());
    }

    #[test]
    fn server_text_is_quoted_on_one_short_line() {
        let f = judged(
            400,
            "application/json",
            &format!(
                r#"{{"error":"invalid_client","error_description":"a\nforged line {}"}}"#,
                "x".repeat(500)
            ),
        )
        .err()
        .expect("refused");
        assert!(!f.message.contains('\n'));
        assert!(f.message.len() < 700, "{}", f.message.len());
    }

    #[test]
    fn an_absurd_lifetime_does_not_overflow_the_clock() {
        let now = tokio::time::Instant::now();
        let (refresh, expiry) = crate::auth::token_schedule(now, Duration::from_secs(u64::MAX));
        assert!(now < refresh && refresh < expiry);
        let (refresh, expiry) = crate::auth::token_schedule(now, Duration::from_secs(3600));
        assert_eq!(refresh - now, Duration::from_secs(3540));
        assert_eq!(expiry - now, Duration::from_secs(3595));
    }
}
