//! The environment a load sees: `CREATIO_PROXY_` overrides and raw secrets.
//!
//! Rules:
//! 1. A variable `CREATIO_PROXY_A__B` overrides key `a.b` (prefix matched ASCII
//!    case-insensitively, `__` between levels, key lowercased, the value parsed as figment parses
//!    environment values: `true`, numbers and `[..]` arrays are typed, anything else is a string).
//!    This is what figment's `Env::prefixed(ENV_PREFIX).split("__")` does; it is written out here
//!    so that the same code can read an explicit list instead of the process environment.
//! 2. Secrets (`*.password`, `*.client_secret`) are re-read raw by [`apply_secret_env`]:
//!    figment would turn `0123` into the number 123.
//! 3. Relative `*_file` paths start at the config file's folder ([`resolve_paths`]).
//!
//! Tests load with [`Environment::Explicit`], so a developer's own exported `CREATIO_PROXY_*`
//! variables cannot change their outcome, and no test has to mutate the process environment.

use std::path::{Path, PathBuf};

use figment::providers::Serialized;
use figment::value::Value;
use figment::Figment;

use super::file::{ConfigFile, IdentityFile};
use super::secret::Secret;

/// Environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "CREATIO_PROXY_";

/// Where environment variables come from.
#[derive(Debug, Clone)]
pub(crate) enum Environment {
    /// The process environment (`run`, `check`, `demo`).
    Process,
    /// Exactly these variables and no others; a later entry wins over an earlier one.
    Explicit(Vec<(String, String)>),
}

impl Environment {
    /// An explicit environment from `(name, value)` pairs.
    pub(crate) fn explicit(vars: &[(&str, &str)]) -> Environment {
        Environment::Explicit(
            vars.iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        )
    }

    /// The raw value of one variable.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        match self {
            Environment::Process => std::env::var(name).ok(),
            Environment::Explicit(vars) => vars
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone()),
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        match self {
            Environment::Process => std::env::vars_os()
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect(),
            Environment::Explicit(vars) => vars.clone(),
        }
    }

    /// The `CREATIO_PROXY_*` overrides as a figment provider, secret keys left out (rule 2).
    pub(crate) fn overrides(&self) -> Figment {
        let mut figment = Figment::new();
        for (name, raw) in self.vars() {
            if let Some(key) = override_key(&name) {
                // Parsed as figment's Env parses values. Going through `Serialized` widens an
                // integer's tag (U8 -> U64); deserialisation and messages do not depend on it.
                let value = match raw.parse::<Value>() {
                    Ok(v) => v,
                    Err(never) => match never {},
                };
                figment = figment.merge(Serialized::default(&key, value));
            }
        }
        figment
    }
}

/// The key path a variable overrides, or `None` when it is not an override (rule 1).
fn override_key(name: &str) -> Option<String> {
    let name = name.trim();
    let rest = name
        .get(..ENV_PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
        .and_then(|_| name.get(ENV_PREFIX.len()..))?;
    let key = rest.replace("__", ".");
    if is_secret_key(&key) {
        return None;
    }
    let key = key.trim();
    if key.split('.').any(str::is_empty) {
        return None;
    }
    Some(key.to_ascii_lowercase())
}

/// Secret keys are left to [`apply_secret_env`], which reads them raw (leading zeros kept) and
/// only for the mode that uses them, so a `CREATIO_PROXY_AUTH__PASSWORD` exported for another
/// setup does not make an oauth2 `[auth]` invalid. Compared ignoring case, as variables are
/// usually spelled in upper case.
fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.ends_with(".password") || key.ends_with(".client_secret")
}

/// Makes relative file paths relative to the config file's folder, not to wherever the
/// proxy happens to be started.
pub(crate) fn resolve_paths(file: &mut ConfigFile, base: &Path) {
    let fix = |p: &mut Option<PathBuf>| {
        if let Some(path) = p.as_mut() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    };
    fix(&mut file.creatio.ca_file);
    if let Some(store) = file.session_store.as_mut() {
        fix(&mut store.url_file);
        fix(&mut store.encryption_key_file);
    }
    for id in file.auth.iter_mut().chain(file.identities.values_mut()) {
        fix(&mut id.password_file);
        fix(&mut id.client_secret_file);
    }
}

/// Applies `CREATIO_PROXY_AUTH__PASSWORD`, `..._CLIENT_SECRET` and their
/// `IDENTITIES__NAME__` forms, raw.
pub(crate) fn apply_secret_env(file: &mut ConfigFile, env: &Environment) {
    // Each variable applies only to the mode that uses it: an exported
    // CREATIO_PROXY_AUTH__PASSWORD must not break an [auth] that has moved to oauth2.
    let apply = |id: &mut IdentityFile, section: &str| {
        let base = format!("{ENV_PREFIX}{section}__");
        let oauth2 = id.mode.as_deref() == Some("oauth2");
        if let Some(v) = env.get(&format!("{base}PASSWORD")).filter(|_| !oauth2) {
            id.password = Some(Secret::new(v));
            id.password_file = None;
        }
        if let Some(v) = env.get(&format!("{base}CLIENT_SECRET")).filter(|_| oauth2) {
            id.client_secret = Some(Secret::new(v));
            id.client_secret_file = None;
        }
    };
    if file.auth.is_none()
        && (env.get(&format!("{ENV_PREFIX}AUTH__PASSWORD")).is_some()
            || env
                .get(&format!("{ENV_PREFIX}AUTH__CLIENT_SECRET"))
                .is_some())
    {
        file.auth = Some(IdentityFile::default());
    }
    if let Some(auth) = file.auth.as_mut() {
        apply(auth, "AUTH");
    }
    for (name, id) in file.identities.iter_mut() {
        apply(id, &format!("IDENTITIES__{}", name.to_ascii_uppercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{load, load_env, MINIMAL, OAUTH};
    use super::super::LoginConfig;
    use super::*;

    #[test]
    fn oauth2_client_secret_comes_from_the_environment() {
        let toml = OAUTH.replace("client_secret = \"s3cret\"", "");
        let err = load(&toml).expect_err("no secret");
        assert_eq!(err.key, "auth.client_secret");
        assert!(
            err.message.contains("CREATIO_PROXY_AUTH__CLIENT_SECRET"),
            "{err}"
        );
        let c = load_env(&toml, &[("CREATIO_PROXY_AUTH__CLIENT_SECRET", "007")]).expect("loads");
        let LoginConfig::OAuth2(o) = &c.identities[0].login else {
            panic!("an oauth2 identity")
        };
        assert_eq!(o.client_secret.expose(), "007");
    }

    #[test]
    fn a_password_variable_does_not_spoil_an_oauth2_identity() {
        let c = load_env(OAUTH, &[("CREATIO_PROXY_AUTH__PASSWORD", "not-used")]).expect("loads");
        assert!(matches!(c.identities[0].login, LoginConfig::OAuth2(_)));
        let c = load_env(MINIMAL, &[("CREATIO_PROXY_AUTH__CLIENT_SECRET", "x")]).expect("loads");
        assert!(matches!(c.identities[0].login, LoginConfig::Forms { .. }));
    }

    #[test]
    fn environment_secret_keeps_leading_zeros() {
        let c = load_env(MINIMAL, &[("CREATIO_PROXY_AUTH__PASSWORD", "0123")]).expect("loads");
        let LoginConfig::Forms { password, .. } = &c.identities[0].login else {
            panic!("a forms identity")
        };
        assert_eq!(password.expose(), "0123");
        assert!(
            !format!("{c:?}").contains("0123"),
            "Debug output must not show the password"
        );
    }

    #[test]
    fn variables_map_to_key_paths() {
        struct Case {
            name: &'static str,
            var: &'static str,
            want: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "two levels",
                var: "CREATIO_PROXY_CREATIO__URL",
                want: Some("creatio.url"),
            },
            Case {
                name: "prefix in any case",
                var: "creatio_proxy_Server__Listen",
                want: Some("server.listen"),
            },
            Case {
                name: "single underscores stay",
                var: "CREATIO_PROXY_SERVER__CLIENT_TOKENS",
                want: Some("server.client_tokens"),
            },
            Case {
                name: "another prefix",
                var: "CREATIO_PROXYX_AUTH__USERNAME",
                want: None,
            },
            Case {
                name: "an empty level",
                var: "CREATIO_PROXY_AUTH____USERNAME",
                want: None,
            },
            Case {
                name: "lowercase secret key is left to apply_secret_env",
                var: "CREATIO_PROXY_auth__password",
                want: None,
            },
        ];
        for case in cases {
            assert_eq!(
                override_key(case.var).as_deref(),
                case.want,
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn explicit_variables_override_the_file_and_nothing_else_is_read() {
        let c = load_env(
            MINIMAL,
            &[
                ("CREATIO_PROXY_SERVER__LISTEN", "127.0.0.1:6000"),
                ("CREATIO_PROXY_SERVER__CLIENT_TOKENS", "[\"t1\", \"t2\"]"),
                ("CREATIO_PROXY_LOG__QUERY", "true"),
                ("CREATIO_PROXY_AUTH__USERNAME", "Other"),
                ("CREATIO_PROXY_AUTH__USERNAME", "Last"),
                ("UNRELATED", "x"),
            ],
        )
        .expect("loads");
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.client_tokens.len(), 2);
        assert!(c.log.query);
        let LoginConfig::Forms { username, .. } = &c.identities[0].login else {
            panic!("a forms identity")
        };
        assert_eq!(username, "Last", "a later pair wins");
        assert_eq!(load(MINIMAL).expect("loads").listen.port(), 5080);
    }

    #[test]
    fn an_override_of_an_unknown_key_is_refused_like_one_in_the_file() {
        let err = load_env(MINIMAL, &[("CREATIO_PROXY_SERVER__LISTN", "x")]).expect_err("typo");
        assert_eq!(err.key, "server.listn", "{err}");
    }
}
