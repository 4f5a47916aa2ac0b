//! Config files, loaded through the public API exactly as `run` and `check` load them:
//! 1. every `tests/data/config/valid/*.toml` loads;
//! 2. every `tests/data/config/invalid/*.toml` is refused with exactly the text of its
//!    `.expected` file (see `tests/data/config/README.md`);
//! 3. every config the project ships loads: `config/creatio-proxy.toml`, the container image's
//!    `deploy/image/config.toml`, the Compose trial's `deploy/compose/proxy/config.toml`, the
//!    Compose replicas' `deploy/compose/replicas/config.toml`, the TOML inside
//!    `deploy/kubernetes/configmap.yaml`, and any `*.toml` under `examples/`.
//!
//! Every load goes through `Config::load_with_env` with an explicit environment, so a
//! developer's own `CREATIO_PROXY_*` variables (an exported `CREATIO_PROXY_AUTH__PASSWORD`, say)
//! cannot change an outcome, and no test touches the process environment.
// Test code: a failed expect() is the test failing, never a request path.
#![allow(clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use creatio_proxy::config::{Config, ConfigError};

/// No environment variables at all.
const NO_ENV: &[(&str, &str)] = &[];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixture_dir(kind: &str) -> PathBuf {
    repo().join("tests/data/config").join(kind)
}

/// The files in `dir` whose names end with `.{ext}`, sorted.
fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}

/// Every `*.toml` under `dir`, recursively; none when `dir` does not exist.
fn toml_files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            found.extend(toml_files_under(&path));
        } else if path.extension().is_some_and(|x| x == "toml") {
            found.push(path);
        }
    }
    found.sort();
    found
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn valid_fixtures_load() {
    let files = files_with_ext(&fixture_dir("valid"), "toml");
    assert!(files.len() >= 8, "only {} valid fixtures", files.len());
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            Config::load_with_env(f, NO_ENV)
                .err()
                .map(|e| format!("{}: {e}", name_of(f)))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "valid fixtures refused:\n{}",
        failures.join("\n")
    );
}

/// The message an invalid fixture must produce: its `.expected` file without the final line
/// break, `{dir}` standing for the fixture's folder.
fn expected_message(toml: &Path) -> Result<String, String> {
    let path = toml.with_extension("expected");
    let text =
        fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let dir = toml.parent().expect("a fixture has a folder");
    Ok(text
        .strip_suffix('\n')
        .unwrap_or(&text)
        .replace("{dir}", &dir.display().to_string()))
}

#[test]
fn invalid_fixtures_fail_with_exactly_the_expected_message() {
    let dir = fixture_dir("invalid");
    let files = files_with_ext(&dir, "toml");
    assert!(files.len() >= 15, "only {} invalid fixtures", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let got = Config::load_with_env(f, NO_ENV);
        let want = match expected_message(f) {
            Ok(want) => want,
            Err(why) => {
                let got = got.err().map(|e| e.to_string()).unwrap_or_default();
                failures.push(format!("{}: {why}\n  actual:   {got}", name_of(f)));
                continue;
            }
        };
        match got {
            Ok(_) => failures.push(format!("{}: loaded, expected: {want}", name_of(f))),
            Err(e) if e.to_string() == want => {}
            Err(e) => failures.push(format!(
                "{}:\n  expected: {want}\n  actual:   {e}",
                name_of(f)
            )),
        }
    }
    // An .expected file without its .toml is a fixture that silently stopped running.
    for expected in files_with_ext(&dir, "expected") {
        if !expected.with_extension("toml").is_file() {
            failures.push(format!("{}: no .toml next to it", name_of(&expected)));
        }
    }
    assert!(
        failures.is_empty(),
        "invalid fixtures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_developers_environment_cannot_change_a_fixture_outcome() {
    // Not a mutation of the process environment: the variables are handed to this one load.
    // With them, a fixture that is refused for its missing password loads, which shows the
    // other tests' NO_ENV is what they see, whatever the shell exports.
    let missing = fixture_dir("invalid").join("missing-password.toml");
    assert!(Config::load_with_env(&missing, NO_ENV).is_err());
    Config::load_with_env(&missing, &[("CREATIO_PROXY_AUTH__PASSWORD", "from-env")])
        .expect("the explicit variable supplies the password");
}

// === shipped configs ===

/// The TOML text of `data: config.toml: |` in a ConfigMap, by hand: the lines after the key
/// that are indented deeper than it, with the block's indentation removed. (serde_yaml is not
/// in the dependency tree, and the file is ours and simple.)
fn configmap_toml(yaml: &str) -> Option<String> {
    let mut lines = yaml.lines();
    let key_indent = loop {
        let line = lines.next()?;
        if line.trim_start().starts_with("config.toml: |") {
            break line.len() - line.trim_start().len();
        }
    };
    let mut block_indent = None;
    let mut out = String::new();
    for line in lines {
        if line.trim().is_empty() {
            out.push('\n');
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent <= key_indent {
            break;
        }
        let cut = *block_indent.get_or_insert(indent);
        out.push_str(line.get(cut..).unwrap_or(line.trim_start()));
        out.push('\n');
    }
    Some(out)
}

/// Loads a shipped config with `env`, naming the file on failure.
fn load_shipped(path: &Path, env: &[(&str, &str)]) -> Result<Config, String> {
    Config::load_with_env(path, env).map_err(|e: ConfigError| format!("{}: {e}", path.display()))
}

#[test]
fn the_example_config_loads() {
    // Its secrets are in the file (password) or next to it (portal-password.example).
    let c = load_shipped(&repo().join("config/creatio-proxy.toml"), NO_ENV)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.identities.len(), 2);
    assert_eq!(c.routes.len(), 1);
}

#[test]
fn the_example_config_states_the_defaults() {
    // config/creatio-proxy.toml spells out the defaults for users; a minimal file must get
    // the same values, so the two cannot drift apart.
    let shipped = load_shipped(&repo().join("config/creatio-proxy.toml"), NO_ENV)
        .unwrap_or_else(|e| panic!("{e}"));
    let minimal = load_shipped(&fixture_dir("valid").join("forms-minimal.toml"), NO_ENV)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shipped.listen, minimal.listen);
    assert_eq!(shipped.admin_listen, minimal.admin_listen);
    assert_eq!(shipped.replay_buffer, minimal.replay_buffer);
    assert_eq!(shipped.shutdown_grace, minimal.shutdown_grace);
    assert_eq!(shipped.unmatched, minimal.unmatched);
    assert_eq!(shipped.login_backoff, minimal.login_backoff);
    assert_eq!(shipped.login_backoff_max, minimal.login_backoff_max);
    assert_eq!(shipped.upstream_timeout, minimal.upstream_timeout);
    assert_eq!(shipped.connect_timeout, minimal.connect_timeout);
    assert_eq!(shipped.insecure_skip_verify, minimal.insecure_skip_verify);
    assert_eq!(shipped.allow_root, minimal.allow_root);
    assert_eq!(
        shipped.allow_unauthenticated_remote,
        minimal.allow_unauthenticated_remote
    );
    assert_eq!(shipped.log, minimal.log);
    assert_eq!(shipped.limits, minimal.limits);
}

#[test]
fn the_container_image_config_loads_with_its_documented_environment() {
    // The image's file holds only container settings; its comment says the rest comes from
    // the environment. These are the variables it documents.
    let path = repo().join("deploy/image/config.toml");
    let creatio = [
        (
            "CREATIO_PROXY_CREATIO__URL",
            "https://mycompany.creatio.com",
        ),
        ("CREATIO_PROXY_AUTH__USERNAME", "Integration"),
        ("CREATIO_PROXY_AUTH__PASSWORD", "change-me"),
    ];
    let err = load_shipped(&path, &creatio).expect_err("listening on 0.0.0.0 needs a guard");
    assert!(err.contains("server.listen"), "{err}");
    for guard in [
        (
            "CREATIO_PROXY_SERVER__CLIENT_TOKENS",
            r#"["a-long-random-token"]"#,
        ),
        (
            "CREATIO_PROXY_SERVER__ALLOWED_CLIENTS",
            r#"["172.16.0.0/12"]"#,
        ),
        ("CREATIO_PROXY_SERVER__ALLOW_UNAUTHENTICATED_REMOTE", "true"),
    ] {
        let mut env = creatio.to_vec();
        env.push(guard);
        load_shipped(&path, &env).unwrap_or_else(|e| panic!("with {}: {e}", guard.0));
    }
}

/// The Compose and Kubernetes configs read their passwords from `password_file`s under
/// `/run/secrets`, which exist only inside the container. A `CREATIO_PROXY_..._PASSWORD`
/// variable replaces a `password_file` (that is how `Config::load` applies secret overrides),
/// so these configs are loaded with the two passwords given as explicit variables instead:
/// everything else in the file is checked as shipped.
const CONTAINER_PASSWORDS: &[(&str, &str)] = &[
    ("CREATIO_PROXY_AUTH__PASSWORD", "change-me"),
    ("CREATIO_PROXY_IDENTITIES__PORTAL__PASSWORD", "portal-pass"),
];

/// A Compose config with a `[session_store]` names its key as the Compose secret
/// `/run/secrets/session-key`, which exists only inside the container; it is loaded with this
/// variable pointing `session_store.encryption_key_file` at the secret's source file under
/// `deploy/compose/secrets/` instead, so the shipped trial key is checked too. (Given to a
/// config without the table, the variable would make a `[session_store]` with no `url`.)
const SESSION_KEY_FILE: &str = "CREATIO_PROXY_SESSION_STORE__ENCRYPTION_KEY_FILE";

#[test]
fn the_compose_configs_load() {
    let dir = repo().join("deploy/compose");
    let files = toml_files_under(&dir);
    assert!(
        files.len() >= 2,
        "only {} TOML under {}",
        files.len(),
        dir.display()
    );
    let key = dir.join("secrets/session-key").display().to_string();
    for path in files {
        let text = fs::read_to_string(&path).expect("a shipped config is readable");
        let mut env: Vec<(&str, &str)> = CONTAINER_PASSWORDS.to_vec();
        if text.lines().any(|line| line.trim() == "[session_store]") {
            env.push((SESSION_KEY_FILE, &key));
        }
        let c = load_shipped(&path, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.identities.len(), 2, "{}", path.display());
    }
}

#[test]
fn the_kubernetes_configmap_config_loads() {
    let yaml_path = repo().join("deploy/kubernetes/configmap.yaml");
    let yaml = fs::read_to_string(&yaml_path).expect("configmap.yaml");
    let toml = configmap_toml(&yaml).expect("configmap.yaml has data: config.toml: |");
    assert!(toml.contains("[creatio]"), "extracted:\n{toml}");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    fs::write(&path, toml).expect("write the extracted config");
    let c = load_shipped(&path, CONTAINER_PASSWORDS).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.listen.ip().is_loopback());
    assert_eq!(c.identities.len(), 2);
}

#[test]
fn every_toml_under_examples_loads() {
    // None today (examples/ holds Postman and WSO2 files); a TOML added there must load with
    // no environment at all, as a user would first try it.
    for path in toml_files_under(&repo().join("examples")) {
        load_shipped(&path, NO_ENV).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn every_shipped_toml_is_covered_here() {
    // A new config under config/ or deploy/ needs a test above (it may need an environment).
    let covered = [
        "config/creatio-proxy.toml",
        "deploy/image/config.toml",
        "deploy/compose/proxy/config.toml",
        "deploy/compose/replicas/config.toml",
    ];
    let mut shipped = toml_files_under(&repo().join("config"));
    shipped.extend(toml_files_under(&repo().join("deploy")));
    for path in shipped {
        let rel = path.strip_prefix(repo()).expect("under the repository");
        assert!(
            covered.iter().any(|c| Path::new(c) == rel),
            "{} is shipped but not loaded by tests/config_files.rs",
            rel.display()
        );
    }
}

#[test]
fn configmap_extraction_takes_only_the_block() {
    let yaml =
        "data:\n  config.toml: |\n    [server]\n      # deeper\n\n    listen = \"x\"\n  other: 1\n";
    assert_eq!(
        configmap_toml(yaml).as_deref(),
        Some("[server]\n  # deeper\n\nlisten = \"x\"\n")
    );
}
