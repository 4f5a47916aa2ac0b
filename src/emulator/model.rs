//! What the emulator is configured with, and what it records: options, accounts, the
//! requests it saw, and the checksum used for transferred bytes.

use std::time::Duration;

/// FNV-1a 64-bit offset basis: the starting `state` for [`fnv1a64`].
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Continues an FNV-1a 64 hash from `state` over `bytes`.
///
/// Start with [`FNV_OFFSET`]. Feeding the chunks of a stream one by one gives the same result
/// as hashing the whole stream at once, so uploads are checked without buffering them.
pub fn fnv1a64(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// Byte `i` of the stream `GET /0/rest/FileService/Download?size=N` sends.
///
/// The period, 251, is prime, so a misplaced or repeated 64 KiB chunk changes the bytes.
pub fn download_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Which Creatio runtime to imitate where the two differ on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// Creatio on .NET Framework/IIS. Logging in at `/0/ServiceModel/AuthService.svc/Login`
    /// gets 401, and unauthenticated pages redirect to `/Login/NuiLogin.aspx`.
    NetFramework,
    /// Creatio on .NET 6/8. `/0/...` login is an alias of the root login, and
    /// unauthenticated pages redirect to `/Login/Login.html`.
    NetCore,
}

/// What a non-`.svc` path under `/0` answers when it has no valid session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExpiredResponse {
    /// 302 to the login page with `ReturnUrl`, and an ASP.NET "Object moved" body.
    Redirect,
    /// 200 with the login page HTML, as a client sees after following the redirect.
    LoginPage,
    /// 401 with an empty body.
    Unauthorized,
}

/// A Creatio account known to the emulator.
#[derive(Clone, Debug)]
pub struct User {
    /// Login name. Names match case-insensitively, as in Creatio.
    pub name: String,
    /// Password. It must match exactly.
    pub password: String,
    /// A self-service portal user: `UserType` "SSP", who may only use `/0/ssp/...`.
    pub portal: bool,
    /// The right password still fails, with a `PasswordChangeUrl`.
    pub password_expired: bool,
}

impl User {
    /// An employee (`UserType` "General").
    pub fn employee(name: &str, password: &str) -> User {
        User {
            name: name.to_owned(),
            password: password.to_owned(),
            portal: false,
            password_expired: false,
        }
    }

    /// A self-service portal user (`UserType` "SSP").
    pub fn portal(name: &str, password: &str) -> User {
        User {
            portal: true,
            ..User::employee(name, password)
        }
    }
}

/// An OAuth 2.0 client registered in the emulator's Identity Service.
#[derive(Clone, Debug)]
pub struct OAuthClient {
    /// The client id. It matches exactly.
    pub client_id: String,
    /// The client secret. It must match exactly.
    pub client_secret: String,
    /// The Creatio user whose rights the client's tokens carry (must be in `users`). Tokens
    /// of a client whose user is not an account are still issued, but the app refuses them.
    pub user: String,
    /// Whether the client may use the client_credentials grant (false → unauthorized_client).
    pub client_credentials: bool,
}

impl OAuthClient {
    /// A client allowed the client_credentials grant, acting as `user`.
    pub fn new(client_id: &str, client_secret: &str, user: &str) -> OAuthClient {
        OAuthClient {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            user: user.to_owned(),
            client_credentials: true,
        }
    }
}

/// A fault the Identity Service can be told to produce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenFault {
    /// A request that would get a token gets HTTP 200 with `token_type` and `expires_in`
    /// but no `access_token`. No token is issued.
    NoAccessToken,
}

/// How to start an [`Emulator`].
#[derive(Clone, Debug)]
pub struct EmulatorOptions {
    /// Runtime to imitate. Default: [`Flavour::NetFramework`].
    pub flavour: Flavour,
    /// Virtual directory such as `/CreatioWebApp`, or `""` (default) for the site root.
    /// Every path lives under it. A trailing `/` is ignored.
    pub base_path: String,
    /// Accounts. Default: `Supervisor`/`Supervisor` (employee) and
    /// `portal.user`/`portal-pass` (portal).
    pub users: Vec<User>,
    /// Lifetime of a forms ticket, which slides. Default: 20 minutes.
    pub session_timeout: Duration,
    /// Answer for a non-`.svc` path without a valid session. Default: [`ExpiredResponse::Redirect`].
    pub expired_response: ExpiredResponse,
    /// Lock an account after this many failed logins in a row. `None` never locks.
    /// Default: `Some(5)`.
    pub lockout_after: Option<u32>,
    /// Clients of the Identity Service. Default: `integration-client`/`integration-secret`
    /// acting as `Supervisor`, and `portal-client`/`portal-secret` acting as `portal.user`.
    pub oauth_clients: Vec<OAuthClient>,
    /// Lifetime of the access tokens the Identity Service issues. Default: 3600 s, the
    /// out-of-the-box `AccessTokenLifetime` (§8).
    pub token_lifetime: Duration,
    /// When set, every request to the app listener (login included, whatever the path) is
    /// answered with a 302 to this location and an "Object moved" body. The Identity Service
    /// is not affected. Default: `None`.
    pub front_redirect: Option<String>,
    /// Creatio's system setting "AllowOnlyOneSessionPerUser": a successful forms login ends
    /// every other forms session of the same user, so their tickets get the expired answer.
    /// Bearer tokens are not sessions and stay valid. Can be changed at run time with
    /// [`Emulator::set_one_session_per_user`](super::Emulator::set_one_session_per_user).
    /// Default: false.
    pub one_session_per_user: bool,
}

impl Default for EmulatorOptions {
    fn default() -> Self {
        EmulatorOptions {
            flavour: Flavour::NetFramework,
            base_path: String::new(),
            users: vec![
                User::employee("Supervisor", "Supervisor"),
                User::portal("portal.user", "portal-pass"),
            ],
            session_timeout: Duration::from_secs(20 * 60),
            expired_response: ExpiredResponse::Redirect,
            lockout_after: Some(5),
            oauth_clients: vec![
                OAuthClient::new("integration-client", "integration-secret", "Supervisor"),
                OAuthClient::new("portal-client", "portal-secret", "portal.user"),
            ],
            token_lifetime: Duration::from_secs(3600),
            front_redirect: None,
            one_session_per_user: false,
        }
    }
}

/// One request the emulator received, as returned by [`Emulator::seen`].
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// Request method.
    pub method: http::Method,
    /// Path as the application saw it, base path included, without the query: decoded as
    /// IIS decodes it (see `wire::cooked_path`).
    pub path: String,
    /// Path as received on the wire.
    pub raw_path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// All request headers as received.
    pub headers: http::HeaderMap,
    /// The user whose session or bearer token authenticated the request. `None` for
    /// anonymous requests, refused requests and login POSTs, which carry no session.
    pub user: Option<String>,
    /// Status code of the answer.
    pub status: u16,
}

/// Summary of a `PUT /0/odata/<Entity>(<id>)/Data` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Upload {
    /// Number of body bytes received.
    pub len: u64,
    /// [`fnv1a64`] of the body, starting from [`FNV_OFFSET`].
    pub fnv1a64: u64,
}
