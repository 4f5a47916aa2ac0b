//! `[session_store]`: where replicas share their sessions (Redis or Valkey), under which key
//! prefix, and the key that seals what is stored.

use std::path::Path;
use std::time::Duration;

use base64::Engine;

use super::defaults::DEFAULTS;
use super::error::ConfigError;
use super::file::ConfigFile;
use super::secret::Secret;
use super::validate::parse_duration;

/// The validated `[session_store]`.
#[derive(Clone)]
pub struct SessionStoreConfig {
    /// `redis://` or `rediss://`, possibly with a password: a secret.
    pub url: Secret,
    /// The URL without its user and password, for messages.
    pub display: String,
    /// Prefix of every key the proxy writes.
    pub key_prefix: String,
    /// The 32-byte key that seals stored sessions (AES-256-GCM) and names the keys (HMAC).
    pub key: SealKey,
    /// Longest wait for one store operation (connect included).
    pub timeout: Duration,
}

impl PartialEq for SessionStoreConfig {
    fn eq(&self, other: &Self) -> bool {
        self.url.ct_eq(other.url.expose().as_bytes())
            && self.key_prefix == other.key_prefix
            && self.key == other.key
            && self.timeout == other.timeout
    }
}

impl std::fmt::Debug for SessionStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStoreConfig")
            .field("url", &self.display)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// 32 secret bytes; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SealKey(pub(crate) std::sync::Arc<[u8; 32]>);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

const KEY_HINT: &str =
    "it must hold 32 random bytes, raw or base64 (e.g. `head -c32 /dev/urandom | base64 > FILE`)";

/// Validates `[session_store]`, if present.
pub(crate) fn session_store(file: &ConfigFile) -> Result<Option<SessionStoreConfig>, ConfigError> {
    let Some(s) = &file.session_store else {
        return Ok(None);
    };
    let url = match (&s.url, &s.url_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                "session_store.url",
                "give either url or url_file, not both",
            ))
        }
        (Some(u), None) => u.clone(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    "session_store.url_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            Secret::new(text.trim())
        }
        (None, None) => {
            return Err(ConfigError::new(
                "session_store.url",
                "missing: set url (redis://host:6379/0 or rediss://...), url_file, or the \
                 environment variable CREATIO_PROXY_SESSION_STORE__URL",
            ))
        }
    };
    let display = check_url(url.expose())?;
    let key_prefix = s
        .key_prefix
        .clone()
        .unwrap_or_else(|| DEFAULTS.session_store_key_prefix.to_string());
    if key_prefix.is_empty()
        || key_prefix.len() > 100
        || !key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b))
    {
        return Err(ConfigError::new(
            "session_store.key_prefix",
            "must be 1 to 100 characters of letters, digits and - _ . : /",
        ));
    }
    let Some(path) = &s.encryption_key_file else {
        return Err(ConfigError::new(
            "session_store.encryption_key_file",
            format!("missing: stored sessions are encrypted, and {KEY_HINT}"),
        ));
    };
    let key = read_key(path)?;
    let timeout = parse_duration(
        "session_store.timeout",
        s.timeout
            .as_deref()
            .unwrap_or(DEFAULTS.session_store_timeout),
    )?;
    if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(10) {
        return Err(ConfigError::new(
            "session_store.timeout",
            "must be between 10ms and 10s: it bounds every store operation a request may wait for",
        ));
    }
    Ok(Some(SessionStoreConfig {
        url,
        display,
        key_prefix,
        key,
        timeout,
    }))
}

/// Checks a store URL; returns it without user and password.
fn check_url(url: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| ConfigError::new("session_store.url", why.to_string());
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("must start with redis:// or rediss://"));
    };
    if scheme != "redis" && scheme != "rediss" {
        return Err(bad("must start with redis:// or rediss:// (TLS)"));
    }
    // The redis crate's own parser: what it accepts is what it will connect to.
    if let Err(e) = redis::Client::open(url) {
        // Its message never holds the URL.
        return Err(bad(&format!("is not a usable Redis URL: {e}")));
    }
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    Ok(format!("{scheme}://{host}"))
}

/// Reads the sealing key: exactly 32 bytes, or base64 of 32 bytes (surrounding blanks and a
/// newline ignored).
fn read_key(path: &Path) -> Result<SealKey, ConfigError> {
    let key = "session_store.encryption_key_file";
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return Ok(SealKey(std::sync::Arc::new(raw)));
    }
    let text = String::from_utf8_lossy(&bytes);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok());
    match decoded {
        Some(raw) => Ok(SealKey(std::sync::Arc::new(raw))),
        None => Err(ConfigError::new(
            key,
            format!(
                "{} holds {} bytes that are neither 32 raw bytes nor base64 of 32: {KEY_HINT}",
                path.display(),
                bytes.len()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    // Test code only (clippy.toml allows it in tests): each expect() is set-up or an assertion
    // whose failure is this test failing; none of it is on a request path.
    use super::super::testing::{load, load_env, MINIMAL};

    fn with_store(dir: &std::path::Path, table: &str) -> String {
        let key = dir.join("key");
        std::fs::write(&key, "q0Ut3PvGVGnh9v7cB1XtT5cP7K8hKk0Kc8kHj2bqX6E=\n").expect("key");
        format!(
            "{MINIMAL}\n[session_store]\nencryption_key_file = {:?}\n{table}",
            key.display().to_string()
        )
    }

    #[test]
    fn a_store_is_validated_and_its_password_never_printed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = load(&with_store(
            dir.path(),
            "url = \"redis://:hunter2@127.0.0.1:6379/0\"\n",
        ))
        .expect("loads");
        let s = c.session_store.expect("a store");
        assert_eq!(s.display, "redis://127.0.0.1:6379/0");
        assert_eq!(s.key_prefix, "creatio-proxy");
        assert_eq!(s.timeout, std::time::Duration::from_millis(200));
        assert!(!format!("{s:?}").contains("hunter2"), "{s:?}");
        assert!(load(MINIMAL).expect("loads").session_store.is_none());
    }

    #[test]
    fn the_url_can_come_from_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = load_env(
            &with_store(dir.path(), ""),
            &[(
                "CREATIO_PROXY_SESSION_STORE__URL",
                "rediss://h.example:6380",
            )],
        )
        .expect("loads");
        assert_eq!(
            c.session_store.expect("store").display,
            "rediss://h.example:6380"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cases = [
            ("", "session_store.url: missing"),
            (
                "url = \"http://x\"\n",
                "session_store.url: must start with redis://",
            ),
            (
                "url = \"redis://x\"\nkey_prefix = \"a b\"\n",
                "session_store.key_prefix: ",
            ),
            (
                "url = \"redis://x\"\ntimeout = \"1m\"\n",
                "session_store.timeout: must be between",
            ),
            (
                "url = \"redis://x\"\nurl_file = \"/nonexistent\"\n",
                "session_store.url: give either",
            ),
        ];
        for (table, says) in cases {
            let e = load(&with_store(dir.path(), table)).expect_err(table);
            assert!(e.to_string().starts_with(says), "{table}: {e}");
        }
        let short = dir.path().join("short");
        std::fs::write(&short, "c2hvcnQ=").expect("write");
        let toml = format!(
            "{MINIMAL}\n[session_store]\nurl = \"redis://x\"\nencryption_key_file = {:?}\n",
            short.display().to_string()
        );
        let e = load(&toml).expect_err("a short key");
        assert!(
            e.to_string()
                .starts_with("session_store.encryption_key_file: "),
            "{e}"
        );
        let toml = format!("{MINIMAL}\n[session_store]\nurl = \"redis://x\"\n");
        let e = load(&toml).expect_err("no key");
        assert!(e.to_string().contains("32 random bytes"), "{e}");
    }
}
