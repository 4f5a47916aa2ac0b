//! Identities: `[auth]` and `[identities.NAME]`, each a Creatio user (forms) or an OAuth 2.0
//! client (oauth2) whose session or token the proxy holds.
//!
//! Rules:
//! 1. `[auth]` is the identity named `default` and comes first; `[identities.NAME]` follow in
//!    name order; names hold only letters, digits, `_` and `-`, and `default` is taken.
//! 2. Keys of the other mode are refused (a half-converted identity is a mistake to name).
//! 3. A secret comes from its key, its `*_file` (one trailing newline dropped) or the
//!    environment (already applied by [`super::env::apply_secret_env`]); the key and the file
//!    together are refused, and an empty secret is refused.
//! 4. Without `[auth]`, `server.unmatched` must be `"deny"`: nothing could serve other paths.

use std::path::{Path, PathBuf};

use super::defaults::DEFAULTS;
use super::env::ENV_PREFIX;
use super::error::ConfigError;
use super::file::{ConfigFile, IdentityFile};
use super::net::{parse_token_url, TokenUrl};
use super::secret::Secret;

/// Name given to the `[auth]` identity in logs and errors.
pub const DEFAULT_IDENTITY: &str = "default";

/// The identities step's result: every identity, `[auth]` first when present.
pub(crate) struct Identities {
    /// `Config::identities`.
    pub(crate) list: Vec<IdentityConfig>,
    /// `Config::default_identity`: index of `[auth]`.
    pub(crate) default: Option<usize>,
}

/// Step: `[auth]` and `[identities.NAME]` (rules 1 and 4).
pub(crate) fn identities(
    file: &ConfigFile,
    unmatched_forward: bool,
) -> Result<Identities, ConfigError> {
    let mut identities = Vec::new();
    let mut default_identity = None;
    if let Some(auth) = &file.auth {
        identities.push(parse_identity("auth", DEFAULT_IDENTITY, auth)?);
        default_identity = Some(0);
    }
    for (name, id) in &file.identities {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ConfigError::new(
                format!("identities.{name}"),
                "identity names may hold only letters, digits, '_' and '-'",
            ));
        }
        if name == DEFAULT_IDENTITY {
            return Err(ConfigError::new(
                format!("identities.{name}"),
                "\"default\" is the name of [auth]; choose another name",
            ));
        }
        identities.push(parse_identity(&format!("identities.{name}"), name, id)?);
    }
    if default_identity.is_none() && unmatched_forward {
        return Err(ConfigError::new(
            "auth",
            "missing: add an [auth] table (username and password of the Creatio integration user), \
             or set server.unmatched = \"deny\" so only [[routes]] are served",
        ));
    }
    Ok(Identities {
        list: identities,
        default: default_identity,
    })
}

/// One Creatio identity (a user whose session the proxy holds).
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// `default` for `[auth]`, else the table name.
    pub name: String,
    /// How it logs in.
    pub login: LoginConfig,
}

/// How an identity authenticates.
#[derive(Debug, Clone)]
pub enum LoginConfig {
    /// AuthService.svc/Login with a user name and password; cookie session.
    Forms {
        /// Creatio user name.
        username: String,
        /// Its password.
        password: Secret,
    },
    /// OAuth 2.0 client credentials from the Identity Service; bearer tokens.
    OAuth2(OAuth2Config),
}

impl LoginConfig {
    /// True when both describe the same login: same mode, user or client, secret and endpoint.
    pub fn same(&self, other: &LoginConfig) -> bool {
        match (self, other) {
            (
                LoginConfig::Forms { username, password },
                LoginConfig::Forms {
                    username: u,
                    password: p,
                },
            ) => username == u && password.ct_eq(p.expose().as_bytes()),
            (LoginConfig::OAuth2(a), LoginConfig::OAuth2(b)) => {
                a.token_url.display == b.token_url.display
                    && a.client_id == b.client_id
                    && a.client_auth == b.client_auth
                    && a.client_secret.ct_eq(b.client_secret.expose().as_bytes())
            }
            _ => false,
        }
    }
}

/// An `mode = "oauth2"` identity.
#[derive(Debug, Clone)]
pub struct OAuth2Config {
    /// The Identity Service's token endpoint.
    pub token_url: TokenUrl,
    /// The client id of the integrated application.
    pub client_id: String,
    /// Its secret.
    pub client_secret: Secret,
    /// How the client authenticates to the token endpoint.
    pub client_auth: ClientAuth,
}

/// How the client id and secret reach the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` form fields (default: what Creatio documents).
    Form,
    /// `Authorization: Basic`.
    Basic,
}

fn parse_identity(key: &str, name: &str, f: &IdentityFile) -> Result<IdentityConfig, ConfigError> {
    let mode = f.mode.as_deref().unwrap_or(DEFAULTS.identity_mode);
    let section = if key == "auth" {
        "AUTH".to_string()
    } else {
        format!("IDENTITIES__{}", name.to_ascii_uppercase())
    };
    let login = match mode {
        "forms" => parse_forms(key, &section, f)?,
        "oauth2" => LoginConfig::OAuth2(parse_oauth2(key, &section, f)?),
        other => {
            return Err(ConfigError::new(
                format!("{key}.mode"),
                format!("\"{other}\" is not one of \"forms\", \"oauth2\""),
            ))
        }
    };
    Ok(IdentityConfig {
        name: name.to_string(),
        login,
    })
}

/// Keys that belong to the other mode are refused: a half-converted identity is a mistake
/// worth naming rather than a setting silently ignored.
fn refuse_foreign_keys(key: &str, mode: &str, keys: &[(&str, bool)]) -> Result<(), ConfigError> {
    match keys.iter().find(|(_, present)| *present) {
        Some((name, _)) => Err(ConfigError::new(
            format!("{key}.{name}"),
            format!("is not used by mode = \"{mode}\"; remove it (or change the mode)"),
        )),
        None => Ok(()),
    }
}

fn parse_forms(key: &str, section: &str, f: &IdentityFile) -> Result<LoginConfig, ConfigError> {
    refuse_foreign_keys(
        key,
        "forms",
        &[
            ("token_url", f.token_url.is_some()),
            ("client_id", f.client_id.is_some()),
            ("client_secret", f.client_secret.is_some()),
            ("client_secret_file", f.client_secret_file.is_some()),
            ("client_auth", f.client_auth.is_some()),
        ],
    )?;
    let username = match f.username.as_deref() {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => {
            return Err(ConfigError::new(
                format!("{key}.username"),
                "missing: give the Creatio user name this identity logs in as",
            ))
        }
    };
    let password = read_secret(
        key,
        "password",
        &f.password,
        &f.password_file,
        &format!("{ENV_PREFIX}{section}__PASSWORD"),
    )?;
    Ok(LoginConfig::Forms { username, password })
}

fn parse_oauth2(key: &str, section: &str, f: &IdentityFile) -> Result<OAuth2Config, ConfigError> {
    refuse_foreign_keys(
        key,
        "oauth2",
        &[
            ("username", f.username.is_some()),
            ("password", f.password.is_some()),
            ("password_file", f.password_file.is_some()),
        ],
    )?;
    let token_url = parse_token_url(&format!("{key}.token_url"), f.token_url.as_deref())?;
    let client_id = match f.client_id.as_deref() {
        Some(c) if !c.is_empty() => c.to_string(),
        _ => {
            return Err(ConfigError::new(
                format!("{key}.client_id"),
                "missing: give the client id of the OAuth integrated application (Creatio: System Designer → OAuth 2.0 integrated applications)",
            ))
        }
    };
    let client_secret = read_secret(
        key,
        "client_secret",
        &f.client_secret,
        &f.client_secret_file,
        &format!("{ENV_PREFIX}{section}__CLIENT_SECRET"),
    )?;
    let client_auth = match f.client_auth.as_deref().unwrap_or(DEFAULTS.client_auth) {
        "form" => ClientAuth::Form,
        "basic" => ClientAuth::Basic,
        other => {
            return Err(ConfigError::new(
                format!("{key}.client_auth"),
                format!("\"{other}\" is not one of \"form\", \"basic\""),
            ))
        }
    };
    Ok(OAuth2Config {
        token_url,
        client_id,
        client_secret,
        client_auth,
    })
}

/// A secret from the value, its `*_file`, or (already applied) the environment.
fn read_secret(
    key: &str,
    name: &str,
    value: &Option<Secret>,
    file: &Option<PathBuf>,
    env_name: &str,
) -> Result<Secret, ConfigError> {
    let secret = match (value, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::new(
                format!("{key}.{name}"),
                format!("give either {name} or {name}_file, not both"),
            ))
        }
        (Some(p), None) => p.clone(),
        (None, Some(path)) => read_secret_file(&format!("{key}.{name}_file"), path)?,
        (None, None) => {
            return Err(ConfigError::new(
                format!("{key}.{name}"),
                format!("missing: set {name}, {name}_file, or the environment variable {env_name}"),
            ))
        }
    };
    if secret.is_empty() {
        return Err(ConfigError::new(format!("{key}.{name}"), "is empty"));
    }
    Ok(secret)
}

fn read_secret_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{load, MINIMAL, OAUTH};
    use super::*;

    #[test]
    fn password_comes_from_a_file_without_its_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").expect("write");
        let toml = MINIMAL.replace(
            "password = \"pw\"",
            &format!("password_file = {:?}", path.display().to_string()),
        );
        let c = load(&toml).expect("loads");
        let LoginConfig::Forms { password, .. } = &c.identities[0].login else {
            panic!("a forms identity")
        };
        assert_eq!(password.expose(), "s3cret");
    }

    #[test]
    fn oauth2_identities_parse_with_form_client_auth_by_default() {
        let c = load(OAUTH).expect("oauth2 config loads");
        let LoginConfig::OAuth2(o) = &c.identities[0].login else {
            panic!("an oauth2 identity")
        };
        assert_eq!(o.client_id, "integration");
        assert_eq!(o.client_secret.expose(), "s3cret");
        assert_eq!(o.client_auth, ClientAuth::Form);
        assert_eq!(o.token_url.path_and_query, "/connect/token");
        assert_eq!(o.token_url.host_port(), "example-is.creatio.com:443");
        assert!(!format!("{c:?}").contains("s3cret"));

        let basic = load(&format!("{OAUTH}client_auth = \"basic\"\n")).expect("basic loads");
        let LoginConfig::OAuth2(o) = &basic.identities[0].login else {
            panic!("an oauth2 identity")
        };
        assert_eq!(o.client_auth, ClientAuth::Basic);
    }

    #[test]
    fn oauth2_mistakes_name_the_key() {
        let cases = [
            (
                OAUTH.replace(
                    "token_url = \"https://example-is.creatio.com/connect/token\"",
                    "",
                ),
                "auth.token_url",
                "Identity Service",
            ),
            (
                OAUTH.replace(
                    "https://example-is.creatio.com/connect/token",
                    "https://example-is.creatio.com",
                ),
                "auth.token_url",
                "/connect/token",
            ),
            (
                OAUTH.replace("client_id = \"integration\"", ""),
                "auth.client_id",
                "OAuth",
            ),
            (
                format!("{OAUTH}username = \"Supervisor\"\n"),
                "auth.username",
                "not used by mode = \"oauth2\"",
            ),
            (
                format!("{OAUTH}client_auth = \"header\"\n"),
                "auth.client_auth",
                "\"basic\"",
            ),
            (
                format!("{MINIMAL}client_id = \"x\"\n"),
                "auth.client_id",
                "not used by mode = \"forms\"",
            ),
        ];
        for (toml, key, says) in cases {
            let err = load(&toml).expect_err(key);
            assert_eq!(err.key, key, "{err}");
            assert!(err.message.contains(says), "{key}: {err}");
            assert!(!err.to_string().contains("s3cret"));
        }
    }
}
