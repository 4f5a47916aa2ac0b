//! Entry points for the fuzz targets in `fuzz/` (and for `tests/fuzz_regressions.rs`, which
//! replays their seeds and every crash they found). Not an API: each function takes the
//! fuzzer's bytes, drives one internal piece with them, and panics when an invariant breaks,
//! which is what a fuzzer reports.
//!
//! The invariants, per target:
//! - [`canonical_path`]: the canonical form is a fixed point (parsing its encoding or its text
//!   gives it back), has no dot segment, `//`, `%` or `\`; the request fast path agrees with the
//!   parser; the /ssp rewrite is idempotent, reversible, keeps the route key and stays canonical.
//! - [`route_table`]: the longest matching prefix wins and is the only one of its length; the
//!   /ssp rewrite, its removal and a case change never move a path to another route.
//! - [`cookie_jar`]: a forwarded answer never adds or removes a cookie; the `Cookie` line can
//!   always be built and names only cookies the jar holds; `BPMCSRF` follows its cookie.
//! - [`login_answer`], [`token_answer`]: a success only from a 2xx JSON answer (with
//!   `.ASPXAUTH`, or a sendable `Bearer` token); a failure is one short line without control
//!   characters, whatever the server sent.
//! - [`config`]: an accepted config has canonical, distinct route prefixes and identity
//!   indices in range; a refused one says which key.
//! - [`request_head`]: raw bytes on a TCP connection to a proxy in front of the emulator;
//!   see [`request_head`].
//! - [`answer`]: raw bytes as Creatio's answer to the proxy's own HTTP/1.1 client; see
//!   [`answer`].

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::auth::jar::{Jar, BPMCSRF};
use crate::auth::{login, token, LoginContext};
use crate::canonical::{route_key, starts_with_segments, CanonicalPath};
use crate::config::{Config, LoginConfig, OAuth2Config};
use crate::routes::{apply_ssp, has_ssp, remove_ssp, RouteTable};

/// Longest failure sentence accepted: quoted server text is cut at 200 characters, and a
/// sentence quotes at most two such texts.
const MAX_SENTENCE_CHARS: usize = 1500;

/// The text of a fuzz input: paths, header values and configs are text by the time the
/// proxy sees them, so bytes that are not UTF-8 are read lossily rather than thrown away.
fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Canonical path parsing, the route key, and the /ssp rewrite.
pub fn canonical_path(data: &[u8]) {
    let raw = text(data);
    let raw = raw.as_ref();
    if let Ok(uri) = raw.parse::<http::Uri>() {
        assert_eq!(
            CanonicalPath::of_request(&uri),
            CanonicalPath::parse(uri.path()),
            "the request fast path and the parser disagree on {raw:?}"
        );
    }
    let Ok(path) = CanonicalPath::parse(raw) else {
        return;
    };
    check_canonical(&path, raw);
    check_ssp(path.as_str());
}

fn check_canonical(path: &CanonicalPath, raw: &str) {
    let text = path.as_str();
    assert_eq!(
        CanonicalPath::parse(&path.encoded()).as_ref(),
        Ok(path),
        "{raw:?}: its encoding is not canonical"
    );
    assert_eq!(
        CanonicalPath::parse(text).as_ref(),
        Ok(path),
        "{raw:?}: its text is not canonical"
    );
    assert!(text.starts_with('/'), "{raw:?} -> {text:?}");
    assert!(
        !text.contains("//") && !text.contains('%') && !text.contains('\\'),
        "{raw:?} -> {text:?}"
    );
    for segment in text.split('/').filter(|s| !s.is_empty()) {
        assert!(
            segment != "." && segment != ".." && !segment.contains(';'),
            "{raw:?} -> {text:?}"
        );
        assert!(
            !segment.ends_with(['.', ' ']) && !segment.starts_with('('),
            "{raw:?} -> {text:?}"
        );
    }
    assert!(
        path.encoded().bytes().all(|b| b.is_ascii_graphic()),
        "{raw:?}: the forwarded spelling {:?} is not plain ASCII",
        path.encoded()
    );
    if path.is_spelled(raw) {
        assert_eq!(text, raw, "is_spelled but not the same text");
    }
    let key = route_key(text);
    assert!(
        key.starts_with('/') && (key == "/" || text.ends_with(key)),
        "{text:?}: route key {key:?}"
    );
}

/// The /ssp rule on a canonical path: applying it twice adds nothing, removing it gives the
/// path back, the route key is the same, and the result is still canonical.
fn check_ssp(path: &str) {
    let rewritten = apply_ssp(path);
    assert!(has_ssp(&rewritten), "{path:?} -> {rewritten:?} has no /ssp");
    assert_eq!(
        apply_ssp(&rewritten),
        rewritten,
        "{path:?}: a second /ssp was added"
    );
    assert_eq!(
        has_ssp(path),
        matches!(rewritten, std::borrow::Cow::Borrowed(_)),
        "{path:?}: has_ssp and apply_ssp disagree"
    );
    if !has_ssp(path) {
        assert_eq!(remove_ssp(&rewritten), path, "remove_ssp does not undo it");
    }
    assert_eq!(
        route_key(&rewritten),
        route_key(path),
        "{path:?} -> {rewritten:?} changes the route key"
    );
    assert_eq!(
        CanonicalPath::parse(&rewritten).map(|p| p.as_str().to_string()),
        Ok(rewritten.to_string()),
        "{path:?} -> {rewritten:?} is not canonical"
    );
}

/// A TOML basic string holding `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Route matching. The input is lines: each but the last a route prefix (a leading `!` makes
/// it an ssp route), the last a request path. The prefixes go through the config's own
/// validation, as a user's would.
pub fn route_table(data: &[u8]) {
    let input = text(data);
    let mut lines: Vec<&str> = input.split('\n').collect();
    let Some(path) = lines.pop() else {
        return;
    };
    let mut toml = String::from(
        "[creatio]\nurl = \"http://127.0.0.1:1\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n\
         [identities.portal]\nusername = \"pu\"\npassword = \"pp\"\n",
    );
    for line in lines.iter().take(16) {
        let (ssp, prefix) = match line.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, *line),
        };
        // An ssp route for the portal user; the others for the default identity.
        toml.push_str(&format!(
            "[[routes]]\nprefix = {}\nssp = {ssp}\n{}",
            toml_string(prefix),
            if ssp { "identity = \"portal\"\n" } else { "" }
        ));
    }
    let Ok(config) = Config::from_toml_str(&toml) else {
        return;
    };
    let table = RouteTable::new(&config);
    let Ok(path) = CanonicalPath::parse(path) else {
        return;
    };
    let decided = table.decide(&path);
    let key = route_key(path.as_str());
    let matching: Vec<usize> = config
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| starts_with_segments(key, route_key(&r.prefix)))
        .map(|(i, _)| i)
        .collect();
    let longest = matching
        .iter()
        .map(|&i| route_key(&config.routes[i].prefix).len())
        .max();
    match (decided.and_then(|d| d.route), longest) {
        (Some(r), Some(len)) => {
            assert!(matching.contains(&r), "{path:?}: route {r} does not match");
            assert_eq!(
                route_key(&config.routes[r].prefix).len(),
                len,
                "{path:?}: route {r} is not the longest match"
            );
            let ties = matching
                .iter()
                .filter(|&&i| route_key(&config.routes[i].prefix).len() == len)
                .count();
            assert_eq!(ties, 1, "{path:?}: {ties} routes match at the same length");
        }
        (None, None) => {}
        (got, want) => panic!("{path:?}: decided {got:?}, the longest match is {want:?}"),
    }
    // What the proxy forwards must stay on the route, in any case. (A Location pointing back
    // loses the segment the rewrite inserted, which gives the path itself: `check_ssp`.)
    let mut spellings = vec![apply_ssp(path.as_str()).into_owned()];
    spellings.push(path.as_str().to_ascii_uppercase());
    spellings.push(path.as_str().to_ascii_lowercase());
    for spelling in spellings {
        let Ok(again) = CanonicalPath::parse(&spelling) else {
            panic!("{path:?}: {spelling:?} has no canonical form");
        };
        assert_eq!(
            table.decide(&again),
            decided,
            "{path:?} and {spelling:?} take different routes"
        );
    }
}

/// `Set-Cookie` merging. The input is lines; the first byte of each says what it is: `F` an
/// answer to a forwarded request, `U` a "does this change the user" question, anything else
/// a `Set-Cookie` of the proxy's own login. The rest of the line is the header value.
pub fn cookie_jar(data: &[u8]) {
    let mut jar = Jar::default();
    for line in data.split(|b| *b == b'\n').take(64) {
        let Some((&op, value)) = line.split_first() else {
            continue;
        };
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let before = jar.cookie_header();
        match op {
            b'F' => {
                let changed = jar.apply_forwarded(&value);
                let after = jar.cookie_header();
                assert_eq!(
                    names(before.as_ref()),
                    names(after.as_ref()),
                    "a forwarded answer added or removed a cookie: {value:?}"
                );
                if !changed {
                    assert_eq!(before, after, "unchanged, yet the Cookie line moved");
                }
            }
            b'U' => {
                let _ = jar.changes_user([&value]);
                assert!(!jar.changes_user(std::iter::empty::<&HeaderValue>()));
            }
            _ => {
                let changed = jar.apply(&value);
                let after = jar.cookie_header();
                if !changed {
                    assert_eq!(before, after, "unchanged, yet the Cookie line moved");
                }
            }
        }
        check_jar(&jar);
    }
}

/// The cookie names of a `Cookie` line, in order.
fn names(line: Option<&HeaderValue>) -> Vec<String> {
    let Some(line) = line.and_then(|l| l.to_str().ok()) else {
        return Vec::new();
    };
    line.split("; ")
        .map(|pair| pair.split_once('=').map_or(pair, |(n, _)| n).to_string())
        .collect()
}

fn check_jar(jar: &Jar) {
    let line = jar.cookie_header();
    if let Some(line) = &line {
        assert!(line.is_sensitive(), "the Cookie line is not sensitive");
        for name in names(Some(line)) {
            assert!(
                jar.get(&name).is_some(),
                "the Cookie line names {name:?}, which the jar does not hold"
            );
        }
    }
    let csrf = jar.csrf_header();
    assert_eq!(
        csrf.as_ref().and_then(|v| v.to_str().ok()),
        jar.get(BPMCSRF),
        "the BPMCSRF header does not follow its cookie"
    );
    if jar.get(BPMCSRF).is_some() || jar.get(".ASPXAUTH").is_some() {
        assert!(
            line.is_some(),
            "the jar holds cookies but has no Cookie line"
        );
    }
}

/// An answer as the login and token parsers get it. The input is text: a status line (a
/// number; anything else is 200), header lines (`name: value`), an empty line, the body.
fn split_answer(data: &[u8]) -> (http::response::Parts, &[u8]) {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let status = lines
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .and_then(|l| l.trim().parse::<u16>().ok())
        .and_then(|n| StatusCode::from_u16(n).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = &line[colon + 1..];
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    (response.into_parts().0, body)
}

/// One line, no control characters, bounded: server text must not forge log lines.
fn check_sentence(message: &str) {
    assert!(
        !message.chars().any(char::is_control),
        "a control character in {message:?}"
    );
    let chars = message.chars().count();
    assert!(
        chars <= MAX_SENTENCE_CHARS,
        "{chars} characters: {message:?}"
    );
}

/// The parts the answer parsers need, built once.
struct Parsers {
    login: LoginContext,
    oauth2: OAuth2Config,
    creatio: crate::config::CreatioUrl,
}

fn parsers() -> &'static Parsers {
    static PARSERS: OnceLock<Parsers> = OnceLock::new();
    PARSERS.get_or_init(|| {
        let config = Config::from_toml_str(
            "[creatio]\nurl = \"https://crm.example.com\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n\
             [identities.api]\nmode = \"oauth2\"\ntoken_url = \"https://crm-is.example.com/connect/token\"\n\
             client_id = \"c\"\nclient_secret = \"s\"\n",
        )
        .unwrap_or_else(|e| panic!("the parsers' config: {e}"));
        let client = crate::upstream::build_upstream(&config)
            .unwrap_or_else(|e| panic!("the parsers' client: {e}"));
        let oauth2 = config
            .identities
            .iter()
            .find_map(|i| match &i.login {
                LoginConfig::OAuth2(o) => Some(o.clone()),
                LoginConfig::Forms { .. } => None,
            })
            .unwrap_or_else(|| panic!("the parsers' config has an oauth2 identity"));
        Parsers {
            login: LoginContext::new(&config, client),
            oauth2,
            creatio: config.creatio.clone(),
        }
    })
}

/// The forms login answer parser (and the expiry verdict on the same answer).
pub fn login_answer(data: &[u8]) {
    let (parts, body) = split_answer(data);
    let status = parts.status;
    let _ = crate::auth::expiry::classify(status, &parts.headers);
    let _ = crate::auth::expiry::login_page_markers(body);
    // Read leniently, as serde reads the fields it skips: bytes that are not UTF-8 inside a
    // string Creatio's answer does not use do not make it another answer.
    let code = serde_json::from_str::<serde_json::Value>(&String::from_utf8_lossy(body))
        .ok()
        .and_then(|v| v.get("Code").and_then(serde_json::Value::as_i64));
    match login::judge(&parsers().login, "u", parts, body) {
        Ok(jar) => {
            assert!(status.is_success(), "a login accepted with HTTP {status}");
            assert_eq!(code, Some(0), "a login accepted without Code 0");
            assert!(
                jar.get(".ASPXAUTH").is_some(),
                "a session without .ASPXAUTH"
            );
            check_jar(&jar);
        }
        Err(failure) => check_sentence(&failure.message),
    }
}

/// The OAuth 2.0 token answer parser.
pub fn token_answer(data: &[u8]) {
    let (parts, body) = split_answer(data);
    let status = parts.status;
    let p = parsers();
    match token::judge(&p.oauth2, &p.creatio, parts, body) {
        Ok(t) => {
            assert!(status.is_success(), "a token accepted with HTTP {status}");
            assert!(t.authorization.is_sensitive(), "the token is not sensitive");
            assert!(
                t.authorization.as_bytes().starts_with(b"Bearer ")
                    && t.authorization.len() > "Bearer ".len(),
                "not a bearer token"
            );
            let now = tokio::time::Instant::now();
            let (refresh, expiry) = crate::auth::token_schedule(now, t.lifetime);
            assert!(now < refresh && refresh <= expiry, "{:?}", t.lifetime);
        }
        Err(failure) => check_sentence(&failure.message),
    }
}

/// Config parsing and validation.
pub fn config(data: &[u8]) {
    let toml = text(data);
    let config = match Config::from_toml_str(&toml) {
        Ok(config) => config,
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an empty config error");
            return;
        }
    };
    let _ = format!("{config:?}");
    let serves_unmatched = config.unmatched == crate::config::Unmatched::Forward;
    assert!(
        !config.routes.is_empty() || serves_unmatched,
        "an accepted config that serves no path"
    );
    if serves_unmatched {
        assert!(
            config.default_identity.is_some(),
            "unmatched paths without an identity"
        );
    }
    assert!(!config.identities.is_empty(), "a config without identities");
    if let Some(d) = config.default_identity {
        assert!(
            d < config.identities.len(),
            "default identity {d} out of range"
        );
    }
    for (i, route) in config.routes.iter().enumerate() {
        assert!(
            route.identity < config.identities.len(),
            "route {i}: identity out of range"
        );
        let canonical = CanonicalPath::parse(&route.prefix)
            .unwrap_or_else(|e| panic!("route {i}: prefix {:?}: {e}", route.prefix));
        assert_eq!(canonical.as_str(), route.prefix, "route {i}: not canonical");
        for other in &config.routes[..i] {
            assert!(
                !route_key(&other.prefix).eq_ignore_ascii_case(route_key(&route.prefix)),
                "{:?} and {:?} are one prefix",
                other.prefix,
                route.prefix
            );
        }
    }
    let table = RouteTable::new(&config);
    if let Ok(root) = CanonicalPath::parse("/") {
        let _ = table.decide(&root);
    }
}

/// The proxy and the emulator the request heads are sent to, on one runtime.
struct Rig {
    runtime: tokio::runtime::Runtime,
    emulator: crate::emulator::Emulator,
    proxy: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// How many of the emulator's seen requests were checked already.
    checked: usize,
}

/// Requests a rig may see before a new one replaces it (so that reading what the emulator
/// saw stays cheap).
const RIG_REQUESTS: usize = 2000;

/// The portal route of the rig: its requests carry `portal.user`'s session.
const RIG_PORTAL_PREFIX: &str = "/0/rest/UsrPortalService";

impl Rig {
    fn start() -> Rig {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a runtime: {e}"));
        let local = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let (emulator, proxy, stop) = runtime.block_on(async {
            let emulator = crate::emulator::Emulator::start(Default::default(), local)
                .await
                .unwrap_or_else(|e| panic!("the emulator starts: {e}"));
            let config = Config::from_toml_str(&format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"1s\"\nupstream_timeout = \"5s\"\n\
                 [creatio]\nurl = \"{}\"\n\
                 [auth]\nusername = \"Supervisor\"\npassword = \"Supervisor\"\n\
                 [[routes]]\nprefix = \"{RIG_PORTAL_PREFIX}\"\nssp = true\nidentity = \"portal\"\n\
                 [identities.portal]\nusername = \"portal.user\"\npassword = \"portal-pass\"\n",
                emulator.url()
            ))
            .unwrap_or_else(|e| panic!("the rig's config: {e}"));
            let server = crate::server::Server::bind(&config)
                .await
                .unwrap_or_else(|e| panic!("the proxy binds: {e}"));
            let addr = server
                .local_addr()
                .unwrap_or_else(|e| panic!("the proxy's address: {e}"));
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(server.serve(async move {
                let _ = rx.await;
            }));
            (emulator, addr, tx)
        });
        Rig {
            runtime,
            emulator,
            proxy,
            stop: Some(stop),
            checked: 0,
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.emulator.shutdown();
    }
}

/// Sends `bytes` on a new connection and returns what came back before the proxy closed the
/// connection or `wait` passed. The sending side stays open: the server takes a client that
/// shuts it down for gone, and drops its request.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8], wait: Duration) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = Vec::new();
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return out;
    };
    // The proxy may answer and close before it has read everything: not a failure.
    let _ = stream.write_all(bytes).await;
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
    out
}

/// A well-formed request every live proxy answers with 200.
const PROBE: &[u8] = b"GET /0/odata/Contact HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n";

/// Whole request heads through the server stack, in-process against the emulator. The input
/// is written as it is to a new connection to the proxy (HTTP/1.1, or h2c if it starts with
/// the preface), followed by a well-formed request with `Connection: close`, so that the
/// proxy closes the connection as soon as it has answered what it could parse (an input that
/// leaves it waiting for more is given up after a second). Afterwards:
/// 1. the proxy still answers a well-formed request (on a new connection) with 200;
/// 2. every request the emulator saw is in canonical form, and the path it executed is that
///    form decoded (what Creatio runs is what the proxy routed);
/// 3. every request carrying the portal user's session is under `/ssp` or `/0/ssp`, and none
///    carrying the employee's session is on the portal route (no path escapes its route);
/// 4. nothing but the proxy's own login reached Creatio's authentication endpoints.
pub fn request_head(data: &[u8]) {
    static RIG: Mutex<Option<Rig>> = Mutex::new(None);
    let mut guard = RIG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let rig = guard.get_or_insert_with(Rig::start);
    let proxy = rig.proxy;
    rig.runtime.block_on(async {
        let mut bytes = Vec::with_capacity(data.len() + PROBE.len());
        bytes.extend_from_slice(data);
        bytes.extend_from_slice(PROBE);
        exchange(proxy, &bytes, Duration::from_secs(1)).await;
        let answer = exchange(proxy, PROBE, Duration::from_secs(10)).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 200 "),
            "the proxy no longer serves after {:?}: {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&answer[..answer.len().min(300)])
        );
    });
    let seen = rig.emulator.seen();
    for request in seen.iter().skip(rig.checked) {
        check_seen(request, data);
    }
    rig.checked = seen.len();
    if seen.len() >= RIG_REQUESTS {
        *guard = None;
    }
}

fn check_seen(seen: &crate::emulator::SeenRequest, input: &[u8]) {
    let input = String::from_utf8_lossy(input);
    let forwarded = CanonicalPath::parse(&seen.raw_path)
        .unwrap_or_else(|e| panic!("{input:?}: Creatio got {:?} ({e})", seen.raw_path));
    // The emulator's `path` is decoded, except when the decoded text is not ASCII (a `Uri`
    // cannot hold it): then it stays as received. Compared in canonical form either way.
    assert_eq!(
        CanonicalPath::parse(&seen.path).as_ref(),
        Ok(&forwarded),
        "{input:?}: Creatio executed another path than the proxy forwarded"
    );
    let path = forwarded.as_str();
    let on_portal_route = starts_with_segments(route_key(path), route_key(RIG_PORTAL_PREFIX));
    match seen.user.as_deref() {
        Some("portal.user") => assert!(
            has_ssp(path),
            "{input:?}: the portal user's session on {path:?}, outside /ssp"
        ),
        Some(_) => assert!(
            !on_portal_route,
            "{input:?}: the employee's session on the portal route, {path:?}"
        ),
        None => {}
    }
    let lower = path.to_ascii_lowercase();
    let auth_endpoint = lower.split('/').any(|s| s == "authservice.svc")
        || lower.starts_with("/login/")
        || lower.starts_with("/0/login/");
    if auth_endpoint {
        let own_login = seen.method == http::Method::POST
            && seen.raw_path == "/ServiceModel/AuthService.svc/Login"
            && !seen.headers.contains_key(http::header::COOKIE)
            && !seen.headers.contains_key(http::header::AUTHORIZATION)
            && !seen.headers.contains_key("bpmcsrf");
        assert!(
            own_login,
            "{input:?}: a request reached Creatio's authentication endpoint {path:?}"
        );
    }
}

/// A server that answers the first request of each round with the fuzzer's bytes and every
/// other request with [`NEXT`], and the pool to it, on one runtime.
struct AnswerRig {
    runtime: tokio::runtime::Runtime,
    upstream: crate::pool::Upstream,
    /// The current round's answer, and whether the server closes its side after it.
    script: Script,
}

/// The answer rig's next answer, and whether the server closes its side after it.
type Script = std::sync::Arc<Mutex<Option<(Vec<u8>, bool)>>>;

/// The well-formed answer to every request after the first of a round.
const NEXT: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext";

impl AnswerRig {
    fn start() -> AnswerRig {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("a runtime: {e}"));
        let script = Script::default();
        let served = script.clone();
        let upstream = runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("bind: {e}"));
            let addr = listener
                .local_addr()
                .unwrap_or_else(|e| panic!("address: {e}"));
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve_script(stream, served.clone()));
                }
            });
            let config = Config::from_toml_str(&format!(
                "[creatio]\nurl = \"http://{addr}\"\n[auth]\nusername = \"u\"\npassword = \"p\"\n"
            ))
            .unwrap_or_else(|e| panic!("config: {e}"));
            crate::upstream::build_upstream(&config).unwrap_or_else(|e| panic!("pool: {e}"))
        });
        AnswerRig {
            runtime,
            upstream,
            script,
        }
    }
}

/// One connection of the answer rig: reads request heads (the proxy's GETs have no body) and
/// answers each with the round's bytes if they are still unused, else with [`NEXT`].
async fn serve_script(mut stream: tokio::net::TcpStream, script: Script) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            let next = script.lock().ok().and_then(|mut s| s.take());
            let (bytes, close) = next.unwrap_or_else(|| (NEXT.to_vec(), false));
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
            if close {
                let _ = stream.shutdown().await;
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Raw bytes as Creatio's answer to a GET through the proxy's own HTTP/1.1 client
/// ([`crate::wire`]). The first byte's low bit says whether the server closes its side after
/// the answer; the rest is the answer. Then:
/// 1. nothing panics, and the answer's body (if it was accepted) is no longer than the input;
/// 2. the next request gets exactly the next answer ([`NEXT`]): a connection whose answer
///    left bytes behind, or ended ambiguously, is never used again (no desync between the
///    proxy and Creatio).
pub fn answer(data: &[u8]) {
    use http_body_util::BodyExt;
    static RIG: OnceLock<Mutex<AnswerRig>> = OnceLock::new();
    let rig = RIG.get_or_init(|| Mutex::new(AnswerRig::start()));
    let rig = rig
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let Some((flags, bytes)) = data.split_first() else {
        return;
    };
    if let Ok(mut script) = rig.script.lock() {
        *script = Some((bytes.to_vec(), flags & 1 == 1));
    }
    let get = |path: &'static str| {
        http::Request::get(path)
            .body(crate::body::ProxyBody::Empty)
            .unwrap_or_else(|e| panic!("request: {e}"))
    };
    rig.runtime.block_on(async {
        // An answer that never ends (a body still to come on an open connection) is given
        // up after 100 ms, as the upstream timeout would.
        let first = tokio::time::timeout(Duration::from_millis(100), async {
            let response = rig.upstream.request(get("/first")).await.ok()?;
            response
                .into_body()
                .collect()
                .await
                .ok()
                .map(|b| b.to_bytes())
        })
        .await;
        if let Ok(Some(body)) = first {
            assert!(body.len() <= bytes.len(), "a body longer than the answer");
        }
        if let Ok(mut script) = rig.script.lock() {
            *script = None;
        }
        let next = rig
            .upstream
            .request(get("/next"))
            .await
            .unwrap_or_else(|e| panic!("{:?}: the next request failed: {e}", text(bytes)));
        let status = next.status();
        let body = next
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{:?}: the next body failed: {e}", text(bytes)))
            .to_bytes();
        assert_eq!(
            (status.as_u16(), &body[..]),
            (200, &b"next"[..]),
            "{:?}: the next request read another answer",
            text(bytes)
        );
    });
}
